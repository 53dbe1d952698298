//! Meta Conversions API: `POST /{version}/{pixel_id}/events`.
//!
//! No partial failure: one invalid event fails the whole request with HTTP
//! 400 and nothing is recorded. Errors carry the Graph API error object and
//! name the field as `data[3].user_data.em`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use postback_core::Platform;
use serde_json::{json, Map, Value};

use crate::checks::{
    as_unix_secs, is_currency, is_fb_cookie, is_ip, is_sha256_hex, kind, looks_hashed,
};
use crate::credentials::Access;
use crate::faults::{InjectedError, Verdict};
use crate::store::{DedupRule, Incoming, Outcome};
use crate::AppState;

const PLATFORM: Platform = Platform::Meta;
pub const MAX_EVENTS: usize = 1000;
const DAY: i64 = 86_400;

pub const ACTION_SOURCES: &[&str] = &[
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];

/// user_data fields Meta wants SHA-256 hashed. external_id is missing on
/// purpose: the reference says hashing it is recommended, not required.
const HASHED: &[&str] = &[
    "em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country",
];
/// user_data fields Meta needs in plain text.
const PLAIN: &[&str] = &["client_ip_address", "client_user_agent", "fbc", "fbp"];
/// Other user_data keys Meta documents (ids it matches as given).
const OTHER_USER_DATA: &[&str] = &[
    "external_id",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
];

/// A Graph API error, and what the sandbox records about it.
#[derive(Debug, Clone)]
pub struct MetaError {
    pub status: StatusCode,
    pub code: i64,
    pub subcode: Option<i64>,
    pub message: String,
    pub title: String,
    pub user_msg: String,
    pub transient: bool,
    pub field: Option<String>,
    pub event_id: Option<String>,
}

impl MetaError {
    fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = detail.into();
        MetaError {
            status: StatusCode::BAD_REQUEST,
            code: 100,
            subcode: None,
            message: format!("(#100) param {field} {detail}"),
            title: "Invalid parameter".into(),
            user_msg: format!("The parameter {field} {detail}."),
            transient: false,
            field: Some(field),
            event_id: None,
        }
    }

    fn required(field: impl Into<String>) -> Self {
        let field = field.into();
        MetaError {
            message: format!("(#100) The parameter {field} is required"),
            user_msg: format!("The parameter {field} is required."),
            title: "Missing parameter".into(),
            ..MetaError::invalid(field, "")
        }
    }

    fn with_event_id(mut self, event: &Map<String, Value>) -> Self {
        self.event_id = event
            .get("event_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        self
    }

    fn record_code(&self) -> String {
        match self.subcode {
            Some(s) => format!("{}/{}", self.code, s),
            None => self.code.to_string(),
        }
    }

    fn into_response(self, trace: String) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": "OAuthException",
                "code": self.code,
                "error_subcode": self.subcode,
                "error_user_title": self.title,
                "error_user_msg": self.user_msg,
                "fbtrace_id": trace,
                "is_transient": self.transient,
            }
        });
        let mut resp = (self.status, Json(body)).into_response();
        if self.code == 190 {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(
                    "OAuth \"Facebook Platform\" \"invalid_token\" \"Invalid OAuth access token\"",
                ),
            );
        }
        resp
    }
}

fn fault_error(
    state: &AppState,
    verdict: Verdict,
) -> Option<(MetaError, &'static str, &'static str)> {
    let (status, code, message, outcome, fault) = match verdict {
        Verdict::Pass => return None,
        Verdict::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            2,
            "(#2) Service temporarily unavailable".to_owned(),
            "outage",
            "outage",
        ),
        Verdict::Throttled { .. } | Verdict::Injected(InjectedError::Throttle) => (
            state.meta_throttle_status,
            state.meta_throttle_code,
            throttle_message(state.meta_throttle_code),
            "throttled",
            "throttle",
        ),
        Verdict::Injected(InjectedError::Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            1,
            "An unknown error occurred".to_owned(),
            "injected_error",
            "500",
        ),
        Verdict::Injected(InjectedError::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            2,
            "(#2) Service temporarily unavailable".to_owned(),
            "injected_error",
            "503",
        ),
    };
    Some((
        MetaError {
            status,
            code,
            subcode: None,
            title: "Please retry".into(),
            user_msg: message.clone(),
            message,
            transient: true,
            field: None,
            event_id: None,
        },
        outcome,
        fault,
    ))
}

