//! The HTTP API: `POST /v1/events` for servers (Bearer API key) and
//! `POST /v1/collect` for browser beacons (public site key, CORS-checked).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use postback_core::model::{now_millis, ConversionRaw, FieldError, Source};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::CollectorConfig;
use crate::metrics::CollectorMetrics;
use crate::publish::{PublishError, Publisher};
use crate::validate::{validate_event, EventContext, Limits};

pub struct ApiState {
    api_keys: HashMap<String, String>,
    site_keys: HashMap<String, SiteKeyEntry>,
    publisher: Publisher,
    metrics: CollectorMetrics,
    limits: Limits,
    max_body_bytes: usize,
    max_batch_events: usize,
    retry_after_secs: u64,
}

struct SiteKeyEntry {
    tenant: String,
    origins: Vec<String>,
}

impl ApiState {
    pub fn new(config: &CollectorConfig, publisher: Publisher, metrics: CollectorMetrics) -> Self {
        let api_keys = config
            .api_keys
            .iter()
            .filter_map(|k| k.resolve().map(|key| (key, k.tenant.clone())))
            .collect();
        let site_keys = config
            .site_keys
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    SiteKeyEntry {
                        tenant: s.tenant.clone(),
                        origins: s.allowed_origins.clone(),
                    },
                )
            })
            .collect();
        ApiState {
            api_keys,
            site_keys,
            publisher,
            metrics,
            limits: Limits {
                max_future_ms: config.http.max_future_secs as i64 * 1000,
                ..Limits::default()
            },
            max_body_bytes: config.http.max_body_bytes,
            max_batch_events: config.http.max_batch_events,
            retry_after_secs: config.http.retry_after_secs,
        }
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/collect", post(post_collect).options(preflight_collect))
        .route("/v1/tag.js", get(crate::tag::get_tag))
        .with_state(state)
}

/// The answer to a submission.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub accepted: usize,
    pub rejected: Vec<RejectedEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RejectedEvent {
    pub index: usize,
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// A request-level refusal (not a per-event validation result).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code.into(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    refuse(status, code, message).into_response()
}

/// What a request body turned out to be.
enum Submission {
    Single(Value),
    Batch(Vec<Value>),
}

async fn read_json(
    state: &ApiState,
    body: Body,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds {} bytes", state.max_body_bytes),
            )
        })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected a JSON object: one event, or {\"events\": [...]}",
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("body is not valid JSON: {e}"),
        )),
    }
}

fn split(
    state: &ApiState,
    mut body: serde_json::Map<String, Value>,
) -> Result<Submission, ApiError> {
    match body.remove("events") {
        None => Ok(Submission::Single(Value::Object(body))),
        Some(Value::Array(events)) => {
            if let Some(extra) = body.keys().next() {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("unknown field `{extra}` next to `events`"),
                ));
            }
            if events.is_empty() {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "`events` is empty",
                ));
            }
            if events.len() > state.max_batch_events {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_events",
                    format!(
                        "{} events in one request; at most {}",
                        events.len(),
                        state.max_batch_events
                    ),
                ));
            }
            Ok(Submission::Batch(events))
        }
        Some(_) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "`events` must be an array",
        )),
    }
}

/// Validates, publishes the valid events, and answers.
async fn submit(
    state: &ApiState,
    endpoint: &'static str,
    submission: Submission,
    tenant: &str,
    source: Option<Source>,
) -> Response {
    let ctx = EventContext {
        tenant,
        default_source: source.unwrap_or(Source::Server),
        required_source: source,
        now_ms: now_millis(),
    };
    let (values, batch) = match submission {
        Submission::Single(v) => (vec![v], false),
        Submission::Batch(vs) => (vs, true),
    };
    let mut accepted: Vec<ConversionRaw> = Vec::with_capacity(values.len());
    let mut rejected = Vec::new();
    for (index, v) in values.iter().enumerate() {
        let prefix = if batch {
            format!("events[{index}]")
        } else {
            String::new()
        };
        match validate_event(v, &prefix, &ctx, &state.limits) {
            Ok(ev) => accepted.push(ev),
            Err(errors) => rejected.push(RejectedEvent { index, errors }),
        }
    }
    let events = &state.metrics.events;
    events
        .with_label_values(&[endpoint, "rejected"])
        .inc_by(rejected.len() as u64);
    if accepted.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(SubmitResponse {
                accepted: 0,
                rejected,
            }),
        )
            .into_response();
    }
    match state.publisher.publish(&accepted).await {
        Ok(()) => {
            events
                .with_label_values(&[endpoint, "accepted"])
                .inc_by(accepted.len() as u64);
            (
                StatusCode::ACCEPTED,
                Json(SubmitResponse {
                    accepted: accepted.len(),
                    rejected,
                }),
            )
                .into_response()
        }
        Err(PublishError::Delivery(postback_core::kafka::DeliveryError::TooLarge)) => {
            // Retrying cannot help; a 503 would invite retries forever.
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event_too_large",
                "an event is larger than the broker accepts; nothing in this request was stored",
            )
        }
        Err(PublishError::Encode(e)) => {
            tracing::error!(error = %e, "accepted event does not encode; schema and validator disagree");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "event could not be encoded",
            )
        }
        Err(e) => {
            events
                .with_label_values(&[endpoint, "unavailable"])
                .inc_by(accepted.len() as u64);
            tracing::warn!(error = %e, events = accepted.len(), "broker did not acknowledge; answering 503");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the events were not stored; retry the whole request later",
            );
            if let Ok(v) = HeaderValue::from_str(&state.retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

fn observe(state: &ApiState, endpoint: &'static str, started: Instant, response: &Response) {
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
}

async fn post_events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = events_inner(&state, &headers, body).await;
    observe(&state, "events", started, &response);
    response
}

