//! TikTok Events API 2.0: `POST /open_api/v1.3/event/track/`.
//!
//! TikTok answers HTTP 200 with a code in the body for everything it
//! understood (0 OK, 40001 no permission, 40002 invalid parameter, 40100 too
//! many requests); one bad row fails the whole batch. Field paths read
//! `data.3.user.email`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use postback_core::Platform;
use serde_json::{json, Map, Value};

use crate::checks::{as_unix_secs, is_currency, is_ip, is_sha256_hex, kind, looks_hashed};
use crate::credentials::Access;
use crate::faults::{InjectedError, Verdict};
use crate::store::{DedupRule, Incoming};
use crate::AppState;

const PLATFORM: Platform = Platform::Tiktok;
pub const MAX_EVENTS: usize = 1000;
pub const OK: i64 = 0;
pub const NO_PERMISSION: i64 = 40001;
pub const INVALID_PARAMETER: i64 = 40002;
pub const TOO_MANY_REQUESTS: i64 = 40100;
const EVENT_SOURCES: &[&str] = &["web", "app", "offline", "crm"];
const HASHED: &[&str] = &["email", "phone", "external_id"];
const PLAIN: &[&str] = &["ip", "user_agent", "ttclid", "ttp"];

#[derive(Debug, Clone)]
struct TikTokError {
    http: StatusCode,
    code: i64,
    message: String,
    field: Option<String>,
    event_id: Option<String>,
    outcome: &'static str,
}

impl TikTokError {
    fn invalid(field: impl Into<String>, why: impl AsRef<str>) -> Self {
        let field = field.into();
        TikTokError {
            http: StatusCode::OK,
            code: INVALID_PARAMETER,
            message: format!("{field}: {}", why.as_ref()),
            field: Some(field),
            event_id: None,
            outcome: "rejected",
        }
    }

    fn no_permission(message: String) -> Self {
        TikTokError {
            http: StatusCode::OK,
            code: NO_PERMISSION,
            message,
            field: None,
            event_id: None,
            outcome: "unauthenticated",
        }
    }
}

fn answer(http: StatusCode, code: i64, message: &str, request_id: &str) -> Response {
    (
        http,
        Json(json!({ "code": code, "message": message, "request_id": request_id, "data": {} })),
    )
        .into_response()
}

pub async fn track(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let request_id = format!(
        "{}{}",
        state.clock.now().format("%Y%m%d%H%M%S"),
        state.ids.hex(18).to_uppercase()
    );
    let (outcome, resp) = match handle(&state, &headers, &body).await {
        Ok(()) => ("accepted", answer(StatusCode::OK, OK, "OK", &request_id)),
        Err(e) => (e.outcome, answer(e.http, e.code, &e.message, &request_id)),
    };
    state.finish(PLATFORM, outcome, started);
    resp
}

fn fault_error(state: &AppState, verdict: Verdict) -> Option<TikTokError> {
    let (http, code, message, outcome, fault) = match verdict {
        Verdict::Pass => return None,
        Verdict::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            50002,
            "Service unavailable, please retry later.",
            "outage",
            "outage",
        ),
        Verdict::Throttled { .. } | Verdict::Injected(InjectedError::Throttle) => (
            StatusCode::OK,
            TOO_MANY_REQUESTS,
            "Too many requests. Please retry in some time.",
            "throttled",
            "throttle",
        ),
        Verdict::Injected(InjectedError::Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            50000,
            "System error.",
            "injected_error",
            "500",
        ),
        Verdict::Injected(InjectedError::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            50002,
            "Service unavailable, please retry later.",
            "injected_error",
            "503",
        ),
    };
    state.count_fault(PLATFORM, fault);
    Some(TikTokError {
        http,
        code,
        message: message.into(),
        field: None,
        event_id: None,
        outcome,
    })
}

