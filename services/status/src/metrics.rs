//! The status service's own metrics (the consumer loop adds its
//! `postback_status_consumer_*`).

use postback_core::metrics::ServiceMetrics;
use prometheus::{Histogram, IntCounter, IntCounterVec};

#[derive(Clone)]
pub struct StatusMetrics {
    /// Status records folded into the store, per outcome.
    pub records: IntCounterVec,
    pub batch_writes: IntCounter,
    pub write_seconds: Histogram,
    pub commit_seconds: Histogram,
    /// API requests, per endpoint and status class.
    pub requests: IntCounterVec,
    pub request_seconds: prometheus::HistogramVec,
}

impl StatusMetrics {
    pub fn new(m: &ServiceMetrics) -> Self {
        StatusMetrics {
            records: m.counter_vec(
                "records_total",
                "Status records read, by outcome (stored, dead_lettered).",
                &["outcome"],
            ),
            batch_writes: m.counter("store_writes_total", "Batches written to the store."),
            write_seconds: m.histogram(
                "store_write_duration_seconds",
                "Time to write one batch to the store, retries included.",
                postback_core::metrics::latency_buckets(),
            ),
            commit_seconds: m.histogram(
                "store_commit_duration_seconds",
                "Time to commit the writes of the batches a transaction held.",
                postback_core::metrics::latency_buckets(),
            ),
            requests: m.counter_vec(
                "http_requests_total",
                "API requests, by endpoint and HTTP status.",
                &["endpoint", "status"],
            ),
            request_seconds: m.histogram_vec(
                "http_request_duration_seconds",
                "Time to answer an API request, by endpoint.",
                &["endpoint"],
                postback_core::metrics::latency_buckets(),
            ),
        }
    }
}