async fn events_inner(state: &ApiState, headers: &HeaderMap, body: Body) -> Response {
    let tenant = match bearer(headers).and_then(|k| state.api_keys.get(k)) {
        Some(t) => t.clone(),
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or unknown API key (Authorization: Bearer <key>)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postback\""),
            );
            return r;
        }
    };
    let json_content = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase().starts_with("application/json"))
        .unwrap_or(false);
    if !json_content {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        );
    }
    let body = match read_json(state, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match split(state, body) {
        Ok(s) => submit(state, "events", s, &tenant, None).await,
        Err(e) => e.into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[derive(Debug, Deserialize)]
struct CollectQuery {
    site_key: Option<String>,
}

async fn post_collect(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<CollectQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = collect_inner(&state, query, &headers, body).await;
    observe(&state, "collect", started, &response);
    response
}

async fn collect_inner(
    state: &ApiState,
    query: CollectQuery,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // sendBeacon posts text/plain (a CORS "simple" request, no preflight),
    // so the body is JSON whatever the Content-Type says.
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = match read_json(state, body).await {
        Ok(b) => b,
        Err(e) => {
            return with_cors(
                e.into_response(),
                origin.as_deref(),
                state,
                query.site_key.as_deref(),
            )
        }
    };
    let body_key = match body.remove("site_key") {
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "`site_key` must be a string",
            )
        }
        None => None,
    };
    let Some(key) = query.site_key.or(body_key) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing site_key (query string or body)",
        );
    };
    let Some(site) = state.site_keys.get(&key) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown site_key");
    };
    let Some(origin) = origin else {
        return error(
            StatusCode::FORBIDDEN,
            "origin_required",
            "browser beacons must carry an Origin header",
        );
    };
    if !site.origins.iter().any(|o| o == &origin) {
        // No CORS headers: the browser blocks the page from reading this.
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin is not allowed for the site key",
        );
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let response = match split(state, body) {
        Ok(mut s) => {
            if let Some(ua) = user_agent {
                match &mut s {
                    Submission::Single(v) => default_user_agent(v, ua),
                    Submission::Batch(vs) => vs.iter_mut().for_each(|v| default_user_agent(v, ua)),
                }
            }
            submit(state, "collect", s, &site.tenant, Some(Source::Browser)).await
        }
        Err(e) => e.into_response(),
    };
    allow_origin(response, &origin)
}

/// A beacon comes from the visitor's browser, so its User-Agent header is
/// the visitor's user agent (Meta requires it for website events); the
/// event's own `user.user_agent` wins when given.
fn default_user_agent(event: &mut Value, user_agent: &str) {
    let Value::Object(m) = event else { return };
    let user = m
        .entry("user")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(u) = user {
        u.entry("user_agent")
            .or_insert_with(|| Value::String(user_agent.to_string()));
    }
}

fn with_cors(
    response: Response,
    origin: Option<&str>,
    state: &ApiState,
    key: Option<&str>,
) -> Response {
    match (origin, key.and_then(|k| state.site_keys.get(k))) {
        (Some(o), Some(site)) if site.origins.iter().any(|x| x == o) => allow_origin(response, o),
        _ => response,
    }
}

fn allow_origin(mut response: Response, origin: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(origin) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        // sendBeacon sends credentials; the exact origin plus this header
        // is what the browser requires for such a request.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// CORS preflight (fetch() with application/json triggers one). The key may
/// be in the query string; without it, any configured origin may proceed and
/// the POST itself is checked against its key.
async fn preflight_collect(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<CollectQuery>,
    headers: HeaderMap,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let method_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.eq_ignore_ascii_case(Method::POST.as_str()));
    let allowed = origin.is_some_and(|o| match &query.site_key {
        Some(k) => state
            .site_keys
            .get(k)
            .is_some_and(|s| s.origins.iter().any(|x| x == o)),
        None => state
            .site_keys
            .values()
            .any(|s| s.origins.iter().any(|x| x == o)),
    });
    match (origin, allowed && method_ok) {
        (Some(o), true) => {
            let mut r = allow_origin(StatusCode::NO_CONTENT.into_response(), o);
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            r
        }
        _ => StatusCode::FORBIDDEN.into_response(),
    }
}
