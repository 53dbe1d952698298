//! The consumer loop every consume-transform-produce stage runs.
//!
//! It works in batches: take what the broker has (up to `max_batch`), hand
//! each record to the stage's handler, and make the outputs durable together
//! with the batch's input offsets (`batch_writer`: one Kafka transaction in
//! exactly-once mode; acknowledgements, then stored offsets, otherwise).
//! Three properties follow:
//!
//! - Nothing moves past a record whose effect is not durable, and in
//!   exactly-once mode nothing is written twice: a crash, a broker restart
//!   or a fenced zombie aborts the open transaction, and its batch is read
//!   again by whoever owns the partition.
//! - Nothing is in flight while the consumer polls, and rebalances only
//!   happen inside a poll. So a revoked partition never has half-done work,
//!   and no offset is committed for a partition this instance no longer
//!   owns: records fetched for a partition revoked while the batch was being
//!   collected are dropped from the batch (the new owner reads them again).
//!   Rebalancing is cooperative: a partition that stays is never revoked.
//! - Per-partition order holds: a batch is handled in fetch order and the
//!   idempotent producer keeps the order of what it writes.
//!
//! Stateful stages get more hooks (all optional): assignment changes,
//! delivered after the poll that caused them and before any record of a
//! newly assigned partition is handled (state restores there); a periodic
//! `tick` for time-driven outputs, written like any other; the outputs
//! becoming durable, with where they landed (state that mirrors a changelog
//! is made durable there); and a transaction aborting (state changes that
//! depended on it are forgotten, as its records are handled again).
//!
//! A stage that writes a store of its own may commit it less often than
//! the loop takes batches (`Persisted::Held`): the loop then holds those
//! batches' offsets, and commits them with the first batch the store says
//! is durable, once the held batches' deadline passed (records arriving or
//! not), before any output is written, and at shutdown (a loop that
//! stops on an error commits none of them: they are read again). A
//! revoked partition's held offsets are given up, never committed: its
//! new owner reads those records again, which the store's idempotent
//! writes allow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::dead_letter::DeadLetters;
use crate::kafka::batch_writer::{
    advance_past, count_by_topic, BatchWriter, WriterFailed, WriterMetrics, Written,
};
use crate::kafka::client_config::consumer_config;
use crate::kafka::handler::{
    HandlerError, InboundRecord, Persisted, RecordHandler, TopicPartition,
};
use crate::kafka::producer::{Delivered, OutboundRecord, Producer};
use crate::kafka::rebalance::{AssignmentChange, LoopContext};
use crate::kafka::transaction::{TransactionError, TransactionalProducer};
use crate::metrics::{batch_size_buckets, latency_buckets, ServiceMetrics};

/// The next offset to read, per input partition.
type Offsets = BTreeMap<TopicPartition, i64>;

#[derive(Debug, Clone)]
pub struct ConsumerLoopConfig {
    pub group_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    /// Most records handled (and committed) as one unit.
    pub max_batch: usize,
    /// How long to wait for more records once one arrived.
    pub linger: Duration,
    /// Outputs and input offsets in one transaction (true), or written
    /// at-least-once (false: brokers without transactions).
    pub exactly_once: bool,
    /// This instance's name, unique among the group's live members; its
    /// transactional id is `<group_id>.<instance_id>`.
    pub instance_id: String,
}

