//! The sandbox's Prometheus metrics (`postback_sandbox_*`). Labels are
//! platform, outcome, reason and fault: small fixed sets, never ids.

use postback_core::metrics::{latency_buckets, ServiceMetrics};
use prometheus::{HistogramVec, IntCounterVec};

#[derive(Clone)]
pub struct SandboxMetrics {
    /// Platform API requests by platform and outcome (accepted, partial,
    /// rejected, unauthenticated, throttled, outage, injected_error).
    pub requests: IntCounterVec,
    /// Events by platform and outcome (accepted, duplicate, rejected).
    pub events: IntCounterVec,
    /// Rejections by platform and the platform's error code.
    pub rejections: IntCounterVec,
    /// Faults served by platform and kind (outage, throttle, 500, 503).
    pub faults: IntCounterVec,
    pub request_seconds: HistogramVec,
    /// OAuth token requests by outcome (issued or the OAuth error).
    pub oauth: IntCounterVec,
}

impl SandboxMetrics {
    pub fn new(m: &ServiceMetrics) -> Self {
        SandboxMetrics {
            requests: m.counter_vec(
                "requests_total",
                "Platform API requests answered, by platform and outcome.",
                &["platform", "outcome"],
            ),
            events: m.counter_vec(
                "events_total",
                "Events received, by platform and outcome.",
                &["platform", "outcome"],
            ),
            rejections: m.counter_vec(
                "rejections_total",
                "Rejected requests or rows, by platform and platform error code.",
                &["platform", "reason"],
            ),
            faults: m.counter_vec(
                "faults_total",
                "Injected faults served, by platform and kind.",
                &["platform", "fault"],
            ),
            request_seconds: m.histogram_vec(
                "request_duration_seconds",
                "Time to answer a platform API request, injected latency included.",
                &["platform"],
                latency_buckets(),
            ),
            oauth: m.counter_vec(
                "oauth_token_requests_total",
                "OAuth token requests, by outcome.",
                &["outcome"],
            ),
        }
    }
}
