//! The collector's own metrics (the consumer loop and ops server add theirs).

use postback_core::metrics::{latency_buckets, ServiceMetrics};
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
        }
    }
}