fn throttle_message(code: i64) -> String {
    match code {
        4 => "(#4) Application request limit reached".into(),
        17 => "(#17) User request limit reached".into(),
        32 => "(#32) Page request limit reached".into(),
        341 => "(#341) Application limit reached".into(),
        613 => "(#613) Calls to this api have exceeded the rate limit.".into(),
        n => format!("(#{n}) Request limit reached"),
    }
}

fn is_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// The request's parameters: query string, then the body (JSON, or a form
/// whose `data` is a JSON string, as the Graph API takes both).
fn parameters(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, MetaError> {
    let mut params = Map::new();
    if let Some(q) = query {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|_| MetaError::invalid("query", "could not be parsed"))?;
        for (k, v) in pairs {
            let value = if k == "data" {
                serde_json::from_str(&v)
                    .map_err(|_| MetaError::invalid("data", "must be a JSON array"))?
            } else {
                Value::String(v)
            };
            params.insert(k, value);
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let trimmed = body
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .copied()
        .next();
    if body.is_empty() {
        return Ok(params);
    }
    if content_type.starts_with("application/x-www-form-urlencoded")
        || (trimmed != Some(b'{') && !content_type.contains("json"))
    {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| MetaError::invalid("body", "could not be parsed as a form"))?;
        for (k, v) in pairs {
            let value = if k == "data" {
                serde_json::from_str(&v)
                    .map_err(|_| MetaError::invalid("data", "must be a JSON array"))?
            } else {
                Value::String(v)
            };
            params.insert(k, value);
        }
    } else {
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| MetaError::invalid("body", "is not valid JSON"))?;
        let Value::Object(map) = value else {
            return Err(MetaError::invalid("body", "must be a JSON object"));
        };
        params.extend(map);
    }
    Ok(params)
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    Path((version, pixel_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let trace = state.ids.alnum(11);
    let (outcome, response) = handle(
        &state,
        &version,
        &pixel_id,
        query.as_deref(),
        &headers,
        &body,
    )
    .await;
    state.finish(PLATFORM, outcome, started);
    match response {
        Ok(body) => (StatusCode::OK, Json(with_trace(body, trace))).into_response(),
        Err(e) => e.into_response(trace),
    }
}

fn with_trace(mut body: Value, trace: String) -> Value {
    if let Value::Object(m) = &mut body {
        m.insert("fbtrace_id".into(), Value::String(trace));
    }
    body
}

async fn handle(
    state: &AppState,
    version: &str,
    pixel_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> (&'static str, Result<Value, MetaError>) {
    if !is_version(version) || !pixel_id.bytes().all(|b| b.is_ascii_digit()) {
        let e = MetaError {
            code: 2500,
            message: format!("Unknown path components: /{version}/{pixel_id}/events"),
            title: "Unknown path".into(),
            user_msg: "Use /v{major}.{minor}/{pixel_id}/events".into(),
            ..MetaError::invalid("path", "")
        };
        return (reject(state, pixel_id, e.clone()), Err(e));
    }
    let verdict = state.faults.apply(&state.clock, PLATFORM, pixel_id).await;
    if let Some((e, outcome, fault)) = fault_error(state, verdict) {
        state.count_fault(PLATFORM, fault);
        return (outcome, Err(e));
    }
    let params = match parameters(query, headers, body) {
        Ok(p) => p,
        Err(e) => return (reject(state, pixel_id, e.clone()), Err(e)),
    };
    let token = params
        .get("access_token")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match state.credentials.meta(pixel_id, token) {
        Access::Granted => {}
        Access::UnknownToken => {
            let e = MetaError {
                status: StatusCode::UNAUTHORIZED,
                code: 190,
                message: "Invalid OAuth access token - Cannot parse access token".into(),
                title: "Invalid access token".into(),
                user_msg: "The access token is missing, malformed, expired or revoked.".into(),
                ..MetaError::invalid("access_token", "")
            };
            state.reject(
                PLATFORM,
                pixel_id,
                401,
                "190".into(),
                e.message.clone(),
                None,
                None,
            );
            return ("unauthenticated", Err(e));
        }
        Access::NotForAccount => {
            let e = MetaError {
                subcode: Some(33),
                message: format!(
                    "Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
                ),
                title: "Unknown object".into(),
                user_msg: "The pixel does not exist or the token may not send events to it.".into(),
                ..MetaError::invalid("pixel_id", "")
            };
            return (reject(state, pixel_id, e.clone()), Err(e));
        }
    }
    let now = state.clock.now_secs();
    let validated = validate(&params, now, state.max_future_secs);
    let events = match validated {
        Ok(events) => events,
        Err(e) => return (reject(state, pixel_id, e.clone()), Err(e)),
    };
    let test_event_code = params
        .get("test_event_code")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let received = events.len();
    let incoming: Vec<Incoming> = events
        .into_iter()
        .map(|ev| {
            let event_id = ev
                .get("event_id")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            let event_name = ev
                .get("event_name")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            let dedup = match (&event_id, &event_name) {
                (Some(id), Some(name)) => vec![DedupRule {
                    matched_on: "event_id",
                    key: format!("{name}\u{1f}{id}"),
                    windowed: true,
                }],
                _ => Vec::new(),
            };
            Incoming {
                platform: PLATFORM,
                account: pixel_id.to_owned(),
                event_id,
                event_name,
                test_event_code: test_event_code.clone(),
                dedup,
                payload: Value::Object(ev),
            }
        })
        .collect();
    let outcomes = state.store.commit(state.clock.now_ms(), incoming, false);
    state.count_events(PLATFORM, &outcomes);
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Duplicate { .. }))
        .count();
    tracing::debug!(pixel_id, received, duplicates, "meta events accepted");
    // Meta counts deduplicated events as received; dedup is invisible to the sender.
    (
        "accepted",
        Ok(json!({ "events_received": received, "messages": [] })),
    )
}

fn reject(state: &AppState, pixel_id: &str, e: MetaError) -> &'static str {
    state.reject(
        PLATFORM,
        pixel_id,
        e.status.as_u16(),
        e.record_code(),
        e.message.clone(),
        e.field.clone(),
        e.event_id.clone(),
    );
    "rejected"
}

