//! Meta Conversions API: `POST {base}/{version}/{pixel_id}/events`.
//!
//! One invalid event fails the whole request (HTTP 400, Graph API error
//! object); throttling is a Graph error code (4, 17, 32, 341, 613), whatever
//! the HTTP status. The token travels in the JSON body, never in the URL, so
//! no proxy or access log ever holds it.

use postback_core::model::{hex, ConversionEnriched, PlatformIdentifiers};
use postback_core::Platform;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{contents, decimal_number, exchange, index_after, unexpected, Answer, Reason};
use crate::config::{MetaAccount, MetaConfig};

/// Graph API error codes that mean "slow down".
const THROTTLE_CODES: &[i64] = &[4, 17, 32, 341, 613, 80004];
/// Graph API codes for a temporary problem on Meta's side.
const TRANSIENT_CODES: &[i64] = &[1, 2];
const INVALID_TOKEN: i64 = 190;
/// Codes about the account, its token or its permissions, never about one
/// event: retried (and failed for replay if they stay), never bisected
/// into "every event rejected".
const ACCOUNT_CODES: &[i64] = &[10, 102, 190, 803, 2500];
/// Code 100 subcodes about the request's target, not an event: 33 = the
/// pixel does not exist or the token may not send to it.
const ACCOUNT_SUBCODES: &[i64] = &[33];
const TOO_OLD_SUBCODE: i64 = 2_804_003;

pub struct MetaAdapter {
    base_url: String,
    version: String,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct Body<'a> {
    data: &'a [&'a Value],
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_event_code: Option<&'a str>,
}

impl MetaAdapter {
    pub fn new(config: &MetaConfig, http: reqwest::Client) -> Self {
        MetaAdapter {
            base_url: config.base_url.clone(),
            version: config.api_version.clone(),
            http,
        }
    }

    /// One server event, as the reference describes it.
    pub fn row(&self, _account: &MetaAccount, e: &ConversionEnriched) -> Value {
        let platform = Platform::Meta.as_str();
        let decision = e.decisions.iter().find(|d| d.platform == platform);
        let send_user_data = decision.is_none_or(|d| d.send_user_data);
        let send_click_ids = decision.is_none_or(|d| d.send_click_ids);
        let ldu = decision.is_some_and(|d| d.limited_data_use);
        let page_url = e.page.as_ref().and_then(|p| p.url.clone());
        let client = e.client.as_ref();

        let mut user = Map::new();
        if send_user_data {
            if let Some(ids) = e.identifiers.iter().find(|i| i.platform == platform) {
                hashed_user_data(ids, &mut user);
            }
            if let Some(ip) = client.and_then(|c| c.ip.as_ref()) {
                user.insert("client_ip_address".into(), json!(ip));
            }
        }
        if let Some(ua) = client.and_then(|c| c.user_agent.as_ref()) {
            user.insert("client_user_agent".into(), json!(ua));
        }
        if send_click_ids {
            if let Some(c) = &e.click_ids {
                if let Some(fbc) = &c.fbc {
                    user.insert("fbc".into(), json!(fbc));
                }
                if let Some(fbp) = &c.fbp {
                    user.insert("fbp".into(), json!(fbp));
                }
            }
        }

        let action_source = e.action_source.clone().unwrap_or_else(|| {
            if page_url.is_some() {
                "website".into()
            } else {
                "system_generated".into()
            }
        });
        let mut event = Map::new();
        event.insert("event_name".into(), json!(e.event_name));
        event.insert("event_time".into(), json!(e.event_time.div_euclid(1000)));
        event.insert("event_id".into(), json!(e.event_id));
        event.insert("action_source".into(), json!(action_source));
        if let Some(url) = page_url {
            event.insert("event_source_url".into(), json!(url));
        }
        event.insert("user_data".into(), Value::Object(user));
        if let Some(custom) = custom_data(e) {
            event.insert("custom_data".into(), Value::Object(custom));
        }
        if ldu {
            // LDU with country/state 0: Meta geolocates the event itself.
            event.insert("data_processing_options".into(), json!(["LDU"]));
            event.insert("data_processing_options_country".into(), json!(0));
            event.insert("data_processing_options_state".into(), json!(0));
        }
        Value::Object(event)
    }

    pub async fn send(&self, account: &MetaAccount, rows: &[&Value]) -> Answer {
        let url = format!(
            "{}/{}/{}/events",
            self.base_url, self.version, account.pixel_id
        );
        let body = Body {
            data: rows,
            access_token: &account.access_token,
            test_event_code: account.test_event_code.as_deref(),
        };
        match exchange(self.http.post(&url).json(&body)).await {
            Ok(reply) => classify(reply.status, reply.retry_after, &reply.body),
            Err(failed) => failed,
        }
    }
}

