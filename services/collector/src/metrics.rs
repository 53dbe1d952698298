//! The collector's own metrics (the consumer loop and ops server add theirs).

use postback_core::metrics::{latency_buckets, ServiceMetrics};
use std::time::Instant;

use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec};

#[derive(Clone)]
pub struct CollectorMetrics {
    /// HTTP requests by endpoint and status code.
    pub requests: IntCounterVec,
    /// Events by endpoint (events, collect, ingest) and outcome (accepted, rejected, unavailable).
    pub events: IntCounterVec,
    /// Time to answer, by endpoint.
    pub request_seconds: HistogramVec,
    /// Writes the broker did not take, by reason (queue_full, not_acknowledged, broker_down).
    pub publish_failures: IntCounterVec,
    /// Requests the public edge refused before their body was read or in
    /// its reading, by reason (overloaded, timeout, rate_limited,
    /// unauthorized, origin_required, origin_not_allowed, body_too_large).
    pub refusals: IntCounterVec,
}

impl CollectorMetrics {
    pub fn new(m: &ServiceMetrics) -> Self {
        CollectorMetrics {
            requests: m.counter_vec(
                "http_requests_total",
                "HTTP requests answered, by endpoint and status code.",
                &["endpoint", "status"],
            ),
            events: m.counter_vec(
                "events_total",
                "Conversions received, by endpoint and outcome.",
                &["endpoint", "outcome"],
            ),
            request_seconds: m.histogram_vec(
                "http_request_duration_seconds",
                "Time from request to answer, including the broker acknowledgement.",
                &["endpoint"],
                latency_buckets(),
            ),
            publish_failures: m.counter_vec(
                "publish_failures_total",
                "Conversions the broker did not acknowledge, by reason.",
                &["reason"],
            ),
            refusals: m.counter_vec(
                "edge_refusals_total",
                "Requests the public edge refused, by reason.",
                &["reason"],
            ),
        }
    }

    /// Counts a request the edge refused, by `reason`.
    pub fn refused(&self, reason: &str) {
        self.refusals.with_label_values(&[reason]).inc();
    }

    pub fn observe(&self, endpoint: &'static str, started: Instant, response: &Response) {
        self.requests
            .with_label_values(&[endpoint, response.status().as_str()])
            .inc();
        self.request_seconds
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
    }
}
