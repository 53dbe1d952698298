//! Consumer lag, per assigned partition, from librdkafka's statistics.
//!
//! librdkafka's own `consumer_lag` counts from the offset the consumer
//! committed itself. postback's stages commit their offsets inside producer
//! transactions, which the consumer never hears of, so that figure stays
//! where the last assignment left it (and has no value at all for a new
//! group). The lag here is the distance from the partition's readable end
//! (the last stable offset under read_committed) to the next record this
//! consumer will read: what a stage still has to work through, the figure
//! an alert on a growing backlog wants. A caught-up partition whose writer
//! uses transactions shows 1: the commit marker after the last record takes
//! an offset the consumer never reads.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus::IntGaugeVec;
use rdkafka::statistics::{Partition, Statistics};

/// Sets a `topic`/`partition` lag gauge from each statistics report, and
/// removes the series of partitions this client no longer reads.
///
/// Several clients may share one gauge (the dispatcher's main and retry
/// consumers): each reporter removes only the series it set itself.
pub struct LagReporter {
    gauge: IntGaugeVec,
    reported: Mutex<BTreeSet<(String, String)>>,
}

impl LagReporter {
    pub fn new(gauge: IntGaugeVec) -> Self {
        LagReporter {
            gauge,
            reported: Mutex::new(BTreeSet::new()),
        }
    }

    /// Called from librdkafka's statistics callback (`statistics.interval.ms`).
    pub fn report(&self, statistics: &Statistics) {
        let mut now = BTreeSet::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if let Some(lag) = records_behind(p) {
                    let labels = (topic.clone(), partition.to_string());
                    self.gauge
                        .with_label_values(&[labels.0.as_str(), labels.1.as_str()])
                        .set(lag);
                    now.insert(labels);
                }
            }
        }
        let mut reported = match self.reported.lock() {
            Ok(reported) => reported,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (topic, partition) in reported.difference(&now) {
            let _ = self.gauge.remove_label_values(&[topic, partition]);
        }
        *reported = now;
    }
}

/// Records between a partition's readable end and this consumer's position,
/// or None for a partition it does not read (librdkafka lists every
/// partition of a subscribed topic; `desired` marks the assigned ones) or
/// whose end is not known yet.
pub(crate) fn records_behind(p: &Partition) -> Option<i64> {
    if p.partition < 0 || !p.desired {
        return None;
    }
    // Under read_committed the last stable offset is the end a consumer can
    // reach; librdkafka reports -1 there for a read_uncommitted consumer.
    let end = if p.ls_offset >= 0 {
        p.ls_offset
    } else {
        p.hi_offset
    };
    if end < 0 {
        return None;
    }
    // The next offset handed to the application; before the first record
    // since the assignment, the group's committed offset (fetched at
    // assignment); for a group that never committed, the log start
    // (auto.offset.reset = earliest).
    let position = [p.app_offset, p.committed_offset, p.lo_offset]
        .into_iter()
        .find(|o| *o >= 0)?;
    Some((end - position).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Opts, Registry};

    fn partition(id: i32, ls: i64, app: i64, committed: i64, lo: i64) -> Partition {
        Partition {
            partition: id,
            desired: true,
            hi_offset: ls,
            ls_offset: ls,
            app_offset: app,
            committed_offset: committed,
            lo_offset: lo,
            // What librdkafka reports while offsets are committed in
            // transactions: its own figure frozen at the assignment.
            consumer_lag: 7,
            ..Partition::default()
        }
    }

    #[test]
    fn counts_from_the_position_not_from_the_consumers_own_commits() {
        assert_eq!(records_behind(&partition(0, 1000, 400, 100, 0)), Some(600));
        // Nothing read since the assignment: the group's committed offset.
        assert_eq!(records_behind(&partition(0, 1000, -1, 900, 0)), Some(100));
        // A new group: the log start.
        assert_eq!(
            records_behind(&partition(0, 1000, -1, -1001, 10)),
            Some(990)
        );
        // Caught up (a transaction marker makes the end pass the position).
        assert_eq!(records_behind(&partition(0, 1000, 1001, 900, 0)), Some(0));
    }

    #[test]
    fn skips_partitions_not_assigned_or_not_known() {
        let mut unassigned = partition(0, 1000, 400, 100, 0);
        unassigned.desired = false;
        assert_eq!(records_behind(&unassigned), None);
        assert_eq!(records_behind(&partition(-1, 1000, 400, 100, 0)), None);
        assert_eq!(records_behind(&partition(0, -1, 400, 100, 0)), None);
        let mut uncommitted = partition(0, -1, 400, 100, 0);
        uncommitted.hi_offset = 450;
        assert_eq!(records_behind(&uncommitted), Some(50));
    }

    fn statistics(topic: &str, partitions: &[Partition]) -> Statistics {
        let mut s = Statistics::default();
        let mut t = rdkafka::statistics::Topic {
            topic: topic.into(),
            ..Default::default()
        };
        for p in partitions {
            t.partitions.insert(p.partition, p.clone());
        }
        s.topics.insert(topic.into(), t);
        s
    }

    #[test]
    fn two_reporters_on_one_gauge_remove_only_their_own_series() {
        let gauge = IntGaugeVec::new(Opts::new("lag", "lag"), &["topic", "partition"]).unwrap();
        Registry::new().register(Box::new(gauge.clone())).unwrap();
        let main = LagReporter::new(gauge.clone());
        let retries = LagReporter::new(gauge.clone());
        main.report(&statistics(
            "dispatch.meta",
            &[partition(0, 10, 4, -1, 0), partition(1, 10, 10, -1, 0)],
        ));
        retries.report(&statistics(
            "dispatch.meta.retry",
            &[partition(0, 5, 2, -1, 0)],
        ));
        assert_eq!(gauge.with_label_values(&["dispatch.meta", "0"]).get(), 6);
        assert_eq!(
            gauge.with_label_values(&["dispatch.meta.retry", "0"]).get(),
            3
        );

        // Partition 1 moved away: its series goes, the retry consumer's stays.
        main.report(&statistics("dispatch.meta", &[partition(0, 12, 4, -1, 0)]));
        assert!(gauge.remove_label_values(&["dispatch.meta", "1"]).is_err());
        assert_eq!(gauge.with_label_values(&["dispatch.meta", "0"]).get(), 8);
        assert_eq!(
            gauge.with_label_values(&["dispatch.meta.retry", "0"]).get(),
            3
        );
    }
}