/// Checks the whole request; the events, or the first error.
pub fn validate(
    params: &Map<String, Value>,
    now: i64,
    max_future_secs: i64,
) -> Result<Vec<Map<String, Value>>, MetaError> {
    let data = match params.get("data") {
        None | Some(Value::Null) => return Err(MetaError::required("data")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(MetaError::invalid("data", "must be an array")),
    };
    if data.is_empty() {
        return Err(MetaError::required("data"));
    }
    if data.len() > MAX_EVENTS {
        return Err(MetaError::invalid(
            "data",
            format!(
                "must be an array with at most {MAX_EVENTS} events, got {}",
                data.len()
            ),
        ));
    }
    if let Some(code) = params.get("test_event_code") {
        if !code.is_string() {
            return Err(MetaError::invalid("test_event_code", "must be a string"));
        }
    }
    let mut events = Vec::with_capacity(data.len());
    for (i, ev) in data.iter().enumerate() {
        let Value::Object(ev) = ev else {
            return Err(MetaError::invalid(
                format!("data[{i}]"),
                "must be an object",
            ));
        };
        validate_event(i, ev, now, max_future_secs).map_err(|e| e.with_event_id(ev))?;
        events.push(ev.clone());
    }
    Ok(events)
}

fn opt_str<'a>(
    ev: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, MetaError> {
    match ev.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(MetaError::invalid(
            format!("{path}.{key}"),
            format!("must be a string, not {}", kind(other)),
        )),
    }
}

