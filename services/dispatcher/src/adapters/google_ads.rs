//! Google Ads click conversions:
//! `POST {base}/{version}/customers/{customer_id}:uploadClickConversions`.
//!
//! Always with partialFailure: the answer is HTTP 200 with `{}` in `results`
//! for every failed row and a `partialFailureError` naming each failed row
//! by `conversions[N]`. Request-level errors (auth, quota, a malformed
//! request) fail the call with a google.rpc.Status.

use std::time::Duration;

use postback_core::eligibility::NO_CLICK_ID;
use postback_core::model::{hex, ConversionEnriched};
use postback_core::Platform;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::google_oauth::TokenCache;
use super::{decimal_number, exchange, unexpected, Answer, NotSendable, Reason, RowResult};
use crate::config::{GoogleAdsAccount, GoogleAdsConfig};

/// Row errors that mean Google already has the conversion (a resend).
const ALREADY_THERE: &[&str] = &["ORDER_ID_ALREADY_IN_USE", "CLICK_CONVERSION_ALREADY_EXISTS"];
/// Row errors worth another try later.
const TRY_LATER: &[&str] = &["TOO_RECENT_EVENT", "TOO_RECENT_CONVERSION_ACTION"];
const EXPIRED: &[&str] = &["EXPIRED_EVENT"];

pub struct GoogleAdsAdapter {
    base_url: String,
    version: String,
    http: reqwest::Client,
    tokens: TokenCache,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    conversions: &'a [&'a Value],
    partial_failure: bool,
}

impl GoogleAdsAdapter {
    pub fn new(config: &GoogleAdsConfig, http: reqwest::Client) -> Self {
        GoogleAdsAdapter {
            base_url: config.base_url.clone(),
            version: config.api_version.clone(),
            tokens: TokenCache::new(
                config.token_url.clone(),
                Duration::from_secs(config.token_refresh_margin_secs),
                http.clone(),
            ),
            http,
        }
    }

    pub fn row(
        &self,
        account: &GoogleAdsAccount,
        e: &ConversionEnriched,
    ) -> Result<Value, NotSendable> {
        let platform = Platform::GoogleAds.as_str();
        let Some(action) = account.conversion_actions.get(&e.event_name) else {
            return Err(NotSendable::not_configured(format!(
                "no Google Ads conversion action for event {}",
                e.event_name
            )));
        };
        let decision = e.decisions.iter().find(|d| d.platform == platform);
        let send_user_data = decision.is_none_or(|d| d.send_user_data);
        let send_click_ids = decision.is_none_or(|d| d.send_click_ids);

        let mut c = Map::new();
        if send_click_ids {
            if let Some(ids) = &e.click_ids {
                // One click id only; gbraid and wbraid never together.
                if let Some(v) = &ids.gclid {
                    c.insert("gclid".into(), json!(v));
                } else if let Some(v) = &ids.gbraid {
                    c.insert("gbraid".into(), json!(v));
                } else if let Some(v) = &ids.wbraid {
                    c.insert("wbraid".into(), json!(v));
                }
            }
        }
        let mut identifiers = Vec::new();
        if send_user_data {
            if let Some(ids) = e.identifiers.iter().find(|i| i.platform == platform) {
                if let Some(d) = &ids.email {
                    identifiers.push(
                        json!({"hashedEmail": hex(d), "userIdentifierSource": "FIRST_PARTY"}),
                    );
                }
                if let Some(d) = &ids.phone {
                    identifiers.push(
                        json!({"hashedPhoneNumber": hex(d), "userIdentifierSource": "FIRST_PARTY"}),
                    );
                }
            }
        }
        if c.is_empty() && identifiers.is_empty() {
            return Err(NotSendable {
                reason: NO_CLICK_ID,
                detail: "neither a click id nor user identifiers to send".into(),
            });
        }
        if !identifiers.is_empty() {
            c.insert("userIdentifiers".into(), Value::Array(identifiers));
        }
        c.insert(
            "conversionAction".into(),
            json!(format!(
                "customers/{}/conversionActions/{action}",
                account.customer_id
            )),
        );
        c.insert(
            "conversionDateTime".into(),
            json!(conversion_date_time(e.event_time)),
        );
        if let Some(order) = &e.order {
            if let Some(v) = order.value.as_deref().and_then(decimal_number) {
                c.insert("conversionValue".into(), v);
            }
            if let Some(cur) = &order.currency {
                c.insert("currencyCode".into(), json!(cur.to_ascii_uppercase()));
            }
            if let Some(id) = &order.order_id {
                c.insert("orderId".into(), json!(id));
            }
        }
        // The user's stated choice; DENIED when we withheld identifiers;
        // nothing (UNSPECIFIED) rather than a GRANTED nobody gave.
        let stated = e
            .consent
            .as_ref()
            .and_then(|c| c.ad_user_data.as_deref())
            .map(str::to_ascii_lowercase);
        let ad_user_data = match stated.as_deref() {
            Some("granted") if send_user_data => Some("GRANTED"),
            Some("denied") => Some("DENIED"),
            _ if !send_user_data => Some("DENIED"),
            _ => None,
        };
        if let Some(v) = ad_user_data {
            c.insert("consent".into(), json!({ "adUserData": v }));
        }
        Ok(Value::Object(c))
    }

