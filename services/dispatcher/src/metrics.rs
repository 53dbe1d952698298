//! The dispatcher's metrics. Labels are the platform, an outcome and a
//! reason from the platform's own bounded vocabulary of codes; never an
//! event id, a tenant or an account id.

use postback_core::metrics::{batch_size_buckets, latency_buckets, ServiceMetrics};
use postback_core::Platform;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

#[derive(Clone)]
pub struct DispatchMetrics {
    platform: &'static str,
    requests: IntCounterVec,
    events: IntCounterVec,
    batch_size: Histogram,
    quota_wait: Histogram,
    retries: IntCounterVec,
    pub in_flight: IntGauge,
    pub pending: IntGauge,
    latency: Histogram,
    pub isolation_requests: IntCounter,
    pub paused: IntGauge,
    pub quota_share: IntGauge,
    pub lag: IntGaugeVec,
    pub rebalances: IntCounterVec,
    pub commits: IntCounterVec,
    deferred: IntCounterVec,
}

impl DispatchMetrics {
    pub fn new(m: &ServiceMetrics, platform: Platform) -> Self {
        let p = platform.as_str();
        let quota_wait_buckets = vec![
            0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        DispatchMetrics {
            platform: p,
            requests: m.counter_vec(
                "requests_total",
                "Requests to the platform, by outcome (accepted, partial, rejected, throttled, transient).",
                &["platform", "outcome"],
            ),
            events: m.counter_vec(
                "events_total",
                "Conversions by outcome (delivered, rejected, expired, failed, not_eligible, retrying) and the platform's reason code.",
                &["platform", "outcome", "reason"],
            ),
            batch_size: m
                .histogram_vec(
                    "batch_size_events",
                    "Events per request to the platform.",
                    &["platform"],
                    batch_size_buckets(),
                )
                .with_label_values(&[p]),
            quota_wait: m
                .histogram_vec(
                    "quota_wait_seconds",
                    "Time a request waited for its account's quota (pacing and throttle pauses).",
                    &["platform"],
                    quota_wait_buckets,
                )
                .with_label_values(&[p]),
            retries: m.counter_vec(
                "retries_total",
                "Conversions scheduled for another attempt, by why (throttled, transient, row).",
                &["platform", "reason"],
            ),
            in_flight: m
                .gauge_vec(
                    "in_flight_requests",
                    "Requests to the platform awaiting an answer.",
                    &["platform"],
                )
                .with_label_values(&[p]),
            pending: m
                .gauge_vec(
                    "pending_events",
                    "Conversions read and not yet committed with their outcome.",
                    &["platform"],
                )
                .with_label_values(&[p]),
            latency: m
                .histogram_vec(
                    "request_duration_seconds",
                    "Platform answer time per request.",
                    &["platform"],
                    latency_buckets(),
                )
                .with_label_values(&[p]),
            isolation_requests: m
                .counter_vec(
                    "isolation_requests_total",
                    "Requests sent to find the bad events of a rejected batch.",
                    &["platform"],
                )
                .with_label_values(&[p]),
            paused: m
                .gauge_vec(
                    "consumer_paused",
                    "1 while consumption is paused because too many conversions are pending.",
                    &["platform"],
                )
                .with_label_values(&[p]),
            quota_share: m
                .gauge_vec(
                    "quota_share_permille",
                    "This instance's share of every account quota, in thousandths (its share of the partitions).",
                    &["platform"],
                )
                .with_label_values(&[p]),
            lag: m.gauge_vec(
                "consumer_lag_records",
                "Records between the partition's readable end and this consumer's position, per assigned partition (dispatch and retry topics).",
                &["topic", "partition"],
            ),
            rebalances: m.counter_vec(
                "consumer_rebalances_total",
                "Rebalance events, by kind (assign, revoke, error).",
                &["kind"],
            ),
            commits: m.counter_vec(
                "transactions_total",
                "Commits of outcomes with their input offsets, by outcome (committed, aborted, fenced).",
                &["outcome"],
            ),
            deferred: m.counter_vec(
                "deferred_events_total",
                "Conversions put on the retry path without a request, by why (account_paused, account_busy, not_due).",
                &["platform", "reason"],
            ),
        }
        .labelled()
    }

    // Pre-creates the series dashboards alert on, so they read 0, not absent.
    fn labelled(self) -> Self {
        for outcome in ["accepted", "partial", "rejected", "throttled", "transient"] {
            self.requests.with_label_values(&[self.platform, outcome]);
        }
        for reason in ["throttled", "transient", "row"] {
            self.retries.with_label_values(&[self.platform, reason]);
        }
        for reason in ["account_paused", "account_busy", "not_due"] {
            self.deferred.with_label_values(&[self.platform, reason]);
        }
        for outcome in ["committed", "aborted", "fenced"] {
            self.commits.with_label_values(&[outcome]);
        }
        self
    }

    pub fn request(&self, outcome: &str, events: usize, seconds: f64) {
        self.requests
            .with_label_values(&[self.platform, outcome])
            .inc();
        self.batch_size.observe(events as f64);
        self.latency.observe(seconds);
    }

    pub fn quota_wait(&self, seconds: f64) {
        self.quota_wait.observe(seconds);
    }

    pub fn events(&self, outcome: &str, reason: &str, n: usize) {
        self.events
            .with_label_values(&[self.platform, outcome, reason])
            .inc_by(n as u64);
    }

    pub fn deferred(&self, reason: &str) {
        self.deferred
            .with_label_values(&[self.platform, reason])
            .inc();
    }

    pub fn retries(&self, reason: &str, n: usize) {
        self.retries
            .with_label_values(&[self.platform, reason])
            .inc_by(n as u64);
    }
}