fn validate_event(
    i: usize,
    ev: &Map<String, Value>,
    now: i64,
    max_future_secs: i64,
) -> Result<(), MetaError> {
    let p = format!("data[{i}]");
    let event_name = match opt_str(ev, "event_name", &p)? {
        Some(n) if !n.trim().is_empty() => n,
        _ => return Err(MetaError::required(format!("{p}.event_name"))),
    };
    let event_time = match ev.get("event_time") {
        None | Some(Value::Null) => return Err(MetaError::required(format!("{p}.event_time"))),
        Some(v) => as_unix_secs(v).ok_or_else(|| {
            MetaError::invalid(
                format!("{p}.event_time"),
                "must be an integer Unix timestamp in seconds",
            )
        })?,
    };
    if event_time <= 0 {
        return Err(MetaError::invalid(
            format!("{p}.event_time"),
            "must be a positive Unix timestamp in seconds",
        ));
    }
    if event_time > now.saturating_add(max_future_secs) {
        let mut e = MetaError::invalid(
            format!("{p}.event_time"),
            "is in the future: send events after they happen (timestamps are Unix seconds, not milliseconds)",
        );
        e.title = "Event Timestamp In Future".into();
        return Err(e);
    }
    if let Some(id) = opt_str(ev, "event_id", &p)? {
        if id.is_empty() {
            return Err(MetaError::invalid(
                format!("{p}.event_id"),
                "must not be empty",
            ));
        }
    }
    let action_source = match opt_str(ev, "action_source", &p)? {
        Some(a) => a,
        None => return Err(MetaError::required(format!("{p}.action_source"))),
    };
    if !ACTION_SOURCES.contains(&action_source) {
        return Err(MetaError::invalid(
            format!("{p}.action_source"),
            format!("must be one of {}", ACTION_SOURCES.join(", ")),
        ));
    }
    let max_age_days = if action_source == "physical_store" {
        62
    } else {
        7
    };
    if now - event_time > max_age_days * DAY {
        return Err(MetaError {
            subcode: Some(2_804_003),
            message: "Invalid parameter".into(),
            title: "Event Timestamp Too Old".into(),
            user_msg: format!(
                "The timestamp for this event is too far in the past. Events need to be sent from your server within {max_age_days} days of when they occurred. Enter a timestamp that has occurred within the last {max_age_days} days."
            ),
            ..MetaError::invalid(format!("{p}.event_time"), "")
        });
    }
    let url = opt_str(ev, "event_source_url", &p)?;
    if let Some(u) = url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(MetaError::invalid(
                format!("{p}.event_source_url"),
                "must be an http(s) URL",
            ));
        }
    }
    if action_source == "website" && url.is_none() {
        return Err(MetaError::required(format!("{p}.event_source_url")));
    }
    let user_data = match ev.get("user_data") {
        None | Some(Value::Null) => return Err(MetaError::required(format!("{p}.user_data"))),
        Some(Value::Object(u)) => u,
        Some(other) => {
            return Err(MetaError::invalid(
                format!("{p}.user_data"),
                format!("must be an object, not {}", kind(other)),
            ))
        }
    };
    validate_user_data(&format!("{p}.user_data"), user_data)?;
    if action_source == "website" && !user_data.contains_key("client_user_agent") {
        return Err(MetaError::required(format!(
            "{p}.user_data.client_user_agent"
        )));
    }
    let custom = match ev.get("custom_data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c),
        Some(other) => {
            return Err(MetaError::invalid(
                format!("{p}.custom_data"),
                format!("must be an object, not {}", kind(other)),
            ))
        }
    };
    if let Some(c) = custom {
        validate_custom_data(&format!("{p}.custom_data"), c)?;
    }
    if event_name == "Purchase" {
        let has = |k: &str| custom.is_some_and(|c| c.get(k).is_some_and(|v| !v.is_null()));
        if !has("value") || !has("currency") {
            return Err(MetaError {
                subcode: Some(2_804_009),
                message: "Invalid parameter".into(),
                title: "Missing Value or Currency".into(),
                user_msg:
                    "Purchase events must include custom_data.value and custom_data.currency."
                        .into(),
                ..MetaError::invalid(format!("{p}.custom_data.value"), "")
            });
        }
    }
    validate_processing_options(&p, ev)?;
    if let Some(v) = ev.get("opt_out") {
        if !v.is_boolean() {
            return Err(MetaError::invalid(
                format!("{p}.opt_out"),
                "must be a boolean",
            ));
        }
    }
    Ok(())
}