    pub async fn send(&self, account: &GoogleAdsAccount, rows: &[&Value]) -> Answer {
        // A refused token is refreshed and the request sent once more; a
        // second refusal is the account's problem and counts as a failure.
        for fresh_token in [false, true] {
            if fresh_token {
                self.tokens.invalidate(account).await;
            }
            let token = match self.tokens.token(account).await {
                Ok(t) => t,
                Err(e) => {
                    return Answer::Transient {
                        reason: e.0,
                        retry_after: None,
                    }
                }
            };
            let answer = self.send_once(account, &token, rows).await;
            match answer {
                Answer::Transient { ref reason, .. }
                    if reason.code.starts_with("UNAUTHENTICATED") && !fresh_token =>
                {
                    continue
                }
                other => return other,
            }
        }
        Answer::Transient {
            reason: Reason::new("UNAUTHENTICATED", "access token refused twice"),
            retry_after: None,
        }
    }

    async fn send_once(&self, account: &GoogleAdsAccount, token: &str, rows: &[&Value]) -> Answer {
        let url = format!(
            "{}/{}/customers/{}:uploadClickConversions",
            self.base_url, self.version, account.customer_id
        );
        let mut request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .header("developer-token", &account.developer_token)
            .json(&Body {
                conversions: rows,
                partial_failure: true,
            });
        if let Some(login) = &account.login_customer_id {
            request = request.header("login-customer-id", login);
        }
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(failed) => return failed,
        };
        let request_id = reply
            .headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        classify(
            reply.status,
            reply.retry_after,
            request_id,
            rows.len(),
            &reply.body,
        )
    }
}

/// `yyyy-mm-dd hh:mm:ss+00:00` in UTC, from Unix milliseconds.
pub fn conversion_date_time(event_time_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(event_time_ms)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S+00:00")
        .to_string()
}

/// The errors of a GoogleAdsFailure: (code, message, row index).
fn failures(details: Option<&Value>) -> Vec<(String, String, Option<usize>)> {
    let mut out = Vec::new();
    let Some(details) = details.and_then(Value::as_array) else {
        return out;
    };
    for d in details {
        for e in d
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let code = e
                .get("errorCode")
                .and_then(Value::as_object)
                .and_then(|m| m.values().next())
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_owned();
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let index = e
                .pointer("/location/fieldPathElements")
                .and_then(Value::as_array)
                .and_then(|path| {
                    path.iter()
                        .find(|p| p.get("fieldName").and_then(Value::as_str) == Some("conversions"))
                })
                .and_then(|p| p.get("index"))
                .and_then(Value::as_u64)
                .map(|i| i as usize);
            out.push((code, message, index));
        }
    }
    out
}

fn row_result(code: &str, message: &str) -> RowResult {
    let reason = Reason::new(code, message);
    if ALREADY_THERE.contains(&code) {
        RowResult::AlreadyDelivered
    } else if EXPIRED.contains(&code) {
        RowResult::Expired(reason)
    } else if TRY_LATER.contains(&code) {
        RowResult::Retry(reason)
    } else {
        RowResult::Rejected(reason)
    }
}

