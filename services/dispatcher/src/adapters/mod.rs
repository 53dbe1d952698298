//! One adapter per platform: how an enriched conversion becomes a row of the
//! platform's request, and how the platform's answer becomes an [`Answer`].
//!
//! Adapters know the wire format and the meaning of every answer; they know
//! nothing of retries, pacing or Kafka. The delivery engine acts on what they
//! classify, the same way for every platform.

pub mod google_ads;
pub mod google_oauth;
pub mod meta;
pub mod tiktok;

use std::time::Duration;

use postback_core::eligibility::PLATFORM_NOT_CONFIGURED;
use postback_core::model::ConversionEnriched;
use postback_core::Platform;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::account::{Account, Credentials};
use crate::config::DispatcherSections;

/// The longest reason code kept as it came: codes are metric labels.
pub const MAX_REASON_CODE_LEN: usize = 64;

fn is_plain_label(code: &str) -> bool {
    (1..=MAX_REASON_CODE_LEN).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_/.-".contains(&b))
}

/// A platform's reason, split into a short code (a metric label: bounded,
/// from the platform's own vocabulary) and its explanation (status records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: String,
    pub message: String,
}

impl Reason {
    /// A code that is not a plain label (a platform put free text, or
    /// nothing, where its code belongs) becomes `unrecognised`, and the
    /// text moves into the message: the code is a metric label.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let (code, message) = (code.into(), message.into());
        if is_plain_label(&code) {
            return Reason { code, message };
        }
        let shown: String = code.chars().take(MAX_REASON_CODE_LEN).collect();
        Reason {
            code: "unrecognised".into(),
            message: format!("code {shown:?}: {message}"),
        }
    }

    /// For a status record: code and explanation, bounded in size.
    pub fn describe(&self) -> String {
        let mut s = if self.message.is_empty() {
            self.code.clone()
        } else {
            format!("{}: {}", self.code, self.message)
        };
        if s.len() > 500 {
            let cut = (0..=500)
                .rev()
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(0);
            s.truncate(cut);
        }
        s
    }
}

/// What one row of a request that the platform answered row by row became.
#[derive(Debug, Clone, PartialEq)]
pub enum RowResult {
    Delivered,
    /// The platform already has it (a resend after a crash): delivered.
    AlreadyDelivered,
    Rejected(Reason),
    /// Too old for the platform.
    Expired(Reason),
    /// Try this row again later (e.g. Google's TOO_RECENT_EVENT).
    Retry(Reason),
}

/// How the platform answered one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Every event was accepted.
    Accepted { request_id: Option<String> },
    /// The platform answered per row (Google's partial failure);
    /// `rows[i]` is the i-th event of the request.
    Rows {
        request_id: Option<String>,
        rows: Vec<RowResult>,
    },
    /// The whole request was refused for its content (Meta and TikTok refuse
    /// a batch for one bad event). `index` is the event the error names, if
    /// it names one; `expired` when the reason is the event's age.
    Rejected {
        request_id: Option<String>,
        reason: Reason,
        index: Option<usize>,
        expired: bool,
    },
    /// Slow down; not a failure of the events.
    Throttled {
        reason: Reason,
        retry_after: Option<Duration>,
    },
    /// Try again later (5xx, timeouts, connection errors, credentials the
    /// platform refused): counts as a failed attempt.
    Transient {
        reason: Reason,
        retry_after: Option<Duration>,
    },
}

impl Answer {
    /// The requests_total outcome label.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Accepted { .. } => "accepted",
            Answer::Rows { rows, .. } => {
                if rows
                    .iter()
                    .all(|r| matches!(r, RowResult::Delivered | RowResult::AlreadyDelivered))
                {
                    "accepted"
                } else {
                    "partial"
                }
            }
            Answer::Rejected { .. } => "rejected",
            Answer::Throttled { .. } => "throttled",
            Answer::Transient { .. } => "transient",
        }
    }
}

/// Why a conversion cannot be sent on this platform at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSendable {
    pub reason: &'static str,
    pub detail: String,
}

impl NotSendable {
    pub fn not_configured(detail: impl Into<String>) -> Self {
        NotSendable {
            reason: PLATFORM_NOT_CONFIGURED,
            detail: detail.into(),
        }
    }
}

/// The adapter of the platform this dispatcher serves.
pub enum Adapter {
    Meta(meta::MetaAdapter),
    GoogleAds(google_ads::GoogleAdsAdapter),
    Tiktok(tiktok::TiktokAdapter),
}

impl Adapter {
    pub fn new(config: &DispatcherSections, http: reqwest::Client) -> Self {
        match config.platform() {
            Platform::Meta => Adapter::Meta(meta::MetaAdapter::new(&config.meta, http)),
            Platform::GoogleAds => {
                Adapter::GoogleAds(google_ads::GoogleAdsAdapter::new(&config.google_ads, http))
            }
            Platform::Tiktok => Adapter::Tiktok(tiktok::TiktokAdapter::new(&config.tiktok, http)),
        }
    }

    /// The request row for `event`, built once and reused by every attempt.
    pub fn row(&self, account: &Account, event: &ConversionEnriched) -> Result<Value, NotSendable> {
        match (self, &account.credentials) {
            (Adapter::Meta(a), Credentials::Meta(c)) => Ok(a.row(c, event)),
            (Adapter::GoogleAds(a), Credentials::GoogleAds(c)) => a.row(c, event),
            (Adapter::Tiktok(a), Credentials::Tiktok(_)) => Ok(a.row(event)),
            _ => Err(NotSendable::not_configured(
                "the account is for another platform",
            )),
        }
    }

