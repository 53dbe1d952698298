//! The consumer side: reads dispatch.<platform>, turns records into pending
//! conversions, groups them into batches, hands full (or lingered) batches to
//! the delivery engine, and moves the committed offset of each partition up
//! to its oldest unfinished conversion as outcomes come back.
//!
//! Unlike the other stages' batch-synchronous loop, work here finishes out
//! of order and can take hours (a platform outage), so the loop never waits
//! on it: it keeps polling (the group keeps this member), pauses its
//! partitions once `max_pending_events` are unfinished (lag grows, memory
//! does not), and resumes when half of them are done.
//!
//! On a rebalance, the lost partitions' unfinished work is abandoned (it is
//! not final, so its offsets were never committed: the new owner redoes it;
//! the platforms' event_id/order_id dedup absorbs what was already sent) and
//! every account's pace is set to the new share of partitions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postback_core::avro::{Codec, SchemaKind};
use postback_core::config::KafkaConfig;
use postback_core::eligibility::PlatformWindows;
use postback_core::kafka::{consumer_config, InboundRecord, KafkaError};
use postback_core::model::ConversionEnriched;
use postback_core::Platform;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::account::Accounts;
use crate::batcher::{BatchKey, Batcher};
use crate::delivery::Engine;
use crate::metrics::DispatchMetrics;
use crate::offsets::Offsets;
use crate::outcome::{Done, Final};
use crate::pending::{Origin, Pending};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("a delivery task panicked ({0}); stopping so its conversions are replayed")]
    TaskPanicked(String),
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