/// What Google's answer means for a request of `sent` rows.
pub fn classify(
    status: reqwest::StatusCode,
    retry: Option<Duration>,
    request_id: Option<String>,
    sent: usize,
    body: &[u8],
) -> Answer {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return unexpected(status, retry);
    };
    if status.is_success() {
        let mut rows = vec![RowResult::Delivered; sent];
        let Some(partial) = value.get("partialFailureError") else {
            return Answer::Accepted { request_id };
        };
        let errors = failures(partial.get("details"));
        let mut named = vec![false; sent];
        for (code, message, index) in &errors {
            if let Some(i) = index.filter(|i| *i < sent) {
                if !named[i] {
                    rows[i] = row_result(code, message);
                    named[i] = true;
                }
            }
        }
        // A failed row Google did not locate still shows as `{}` in results.
        let message = partial
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let results = value
            .get("results")
            .and_then(Value::as_array)
            .filter(|r| r.len() == sent);
        match results {
            Some(results) => {
                for (i, r) in results.iter().enumerate() {
                    if !named[i] && r.as_object().is_some_and(Map::is_empty) {
                        rows[i] = RowResult::Rejected(Reason::new("UNLOCATED_FAILURE", message));
                    }
                }
            }
            // Failures that neither errors nor results place: send the rows
            // not named again; those that did land come back as
            // already uploaded (delivered).
            None if errors.iter().any(|(_, _, i)| i.is_none()) => {
                for (i, row) in rows.iter_mut().enumerate() {
                    if !named[i] {
                        *row = RowResult::Retry(Reason::new("UNLOCATED_FAILURE", message));
                    }
                }
            }
            None => {}
        }
        return Answer::Rows { request_id, rows };
    }
    let error = value.get("error");
    let grpc = error
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let errors = failures(error.and_then(|e| e.get("details")));
    let first = errors.first();
    // An error without a gRPC status (a proxy's or a bare HTTP error) is
    // named by its HTTP status.
    let grpc = match grpc {
        "" => format!("http_{}", status.as_u16()),
        grpc => grpc.to_owned(),
    };
    let code = first
        .map(|(c, _, _)| format!("{grpc}/{c}"))
        .unwrap_or_else(|| grpc.clone());
    let detail = first.map(|(_, m, _)| m.as_str()).unwrap_or(message);
    let reason = Reason::new(code, detail);
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || grpc == "RESOURCE_EXHAUSTED" {
        return Answer::Throttled {
            reason,
            retry_after: retry.or_else(|| retry_in_message(detail)),
        };
    }
    // A request-level error that places itself on a row is that event's;
    // anything else (auth, permission, customer id, 5xx) is the account's
    // or Google's, retried and failed for replay if it stays.
    match first.and_then(|(_, _, i)| *i) {
        Some(index)
            if status.is_client_error()
                && status != reqwest::StatusCode::UNAUTHORIZED
                && status != reqwest::StatusCode::FORBIDDEN =>
        {
            Answer::Rejected {
                request_id,
                index: Some(index),
                expired: false,
                reason,
            }
        }
        _ => Answer::Transient {
            reason,
            retry_after: retry,
        },
    }
}