    /// What, besides the account, events must share to go in one request
    /// (TikTok's event_source is per request).
    pub fn group(&self, event: &ConversionEnriched) -> &'static str {
        match self {
            Adapter::Tiktok(_) => tiktok::event_source(event.action_source.as_deref()),
            _ => "",
        }
    }

    /// Sends `rows` (all of `group`) as one request of `account`.
    pub async fn send(&self, account: &Account, group: &str, rows: &[&Value]) -> Answer {
        match (self, &account.credentials) {
            (Adapter::Meta(a), Credentials::Meta(c)) => a.send(c, rows).await,
            (Adapter::GoogleAds(a), Credentials::GoogleAds(c)) => a.send(c, rows).await,
            (Adapter::Tiktok(a), Credentials::Tiktok(c)) => a.send(c, group, rows).await,
            _ => Answer::Transient {
                reason: Reason::new("misconfigured", "the account is for another platform"),
                retry_after: None,
            },
        }
    }
}

/// What came back from a request, read to the end.
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub retry_after: Option<Duration>,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

/// The most of an answer a dispatcher reads: the platforms' answers are a
/// few kilobytes (a Google partial failure for 2,000 rows, tens of them);
/// past this it is not a platform speaking.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Sends a request and reads its whole answer; a transport failure is
/// already classified.
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, Answer> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_capped(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| match e {
            CappedError::Transport(e) => transport_error(e),
            CappedError::TooLarge => Answer::Transient {
                reason: Reason::new(
                    "answer_too_large",
                    format!("the answer exceeds {MAX_ANSWER_BYTES} bytes: not the platform's"),
                ),
                retry_after: None,
            },
        })?;
    Ok(Reply {
        status,
        retry_after: retry_after(&headers),
        headers,
        body,
    })
}

pub enum CappedError {
    Transport(reqwest::Error),
    TooLarge,
}

/// The body of `response`, refused once it passes `limit` bytes (read a
/// chunk at a time, so it never holds more than the limit and a chunk).
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, CappedError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(CappedError::TooLarge);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(CappedError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(CappedError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// An order's items as the platform's content objects, with its own names
/// for the id and the unit price.
pub fn contents(order: &postback_core::model::Order, id_key: &str, price_key: &str) -> Vec<Value> {
    order
        .items
        .iter()
        .filter_map(|item| {
            let id = item.id.as_ref()?;
            let mut o = serde_json::Map::new();
            o.insert(id_key.into(), Value::String(id.clone()));
            if let Some(q) = item.quantity {
                o.insert("quantity".into(), Value::from(q));
            }
            if let Some(p) = item.price.as_deref().and_then(decimal_number) {
                o.insert(price_key.into(), p);
            }
            Some(Value::Object(o))
        })
        .collect()
}

/// Retry-After, in either of its forms (RFC 9110): delay-seconds or an
/// HTTP-date (a date past is no wait).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A transport failure: never the platform's verdict on the events.
pub fn transport_error(e: reqwest::Error) -> Answer {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() {
        "bad_response"
    } else {
        "transport"
    };
    // Without the URL: Meta's carries nothing secret, but keep one rule.
    Answer::Transient {
        reason: Reason::new(code, e.without_url().to_string()),
        retry_after: None,
    }
}

/// An answer that is not in the platform's shape (a proxy's error page, say).
pub fn unexpected(status: reqwest::StatusCode, retry: Option<Duration>) -> Answer {
    let reason = Reason::new(
        format!("http_{}", status.as_u16()),
        "answer not in the platform's format",
    );
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Answer::Throttled {
            reason,
            retry_after: retry,
        }
    } else {
        Answer::Transient {
            reason,
            retry_after: retry,
        }
    }
}

/// The index after `prefix` in a field path (`data[3].user_data` with
/// `data[`, `data.3.user` with `data.`), if the platform's error names one.
pub fn index_after(text: &str, prefix: &str) -> Option<usize> {
    let at = text.find(prefix)? + prefix.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Decimal text as the JSON number the platforms want.
pub fn decimal_number(text: &str) -> Option<Value> {
    let d: rust_decimal::Decimal = text.trim().parse().ok()?;
    let f: f64 = rust_decimal::prelude::ToPrimitive::to_f64(&d)?;
    serde_json::Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_read_from_field_paths() {
        assert_eq!(
            index_after("(#100) param data[17].user_data.em must", "data["),
            Some(17)
        );
        assert_eq!(index_after("data.3.user.email: Must be", "data."), Some(3));
        assert_eq!(index_after("Batch.0.properties", "Batch."), Some(0));
        assert_eq!(index_after("no index here", "data["), None);
    }

    #[test]
    fn reasons_are_bounded() {
        let r = Reason::new("100", "é".repeat(400));
        assert!(r.describe().len() <= 500);
        assert!(r.describe().starts_with("100: "));
    }

    /// Codes are metric labels: free text a platform puts where its code
    /// belongs must not become one (a lesson of the classify fuzz targets).
    #[test]
    fn a_code_that_is_not_a_label_is_unrecognised() {
        for code in ["", "PERMISSION DENIED", "x\n1", &"A".repeat(65), "é"] {
            let r = Reason::new(code, "why");
            assert_eq!(r.code, "unrecognised", "{code:?}");
            assert!(r.message.ends_with(": why"), "{r:?}");
        }
        for code in [
            "100/2804003",
            "UNAUTHENTICATED",
            "http_503",
            "quota.exceeded-1",
        ] {
            assert_eq!(Reason::new(code, "why").code, code);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let wait = with(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn decimals_become_numbers() {
        assert_eq!(decimal_number("129.90"), Some(serde_json::json!(129.9)));
        assert_eq!(decimal_number("x"), None);
    }
}