fn hashed_user_data(ids: &PlatformIdentifiers, user: &mut Map<String, Value>) {
    for (key, digest) in [
        ("em", &ids.email),
        ("ph", &ids.phone),
        ("fn", &ids.first_name),
        ("ln", &ids.last_name),
        ("db", &ids.date_of_birth),
        ("ge", &ids.gender),
        ("ct", &ids.city),
        ("st", &ids.region),
        ("zp", &ids.postal_code),
        ("country", &ids.country),
        ("external_id", &ids.external_id),
    ] {
        if let Some(d) = digest {
            user.insert(key.into(), json!([hex(d)]));
        }
    }
}

fn custom_data(e: &ConversionEnriched) -> Option<Map<String, Value>> {
    let order = e.order.as_ref()?;
    let mut c = Map::new();
    if let Some(v) = order.value.as_deref().and_then(decimal_number) {
        c.insert("value".into(), v);
    }
    if let Some(cur) = &order.currency {
        c.insert("currency".into(), json!(cur.to_ascii_uppercase()));
    }
    if let Some(id) = &order.order_id {
        c.insert("order_id".into(), json!(id));
    }
    let contents = contents(order, "id", "item_price");
    if !contents.is_empty() {
        let ids: Vec<Value> = contents.iter().map(|c| c["id"].clone()).collect();
        c.insert("content_ids".into(), Value::Array(ids));
        c.insert("content_type".into(), json!("product"));
        let items: i64 = order.items.iter().map(|i| i.quantity.unwrap_or(1)).sum();
        c.insert("num_items".into(), json!(items));
        c.insert("contents".into(), Value::Array(contents));
    }
    (!c.is_empty()).then_some(c)
}