fn validate_user_data(path: &str, user_data: &Map<String, Value>) -> Result<(), MetaError> {
    if user_data.is_empty() {
        return Err(MetaError::invalid(
            path,
            "must contain at least one customer information parameter",
        ));
    }
    for (key, value) in user_data {
        let field = format!("{path}.{key}");
        if HASHED.contains(&key.as_str()) {
            for (j, s) in strings(&field, value)? {
                if !is_sha256_hex(s) {
                    let at = j
                        .map(|j| format!("{field}[{j}]"))
                        .unwrap_or_else(|| field.clone());
                    return Err(MetaError::invalid(
                        at,
                        "must be a SHA-256 hash of the normalised value (64 lowercase hex characters)",
                    ));
                }
            }
        } else if PLAIN.contains(&key.as_str()) {
            let Value::String(s) = value else {
                return Err(MetaError::invalid(
                    field,
                    format!("must be a string, not {}", kind(value)),
                ));
            };
            if looks_hashed(s) {
                return Err(MetaError::invalid(
                    field,
                    "must not be hashed: send it in plain text",
                ));
            }
            let ok = match key.as_str() {
                "client_ip_address" => is_ip(s),
                "fbc" | "fbp" => is_fb_cookie(s),
                _ => !s.trim().is_empty(),
            };
            if !ok {
                let why = match key.as_str() {
                    "client_ip_address" => "must be an IPv4 or IPv6 address",
                    "fbc" => {
                        "must have the format fb.{subdomain_index}.{creation_time_ms}.{fbclid}"
                    }
                    "fbp" => {
                        "must have the format fb.{subdomain_index}.{creation_time_ms}.{random}"
                    }
                    _ => "must not be empty",
                };
                return Err(MetaError::invalid(field, why));
            }
        } else if OTHER_USER_DATA.contains(&key.as_str()) {
            for (j, s) in strings(&field, value)? {
                if s.is_empty() {
                    let at = j
                        .map(|j| format!("{field}[{j}]"))
                        .unwrap_or_else(|| field.clone());
                    return Err(MetaError::invalid(at, "must not be empty"));
                }
            }
        } else {
            return Err(MetaError::invalid(field, "is not a user_data parameter"));
        }
    }
    Ok(())
}

/// A string or an array of strings, with each string's index in the array.
fn strings<'a>(field: &str, value: &'a Value) -> Result<Vec<(Option<usize>, &'a str)>, MetaError> {
    match value {
        Value::String(s) => Ok(vec![(None, s.as_str())]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(j, v)| match v {
                Value::String(s) => Ok((Some(j), s.as_str())),
                other => Err(MetaError::invalid(
                    format!("{field}[{j}]"),
                    format!("must be a string, not {}", kind(other)),
                )),
            })
            .collect(),
        other => Err(MetaError::invalid(
            field,
            format!(
                "must be a string or an array of strings, not {}",
                kind(other)
            ),
        )),
    }
}

fn validate_custom_data(path: &str, c: &Map<String, Value>) -> Result<(), MetaError> {
    if let Some(v) = c.get("value") {
        if !v.is_number() && !v.is_null() {
            return Err(MetaError::invalid(
                format!("{path}.value"),
                format!("must be a number, not {}", kind(v)),
            ));
        }
    }
    if let Some(v) = c.get("currency") {
        match v {
            Value::Null => {}
            // Meta's own examples send "usd": the code is matched case-insensitively.
            Value::String(s) if s.len() == 3 && is_currency(&s.to_ascii_uppercase()) => {}
            _ => {
                return Err(MetaError::invalid(
                    format!("{path}.currency"),
                    "must be an ISO 4217 currency code",
                ))
            }
        }
    }
    if let Some(v) = c.get("content_ids") {
        let ok = v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_string() || x.is_number()));
        if !ok {
            return Err(MetaError::invalid(
                format!("{path}.content_ids"),
                "must be an array of strings",
            ));
        }
    }
    if let Some(v) = c.get("contents") {
        let Some(items) = v.as_array() else {
            return Err(MetaError::invalid(
                format!("{path}.contents"),
                "must be an array of objects",
            ));
        };
        for (j, item) in items.iter().enumerate() {
            let ok = item.as_object().is_some_and(|o| {
                o.get("id")
                    .is_some_and(|id| id.is_string() || id.is_number())
            });
            if !ok {
                return Err(MetaError::invalid(
                    format!("{path}.contents[{j}]"),
                    "must be an object with an id",
                ));
            }
            if let Some(q) = item.get("quantity") {
                if q.as_i64().is_none() {
                    return Err(MetaError::invalid(
                        format!("{path}.contents[{j}].quantity"),
                        "must be an integer",
                    ));
                }
            }
        }
    }
    if let Some(v) = c.get("num_items") {
        if v.as_i64().is_none() {
            return Err(MetaError::invalid(
                format!("{path}.num_items"),
                "must be an integer",
            ));
        }
    }
    if let Some(v) = c.get("order_id") {
        if !v.is_string() {
            return Err(MetaError::invalid(
                format!("{path}.order_id"),
                "must be a string",
            ));
        }
    }
    Ok(())
}

