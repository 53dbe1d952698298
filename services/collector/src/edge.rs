//! The public edge: what every request to the API meets, outermost first.
//! Before any of it, a connection must send each request's head within
//! `postback_core::serve::HEADER_READ_TIMEOUT` (the server, not a layer).
//!
//! 1. A concurrency limit with load shedding (tower's): past
//!    `http.max_concurrent_requests` in progress, 503 with Retry-After at
//!    once instead of a queue. It bounds memory: each request holds at
//!    most its body limit.
//! 2. Timeouts on the body, so a slow client gives its slot back: between
//!    its pieces (tower-http's, 408) and over all of it (`api::read_json`,
//!    408). Waiting for the broker after it is bounded by the producer's
//!    delivery timeout and answered 503; tower's timeout over the whole
//!    request, their sum and a margin, is only a backstop (503 with
//!    Retry-After too: nothing says the events were stored).
//! 3. Per route, the caller (`caller.rs`): the key checked and its rate
//!    spent from the request's head, before the body is read.
//! 4. Per route, the body limit (tower-http's): `max_beacon_bytes` for
//!    beacons, `max_body_bytes` for servers; a Content-Length above it is
//!    refused unread (413).

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::load_shed::LoadShedLayer;
use tower::timeout::error::Elapsed;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::ErrorBody;
use crate::config::HttpConfig;
use crate::metrics::CollectorMetrics;

/// `router` behind the edge's shared layers (1 and 2).
pub fn guard(
    router: Router,
    http: &HttpConfig,
    broker_wait: Duration,
    metrics: CollectorMetrics,
) -> Router {
    let backstop =
        Duration::from_secs(http.body_timeout_secs) + broker_wait + Duration::from_secs(5);
    let retry_after = http.retry_after_secs;
    let overloaded = move |e: BoxError| {
        let metrics = metrics.clone();
        async move { overload_answer(&e, retry_after, &metrics) }
    };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(http.max_concurrent_requests));
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(semaphore))
            .layer(TimeoutLayer::new(backstop))
            .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
                http.body_idle_timeout_secs,
            ))),
    )
}

/// The body limit of one route (4).
pub fn body_limit(bytes: usize) -> RequestBodyLimitLayer {
    RequestBodyLimitLayer::new(bytes)
}

/// The answer to an error of the shared layers: shed (full) or past the
/// backstop timeout, both 503 with Retry-After, as nothing counts as stored.
fn overload_answer(e: &BoxError, retry_after: u64, metrics: &CollectorMetrics) -> Response {
    let (reason, error, message) = if e.is::<Overloaded>() {
        (
            "overloaded",
            "overloaded",
            "the collector is at its limit of requests in progress; retry after the time in Retry-After",
        )
    } else if e.is::<Elapsed>() {
        (
            "timeout",
            "unavailable",
            "the request was not answered in time; nothing in it counts as stored: retry after the time in Retry-After",
        )
    } else {
        tracing::error!(error = %e, "unexpected error from the edge's layers");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    metrics.refused(reason);
    let body = ErrorBody {
        error: error.into(),
        message: message.into(),
    };
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
    r
}
