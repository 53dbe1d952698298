//! What librdkafka tells the consumer loop from inside a poll: partitions
//! that moved (cooperative rebalancing: only those), consumer lag, and
//! commit failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus::{IntCounterVec, IntGaugeVec};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientContext;

use crate::kafka::handler::TopicPartition;
use crate::kafka::lag::LagReporter;
use crate::metrics::ServiceMetrics;

/// A rebalance as the loop hands it on, in the order they happened.
#[derive(Debug)]
pub(crate) enum AssignmentChange {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

/// Rebalance bookkeeping and lag reporting, called from inside polls.
pub struct LoopContext {
    revocations: AtomicU64,
    changes: Mutex<Vec<AssignmentChange>>,
    lag: LagReporter,
    rebalances: IntCounterVec,
    assigned: IntGaugeVec,
}

impl LoopContext {
    pub(crate) fn new(metrics: &ServiceMetrics) -> Self {
        LoopContext {
            revocations: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
            lag: LagReporter::new(metrics.gauge_vec(
                "consumer_lag_records",
                "Records between the partition's readable end and this consumer's position, per assigned partition.",
                &["topic", "partition"],
            )),
            rebalances: metrics.counter_vec(
                "consumer_rebalances_total",
                "Rebalance events, by kind (assign, revoke, error).",
                &["kind"],
            ),
            assigned: metrics.gauge_vec(
                "consumer_assigned_partitions",
                "Partitions this instance owns, per topic.",
                &["topic"],
            ),
        }
    }

    /// How many revocations happened so far (to tell whether the batch or
    /// the held batches may hold records of a partition no longer owned).
    pub(crate) fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }

    fn record_change(&self, change: AssignmentChange) {
        match self.changes.lock() {
            Ok(mut changes) => changes.push(change),
            Err(poisoned) => poisoned.into_inner().push(change),
        }
    }

    pub(crate) fn take_changes(&self) -> Vec<AssignmentChange> {
        match self.changes.lock() {
            Ok(mut changes) => std::mem::take(&mut *changes),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.report(&statistics);
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.revocations.fetch_add(1, Ordering::SeqCst);
                self.rebalances.with_label_values(&["revoke"]).inc();
                tracing::info!(partitions = %describe(tpl), lost = consumer.assignment_lost(),
                    "partitions revoked");
                self.record_change(AssignmentChange::Revoked(partitions_of(tpl)));
            }
            Rebalance::Assign(tpl) => {
                self.rebalances.with_label_values(&["assign"]).inc();
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
                self.record_change(AssignmentChange::Assigned(partitions_of(tpl)));
            }
            Rebalance::Error(e) => {
                self.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.assigned.reset();
        if let Ok(tpl) = consumer.assignment() {
            let mut per_topic: BTreeMap<String, i64> = BTreeMap::new();
            for e in tpl.elements() {
                *per_topic.entry(e.topic().to_string()).or_default() += 1;
            }
            for (topic, n) in per_topic {
                self.assigned.with_label_values(&[topic.as_str()]).set(n);
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; records since the last commit may be replayed")
            }
        }
    }
}

pub(crate) fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

pub(crate) fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}
