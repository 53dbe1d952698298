//! The deduplicator's metrics (the consumer loop adds lag, batches and
//! rebalances under the same prefix).

use postback_core::metrics::ServiceMetrics;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

#[derive(Clone)]
pub struct DedupMetrics {
    /// Reports by what became of them: held, merged, duplicate, emitted
    /// (sent on at once, no merge window), replayed (already applied).
    pub reports: IntCounterVec,
    pub emitted: IntCounterVec,
    pub not_eligible: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub merges: IntCounterVec,
    pub held: IntGauge,
    pub state_keys: IntGauge,
    pub state_disk_bytes: IntGauge,
    pub restore_seconds: Histogram,
    pub restored_records: IntCounter,
    pub restore_skipped: IntCounterVec,
    pub hold_seconds: Histogram,
    pub dead_letters: IntCounterVec,
}

impl DedupMetrics {
    pub fn new(m: &ServiceMetrics) -> Self {
        DedupMetrics {
            reports: m.counter_vec(
                "reports_total",
                "Reports consumed, by outcome (held, merged, duplicate, emitted, replayed).",
                &["outcome"],
            ),
            emitted: m.counter_vec(
                "emitted_total",
                "Conversions sent on to a platform's dispatch topic, by platform.",
                &["platform"],
            ),
            not_eligible: m.counter_vec(
                "not_eligible_total",
                "Emitted conversions a configured platform will not get, by platform and reason.",
                &["platform", "reason"],
            ),
            duplicates: m.counter_vec(
                "duplicates_total",
                "Reports of an already emitted conversion, by the source that sent them.",
                &["source"],
            ),
            merges: m.counter_vec(
                "merges_total",
                "Reports merged into a held conversion, by the source of the merged-in report.",
                &["source"],
            ),
            held: m.gauge(
                "held_conversions",
                "Conversions waiting for their merge window to close.",
            ),
            state_keys: m.gauge(
                "state_keys",
                "Keys in the state store of the owned partitions (approximate).",
            ),
            state_disk_bytes: m.gauge("state_disk_bytes", "Disk used by the state store."),
            restore_seconds: m.histogram(
                "restore_duration_seconds",
                "Time to bring one partition's state up to date from the changelog.",
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0],
            ),
            restored_records: m.counter(
                "restored_records_total",
                "Changelog records applied while restoring partitions.",
            ),
            restore_skipped: m.counter_vec(
                "restore_skipped_records_total",
                "Changelog records a restore could not read, by reason.",
                &["reason"],
            ),
            hold_seconds: m.histogram(
                "hold_duration_seconds",
                "Time from a conversion's first report to its emission.",
                // The merge window (seconds) and the browser's wait (minutes).
                vec![
                    0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                    3600.0, 21600.0,
                ],
            ),
            dead_letters: m.counter_vec(
                "dead_letters_total",
                "Records sent to the rejected topic, by reason.",
                &["reason"],
            ),
        }
    }
}