enum Change {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Rebalances and lag, as librdkafka reports them from inside a poll.
pub struct DriverContext {
    changes: Mutex<Vec<Change>>,
    metrics: DispatchMetrics,
}

impl ClientContext for DriverContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.lag.reset();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for DriverContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (kind, change) = match rebalance {
            Rebalance::Assign(tpl) => ("assign", Change::Assigned(partitions(tpl))),
            Rebalance::Revoke(tpl) => ("revoke", Change::Revoked(partitions(tpl))),
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        self.metrics.rebalances.with_label_values(&[kind]).inc();
        let mut changes = match self.changes.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        changes.push(change);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; conversions since the last commit may be sent again")
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

pub struct DriverSettings {
    pub topic: String,
    pub group_id: String,
    pub platform: Platform,
    pub windows: PlatformWindows,
    pub batch_limit: usize,
    pub linger: Duration,
    pub max_pending: usize,
    /// How long a stopping instance lets requests in flight finish.
    pub drain: Duration,
}

pub struct Driver {
    consumer: StreamConsumer<DriverContext>,
    settings: DriverSettings,
    engine: Arc<Engine>,
    accounts: Arc<Accounts>,
    done: UnboundedReceiver<Done>,
    codec: Codec<ConversionEnriched>,
    offsets: Offsets,
    batcher: Batcher,
    tasks: JoinSet<()>,
    generation: u64,
    paused: bool,
    partition_count: Option<usize>,
    metrics: DispatchMetrics,
}

impl Driver {
    pub fn new(
        kafka: &KafkaConfig,
        settings: DriverSettings,
        engine: Arc<Engine>,
        accounts: Arc<Accounts>,
        done: UnboundedReceiver<Done>,
        metrics: DispatchMetrics,
    ) -> Result<Self, DriverError> {
        let context = DriverContext {
            changes: Mutex::new(Vec::new()),
            metrics: metrics.clone(),
        };
        let mut cfg = consumer_config(
            kafka,
            &format!("postback-dispatcher-{}", settings.platform.as_str()),
            &settings.group_id,
        );
        // Finished work is committed promptly: what a crash replays is only
        // what was still unfinished, plus at most this interval.
        if !kafka
            .consumer_properties
            .contains_key("auto.commit.interval.ms")
        {
            cfg.set("auto.commit.interval.ms", "200");
        }
        let consumer: StreamConsumer<DriverContext> = cfg
            .create_with_context(context)
            .map_err(DriverError::Create)?;
        consumer
            .subscribe(&[settings.topic.as_str()])
            .map_err(|source| DriverError::Subscribe {
                topic: settings.topic.clone(),
                source,
            })?;
        Ok(Driver {
            consumer,
            batcher: Batcher::new(settings.batch_limit, settings.linger),
            settings,
            engine,
            accounts,
            done,
            codec: Codec::new(SchemaKind::ConversionEnriched),
            offsets: Offsets::default(),
            tasks: JoinSet::new(),
            generation: 0,
            paused: false,
            partition_count: None,
            metrics,
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DriverError> {
        let mut result = Ok(());
        // Polls at least this often even when idle, so rebalances are
        // served and the group never thinks this member stuck.
        let tick = Duration::from_millis(100);
        loop {
            let wake = self
                .batcher
                .next_due()
                .map_or(Instant::now() + tick, |due| due.min(Instant::now() + tick));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.done.recv() => self.finished(done),
                message = self.consumer.recv() => match message {
                    Ok(m) => {
                        let record = InboundRecord::detached(&m);
                        drop(m);
                        self.apply_rebalances();
                        self.read(record);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.apply_rebalances();
            while let Ok(done) = self.done.try_recv() {
                self.finished(done);
            }
            for (key, batch) in self.batcher.due(Instant::now()) {
                self.dispatch(key, batch);
            }
            while let Some(joined) = self.tasks.try_join_next() {
                if let Err(e) = joined {
                    // Its conversions would never finish and the partition
                    // would stall: better to stop and have them replayed.
                    tracing::error!(error = %e, "delivery task failed");
                    result = Err(DriverError::TaskPanicked(e.to_string()));
                }
            }
            if result.is_err() {
                break;
            }
            self.flow_control();
        }
        self.stop().await;
        result
    }

    /// A record read: decoded, checked, and batched (or finished at once).
    fn read(&mut self, record: InboundRecord) {
        let Some(generation) = self.engine.ownership.generation(record.partition) else {
            return;
        };
        let origin = Origin {
            partition: record.partition,
            offset: record.offset,
            generation,
        };
        if !self.offsets.read(origin) {
            return;
        }
        let platform = self.settings.platform;
        let conversion = match record.payload.as_deref().map(|p| self.codec.decode(p)) {
            Some(Ok(c)) => c,
            failure => {
                let (reason, detail) = match failure {
                    Some(Err(e)) => (e.reason(), e.to_string()),
                    _ => ("empty_record", "the record has no value".to_string()),
                };
                self.dead_letter(record, origin, reason, detail);
                return;
            }
        };
        let key: BatchKey = (
            conversion.tenant.clone(),
            self.engine.adapter.group(&conversion),
        );
        let window = self
            .settings
            .windows
            .window(platform, conversion.action_source.as_deref());
        let mut pending = Pending {
            origin,
            topic: record.topic,
            key: record.key,
            payload: record.payload,
            tenant: conversion.tenant.clone(),
            event_id: conversion.event_id.clone(),
            event_name: conversion.event_name.clone(),
            deadline_ms: conversion
                .event_time
                .saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX)),
            row: serde_json::Value::Null,
            sends: 0,
            failures: 0,
        };
        let decision = conversion
            .decisions
            .iter()
            .find(|d| d.platform == platform.as_str());
        if let Some(d) = decision.filter(|d| !d.eligible) {
            let reason = d.reason.clone().unwrap_or_else(|| "not_eligible".into());
            self.finish_now(pending, Final::NotEligible { reason });
            return;
        }
        let Some(account) = self.accounts.get(&conversion.tenant).cloned() else {
            self.finish_now(
                pending,
                Final::NotEligible {
                    reason: postback_core::eligibility::PLATFORM_NOT_CONFIGURED.into(),
                },
            );
            return;
        };
        match self.engine.adapter.row(&account, &conversion) {
            Ok(row) => pending.row = row,
            Err(not) => {
                tracing::debug!(reason = not.reason, detail = %not.detail, "conversion not sendable");
                self.finish_now(
                    pending,
                    Final::NotEligible {
                        reason: not.reason.into(),
                    },
                );
                return;
            }
        }
        if let Some((key, batch)) = self.batcher.add(key, pending) {
            self.dispatch(key, batch);
        }
    }

    fn dispatch(&mut self, key: BatchKey, batch: Vec<Pending>) {
        let Some(account) = self.accounts.get(&key.0).cloned() else {
            return;
        };
        let engine = self.engine.clone();
        self.tasks
            .spawn(async move { engine.deliver(account, key.1, batch).await });
    }

    fn finish_now(&mut self, pending: Pending, outcome: Final) {
        let engine = self.engine.clone();
        self.tasks.spawn(async move {
            engine.outcomes.finish(vec![(pending, outcome)]).await;
        });
    }

    fn dead_letter(&mut self, record: InboundRecord, origin: Origin, reason: &str, detail: String) {
        let letter = self.engine.outcomes.dead_letters().for_record(
            &record,
            reason,
            detail,
            Vec::new(),
            None,
        );
        let engine = self.engine.clone();
        self.tasks.spawn(async move {
            let written = match letter {
                Ok(l) => engine.outcomes.write(vec![l]).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a dead letter");
                    true
                }
            };
            if written {
                engine.outcomes.release(origin);
            }
        });
        self.metrics.events("dead_lettered", reason, 1);
    }

    fn finished(&mut self, done: Done) {
        if let Some((partition, position)) = self.offsets.finished(done.0) {
            let mut tpl = TopicPartitionList::new();
            let topic = self.settings.topic.as_str();
            if tpl
                .add_partition_offset(topic, partition, Offset::Offset(position))
                .is_ok()
            {
                if let Err(e) = self.consumer.store_offsets(&tpl) {
                    tracing::debug!(error = %e, partition, "cannot store the offset (partition lost?)");
                }
            }
        }
    }

    fn apply_rebalances(&mut self) {
        let changes = {
            let mut c = match self.consumer.context().changes.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            std::mem::take(&mut *c)
        };
        if changes.is_empty() {
            return;
        }
        for change in changes {
            match change {
                Change::Revoked(lost) => {
                    let mut abandoned = 0;
                    for p in &lost {
                        self.engine.ownership.revoke(*p);
                        abandoned += self.offsets.revoke(*p);
                    }
                    self.batcher.forget_partitions(&lost);
                    tracing::info!(partitions = ?lost, abandoned, "partitions revoked; their unfinished conversions go to the next owner");
                }
                Change::Assigned(gained) => {
                    for p in &gained {
                        self.generation += 1;
                        self.engine.ownership.assign(*p, self.generation);
                        self.offsets.assign(*p, self.generation);
                    }
                    tracing::info!(partitions = ?gained, "partitions assigned");
                }
            }
        }
        self.update_share();
        if self.paused {
            // Newly assigned partitions start unpaused.
            self.set_paused(true);
        }
    }

    /// Every account's pace follows this instance's share of the partitions.
    fn update_share(&mut self) {
        // Read again on every rebalance: partitions may have been added,
        // and a stale smaller count would overstate this instance's share.
        self.partition_count = self.count_partitions().or(self.partition_count);
        let owned = self.offsets.owned();
        let share = match self.partition_count {
            Some(total) if total > 0 => (owned as f64 / total as f64).min(1.0),
            // Unknown partition count: assume the worst case of the quota
            // split evenly over what we own plus at least one other member.
            _ if owned == 0 => 0.0,
            _ => 0.5,
        };
        self.accounts.set_share(share);
        self.metrics
            .quota_share
            .set((share * 1000.0).round() as i64);
        tracing::info!(owned, total = ?self.partition_count, share, "quota share updated");
    }

    fn count_partitions(&self) -> Option<usize> {
        let topic = self.settings.topic.as_str();
        let metadata = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
        });
        match metadata {
            Ok(m) => m
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .filter(|n| *n > 0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the partition count; pacing conservatively");
                None
            }
        }
    }

