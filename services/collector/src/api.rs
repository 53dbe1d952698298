//! The HTTP API: `POST /v1/events` for servers (Bearer API key) and
//! `POST /v1/collect` for browser beacons (public site key in the query
//! string, CORS-checked). Who calls is settled before a handler runs
//! (`caller.rs`), and the edge's limits hold before that (`edge.rs`).
//!
//! CORS is answered here, not by tower-http's `CorsLayer`: the origins a
//! beacon may come from are its site key's (the query string), so the
//! CORS answer is the outcome of settling who calls. A beacon's response
//! carries `Access-Control-Allow-Origin` only once its key accepted its
//! origin, and a preflight from an origin no key lists is refused with a
//! 403 where the layer would answer it without headers and leave the
//! refusal to the browser.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use postback_core::model::{now_millis, ConversionRaw, FieldError, Source};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::caller::{self, Caller, Callers};
use crate::config::CollectorConfig;
use crate::edge;
use crate::metrics::CollectorMetrics;
use crate::publish::{PublishError, Publisher};
use crate::validate::{validate_event, EventContext, Limits};

pub struct ApiState {
    publisher: Publisher,
    metrics: CollectorMetrics,
    limits: Limits,
    max_batch_events: usize,
    max_beacon_events: usize,
    retry_after_secs: u64,
    body_timeout: Duration,
}

impl ApiState {
    pub fn new(config: &CollectorConfig, publisher: Publisher, metrics: CollectorMetrics) -> Self {
        ApiState {
            publisher,
            metrics,
            limits: Limits {
                max_future_ms: config.http.max_future_secs as i64 * 1000,
                ..Limits::default()
            },
            max_batch_events: config.http.max_batch_events,
            max_beacon_events: config.http.max_beacon_events,
            retry_after_secs: config.http.retry_after_secs,
            body_timeout: Duration::from_secs(config.http.body_timeout_secs),
        }
    }
}

/// The public API, behind its edge (`edge.rs`): each route's caller is
/// known (`caller.rs`) and its body bounded before the handler reads it.
pub fn router(state: Arc<ApiState>, callers: Arc<Callers>, config: &CollectorConfig) -> Router {
    let http = &config.http;
    let events = post(post_events)
        .layer(edge::body_limit(http.max_body_bytes))
        .layer(from_fn_with_state(callers.clone(), caller::server));
    let collect = post(post_collect)
        .layer(edge::body_limit(http.max_beacon_bytes))
        .layer(from_fn_with_state(callers.clone(), caller::browser));
    let preflight = move |uri: Uri, headers: HeaderMap| async move {
        preflight_collect(&callers, &uri, &headers)
    };
    let routes = Router::new()
        .route("/v1/events", events)
        .route("/v1/collect", collect.options(preflight))
        .route("/v1/tag.js", get(crate::tag::get_tag))
        .with_state(state.clone());
    let broker_wait = Duration::from_millis(config.kafka.delivery_timeout_ms);
    edge::guard(routes, http, broker_wait, state.metrics.clone())
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
    // The route's body limit and idle timeout bound the read (`edge.rs`),
    // and this its whole time.
    let bytes = tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, usize::MAX))
        .await
        .map_err(|_| {
            state.metrics.refused("timeout");
            refuse(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body took too long to arrive",
            )
        })?
        .map_err(|e| body_error(state, &e))?;
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

/// Why a body could not be read: too large (the route's limit), too slow
/// (the idle timeout), or the connection failed.
fn body_error(state: &ApiState, e: &axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            state.metrics.refused("body_too_large");
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds this endpoint's limit",
            );
        }
        if s.is::<tower_http::timeout::TimeoutError>() {
            state.metrics.refused("timeout");
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stopped arriving",
            );
        }
        source = s.source();
    }
    refuse(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        "the request body could not be read",
    )
}

/// One event or `{"events": [...]}` of at most `max_events`.
fn split(
    max_events: usize,
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
            if events.len() > max_events {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_events",
                    format!(
                        "{} events in one request; at most {max_events}",
                        events.len(),
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
    caller: &Caller,
    source: Option<Source>,
) -> Response {
    let ctx = EventContext {
        tenant: &caller.tenant,
        default_source: source.unwrap_or(Source::Server),
        required_source: source,
        now_ms: now_millis(),
        signer: caller.signer.as_deref(),
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

async fn post_events(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    let max = state.max_batch_events;
    match read_json(&state, body).await.and_then(|b| split(max, b)) {
        Ok(s) => submit(&state, "events", s, &caller, None).await,
        Err(e) => e.into_response(),
    }
}

/// A beacon: sendBeacon posts text/plain (a CORS "simple" request, no
/// preflight), so the body is JSON whatever the Content-Type says.
async fn post_collect(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let max = state.max_beacon_events;
    let mut submission = match read_json(&state, body).await.and_then(|b| split(max, b)) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if let Some(ua) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        match &mut submission {
            Submission::Single(v) => default_user_agent(v, ua),
            Submission::Batch(vs) => vs.iter_mut().for_each(|v| default_user_agent(v, ua)),
        }
    }
    submit(
        &state,
        "collect",
        submission,
        &caller,
        Some(Source::Browser),
    )
    .await
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

/// CORS preflight (fetch() with application/json triggers one). The key may
/// be in the query string; without it, any configured origin may proceed and
/// the POST itself is checked against its key.
fn preflight_collect(callers: &Callers, uri: &Uri, headers: &HeaderMap) -> Response {
    let site_key = caller::site_key(uri.query());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let method_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.eq_ignore_ascii_case(Method::POST.as_str()));
    let allowed = origin.is_some_and(|o| callers.origin_allowed(site_key.as_deref(), o));
    match (origin, allowed && method_ok) {
        (Some(o), true) => {
            let mut r = caller::allow_origin(StatusCode::NO_CONTENT.into_response(), o);
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
