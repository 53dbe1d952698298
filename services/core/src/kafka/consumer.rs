//! The at-least-once consumer loop every stage runs.
//!
//! It works in batches: take what the broker has (up to `max_batch`), hand
//! each record to the stage's handler, write every output (or dead letter)
//! and wait until the broker acknowledged all of them, and only then store the
//! batch's offsets for the next commit. Two properties follow:
//!
//! - Nothing is committed past a record whose effect is not durable. A crash
//!   replays at most the last uncommitted batches; stages are idempotent.
//! - Nothing is in flight while the consumer polls, and rebalances only happen
//!   inside a poll. So a revoked partition never has half-done work, and no
//!   offset is stored for a partition this instance no longer owns: records
//!   fetched for a partition revoked while the batch was being collected are
//!   dropped from the batch (the new owner reads them again).
//!
//! Per-partition order holds because a batch is handled in fetch order and
//! the idempotent producer keeps the order of what it writes.
//!
//! Stateful stages get three more hooks (all optional): assignment changes,
//! delivered to the handler after the poll that caused them and before any
//! record of a newly assigned partition is handled (state restores there);
//! a periodic `tick` for time-driven outputs, delivered like any other; and
//! the acknowledgement of every output, with where it landed, before offsets
//! are stored (state that mirrors a changelog is made durable there).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGaugeVec};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::client_config::consumer_config;
use crate::kafka::producer::{Delivered, OutboundRecord, Producer};
use crate::metrics::{batch_size_buckets, latency_buckets, ServiceMetrics};

/// One consumed record, detached from the consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Broker or producer timestamp, Unix milliseconds.
    pub timestamp: Option<i64>,
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

/// Why a stateful handler cannot go on (its store failed, a restore
/// stalled). The loop stops without storing the offsets of the batch in hand.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A stage's logic: what one input record becomes. Anything the stage cannot
/// process becomes a dead letter pushed to `out` like any other output, so a
/// poison record never stops its partition.
///
/// The other methods are for stateful stages; stateless ones leave them be.
pub trait RecordHandler: Send {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>);

    /// This instance now owns `partitions`. Called before any of their
    /// records is handled. An error stops the loop: the instance leaves the
    /// group and its partitions move to another one.
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) -> Result<(), HandlerError> {
        Ok(())
    }

    /// This instance no longer owns `partitions`; none of their records is
    /// handled any more, and nothing of theirs is in flight.
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}

    /// How often `tick` runs; None (the default) never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Time-driven outputs (a window closing), delivered and acknowledged
    /// like the outputs of records.
    fn tick(&mut self, _out: &mut Vec<OutboundRecord>) {}

    /// Every output pushed since the last call is acknowledged;
    /// `deliveries[i]` is where the i-th one landed (partition -1 for an
    /// output dropped because the broker can never take it). An error stops the loop
    /// before the batch's offsets are stored.
    fn on_acknowledged(&mut self, _deliveries: &[Delivered]) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A rebalance as the loop hands it on, in the order they happened.
#[derive(Debug)]
enum AssignmentChange {
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
}

