//! TikTok Events API 2.0: `POST {base}/open_api/v1.3/event/track/`.
//!
//! TikTok answers HTTP 200 with a code in the body for everything it
//! understood: 0 OK, 40002 invalid parameter (the message names the row,
//! `data.3.user.email` or `Batch.3...`), 40100 too many requests, 40001 no
//! permission. One bad row fails the batch. `event_source` is per request,
//! so events are batched per source as well as per account.

use postback_core::model::{hex, ConversionEnriched};
use postback_core::Platform;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{contents, decimal_number, exchange, index_after, unexpected, Answer, Reason};
use crate::config::{TiktokAccount, TiktokConfig};

const OK: i64 = 0;
const NO_PERMISSION: i64 = 40001;
const TOO_MANY_REQUESTS: i64 = 40100;
const INVALID_PARAMETER: i64 = 40002;

fn names_an_event(message: &str) -> bool {
    message.starts_with("data") || message.starts_with("Batch") || message.contains(" data.")
}

pub struct TiktokAdapter {
    url: String,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct Body<'a> {
    event_source: &'a str,
    event_source_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_event_code: Option<&'a str>,
    data: &'a [&'a Value],
}

/// TikTok's event_source for an action_source.
pub fn event_source(action_source: Option<&str>) -> &'static str {
    match action_source {
        Some("app") => "app",
        Some("physical_store") => "offline",
        Some("website") | None => "web",
        Some(_) => "crm",
    }
}

impl TiktokAdapter {
    pub fn new(config: &TiktokConfig, http: reqwest::Client) -> Self {
        TiktokAdapter {
            url: format!("{}/open_api/v1.3/event/track/", config.base_url),
            http,
        }
    }

    pub fn row(&self, e: &ConversionEnriched) -> Value {
        let platform = Platform::Tiktok.as_str();
        let decision = e.decisions.iter().find(|d| d.platform == platform);
        let send_user_data = decision.is_none_or(|d| d.send_user_data);
        let send_click_ids = decision.is_none_or(|d| d.send_click_ids);
        let ldu = decision.is_some_and(|d| d.limited_data_use);

        let mut user = Map::new();
        if send_user_data {
            if let Some(ids) = e.identifiers.iter().find(|i| i.platform == platform) {
                for (key, digest) in [
                    ("email", &ids.email),
                    ("phone", &ids.phone),
                    ("external_id", &ids.external_id),
                ] {
                    if let Some(d) = digest {
                        user.insert(key.into(), json!(hex(d)));
                    }
                }
            }
            if let Some(ip) = e.client.as_ref().and_then(|c| c.ip.as_ref()) {
                user.insert("ip".into(), json!(ip));
            }
        }
        if let Some(ua) = e.client.as_ref().and_then(|c| c.user_agent.as_ref()) {
            user.insert("user_agent".into(), json!(ua));
        }
        if send_click_ids {
            if let Some(c) = &e.click_ids {
                if let Some(v) = &c.ttclid {
                    user.insert("ttclid".into(), json!(v));
                }
                if let Some(v) = &c.ttp {
                    user.insert("ttp".into(), json!(v));
                }
            }
        }

        let mut event = Map::new();
        event.insert("event".into(), json!(e.event_name));
        event.insert("event_time".into(), json!(e.event_time.div_euclid(1000)));
        event.insert("event_id".into(), json!(e.event_id));
        event.insert("user".into(), Value::Object(user));
        if let Some(props) = properties(e) {
            event.insert("properties".into(), Value::Object(props));
        }
        if let Some(page) = &e.page {
            let mut p = Map::new();
            if let Some(url) = &page.url {
                p.insert("url".into(), json!(url));
            }
            if let Some(r) = &page.referrer {
                p.insert("referrer".into(), json!(r));
            }
            if !p.is_empty() {
                event.insert("page".into(), Value::Object(p));
            }
        }
        if ldu {
            event.insert("limited_data_use".into(), json!(true));
        }
        Value::Object(event)
    }

