//! The public edge: what every request to the API meets, outermost first.
//!
//! 1. A concurrency limit with load shedding (tower's): past
//!    `http.max_concurrent_requests` in progress, 503 with Retry-After at
//!    once instead of a queue. It bounds memory: each request holds at
//!    most its body limit.
//! 2. A timeout over the whole request, body and broker acknowledgement
//!    included (408), and one between the pieces of a body (408), so a
//!    slow client gives its slot back (tower-http's).
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
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::api::ErrorBody;
use crate::config::HttpConfig;
use crate::metrics::CollectorMetrics;

/// `router` behind the edge's shared layers (1 and 2).
pub fn guard(router: Router, http: &HttpConfig, metrics: CollectorMetrics) -> Router {
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
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(http.request_timeout_secs),
            ))
            .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
                http.body_idle_timeout_secs,
            ))),
    )
}

/// The body limit of one route (4).
pub fn body_limit(bytes: usize) -> RequestBodyLimitLayer {
    RequestBodyLimitLayer::new(bytes)
}

fn overload_answer(e: &BoxError, retry_after: u64, metrics: &CollectorMetrics) -> Response {
    if e.is::<Overloaded>() {
        metrics.refusals.with_label_values(&["overloaded"]).inc();
        let body = ErrorBody {
            error: "overloaded".into(),
            message: "the collector is at its limit of requests in progress; retry after the time in Retry-After".into(),
        };
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        return r;
    }
    tracing::error!(error = %e, "unexpected error from the edge's layers");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}