async fn handle(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), TikTokError> {
    // The account is inside the body, so decode before anything else; a body
    // that does not decode is charged to the "*" rule.
    let parsed: Result<Map<String, Value>, TikTokError> =
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) | Err(_) => Err(TikTokError::invalid(
                "body",
                "Invalid JSON: the request body must be a JSON object.",
            )),
        };
    let pixel = parsed
        .as_ref()
        .ok()
        .and_then(|m| m.get("event_source_id"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let verdict = state.faults.apply(&state.clock, PLATFORM, &pixel).await;
    if let Some(e) = fault_error(state, verdict) {
        return Err(e);
    }
    let result = check(state, headers, parsed, &pixel);
    match result {
        Ok((events, test_event_code)) => {
            let incoming: Vec<Incoming> = events
                .into_iter()
                .map(|ev| {
                    let event_id = ev
                        .get("event_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    let event = ev.get("event").and_then(Value::as_str).map(str::to_owned);
                    let dedup = match (&event, &event_id) {
                        (Some(name), Some(id)) => vec![DedupRule {
                            matched_on: "event_id",
                            key: format!("{name}\u{1f}{id}"),
                            windowed: true,
                        }],
                        _ => Vec::new(),
                    };
                    Incoming {
                        platform: PLATFORM,
                        account: pixel.clone(),
                        event_id,
                        event_name: event,
                        test_event_code: test_event_code.clone(),
                        dedup,
                        payload: Value::Object(ev),
                    }
                })
                .collect();
            let outcomes = state.store.commit(state.clock.now_ms(), incoming, false);
            state.count_events(PLATFORM, &outcomes);
            Ok(())
        }
        Err(e) => {
            let code = e.code.to_string();
            state.reject(
                PLATFORM,
                &pixel,
                e.http.as_u16(),
                code,
                e.message.clone(),
                e.field.clone(),
                e.event_id.clone(),
            );
            Err(e)
        }
    }
}

type Checked = (Vec<Map<String, Value>>, Option<String>);

fn check(
    state: &AppState,
    headers: &HeaderMap,
    parsed: Result<Map<String, Value>, TikTokError>,
    pixel: &str,
) -> Result<Checked, TikTokError> {
    let token = headers
        .get("access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token.is_empty() {
        return Err(TikTokError::no_permission(
            "Access-Token header is missing.".into(),
        ));
    }
    let body = parsed?;
    if pixel.is_empty() {
        return Err(TikTokError::invalid(
            "event_source_id",
            "Missing data for required field.",
        ));
    }
    match state.credentials.tiktok(pixel, token) {
        Access::Granted => {}
        Access::UnknownToken => {
            return Err(TikTokError::no_permission("The access token is invalid or has been revoked.".into()))
        }
        Access::NotForAccount => {
            return Err(TikTokError::no_permission(format!(
                "No permission to operate pixel code: {pixel}. Make sure you have been granted access to this pixel."
            )))
        }
    }
    match body.get("event_source").and_then(Value::as_str) {
        Some(s) if EVENT_SOURCES.contains(&s) => {}
        Some(_) => {
            return Err(TikTokError::invalid(
                "event_source",
                format!("Must be one of: {}.", EVENT_SOURCES.join(", ")),
            ))
        }
        None => {
            return Err(TikTokError::invalid(
                "event_source",
                "Missing data for required field.",
            ))
        }
    }
    let test_event_code = match body.get("test_event_code") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(TikTokError::invalid(
                "test_event_code",
                "Not a valid string.",
            ))
        }
    };
    let data = match body.get("data") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(TikTokError::invalid("data", "Not a valid list.")),
        None => {
            return Err(TikTokError::invalid(
                "data",
                "Missing data for required field.",
            ))
        }
    };
    if data.is_empty() || data.len() > MAX_EVENTS {
        return Err(TikTokError::invalid(
            "data",
            format!("Length must be between 1 and {MAX_EVENTS}."),
        ));
    }
    let now = state.clock.now_secs();
    let mut events = Vec::with_capacity(data.len());
    for (i, ev) in data.iter().enumerate() {
        let Value::Object(ev) = ev else {
            return Err(TikTokError::invalid(
                format!("data.{i}"),
                "Invalid input type.",
            ));
        };
        if let Err(mut e) = validate_event(i, ev, now, state.max_future_secs) {
            e.event_id = ev
                .get("event_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            return Err(e);
        }
        events.push(ev.clone());
    }
    Ok((events, test_event_code))
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, TikTokError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TikTokError::invalid(
            format!("{path}.{key}"),
            "Not a valid string.",
        )),
    }
}

fn object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, TikTokError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(TikTokError::invalid(
            format!("{path}.{key}"),
            "Invalid input type.",
        )),
    }
}