fn validate_processing_options(p: &str, ev: &Map<String, Value>) -> Result<(), MetaError> {
    let options = match ev.get("data_processing_options") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => {
            return Err(MetaError::invalid(
                format!("{p}.data_processing_options"),
                "must be an array",
            ))
        }
    };
    let ldu = match options {
        None => false,
        Some(a) if a.is_empty() => false,
        Some(a) if a.len() == 1 && a[0].as_str() == Some("LDU") => true,
        Some(_) => {
            return Err(MetaError::invalid(
                format!("{p}.data_processing_options"),
                "must be [] or [\"LDU\"]",
            ))
        }
    };
    for (key, allowed) in [
        ("data_processing_options_country", &[0i64, 1][..]),
        ("data_processing_options_state", &[0i64, 1000][..]),
    ] {
        if let Some(v) = ev.get(key) {
            let ok = v.as_i64().is_some_and(|n| allowed.contains(&n));
            if !ok {
                return Err(MetaError::invalid(
                    format!("{p}.{key}"),
                    format!("must be one of {allowed:?}"),
                ));
            }
            if !ldu {
                return Err(MetaError::invalid(
                    format!("{p}.{key}"),
                    "is only allowed with data_processing_options [\"LDU\"]",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn hashed() -> String {
        "a".repeat(64)
    }

    fn event() -> Value {
        json!({
            "event_name": "Purchase",
            "event_time": NOW - 60,
            "event_id": "o-1",
            "action_source": "website",
            "event_source_url": "https://shop.example/thanks",
            "user_data": {
                "em": [hashed()],
                "client_user_agent": "Mozilla/5.0",
                "client_ip_address": "203.0.113.9",
                "fbc": "fb.1.1700000000000.IwAR1",
            },
            "custom_data": {"value": 12.5, "currency": "EUR"},
        })
    }

    fn check(ev: Value) -> Result<Vec<Map<String, Value>>, MetaError> {
        let mut params = Map::new();
        params.insert("data".into(), json!([event(), ev]));
        validate(&params, NOW, 300)
    }

    #[test]
    fn a_valid_event_passes() {
        assert!(check(event()).is_ok());
    }

    #[test]
    fn errors_name_the_field_with_its_index() {
        let mut ev = event();
        ev["user_data"]["em"] = json!(["x@example.com"]);
        let e = check(ev).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("data[1].user_data.em[0]"));
        assert!(e.message.contains("data[1].user_data.em[0]"));
    }

    #[test]
    fn old_events_and_purchases_without_value_have_their_subcodes() {
        let mut ev = event();
        ev["event_time"] = json!(NOW - 8 * DAY);
        assert_eq!(check(ev.clone()).unwrap_err().subcode, Some(2_804_003));
        ev["action_source"] = json!("physical_store");
        assert!(check(ev).is_ok());
        let mut ev = event();
        ev["custom_data"] = json!({"currency": "EUR"});
        assert_eq!(check(ev).unwrap_err().subcode, Some(2_804_009));
    }

    #[test]
    fn plain_text_fields_must_not_be_hashed() {
        let mut ev = event();
        ev["user_data"]["client_user_agent"] = json!(hashed());
        assert_eq!(
            check(ev).unwrap_err().field.as_deref(),
            Some("data[1].user_data.client_user_agent")
        );
    }

    #[test]
    fn versions() {
        assert!(is_version("v25.0"));
        assert!(!is_version("25.0"));
        assert!(!is_version("v25"));
    }
}