#[derive(Debug, Clone)]
pub struct ConsumerLoopConfig {
    pub group_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    /// Most records handled (and acknowledged) as one unit.
    pub max_batch: usize,
    /// How long to wait for more records once one arrived.
    pub linger: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerLoopError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
    #[error("cannot take over partitions {partitions}: {source}")]
    Assign {
        partitions: String,
        #[source]
        source: HandlerError,
    },
    #[error("the stage cannot go on: {0}")]
    Handler(#[source] HandlerError),
}

struct LoopMetrics {
    records: IntCounterVec,
    batches: IntCounter,
    batch_size: Histogram,
    batch_seconds: Histogram,
    produced: IntCounterVec,
    delivery_retries: IntCounter,
    dropped_outputs: IntCounterVec,
    dropped_revoked: IntCounter,
    receive_errors: IntCounter,
}

impl LoopMetrics {
    fn new(m: &ServiceMetrics) -> Self {
        LoopMetrics {
            records: m.counter_vec(
                "consumer_records_total",
                "Records consumed and handled, by input topic.",
                &["topic"],
            ),
            batches: m.counter("consumer_batches_total", "Batches handled and acknowledged."),
            batch_size: m.histogram(
                "consumer_batch_size_records",
                "Records per handled batch.",
                batch_size_buckets(),
            ),
            batch_seconds: m.histogram(
                "consumer_batch_duration_seconds",
                "Time from a batch's first record to all its outputs acknowledged.",
                latency_buckets(),
            ),
            produced: m.counter_vec(
                "produced_records_total",
                "Records written and acknowledged, by output topic.",
                &["topic"],
            ),
            delivery_retries: m.counter(
                "delivery_retries_total",
                "Times a batch's outputs were re-sent after the broker did not acknowledge them.",
            ),
            dropped_outputs: m.counter_vec(
                "dropped_outputs_total",
                "Outputs the broker can never take (larger than it accepts), dropped so the partition goes on, by topic.",
                &["topic"],
            ),
            dropped_revoked: m.counter(
                "consumer_revoked_records_total",
                "Fetched records dropped because their partition was revoked before they were handled.",
            ),
            receive_errors: m.counter(
                "consumer_errors_total",
                "Errors reported by the consumer while fetching.",
            ),
        }
    }
}

/// Rebalance bookkeeping and lag reporting, called from inside polls.
pub struct LoopContext {
    revocations: AtomicU64,
    changes: Mutex<Vec<AssignmentChange>>,
    lag: IntGaugeVec,
    rebalances: IntCounterVec,
    assigned: IntGaugeVec,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.reset();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.revocations.fetch_add(1, Ordering::SeqCst);
                self.rebalances.with_label_values(&["revoke"]).inc();
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
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

impl LoopContext {
    fn record_change(&self, change: AssignmentChange) {
        match self.changes.lock() {
            Ok(mut changes) => changes.push(change),
            Err(poisoned) => poisoned.into_inner().push(change),
        }
    }