impl ConsumerLoopConfig {
    pub fn transactional_id(&self) -> String {
        crate::kafka::transactional_id(&self.group_id, &self.instance_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerLoopError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot create the producer: {0}")]
    Producer(#[source] KafkaError),
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
    #[error("the stage cannot write its outputs: {0}")]
    Transaction(#[source] TransactionError),
}

struct LoopMetrics {
    records: IntCounterVec,
    batches: IntCounter,
    batch_size: Histogram,
    batch_seconds: Histogram,
    dropped_revoked: IntCounter,
    receive_errors: IntCounter,
    writer: WriterMetrics,
}

impl LoopMetrics {
    fn new(m: &ServiceMetrics) -> Self {
        LoopMetrics {
            records: m.counter_vec(
                "consumer_records_total",
                "Records consumed and handled, by input topic.",
                &["topic"],
            ),
            batches: m.counter("consumer_batches_total", "Batches handled and committed."),
            batch_size: m.histogram(
                "consumer_batch_size_records",
                "Records per handled batch.",
                batch_size_buckets(),
            ),
            batch_seconds: m.histogram(
                "consumer_batch_duration_seconds",
                "Time from a batch's first record to its outputs committed.",
                latency_buckets(),
            ),
            dropped_revoked: m.counter(
                "consumer_revoked_records_total",
                "Records given up because their partition was revoked before their offsets were committed: fetched and not handled yet, or held (`Persisted::Held`). Their new owner reads them again.",
            ),
            receive_errors: m.counter(
                "consumer_errors_total",
                "Errors reported by the consumer while fetching.",
            ),
            writer: WriterMetrics::new(m),
        }
    }
}

pub struct ConsumerLoop {
    consumer: StreamConsumer<LoopContext>,
    writer: BatchWriter,
    /// For a new transactional producer when one fails for good.
    kafka: KafkaConfig,
    dead_letters: DeadLetters,
    config: ConsumerLoopConfig,
    metrics: LoopMetrics,
    /// The next offset to read of every owned partition, as committed.
    /// Every transaction carries all of them, not only the batch's: the
    /// group checks the generation of whoever sends offsets, so even a
    /// transaction of tick outputs alone is fenced if this instance lost
    /// its partitions.
    committed: Offsets,
    /// Batches the handler wrote but did not make durable yet.
    held: Option<Held>,
    /// The rebalance context's count of revocations when the loop last
    /// dropped revoked partitions' records (`drop_revoked_if_any`).
    revocations_seen: u64,
}

/// One cycle's input: the records collected, and whether the tick is due.
struct Batch {
    records: Vec<InboundRecord>,
    started: Instant,
}

/// Handled batches whose store writes are not durable yet
/// (`Persisted::Held`): their records' places in fetch order, committed
/// as one batch with the first that is, and when the handler must flush.
struct Held {
    batch: Batch,
    flush_by: Instant,
}

impl ConsumerLoop {
    /// The loop, subscribed to its topics. In exactly-once mode its
    /// transactional producer is registered with the broker here (which
    /// aborts what a previous life of the same instance id left open).
    /// `dead_letters` stand in for outputs the broker can never take.
    pub async fn new(
        kafka: &KafkaConfig,
        config: ConsumerLoopConfig,
        dead_letters: DeadLetters,
        metrics: &ServiceMetrics,
    ) -> Result<Self, ConsumerLoopError> {
        let writer = if config.exactly_once {
            BatchWriter::Transactional(
                TransactionalProducer::new(kafka, &config.client_id, &config.transactional_id())
                    .await
                    .map_err(ConsumerLoopError::Producer)?,
            )
        } else {
            BatchWriter::Acknowledged(
                Producer::new(kafka, &config.client_id).map_err(ConsumerLoopError::Producer)?,
            )
        };
        let consumer: StreamConsumer<LoopContext> =
            consumer_config(kafka, &config.client_id, &config.group_id)
                // Offsets travel in the transaction, or are stored by the
                // loop once outputs are acknowledged: never on their own.
                .set("enable.auto.commit", (!config.exactly_once).to_string())
                .create_with_context(LoopContext::new(metrics))
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
            writer,
            kafka: kafka.clone(),
            dead_letters,
            config,
            metrics: LoopMetrics::new(metrics),
            committed: BTreeMap::new(),
            held: None,
            revocations_seen: 0,
        })
    }

    /// A client of this loop's producer, for the broker readiness probe.
    pub fn probe_client(&self) -> rdkafka::producer::FutureProducer {
        self.writer.probe_client()
    }

    /// Runs until `shutdown` is cancelled, then finishes the batch in hand,
    /// commits, and leaves the group.
    pub async fn run<H: RecordHandler>(
        mut self,
        handler: &mut H,
        shutdown: CancellationToken,
    ) -> Result<(), ConsumerLoopError> {
        let result = self.run_batches(handler, &shutdown).await;
        self.close();
        result
    }

    /// One cycle per batch: read it, let the handler turn it (and, when due,
    /// its tick) into outputs, and commit those with the batch's offsets
    /// once its store writes are durable. A tick's outputs ride in the same
    /// transaction as the batch's.
    async fn run_batches<H: RecordHandler>(
        &mut self,
        handler: &mut H,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumerLoopError> {
        let tick_interval = handler.tick_interval();
        let mut next_tick = tokio::time::Instant::now() + tick_interval.unwrap_or_default();
        let mut outputs: Vec<OutboundRecord> = Vec::new();
        loop {
            let Some(mut batch) = self
                .next_batch(handler, next_tick, tick_interval, shutdown)
                .await?
            else {
                self.flush_held(handler, &mut outputs, shutdown).await?;
                break;
            };
            outputs.clear();
            for record in &mut batch.records {
                handler.handle(record, &mut outputs);
                // From here on only its place counts (offsets, rewinds):
                // a stage that holds its batch while a store writes it
                // would hold every payload twice.
                record.shed_contents();
            }
            if let Some(interval) = tick_interval {
                if tokio::time::Instant::now() >= next_tick {
                    handler.tick(&mut outputs);
                    next_tick = tokio::time::Instant::now() + interval;
                }
            }
            let (batch, held_until) = self.after_held(batch);
            // Held work goes on though a revocation took all its records:
            // the store's transaction is still open.
            if batch.records.is_empty() && outputs.is_empty() && held_until.is_none() {
                continue;
            }
            let persisted = handler.persist().await;
            match persisted.map_err(ConsumerLoopError::Handler)? {
                Persisted::Held { flush_by } => {
                    let flush_by = held_until.map_or(flush_by, |t| t.min(flush_by));
                    if outputs.is_empty() && Instant::now() < flush_by {
                        self.held = Some(Held { batch, flush_by });
                        continue;
                    }
                    handler.flush().await.map_err(ConsumerLoopError::Handler)?;
                }
                Persisted::Durable => {}
            }
            if !self.commit(handler, &batch, &mut outputs, shutdown).await? {
                break;
            }
        }
        Ok(())
    }

    /// `batch` after the held batches' records, as one batch, and the
    /// held batches' deadline.
    fn after_held(&mut self, batch: Batch) -> (Batch, Option<Instant>) {
        match self.held.take() {
            None => (batch, None),
            Some(Held {
                batch: mut held,
                flush_by,
            }) => {
                held.records.extend(batch.records);
                (held, Some(flush_by))
            }
        }
    }

    /// At the loop's end: the held batches made durable and committed.
    async fn flush_held<H: RecordHandler>(
        &mut self,
        handler: &mut H,
        outputs: &mut Vec<OutboundRecord>,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumerLoopError> {
        if self.held.is_none() {
            return Ok(());
        }
        // A revocation the last poll went through, unseen if no record
        // came after it: the revoked partitions' offsets are their new
        // owner's now, and committing ours would set its back.
        self.hand_over_assignment(handler)?;
        self.drop_revoked_if_any(&mut Vec::new());
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        handler.flush().await.map_err(ConsumerLoopError::Handler)?;
        outputs.clear();
        self.commit(handler, &held.batch, outputs, shutdown).await?;
        Ok(())
    }

    /// Waits for records (or the tick), collects a batch, and tells the
    /// handler of the rebalances the polls went through. None at shutdown.
    async fn next_batch<H: RecordHandler>(
        &mut self,
        handler: &mut H,
        next_tick: tokio::time::Instant,
        tick_interval: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Batch>, ConsumerLoopError> {
        let mut records = Vec::with_capacity(self.config.max_batch);
        let flush_by = self.held.as_ref().map(|h| h.flush_by.into());
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep_until(next_tick), if tick_interval.is_some() => None,
            // The held batches' deadline: an idle topic still commits them.
            _ = tokio::time::sleep_until(flush_by.unwrap_or(next_tick)), if flush_by.is_some() => None,
            m = self.consumer.recv() => Some(m),
        };
        let started = Instant::now();
        match first {
            None => {}
            Some(Ok(m)) => {
                records.push(InboundRecord::detached(&m));
                self.collect(&mut records).await;
            }
            Some(Err(e)) => self.receive_error(e).await,
        }
        self.hand_over_assignment(handler)?;
        self.drop_revoked_if_any(&mut records);
        Ok(Some(Batch { records, started }))
    }

    /// Makes the batch's outputs durable with its offsets. False when the
    /// loop should stop (shutdown while the broker would not take them).
    ///
    /// Unless the loop fails with an error, the handler hears exactly one of
    /// `on_acknowledged` (the batch is durable) or `on_aborted` (nothing of
    /// it is, and its records are read again), so its staged state never
    /// runs ahead of what the topics hold.
    async fn commit<H: RecordHandler>(
        &mut self,
        handler: &mut H,
        batch: &Batch,
        outputs: &mut [OutboundRecord],
        shutdown: &CancellationToken,
    ) -> Result<bool, ConsumerLoopError> {
        let offsets = self.offsets_after(&batch.records);
        let written = self
            .writer
            .write(
                &self.consumer,
                &batch.records,
                &offsets,
                outputs,
                &self.dead_letters,
                &self.metrics.writer,
                shutdown,
            )
            .await;
        match written {
            Ok(Written::Done(deliveries)) => {
                self.acknowledged(handler, batch, offsets, &deliveries)?;
                Ok(true)
            }
            Ok(Written::Fenced) => {
                // The group moved partitions under us: the next poll tells
                // which are still ours, and those are read again.
                handler.on_aborted();
                self.rewind(&batch.records);
                Ok(true)
            }
            Ok(Written::Stopped) => {
                handler.on_aborted();
                Ok(false)
            }
            Err(WriterFailed(TransactionError::Fatal(reason))) => {
                tracing::error!(%reason, "the transactional producer failed for good; a new one takes over and the batch is read again");
                handler.on_aborted();
                self.rewind(&batch.records);
                self.renew_producer(shutdown).await?;
                Ok(true)
            }
            Err(e) => Err(ConsumerLoopError::Transaction(e.0)),
        }
    }

    /// The next offset to read per partition once `records` are committed.
    /// Starts from what is committed already, so a partition the batch has
    /// no record of keeps its offset and a commit never moves one back.
    fn offsets_after(&self, records: &[InboundRecord]) -> Offsets {
        let mut offsets = self.committed.clone();
        advance_past(&mut offsets, records);
        offsets
    }

    /// The batch is durable: only now do the committed offsets move and the
    /// handler learn where its outputs landed.
    fn acknowledged<H: RecordHandler>(
        &mut self,
        handler: &mut H,
        batch: &Batch,
        offsets: Offsets,
        deliveries: &[Delivered],
    ) -> Result<(), ConsumerLoopError> {
        self.committed = offsets;
        handler
            .on_acknowledged(deliveries)
            .map_err(ConsumerLoopError::Handler)?;
        self.count(batch);
        Ok(())
    }

    /// A new transactional producer with the same id (the broker fences
    /// the failed one); the stage gives up when the broker will not have
    /// one for [`renewal_backoff`](crate::kafka::transaction::renewal_backoff).
    async fn renew_producer(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumerLoopError> {
        let transactional_id = self.config.transactional_id();
        let renewed = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            p = TransactionalProducer::renew(&self.kafka, &self.config.client_id, &transactional_id) => p,
        };
        self.writer = BatchWriter::Transactional(renewed.map_err(ConsumerLoopError::Producer)?);
        Ok(())
    }

    fn count(&self, batch: &Batch) {
        if batch.records.is_empty() {
            return;
        }
        count_by_topic(
            &self.metrics.records,
            batch.records.iter().map(|r| r.topic.as_str()),
        );
        self.metrics.batches.inc();
        self.metrics.batch_size.observe(batch.records.len() as f64);
        self.metrics
            .batch_seconds
            .observe(batch.started.elapsed().as_secs_f64());
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
        &mut self,
        handler: &mut H,
    ) -> Result<(), ConsumerLoopError> {
        for change in self.consumer.context().take_changes() {
            match change {
                AssignmentChange::Revoked(partitions) => {
                    for p in &partitions {
                        self.committed.remove(p);
                    }
                    handler.on_revoked(&partitions)
                }
                AssignmentChange::Assigned(partitions) => {
                    self.learn_committed(&partitions);
                    handler.on_assigned(&partitions).map_err(|source| {
                        ConsumerLoopError::Assign {
                            partitions: partitions
                                .iter()
                                .map(|p| format!("{}[{}]", p.topic, p.partition))
                                .collect::<Vec<_>>()
                                .join(","),
                            source,
                        }
                    })?
                }
            }
        }
        Ok(())
    }

    /// The group's committed offsets of newly assigned partitions (those
    /// without one start from the earliest record and are absent here).
    fn learn_committed(&mut self, partitions: &[TopicPartition]) {
        if !self.config.exactly_once || partitions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&p.topic, p.partition);
        }
        let committed = run_blocking(|| {
            self.consumer
                .committed_offsets(tpl, Duration::from_secs(30))
        });
        match committed {
            Ok(tpl) => {
                for e in tpl.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        self.committed.insert(
                            TopicPartition {
                                topic: e.topic().to_string(),
                                partition: e.partition(),
                            },
                            o,
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e,
                "cannot read the committed offsets of new partitions; their first transaction carries the batch's"),
        }
    }

    async fn receive_error(&self, e: KafkaError) {
        self.metrics.receive_errors.inc();
        tracing::warn!(error = %e, "consumer error");
        // Errors here are mostly broker connectivity; don't spin.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Drops what `drop_revoked` does if a revocation happened since it
    /// last ran. Counted since then, not since this batch's first poll:
    /// a revocation during the poll that waited for the first record
    /// leaves no record of the revoked partitions in the batch, but the
    /// held batches may have some.
    fn drop_revoked_if_any(&mut self, batch: &mut Vec<InboundRecord>) {
        let revocations = self.consumer.context().revocations();
        if revocations != self.revocations_seen {
            self.revocations_seen = revocations;
            self.drop_revoked(batch);
        }
    }

    /// Drops the records of partitions no longer owned from `batch`, and
    /// from the held batches: their offsets are the new owner's to commit.
    /// The held batches' store writes stay, and commit with the rest: a
    /// store's writes are idempotent, so the new owner writing them again
    /// changes nothing.
    fn drop_revoked(&mut self, batch: &mut Vec<InboundRecord>) {
        let owned = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment; reading the batch again");
                // Whichever partitions are still ours read these again
                // (the held ones too; their offsets were not committed).
                self.rewind(batch);
                let mut dropped = std::mem::take(batch).len();
                let held = self.held.as_mut();
                let held_records = held.map(|h| std::mem::take(&mut h.batch.records));
                let held_records = held_records.unwrap_or_default();
                self.rewind(&held_records);
                dropped += held_records.len();
                self.metrics.dropped_revoked.inc_by(dropped as u64);
                return;
            }
        };
        let still_owned = |r: &InboundRecord| owned.find_partition(&r.topic, r.partition).is_some();
        let before = batch.len();
        batch.retain(still_owned);
        let mut dropped = before - batch.len();
        if let Some(held) = self.held.as_mut() {
            let before = held.batch.records.len();
            held.batch.records.retain(still_owned);
            dropped += before - held.batch.records.len();
        }
        self.metrics.dropped_revoked.inc_by(dropped as u64);
    }

    /// Puts each partition of `batch` back to its first record, to read the
    /// batch again (partitions no longer owned are left to their new owner).
    fn rewind(&self, batch: &[InboundRecord]) {
        let mut first: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            let e = first
                .entry((r.topic.as_str(), r.partition))
                .or_insert(r.offset);
            *e = (*e).min(r.offset);
        }
        for ((topic, partition), offset) in first {
            if let Err(e) = self.consumer.seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                // Expected for a partition just revoked; for one still
                // owned, the records after `offset` are skipped.
                tracing::warn!(topic, partition, error = %e, "cannot rewind (partition no longer ours?)");
            }
        }
    }

    fn close(&self) {
        if !self.config.exactly_once {
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "final commit failed"),
            }
        }
        self.consumer.unsubscribe();
        if let BatchWriter::Acknowledged(p) = &self.writer {
            p.flush(Duration::from_secs(5));
        }
        tracing::info!(group = %self.config.group_id, "consumer loop stopped");
    }
}

/// Runs blocking librdkafka work without stalling the runtime's other
/// tasks, where the runtime allows it.
pub fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