    fn flow_control(&mut self) {
        let unfinished = self.offsets.unfinished();
        self.metrics.pending.set(unfinished as i64);
        if !self.paused && unfinished >= self.settings.max_pending {
            tracing::info!(
                unfinished,
                "too many unfinished conversions; pausing consumption"
            );
            self.set_paused(true);
        } else if self.paused && unfinished <= self.settings.max_pending / 2 {
            tracing::info!(unfinished, "resuming consumption");
            self.set_paused(false);
        }
    }

    fn set_paused(&mut self, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment");
                return;
            }
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.paused = pause;
                self.metrics.paused.set(i64::from(pause));
            }
            Err(e) => tracing::warn!(error = %e, pause, "cannot pause/resume the partitions"),
        }
    }

    /// Stops reading, lets requests in flight finish and record their
    /// outcomes (retries and open batches are left to the next run), commits
    /// what is final and leaves the group.
    async fn stop(mut self) {
        let deadline = Instant::now() + self.settings.drain;
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => if joined.is_none() { break },
                Some(done) = self.done.recv() => self.finished(done),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(tasks = self.tasks.len(), "requests still in flight at shutdown; their conversions are sent again on restart");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        while let Ok(done) = self.done.try_recv() {
            self.finished(done);
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
        self.consumer.unsubscribe();
        tracing::info!(group = %self.settings.group_id, "dispatcher stopped");
    }
}