    fn take_changes(&self) -> Vec<AssignmentChange> {
        match self.changes.lock() {
            Ok(mut changes) => std::mem::take(&mut *changes),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

pub struct ConsumerLoop {
    consumer: StreamConsumer<LoopContext>,
    producer: Producer,
    config: ConsumerLoopConfig,
    metrics: LoopMetrics,
}

impl ConsumerLoop {
    pub fn new(
        kafka: &KafkaConfig,
        config: ConsumerLoopConfig,
        producer: Producer,
        metrics: &ServiceMetrics,
    ) -> Result<Self, ConsumerLoopError> {
        let context = LoopContext {
            revocations: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
            lag: metrics.gauge_vec(
                "consumer_lag_records",
                "Records behind the partition's high watermark, per assigned partition.",
                &["topic", "partition"],
            ),
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
        };
        let consumer: StreamConsumer<LoopContext> =
            consumer_config(kafka, &config.client_id, &config.group_id)
                .create_with_context(context)
                .map_err(ConsumerLoopError::Create)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| ConsumerLoopError::Subscribe {
                topics: config.topics.clone(),
                source,
            })?;
        Ok(ConsumerLoop {
            consumer,
            producer,
            config,
            metrics: LoopMetrics::new(metrics),
        })
    }

    /// Runs until `shutdown` is cancelled, then finishes the batch in hand,
    /// commits, and leaves the group.
    pub async fn run<H: RecordHandler>(
        self,
        handler: &mut H,
        shutdown: CancellationToken,
    ) -> Result<(), ConsumerLoopError> {
        let result = self.run_batches(handler, &shutdown).await;
        self.close();
        result
    }

    async fn run_batches<H: RecordHandler>(
        &self,
        handler: &mut H,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumerLoopError> {
        let mut batch: Vec<InboundRecord> = Vec::with_capacity(self.config.max_batch);
        let mut outputs: Vec<OutboundRecord> = Vec::new();
        let tick_interval = handler.tick_interval();
        let mut next_tick = tokio::time::Instant::now() + tick_interval.unwrap_or_default();
        loop {
            batch.clear();
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_tick), if tick_interval.is_some() => None,
                m = self.consumer.recv() => Some(m),
            };
            let started = Instant::now();
            let epoch = self.consumer.context().revocations.load(Ordering::SeqCst);
            match first {
                None => {}
                Some(Ok(m)) => {
                    batch.push(InboundRecord::detached(&m));
                    self.collect(&mut batch).await;
                }
                Some(Err(e)) => {
                    self.receive_error(e).await;
                    continue;
                }
            }
            self.hand_over_assignment(handler)?;
            if self.consumer.context().revocations.load(Ordering::SeqCst) != epoch {
                self.drop_revoked(&mut batch);
            }

            outputs.clear();
            for record in &batch {
                handler.handle(record, &mut outputs);
            }
            if let Some(interval) = tick_interval {
                if tokio::time::Instant::now() >= next_tick {
                    handler.tick(&mut outputs);
                    next_tick = tokio::time::Instant::now() + interval;
                }
            }
            if batch.is_empty() && outputs.is_empty() {
                continue;
            }
            let Some(deliveries) = self.deliver_in_order(&outputs, shutdown).await else {
                // Shut down while the broker would not take the outputs: the
                // batch's offsets stay uncommitted and it is replayed later.
                break;
            };
            handler
                .on_acknowledged(&deliveries)
                .map_err(ConsumerLoopError::Handler)?;
            if batch.is_empty() {
                continue;
            }
            count_by_topic(
                &self.metrics.records,
                batch.iter().map(|r| r.topic.as_str()),
            );
            self.store_offsets(&batch);
            self.metrics.batches.inc();
            self.metrics.batch_size.observe(batch.len() as f64);
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Adds what the broker has to `batch`, up to `max_batch`, waiting at
    /// most `linger` for it.
    async fn collect(&self, batch: &mut Vec<InboundRecord>) {
        let deadline = tokio::time::Instant::now() + self.config.linger;
        while batch.len() < self.config.max_batch {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => batch.push(InboundRecord::detached(&m)),
                Ok(Err(e)) => {
                    self.receive_error(e).await;
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// Tells the handler of the rebalances the last polls went through.
    fn hand_over_assignment<H: RecordHandler>(
        &self,
        handler: &mut H,
    ) -> Result<(), ConsumerLoopError> {
        for change in self.consumer.context().take_changes() {
            match change {
                AssignmentChange::Revoked(partitions) => handler.on_revoked(&partitions),
                AssignmentChange::Assigned(partitions) => handler
                    .on_assigned(&partitions)
                    .map_err(|source| ConsumerLoopError::Assign {
                        partitions: partitions
                            .iter()
                            .map(|p| format!("{}[{}]", p.topic, p.partition))
                            .collect::<Vec<_>>()
                            .join(","),
                        source,
                    })?,
            }
        }
        Ok(())
    }

    async fn receive_error(&self, e: KafkaError) {
        self.metrics.receive_errors.inc();
        tracing::warn!(error = %e, "consumer error");
        // Errors here are mostly broker connectivity; don't spin.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fn drop_revoked(&self, batch: &mut Vec<InboundRecord>) {
        let owned = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment; dropping the batch");
                self.metrics.dropped_revoked.inc_by(batch.len() as u64);
                batch.clear();
                return;
            }
        };
        let before = batch.len();
        batch.retain(|r| owned.find_partition(&r.topic, r.partition).is_some());
        self.metrics
            .dropped_revoked
            .inc_by((before - batch.len()) as u64);
    }

    /// Writes the outputs, the deferred ones only once all others are
    /// acknowledged; returns where each landed, in the order of `outputs`.
    async fn deliver_in_order(
        &self,
        outputs: &[OutboundRecord],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Delivered>> {
        if !outputs.iter().any(|o| o.deferred) {
            return self.deliver(outputs, shutdown).await;
        }
        let (deferred, first): (Vec<(usize, &OutboundRecord)>, Vec<_>) =
            outputs.iter().enumerate().partition(|(_, o)| o.deferred);
        let mut deliveries = vec![
            Delivered {
                partition: -1,
                offset: -1
            };
            outputs.len()
        ];
        for group in [first, deferred] {
            let records: Vec<OutboundRecord> = group.iter().map(|(_, o)| (*o).clone()).collect();
            let landed = self.deliver(&records, shutdown).await?;
            for ((i, _), d) in group.iter().zip(landed) {
                deliveries[*i] = d;
            }
        }
        Some(deliveries)
    }

    /// Writes every output, retrying from the first unacknowledged one until
    /// all are acknowledged, and returns where each landed. None if shutdown
    /// interrupted it.
    async fn deliver(
        &self,
        outputs: &[OutboundRecord],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Delivered>> {
        let mut deliveries = Vec::with_capacity(outputs.len());
        let mut start = 0;
        let mut backoff = Duration::from_millis(100);
        while start < outputs.len() {
            let results = self.producer.send_all(&outputs[start..]).await;
            let first_failure = results
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e.clone())));
            let acknowledged = first_failure.as_ref().map_or(results.len(), |(i, _)| *i);
            deliveries.extend(
                results[..acknowledged]
                    .iter()
                    .filter_map(|r| r.clone().ok()),
            );
            count_by_topic(
                &self.metrics.produced,
                outputs[start..start + acknowledged]
                    .iter()
                    .map(|o| o.topic.as_str()),
            );
            let Some((i, error)) = first_failure else {
                return Some(deliveries);
            };
            if !error.is_retriable() {
                // The broker can never take this record (too large): holding
                // the batch would stop the partition for good. Count it,
                // say which topic, and go on without it; its slot in the
                // deliveries is marked so a handler can tell.
                let dropped = &outputs[start + i];
                self.metrics
                    .dropped_outputs
                    .with_label_values(&[dropped.topic.as_str()])
                    .inc();
                tracing::error!(%error, topic = %dropped.topic, bytes = dropped.payload.len(),
                    "output can never be written; dropped");
                deliveries.push(Delivered {
                    partition: -1,
                    offset: -1,
                });
                start += i + 1;
                continue;
            }
            // Re-send from the first failure on, so that per-key order holds;
            // records after it that did land are written again (duplicates
            // are absorbed downstream, losses would not be).
            start += i;
            self.metrics.delivery_retries.inc();
            tracing::warn!(%error, pending = outputs.len() - start, retry_in_ms = backoff.as_millis() as u64,
                "outputs not acknowledged; holding the batch and retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        Some(deliveries)
    }

    fn store_offsets(&self, batch: &[InboundRecord]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            let e = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "cannot build the offsets to store");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // Happens when a partition was lost (session timeout) meanwhile;
            // its new owner replays from the last commit.
            tracing::warn!(error = %e, "cannot store offsets");
        }
    }

    fn close(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
        self.consumer.unsubscribe();
        self.producer.flush(Duration::from_secs(5));
        tracing::info!(group = %self.config.group_id, "consumer loop stopped");
    }
}

/// Adds one per item to `counter{topic}`, looking each label up once per
/// run of equal topics rather than once per record.
fn count_by_topic<'a>(counter: &IntCounterVec, topics: impl Iterator<Item = &'a str>) {
    let mut run: Option<(&str, u64)> = None;
    for topic in topics {
        match &mut run {
            Some((t, n)) if *t == topic => *n += 1,
            _ => {
                if let Some((t, n)) = run {
                    counter.with_label_values(&[t]).inc_by(n);
                }
                run = Some((topic, 1));
            }
        }
    }
    if let Some((t, n)) = run {
        counter.with_label_values(&[t]).inc_by(n);
    }
}

impl InboundRecord {
    /// A copy of a consumed message that outlives the consumer's buffer.
    pub fn detached<M: Message>(m: &M) -> InboundRecord {
        InboundRecord {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
        }
    }
}

impl ConsumerLoop {
    /// The producer this loop writes through (shared with the service).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }
}

/// A handler that is a closure; handy for small stages and tests.
impl<F> RecordHandler for F
where
    F: FnMut(&InboundRecord, &mut Vec<OutboundRecord>) + Send,
{
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        self(record, out)
    }
}

#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Arc<LoopContext>>();
}