/// What Meta's answer means.
pub fn classify(
    status: reqwest::StatusCode,
    retry: Option<std::time::Duration>,
    body: &[u8],
) -> Answer {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return unexpected(status, retry);
    };
    if status.is_success() {
        if value.get("events_received").is_some() {
            return Answer::Accepted {
                request_id: value
                    .get("fbtrace_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            };
        }
        return unexpected(status, retry);
    }
    let Some(error) = value.get("error") else {
        return unexpected(status, retry);
    };
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let subcode = error.get("error_subcode").and_then(Value::as_i64);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let title = error
        .get("error_user_title")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let request_id = error
        .get("fbtrace_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let code_label = match subcode {
        Some(s) => format!("{code}/{s}"),
        None => code.to_string(),
    };
    let explanation = if title.is_empty() || message.contains(title) {
        message.to_owned()
    } else {
        format!("{title}: {message}")
    };
    let reason = Reason::new(code_label, explanation);
    if THROTTLE_CODES.contains(&code) || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Answer::Throttled {
            reason,
            retry_after: retry,
        };
    }
    let transient = error
        .get("is_transient")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let account_level = ACCOUNT_CODES.contains(&code)
        || (200..300).contains(&code)
        || subcode.is_some_and(|s| ACCOUNT_SUBCODES.contains(&s));
    if code == INVALID_TOKEN
        || account_level
        || transient
        || status.is_server_error()
        || TRANSIENT_CODES.contains(&code)
    {
        return Answer::Transient {
            reason,
            retry_after: retry,
        };
    }
    let user_msg = error
        .get("error_user_msg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let index = index_after(message, "data[").or_else(|| index_after(user_msg, "data["));
    Answer::Rejected {
        request_id,
        reason,
        index,
        expired: subcode == Some(TOO_OLD_SUBCODE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postback_core::model::{
        ClickIds, Client, Order, Page, PlatformDecision, PlatformIdentifiers, Source,
    };
    use reqwest::StatusCode;

    fn conversion(ldu: bool, send_user_data: bool) -> ConversionEnriched {
        ConversionEnriched {
            tenant: "shop".into(),
            event_id: "o-1".into(),
            event_name: "Purchase".into(),
            event_time: 1_750_000_000_123,
            received_at: 1_750_000_000_200,
            source: Source::Server,
            action_source: None,
            order: Some(Order {
                order_id: Some("1001".into()),
                value: Some("129.90".into()),
                currency: Some("eur".into()),
                items: vec![],
            }),
            click_ids: Some(ClickIds {
                fbc: Some("fb.1.1700000000000.IwAR".into()),
                gclid: Some("Cj0-gclid".into()),
                ..Default::default()
            }),
            page: Some(Page {
                url: Some("https://shop.example/thanks".into()),
                referrer: None,
            }),
            client: Some(Client {
                ip: Some("203.0.113.7".into()),
                user_agent: Some("Mozilla/5.0".into()),
                ..Default::default()
            }),
            consent: None,
            identifiers: vec![
                PlatformIdentifiers {
                    platform: "meta".into(),
                    email: Some(vec![0xab; 32]),
                    phone: Some(vec![0xcd; 32]),
                    ..Default::default()
                },
                PlatformIdentifiers {
                    platform: "tiktok".into(),
                    email: Some(vec![0x01; 32]),
                    ..Default::default()
                },
            ],
            decisions: vec![PlatformDecision {
                platform: "meta".into(),
                eligible: true,
                reason: None,
                send_user_data,
                send_click_ids: true,
                limited_data_use: ldu,
            }],
            pixels: Default::default(),
        }
    }

    fn adapter() -> MetaAdapter {
        MetaAdapter::new(&MetaConfig::default(), reqwest::Client::new())
    }

    fn account() -> MetaAccount {
        MetaAccount {
            pixel_id: "1".into(),
            access_token: "t".into(),
            test_event_code: Some("TEST1".into()),
            quota_per_sec: None,
        }
    }

    #[test]
    fn a_row_carries_meta_hashes_plain_visit_data_and_seconds() {
        let row = adapter().row(&account(), &conversion(false, true));
        assert_eq!(row["event_time"], 1_750_000_000);
        assert_eq!(row["action_source"], "website");
        assert_eq!(row["event_source_url"], "https://shop.example/thanks");
        assert_eq!(row["user_data"]["em"], json!(["ab".repeat(32)]));
        assert_eq!(row["user_data"]["ph"], json!(["cd".repeat(32)]));
        assert_eq!(row["user_data"]["client_ip_address"], "203.0.113.7");
        assert_eq!(row["user_data"]["fbc"], "fb.1.1700000000000.IwAR");
        assert_eq!(row["custom_data"]["currency"], "EUR");
        assert_eq!(row["custom_data"]["value"], json!(129.9));
        assert!(row.get("data_processing_options").is_none());
    }

    #[test]
    fn limited_data_use_and_withheld_user_data() {
        let row = adapter().row(&account(), &conversion(true, false));
        assert_eq!(row["data_processing_options"], json!(["LDU"]));
        assert_eq!(row["data_processing_options_country"], 0);
        assert_eq!(row["data_processing_options_state"], 0);
        let user = row["user_data"].as_object().unwrap();
        assert!(!user.contains_key("em") && !user.contains_key("client_ip_address"));
        assert_eq!(user["client_user_agent"], "Mozilla/5.0");
    }

    #[test]
    fn the_body_carries_the_token_and_test_code_not_the_url() {
        let row = adapter().row(&account(), &conversion(false, true));
        let rows = [&row];
        let body = serde_json::to_value(Body {
            data: &rows,
            access_token: "t",
            test_event_code: Some("TEST1"),
        })
        .unwrap();
        assert_eq!(body["test_event_code"], "TEST1");
        assert_eq!(body["access_token"], "t");
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn success_carries_the_trace_id() {
        let a = classify(
            StatusCode::OK,
            None,
            br#"{"events_received":2,"messages":[],"fbtrace_id":"AbC"}"#,
        );
        assert_eq!(
            a,
            Answer::Accepted {
                request_id: Some("AbC".into())
            }
        );
    }

    #[test]
    fn throttle_is_the_code_not_the_status() {
        let a = classify(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":{"message":"(#17) User request limit reached","code":17,"is_transient":true}}"#,
        );
        assert!(matches!(a, Answer::Throttled { .. }), "{a:?}");
    }

    #[test]
    fn a_bad_event_names_its_index_and_age_is_expiry() {
        let a = classify(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":{"message":"(#100) param data[7].user_data.em must be a SHA-256 hash","code":100,"fbtrace_id":"T"}}"#,
        );
        let Answer::Rejected {
            index,
            expired,
            reason,
            request_id,
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!((index, expired), (Some(7), false));
        assert_eq!(reason.code, "100");
        assert_eq!(request_id.as_deref(), Some("T"));
        let a = classify(
            StatusCode::BAD_REQUEST,
            None,
            br#"{"error":{"message":"Invalid parameter","code":100,"error_subcode":2804003,"error_user_msg":"The parameter data[0].event_time"}}"#,
        );
        assert!(matches!(
            a,
            Answer::Rejected {
                expired: true,
                index: Some(0),
                ..
            }
        ));
    }

    #[test]
    fn account_problems_are_not_blamed_on_the_events() {
        for body in [
            &br#"{"error":{"code":100,"error_subcode":33,"message":"Unsupported post request. Object with ID '1' does not exist"}}"#[..],
            br#"{"error":{"code":200,"message":"Permissions error"}}"#,
            br#"{"error":{"code":10,"message":"Application does not have permission"}}"#,
        ] {
            let a = classify(StatusCode::BAD_REQUEST, None, body);
            assert!(matches!(a, Answer::Transient { .. }), "{a:?}");
        }
    }

    #[test]
    fn outages_and_bad_tokens_are_transient() {
        for (status, body) in [
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &br#"{"error":{"code":2,"message":"(#2) Service temporarily unavailable"}}"#[..],
            ),
            (
                StatusCode::UNAUTHORIZED,
                br#"{"error":{"code":190,"message":"Invalid OAuth access token"}}"#,
            ),
            (StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"),
        ] {
            let a = classify(status, None, body);
            assert!(matches!(a, Answer::Transient { .. }), "{a:?}");
        }
    }
}