fn validate_event(
    i: usize,
    ev: &Map<String, Value>,
    now: i64,
    max_future_secs: i64,
) -> Result<(), TikTokError> {
    let p = format!("data.{i}");
    match string_field(ev, "event", &p)? {
        Some(e) if !e.trim().is_empty() => {}
        _ => {
            return Err(TikTokError::invalid(
                format!("{p}.event"),
                "Missing data for required field.",
            ))
        }
    }
    let time = match ev.get("event_time") {
        None | Some(Value::Null) => {
            return Err(TikTokError::invalid(
                format!("{p}.event_time"),
                "Missing data for required field.",
            ))
        }
        Some(v) => as_unix_secs(v).ok_or_else(|| {
            TikTokError::invalid(format!("{p}.event_time"), "Not a valid integer.")
        })?,
    };
    if time <= 0 || time > now.saturating_add(max_future_secs) {
        return Err(TikTokError::invalid(
            format!("{p}.event_time"),
            "Must be a Unix timestamp in seconds, not in the future.",
        ));
    }
    if let Some(id) = string_field(ev, "event_id", &p)? {
        if id.is_empty() {
            return Err(TikTokError::invalid(
                format!("{p}.event_id"),
                "Shorter than minimum length 1.",
            ));
        }
    }
    if let Some(v) = ev.get("limited_data_use") {
        if !v.is_boolean() {
            return Err(TikTokError::invalid(
                format!("{p}.limited_data_use"),
                "Not a valid boolean.",
            ));
        }
    }
    if let Some(user) = object(ev, "user", &p)? {
        let up = format!("{p}.user");
        for (key, value) in user {
            let field = format!("{up}.{key}");
            if HASHED.contains(&key.as_str()) {
                let values: Vec<(String, &Value)> = match value {
                    Value::Array(items) => items
                        .iter()
                        .enumerate()
                        .map(|(j, v)| (format!("{field}.{j}"), v))
                        .collect(),
                    other => vec![(field.clone(), other)],
                };
                for (at, v) in values {
                    match v {
                        Value::String(s) if is_sha256_hex(s) => {}
                        Value::String(_) => {
                            return Err(TikTokError::invalid(at, "Must be a SHA-256 hash of the normalised value (64 lowercase hex characters)."))
                        }
                        _ => return Err(TikTokError::invalid(at, "Not a valid string.")),
                    }
                }
            } else if PLAIN.contains(&key.as_str()) {
                let Value::String(s) = value else {
                    return Err(TikTokError::invalid(field, "Not a valid string."));
                };
                if looks_hashed(s) {
                    return Err(TikTokError::invalid(
                        field,
                        "Must not be hashed: send it in plain text.",
                    ));
                }
                if key == "ip" && !is_ip(s) {
                    return Err(TikTokError::invalid(field, "Not a valid IP address."));
                }
                if s.trim().is_empty() {
                    return Err(TikTokError::invalid(
                        field,
                        "Shorter than minimum length 1.",
                    ));
                }
            }
        }
    }
    if let Some(props) = object(ev, "properties", &p)? {
        let pp = format!("{p}.properties");
        if let Some(cur) = props.get("currency") {
            if !cur.as_str().is_some_and(is_currency) {
                return Err(TikTokError::invalid(
                    format!("{pp}.currency"),
                    "Not a valid ISO 4217 currency code.",
                ));
            }
        }
        if let Some(v) = props.get("value") {
            if !v.is_number() {
                return Err(TikTokError::invalid(
                    format!("{pp}.value"),
                    format!("Not a valid number ({}).", kind(v)),
                ));
            }
        }
        if let Some(v) = props.get("order_id") {
            if !v.is_string() {
                return Err(TikTokError::invalid(
                    format!("{pp}.order_id"),
                    "Not a valid string.",
                ));
            }
        }
        if let Some(v) = props.get("content_type") {
            if !matches!(v.as_str(), Some("product" | "product_group")) {
                return Err(TikTokError::invalid(
                    format!("{pp}.content_type"),
                    "Must be one of: product, product_group.",
                ));
            }
        }
        if let Some(v) = props.get("contents") {
            let Some(items) = v.as_array() else {
                return Err(TikTokError::invalid(
                    format!("{pp}.contents"),
                    "Not a valid list.",
                ));
            };
            for (j, item) in items.iter().enumerate() {
                let cp = format!("{pp}.contents.{j}");
                let Some(item) = item.as_object() else {
                    return Err(TikTokError::invalid(cp, "Invalid input type."));
                };
                string_field(item, "content_id", &cp)?;
                if let Some(q) = item.get("quantity") {
                    if q.as_i64().is_none() {
                        return Err(TikTokError::invalid(
                            format!("{cp}.quantity"),
                            "Not a valid integer.",
                        ));
                    }
                }
                if let Some(pr) = item.get("price") {
                    if !pr.is_number() {
                        return Err(TikTokError::invalid(
                            format!("{cp}.price"),
                            "Not a valid number.",
                        ));
                    }
                }
            }
        }
    }
    if let Some(page) = object(ev, "page", &p)? {
        let pp = format!("{p}.page");
        string_field(page, "url", &pp)?;
        string_field(page, "referrer", &pp)?;
    }
    Ok(())
}