/// Google's quota errors say "Retry in N seconds".
fn retry_in_message(message: &str) -> Option<Duration> {
    let at = message.find("Retry in ")? + "Retry in ".len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn account() -> GoogleAdsAccount {
        GoogleAdsAccount {
            customer_id: "123".into(),
            login_customer_id: None,
            developer_token: "d".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            refresh_token: "r".into(),
            conversion_actions: [("Purchase".to_string(), "777".to_string())].into(),
            quota_per_sec: None,
        }
    }

    fn adapter() -> GoogleAdsAdapter {
        GoogleAdsAdapter::new(&GoogleAdsConfig::default(), reqwest::Client::new())
    }

    fn conversion() -> ConversionEnriched {
        use postback_core::model::{ClickIds, Order, PlatformIdentifiers, Source};
        ConversionEnriched {
            tenant: "shop".into(),
            event_id: "o-1".into(),
            event_name: "Purchase".into(),
            event_time: 1_732_270_000_123,
            received_at: 0,
            source: Source::Server,
            action_source: Some("website".into()),
            order: Some(Order {
                order_id: Some("1001".into()),
                value: Some("10.50".into()),
                currency: Some("USD".into()),
                items: vec![],
            }),
            click_ids: Some(ClickIds {
                gbraid: Some("gbraid-123456".into()),
                wbraid: Some("wbraid-123456".into()),
                ..Default::default()
            }),
            page: None,
            client: None,
            consent: None,
            identifiers: vec![PlatformIdentifiers {
                platform: "google_ads".into(),
                email: Some(vec![0x11; 32]),
                ..Default::default()
            }],
            decisions: vec![],
            pixels: Default::default(),
        }
    }

    /// Found by the classify_google_ads fuzz target: an error body without
    /// a gRPC status gave an empty reason code (a metric label).
    #[test]
    fn an_error_without_a_grpc_status_is_named_by_its_http_status() {
        let body =
            br#"{"error":{"code":401,"message":"Request had invalid authentication credentials"}}"#;
        let a = classify(StatusCode::UNAUTHORIZED, None, None, 1, body);
        let Answer::Transient { reason, .. } = a else {
            panic!("{a:?}")
        };
        assert_eq!(reason.code, "http_401");
    }

    #[test]
    fn a_row_names_the_action_one_click_id_and_the_hashes() {
        let row = adapter().row(&account(), &conversion()).unwrap();
        assert_eq!(
            row["conversionAction"],
            "customers/123/conversionActions/777"
        );
        assert_eq!(row["gbraid"], "gbraid-123456");
        assert!(
            row.get("wbraid").is_none(),
            "never gbraid and wbraid together"
        );
        assert_eq!(row["conversionDateTime"], "2024-11-22 10:06:40+00:00");
        assert_eq!(row["userIdentifiers"][0]["hashedEmail"], "11".repeat(32));
        assert!(
            row.get("consent").is_none(),
            "no consent stated, none claimed"
        );
        assert_eq!(row["conversionValue"], json!(10.5));
        let mut stated = conversion();
        stated.consent = Some(postback_core::model::Consent {
            ad_user_data: Some("granted".into()),
            ..Default::default()
        });
        let row = adapter().row(&account(), &stated).unwrap();
        assert_eq!(row["consent"]["adUserData"], "GRANTED");
    }

    #[test]
    fn an_event_without_a_conversion_action_is_not_sendable() {
        let mut c = conversion();
        c.event_name = "AddToCart".into();
        let e = adapter().row(&account(), &c).unwrap_err();
        assert_eq!(e.reason, "platform_not_configured");
    }

    #[test]
    fn date_times_are_utc_with_offset() {
        assert_eq!(
            conversion_date_time(1_732_270_000_123),
            "2024-11-22 10:06:40+00:00"
        );
    }

    #[test]
    fn partial_failures_map_to_their_rows() {
        let body = br#"{
          "results": [{"gclid":"a"}, {}, {}, {}],
          "partialFailureError": {"code": 3, "message": "x", "details": [{
            "@type": "type.googleapis.com/google.ads.googleads.v23.errors.GoogleAdsFailure",
            "errors": [
              {"errorCode": {"conversionUploadError": "UNPARSEABLE_GCLID"}, "message": "bad gclid",
               "location": {"fieldPathElements": [{"fieldName": "conversions", "index": 1}, {"fieldName": "gclid"}]}},
              {"errorCode": {"conversionUploadError": "ORDER_ID_ALREADY_IN_USE"}, "message": "dup",
               "location": {"fieldPathElements": [{"fieldName": "conversions", "index": 2}]}},
              {"errorCode": {"conversionUploadError": "EXPIRED_EVENT"}, "message": "old",
               "location": {"fieldPathElements": [{"fieldName": "conversions", "index": 3}]}}
            ]}]}}"#;
        let a = classify(StatusCode::OK, None, Some("rid".into()), 4, body);
        let Answer::Rows { rows, request_id } = a else {
            panic!("{a:?}")
        };
        assert_eq!(request_id.as_deref(), Some("rid"));
        assert_eq!(rows[0], RowResult::Delivered);
        assert_eq!(
            rows[1],
            RowResult::Rejected(Reason::new("UNPARSEABLE_GCLID", "bad gclid"))
        );
        assert_eq!(rows[2], RowResult::AlreadyDelivered);
        assert!(matches!(rows[3], RowResult::Expired(_)));
    }

    #[test]
    fn quota_and_auth_errors() {
        let quota = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"m","details":[{"errors":[{"errorCode":{"quotaError":"RESOURCE_EXHAUSTED"},"message":"Too many requests for customer 1. Retry in 7 seconds."}]}]}}"#;
        let a = classify(StatusCode::TOO_MANY_REQUESTS, None, None, 1, quota);
        assert_eq!(
            a,
            Answer::Throttled {
                reason: Reason::new(
                    "RESOURCE_EXHAUSTED/RESOURCE_EXHAUSTED",
                    "Too many requests for customer 1. Retry in 7 seconds."
                ),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let auth = br#"{"error":{"code":401,"status":"UNAUTHENTICATED","message":"m","details":[{"errors":[{"errorCode":{"authenticationError":"OAUTH_TOKEN_EXPIRED"},"message":"expired"}]}]}}"#;
        let a = classify(StatusCode::UNAUTHORIZED, None, None, 1, auth);
        assert!(
            matches!(&a, Answer::Transient { reason, .. } if reason.code == "UNAUTHENTICATED/OAUTH_TOKEN_EXPIRED"),
            "{a:?}"
        );
    }
}