    pub async fn send(&self, account: &TiktokAccount, source: &str, rows: &[&Value]) -> Answer {
        let body = Body {
            event_source: source,
            event_source_id: &account.pixel_code,
            test_event_code: account.test_event_code.as_deref(),
            data: rows,
        };
        let request = self
            .http
            .post(&self.url)
            .header("Access-Token", &account.access_token)
            .json(&body);
        match exchange(request).await {
            Ok(reply) => classify(reply.status, reply.retry_after, &reply.body),
            Err(failed) => failed,
        }
    }
}

fn properties(e: &ConversionEnriched) -> Option<Map<String, Value>> {
    let order = e.order.as_ref()?;
    let mut p = Map::new();
    if let Some(v) = order.value.as_deref().and_then(decimal_number) {
        p.insert("value".into(), v);
    }
    if let Some(cur) = &order.currency {
        p.insert("currency".into(), json!(cur.to_ascii_uppercase()));
    }
    if let Some(id) = &order.order_id {
        p.insert("order_id".into(), json!(id));
    }
    let contents = contents(order, "content_id", "price");
    if !contents.is_empty() {
        p.insert("content_type".into(), json!("product"));
        p.insert("contents".into(), Value::Array(contents));
    }
    (!p.is_empty()).then_some(p)
}

/// What TikTok's answer means.
pub fn classify(
    status: reqwest::StatusCode,
    retry: Option<std::time::Duration>,
    body: &[u8],
) -> Answer {
    let value = serde_json::from_slice::<Value>(body).ok();
    let code = value
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_i64);
    let Some(code) = code else {
        return unexpected(status, retry);
    };
    let value = value.unwrap_or_default();
    let message = value
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let request_id = value
        .get("request_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let reason = Reason::new(code.to_string(), message);
    match code {
        OK if status.is_success() => Answer::Accepted { request_id },
        TOO_MANY_REQUESTS => Answer::Throttled {
            reason,
            retry_after: retry,
        },
        // A permission problem is the account's configuration, not the
        // event's: retried, and failed (replayable) if it stays.
        NO_PERMISSION => Answer::Transient {
            reason,
            retry_after: retry,
        },
        // An invalid parameter of an event names it (`data.3...`,
        // `Batch.3...`); one of the request (event_source_id, the token's
        // account) does not, and is the account's problem, not the events'.
        INVALID_PARAMETER if names_an_event(message) && !status.is_server_error() => {
            Answer::Rejected {
                request_id,
                index: index_after(message, "data.").or_else(|| index_after(message, "Batch.")),
                expired: false,
                reason,
            }
        }
        _ if status == reqwest::StatusCode::TOO_MANY_REQUESTS => Answer::Throttled {
            reason,
            retry_after: retry,
        },
        _ => Answer::Transient {
            reason,
            retry_after: retry,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn answers_are_read_from_the_body_code() {
        assert_eq!(
            classify(
                StatusCode::OK,
                None,
                br#"{"code":0,"message":"OK","request_id":"r1","data":{}}"#
            ),
            Answer::Accepted {
                request_id: Some("r1".into())
            }
        );
        assert!(matches!(
            classify(
                StatusCode::OK,
                None,
                br#"{"code":40100,"message":"Too many"}"#
            ),
            Answer::Throttled { .. }
        ));
        let a = classify(
            StatusCode::OK,
            None,
            br#"{"code":40002,"message":"data.12.user.email: Must be a SHA-256 hash","request_id":"r"}"#,
        );
        assert!(
            matches!(
                a,
                Answer::Rejected {
                    index: Some(12),
                    ..
                }
            ),
            "{a:?}"
        );
        assert!(matches!(
            classify(
                StatusCode::OK,
                None,
                br#"{"code":40002,"message":"event_source_id: Missing data for required field."}"#
            ),
            Answer::Transient { .. }
        ));
        assert!(matches!(
            classify(
                StatusCode::OK,
                None,
                br#"{"code":40105,"message":"Access token is invalid"}"#
            ),
            Answer::Transient { .. }
        ));
        assert!(matches!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                br#"{"code":50002,"message":"Service unavailable"}"#
            ),
            Answer::Transient { .. }
        ));
    }

    #[test]
    fn sources_map_from_action_source() {
        assert_eq!(event_source(Some("website")), "web");
        assert_eq!(event_source(None), "web");
        assert_eq!(event_source(Some("physical_store")), "offline");
        assert_eq!(event_source(Some("phone_call")), "crm");
    }
}
