//! The consumer side: reads dispatch.<platform> and its retry topics, turns
//! records into pending conversions, groups them into batches per account,
//! hands batches to the delivery engine, and commits outcomes with their
//! input offsets as they come back.
//!
//! Unlike the other stages' batch-synchronous loop, work here finishes out
//! of order, so the loop never waits on it: it keeps polling (the group
//! keeps this member), and every `commit_interval_ms` commits the finished
//! run at the front of each partition (`tracker.rs`) in one transaction
//! (`commit.rs`). Nothing waits long at the front: what cannot be sent now
//! (a paused or over-budget account, a backoff) leaves for the retry path
//! (`retry.rs`) at once, so one broken account never holds a partition,
//! and a partition's commit advances with the work.
//!
//! Retry topics are read like the dispatch topic, by a second consumer
//! group (`<group>.retry`: each group spreads its own topics' partitions
//! evenly, so every instance gets its share of the dispatch topic, which is
//! what its share of the quota follows); a retry partition whose head is
//! not ripe yet is paused until it is.
//!
//! Rebalancing is cooperative: only the partitions that move are revoked,
//! and in the revoke callback (before they move) what they finished is
//! committed; their requests in flight are abandoned (the new owner sends
//! them again). Every account's pace follows the share of dispatch.<platform>
//! partitions this instance owns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postback_core::avro::{Codec, SchemaKind};
use postback_core::config::KafkaConfig;
use postback_core::eligibility::PlatformWindows;
use postback_core::kafka::{
    consumer_config, InboundRecord, KafkaError, LagReporter, TransactionError,
};
use postback_core::model::{now_millis, ConversionEnriched};
use postback_core::Platform;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::account::{Account, Accounts};
use crate::adapters::Reason;
use crate::batcher::{BatchKey, Batcher};
use crate::commit::{Committed, Committer, GroupConsumer, Groups};
use crate::delivery::{at_millis_from_now, Engine};
use crate::metrics::DispatchMetrics;
use crate::outcome::{Final, Outcomes, Resolution, Resolved};
use crate::pending::{InputPartition, Origin, Ownership, Pending};
use crate::retry::{RetryState, Tiers};
use crate::tracker::Tracker;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("a delivery task panicked ({0}); stopping so its conversions are read again")]
    TaskPanicked(String),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
    #[error("cannot commit outcomes: {0}")]
    Commit(#[source] TransactionError),
    #[error("cannot start a new transactional producer: {0}")]
    Renew(#[source] KafkaError),
}

enum Change {
    Assigned,
    Revoked(Vec<InputPartition>),
}

/// What the driver and the rebalance callbacks share: the commit
/// bookkeeping, the committer, and which partitions this instance owns.
pub struct Shared {
    tracker: Mutex<Tracker>,
    committer: Committer,
    ownership: Arc<Ownership>,
    tiers: Tiers,
    generation: AtomicU64,
    changes: Mutex<Vec<Change>>,
    metrics: DispatchMetrics,
}

impl Shared {
    pub fn new(
        committer: Committer,
        ownership: Arc<Ownership>,
        tiers: Tiers,
        metrics: DispatchMetrics,
    ) -> Self {
        Shared {
            tracker: Mutex::new(Tracker::default()),
            committer,
            ownership,
            tiers,
            generation: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
            metrics,
        }
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        match self.tracker.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        }
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn inputs(&self, tpl: &TopicPartitionList) -> Vec<InputPartition> {
        tpl.elements()
            .iter()
            .filter_map(|e| Some((self.tiers.source_of(e.topic())?, e.partition())))
            .collect()
    }

    fn record_change(&self, change: Change) {
        match self.changes.lock() {
            Ok(mut c) => c.push(change),
            Err(p) => p.into_inner().push(change),
        }
    }

    fn take_changes(&self) -> Vec<Change> {
        match self.changes.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    /// Partitions about to move: commit what they finished (not when they
    /// are already lost: the group would refuse it), then let them go.
    fn revoke(
        &self,
        consumer: &BaseConsumer<DriverContext>,
        group: Group,
        inputs: Vec<InputPartition>,
    ) {
        if !consumer.assignment_lost() {
            let mut release = self.tracker().release(|i| inputs.contains(i));
            if !release.is_empty() {
                let own = Some(GroupConsumer::Base(consumer));
                let groups = match group {
                    Group::Main => Groups {
                        main: own,
                        retries: None,
                    },
                    Group::Retries => Groups {
                        main: None,
                        retries: own,
                    },
                };
                match self.committer.commit(groups, &mut release) {
                    Ok(Committed::Done) => self.tracker().committed(&release),
                    Ok(other) => tracing::warn!(outcome = ?other,
                        "could not commit what the revoked partitions finished; the next owner sends it again"),
                    Err(e) => {
                        tracing::error!(error = %e, "commit failed while partitions were revoked")
                    }
                }
            }
        }
        let mut tracker = self.tracker();
        let mut abandoned = 0;
        for input in &inputs {
            self.ownership.revoke(*input);
            abandoned += tracker.revoke(*input);
        }
        drop(tracker);
        tracing::info!(partitions = ?inputs, abandoned,
            "partitions revoked; what they had not committed goes to the next owner");
        self.record_change(Change::Revoked(inputs));
    }

    fn assign(&self, inputs: Vec<InputPartition>) {
        let mut tracker = self.tracker();
        for input in &inputs {
            let generation = self.next_generation();
            self.ownership.assign(*input, generation);
            tracker.assign(*input, generation);
        }
        drop(tracker);
        tracing::info!(partitions = ?inputs, "partitions assigned");
        self.record_change(Change::Assigned);
    }
}

/// Which of the two consumers a context belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Group {
    /// dispatch.<platform>, group `<group>`.
    Main,
    /// Its retry topics, group `<group>.retry`.
    Retries,
}

/// Rebalances and lag, as librdkafka reports them from inside a poll.
pub struct DriverContext {
    shared: Arc<Shared>,
    group: Group,
    lag: LagReporter,
}

impl ClientContext for DriverContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.report(&statistics);
    }
}

impl ConsumerContext for DriverContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let metrics = &self.shared.metrics;
        match rebalance {
            Rebalance::Assign(tpl) => {
                metrics.rebalances.with_label_values(&["assign"]).inc();
                self.shared.assign(self.shared.inputs(tpl));
            }
            Rebalance::Revoke(tpl) => {
                metrics.rebalances.with_label_values(&["revoke"]).inc();
                self.shared
                    .revoke(consumer, self.group, self.shared.inputs(tpl));
            }
            Rebalance::Error(e) => {
                metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "offset commit answered");
        }
    }
}

pub struct DriverSettings {
    pub group_id: String,
    pub platform: Platform,
    pub windows: PlatformWindows,
    pub batch_limit: usize,
    pub linger: Duration,
    pub max_pending: usize,
    pub commit_interval: Duration,
    /// How long a stopping instance lets requests in flight finish.
    pub drain: Duration,
}

/// What the driver works with, built by the service.
pub struct DriverParts {
    pub shared: Arc<Shared>,
    pub engine: Arc<Engine>,
    pub outcomes: Arc<Outcomes>,
    pub accounts: Arc<Accounts>,
    /// Outcomes from the delivery tasks.
    pub resolved: UnboundedReceiver<Vec<Resolved>>,
    pub metrics: DispatchMetrics,
}

/// Retry records of one partition, read and waiting to ripen.
struct Parked {
    queue: VecDeque<(InboundRecord, Origin, RetryState)>,
}

pub struct Driver {
    main: StreamConsumer<DriverContext>,
    retries: StreamConsumer<DriverContext>,
    shared: Arc<Shared>,
    settings: DriverSettings,
    engine: Arc<Engine>,
    outcomes: Arc<Outcomes>,
    accounts: Arc<Accounts>,
    resolved: UnboundedReceiver<Vec<Resolved>>,
    codec: Codec<ConversionEnriched>,
    batcher: Batcher,
    tasks: JoinSet<()>,
    parked: HashMap<InputPartition, Parked>,
    paused: bool,
    next_commit: Instant,
    commit_backoff: Duration,
    partition_count: Option<usize>,
    metrics: DispatchMetrics,
}

impl Driver {
    pub fn new(
        kafka: &KafkaConfig,
        settings: DriverSettings,
        parts: DriverParts,
    ) -> Result<Self, DriverError> {
        let DriverParts {
            shared,
            engine,
            outcomes,
            accounts,
            resolved,
            metrics,
        } = parts;
        let subscribe = |group: Group, group_id: &str, topics: Vec<String>| {
            let context = DriverContext {
                shared: shared.clone(),
                group,
                lag: LagReporter::new(metrics.lag.clone()),
            };
            let consumer: StreamConsumer<DriverContext> = consumer_config(
                kafka,
                &format!("postback-dispatcher-{}", settings.platform.as_str()),
                group_id,
            )
            // Offsets move only with the outcomes they answer.
            .set("enable.auto.commit", "false")
            .create_with_context(context)
            .map_err(DriverError::Create)?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&names)
                .map_err(|source| DriverError::Subscribe {
                    topics: topics.clone(),
                    source,
                })?;
            Ok::<_, DriverError>(consumer)
        };
        let main = subscribe(
            Group::Main,
            &settings.group_id,
            vec![shared.tiers.topic_of(0).to_string()],
        )?;
        let retries = subscribe(
            Group::Retries,
            &format!("{}.retry", settings.group_id),
            shared.tiers.retry_topics().map(str::to_string).collect(),
        )?;
        Ok(Driver {
            main,
            retries,
            batcher: Batcher::new(settings.batch_limit, settings.linger),
            next_commit: Instant::now() + settings.commit_interval,
            commit_backoff: settings.commit_interval,
            settings,
            shared,
            engine,
            outcomes,
            accounts,
            resolved,
            codec: Codec::new(SchemaKind::ConversionEnriched),
            tasks: JoinSet::new(),
            parked: HashMap::new(),
            paused: false,
            partition_count: None,
            metrics,
        })
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), DriverError> {
        let result = self.run_until(&shutdown).await;
        let stopped = self.stop().await;
        result.and(stopped)
    }

    async fn run_until(&mut self, shutdown: &CancellationToken) -> Result<(), DriverError> {
        // Polls at least this often even when idle, so rebalances are
        // served and the group never thinks this member stuck.
        let tick = Duration::from_millis(100);
        loop {
            let wake = [
                self.batcher.next_due(),
                self.next_parked_wake(),
                Some(self.next_commit),
            ]
            .into_iter()
            .flatten()
            .fold(Instant::now() + tick, Instant::min);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(batch) = self.resolved.recv() => self.resolve(batch),
                message = self.main.recv() => self.received(message.map(|m| InboundRecord::detached(&m))).await,
                message = self.retries.recv() => self.received(message.map(|m| InboundRecord::detached(&m))).await,
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.step()?;
        }
    }

    /// The bookkeeping after every wake: rebalances, outcomes, due batches,
    /// ripe retries, the commit when it is due, failed tasks, flow control.
    fn step(&mut self) -> Result<(), DriverError> {
        self.apply_changes();
        while let Ok(batch) = self.resolved.try_recv() {
            self.resolve(batch);
        }
        for (key, batch) in self.batcher.due(Instant::now()) {
            self.dispatch(key, batch);
        }
        self.wake_parked();
        if Instant::now() >= self.next_commit {
            self.commit()?;
        }
        while let Some(joined) = self.tasks.try_join_next() {
            if let Err(e) = joined {
                // Its conversions would never finish and their partitions
                // would stall: better to stop and have them read again.
                tracing::error!(error = %e, "delivery task failed");
                return Err(DriverError::TaskPanicked(e.to_string()));
            }
        }
        self.flow_control();
        Ok(())
    }

    async fn received(&mut self, message: Result<InboundRecord, KafkaError>) {
        match message {
            Ok(record) => {
                self.apply_changes();
                self.read(record);
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn consumer(&self, source: u8) -> &StreamConsumer<DriverContext> {
        if source == 0 {
            &self.main
        } else {
            &self.retries
        }
    }

    /// A record read: parked if it is a retry not ripe yet, else handled.
    fn read(&mut self, record: InboundRecord) {
        let Some(source) = self.shared.tiers.source_of(&record.topic) else {
            return;
        };
        let input = (source, record.partition);
        let Some(generation) = self.shared.ownership.generation(input) else {
            return;
        };
        let origin = Origin {
            source,
            partition: record.partition,
            offset: record.offset,
            generation,
        };
        if !self.shared.tracker().read(origin) {
            return;
        }
        let retry = (source > 0).then(|| RetryState::of(&record)).flatten();
        if let Some(state) = retry {
            let parked = self.parked.contains_key(&input);
            if parked || state.wake_at_ms(self.shared.tiers.shortest()) > now_millis() {
                self.park(input, record, origin, state);
                return;
            }
        }
        self.handle(record, origin, retry);
    }

    /// Turns a record into a pending conversion and routes it: an outcome
    /// now (undecodable, not eligible, expired, waiting for its account),
    /// or a place in its account's batch.
    fn handle(&mut self, record: InboundRecord, origin: Origin, retry: Option<RetryState>) {
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
        let platform = self.settings.platform;
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
            sends: retry.map_or(0, |r| r.sends),
            failures: retry.map_or(0, |r| r.failures),
        };
        let now = now_millis();
        if let Some(r) = retry.filter(|r| r.not_before_ms > now) {
            // Ripe in its retry topic, but not due: on to the next one.
            self.metrics.deferred("not_due");
            return self.finish(pending, retry_later(r.not_before_ms, "not_due", false));
        }
        let decision = conversion
            .decisions
            .iter()
            .find(|d| d.platform == platform.as_str());
        if let Some(d) = decision.filter(|d| !d.eligible) {
            let reason = d.reason.clone().unwrap_or_else(|| "not_eligible".into());
            return self.finish(pending, Resolution::Final(Final::NotEligible { reason }));
        }
        let Some(account) = self.accounts.get(&conversion.tenant).cloned() else {
            let reason = postback_core::eligibility::PLATFORM_NOT_CONFIGURED.into();
            return self.finish(pending, Resolution::Final(Final::NotEligible { reason }));
        };
        match self.engine.adapter.row(&account, &conversion) {
            Ok(row) => pending.row = row,
            Err(not) => {
                tracing::debug!(reason = not.reason, detail = %not.detail, "conversion not sendable");
                let reason = not.reason.into();
                return self.finish(pending, Resolution::Final(Final::NotEligible { reason }));
            }
        }
        if pending.deadline_ms <= now {
            let reason = "too_old: past the platform's window for this event".into();
            return self.finish(pending, Resolution::Final(Final::Expired { reason }));
        }
        if let Some(resolution) = self.must_wait(&account) {
            return self.finish(pending, resolution);
        }
        let group = self.engine.adapter.group(&conversion);
        let key: BatchKey = (conversion.tenant, group);
        if let Some((key, batch)) = self.batcher.add(key, pending) {
            self.dispatch(key, batch);
        }
    }

    /// Why a conversion of `account` cannot join a batch now, if it cannot:
    /// the platform paused the account (it waits out the pause), or this
    /// instance holds as many of its events as the budget allows (it comes
    /// back once some went out). Either way on the retry path, so the
    /// account's trouble stays its own.
    fn must_wait(&self, account: &Account) -> Option<Resolution> {
        if let Some((until, reason)) = account.paused() {
            self.metrics.deferred("account_paused");
            return Some(Resolution::Retry {
                not_before_ms: at_millis_from_now(until.saturating_duration_since(Instant::now())),
                reason,
                status: true,
            });
        }
        if !account.hold_event() {
            self.metrics.deferred("account_busy");
            let wait = (self.settings.linger * 4).max(Duration::from_secs(1));
            return Some(retry_later(at_millis_from_now(wait), "account_busy", false));
        }
        None
    }

    fn dispatch(&mut self, key: BatchKey, batch: Vec<Pending>) {
        let Some(account) = self.accounts.get(&key.0).cloned() else {
            return;
        };
        let engine = self.engine.clone();
        self.tasks
            .spawn(async move { engine.deliver(account, key.1, batch).await });
    }

    /// Outcomes back from delivery tasks: their events leave their
    /// account's budget, and their records wait for the next commit.
    fn resolve(&mut self, batch: Vec<Resolved>) {
        for r in batch {
            if let Some(account) = self.accounts.get(&r.pending.tenant) {
                account.release_events(1);
            }
            if !matches!(r.resolution, Resolution::Abandoned) {
                self.finish(r.pending, r.resolution);
            }
        }
    }

    fn finish(&mut self, pending: Pending, resolution: Resolution) {
        let records = self.outcomes.records(&pending, &resolution);
        self.shared.tracker().finish(pending.origin, records);
    }

    fn dead_letter(&mut self, record: InboundRecord, origin: Origin, reason: &str, detail: String) {
        let letter =
            self.outcomes
                .dead_letters()
                .for_record(&record, reason, detail, Vec::new(), None);
        let records = match letter {
            Ok(l) => vec![l],
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a dead letter");
                Vec::new()
            }
        };
        self.metrics.events("dead_lettered", reason, 1);
        self.shared.tracker().finish(origin, records);
    }

    fn park(
        &mut self,
        input: InputPartition,
        record: InboundRecord,
        origin: Origin,
        state: RetryState,
    ) {
        let parked = self.parked.entry(input).or_insert_with(|| Parked {
            queue: VecDeque::new(),
        });
        parked.queue.push_back((record, origin, state));
        if parked.queue.len() == 1 {
            self.pause_partitions(&[input], true);
        }
    }

    fn next_parked_wake(&self) -> Option<Instant> {
        let shortest = self.shared.tiers.shortest();
        let now_ms = now_millis();
        self.parked
            .values()
            .filter_map(|p| p.queue.front())
            .map(|(_, _, s)| {
                let wait = u64::try_from(s.wake_at_ms(shortest) - now_ms).unwrap_or(0);
                Instant::now() + Duration::from_millis(wait)
            })
            .min()
    }

    /// Hands on the retry records that ripened; a partition whose queue is
    /// empty again reads on.
    fn wake_parked(&mut self) {
        let shortest = self.shared.tiers.shortest();
        let now_ms = now_millis();
        let inputs: Vec<InputPartition> = self.parked.keys().copied().collect();
        for input in inputs {
            let mut ripe = Vec::new();
            let Some(parked) = self.parked.get_mut(&input) else {
                continue;
            };
            while parked
                .queue
                .front()
                .is_some_and(|(_, _, s)| s.wake_at_ms(shortest) <= now_ms)
            {
                if let Some(item) = parked.queue.pop_front() {
                    ripe.push(item);
                }
            }
            if parked.queue.is_empty() {
                self.parked.remove(&input);
                self.pause_partitions(&[input], false);
            }
            for (record, origin, state) in ripe {
                self.handle(record, origin, Some(state));
            }
        }
    }

    fn pause_partitions(&self, inputs: &[InputPartition], pause: bool) {
        for (source, partition) in inputs {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(self.shared.tiers.topic_of(*source), *partition);
            let consumer = self.consumer(*source);
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, pause, "cannot pause/resume partitions (revoked?)");
            }
        }
    }

    /// Commits the finished run of every partition. A commit the broker
    /// would not take is tried again after a backoff; a fenced one means
    /// this instance's view of its partitions is stale: everything not
    /// committed is read again (after the next poll tells what is still
    /// ours).
    fn commit(&mut self) -> Result<(), DriverError> {
        let mut release = self.shared.tracker().release(|_| true);
        if release.is_empty() {
            self.next_commit = Instant::now() + self.settings.commit_interval;
            return Ok(());
        }
        let shared = self.shared.clone();
        let groups = Groups {
            main: Some(GroupConsumer::Stream(&self.main)),
            retries: Some(GroupConsumer::Stream(&self.retries)),
        };
        let result =
            postback_core::kafka::run_blocking(|| shared.committer.commit(groups, &mut release));
        let committed = match result {
            Ok(c) => c,
            Err(TransactionError::Fatal(reason)) => {
                // Nothing of it is visible: a new producer (which fences
                // this one) takes over, and what was not committed is read
                // again.
                tracing::error!(%reason, "the transactional producer failed for good; a new one takes over");
                self.renew_producer()?;
                self.restart_partitions();
                self.next_commit = Instant::now() + self.settings.commit_interval;
                return Ok(());
            }
            Err(e) => return Err(DriverError::Commit(e)),
        };
        match committed {
            Committed::Done => {
                self.shared.tracker().committed(&release);
                self.commit_backoff = self.settings.commit_interval;
            }
            Committed::Retry(reason) => {
                tracing::warn!(%reason, conversions = release.conversions(),
                    retry_in_ms = self.commit_backoff.as_millis() as u64,
                    "outcomes not committed; trying again");
                self.shared.tracker().put_back(release);
                self.commit_backoff = (self.commit_backoff * 2).min(Duration::from_secs(5));
            }
            Committed::Fenced(reason) => {
                tracing::warn!(%reason, "the group refused this instance's commit; reading again what it had not committed");
                self.restart_partitions();
            }
        }
        self.next_commit = Instant::now() + self.commit_backoff;
        Ok(())
    }

    fn renew_producer(&self) -> Result<(), DriverError> {
        postback_core::kafka::run_blocking(|| self.shared.committer.renew())
            .map_err(DriverError::Renew)
    }

    /// Reads every owned partition again from its last commit, under a new
    /// generation: work of the old one (in flight, batched, parked) is
    /// dropped as it comes back.
    fn restart_partitions(&mut self) {
        let inputs: Vec<InputPartition> = self.shared.tracker().owned().copied().collect();
        for input in &inputs {
            let generation = self.shared.next_generation();
            self.shared.ownership.assign(*input, generation);
            let at = self.shared.tracker().restart(*input, generation);
            if let Some(at) = at {
                let topic = self.shared.tiers.topic_of(input.0);
                let consumer = self.consumer(input.0);
                if let Err(e) =
                    consumer.seek(topic, input.1, Offset::Offset(at), Duration::from_secs(10))
                {
                    tracing::info!(topic, partition = input.1, error = %e, "cannot rewind (partition no longer ours?)");
                }
            }
        }
        self.forget(&inputs);
    }

    /// Drops what this instance holds of `inputs` (batched, parked).
    fn forget(&mut self, inputs: &[InputPartition]) {
        for p in self.batcher.forget_partitions(inputs) {
            if let Some(account) = self.accounts.get(&p.tenant) {
                account.release_events(1);
            }
        }
        let mut resume = Vec::new();
        for input in inputs {
            if self.parked.remove(input).is_some() {
                resume.push(*input);
            }
        }
        self.pause_partitions(&resume, false);
    }

    fn apply_changes(&mut self) {
        let changes = self.shared.take_changes();
        if changes.is_empty() {
            return;
        }
        for change in changes {
            if let Change::Revoked(lost) = change {
                self.forget(&lost);
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
        let owned = self.shared.ownership.main_partitions();
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
        let topic = self.shared.tiers.topic_of(0).to_string();
        let metadata = postback_core::kafka::run_blocking(|| {
            self.main
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
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

    /// The last resort behind the per-account budgets: past
    /// `max_pending_events` read and uncommitted, stop reading until half
    /// of them are committed (the group keeps the member: it still polls).
    fn flow_control(&mut self) {
        let uncommitted = self.shared.tracker().uncommitted();
        self.metrics.pending.set(uncommitted as i64);
        if !self.paused && uncommitted >= self.settings.max_pending {
            tracing::info!(
                uncommitted,
                "too many conversions in hand; pausing consumption"
            );
            self.set_paused(true);
        } else if self.paused && uncommitted <= self.settings.max_pending / 2 {
            tracing::info!(uncommitted, "resuming consumption");
            self.set_paused(false);
        }
    }

    fn set_paused(&mut self, pause: bool) {
        let mut ok = true;
        for consumer in [&self.main, &self.retries] {
            let assignment = match consumer.assignment() {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the assignment");
                    ok = false;
                    continue;
                }
            };
            let mut tpl = TopicPartitionList::new();
            for e in assignment.elements() {
                let parked = self
                    .shared
                    .tiers
                    .source_of(e.topic())
                    .is_some_and(|s| self.parked.contains_key(&(s, e.partition())));
                // A parked partition stays paused until its head ripens.
                if !parked {
                    tpl.add_partition(e.topic(), e.partition());
                }
            }
            let result = if pause {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, pause, "cannot pause/resume the partitions");
                ok = false;
            }
        }
        if ok {
            self.paused = pause;
            self.metrics.paused.set(i64::from(pause));
        }
    }

    /// Stops reading, lets requests in flight finish and take their
    /// outcomes (open batches and parked retries are left to the next
    /// run), commits what is finished and leaves the group.
    async fn stop(mut self) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.settings.drain;
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => if joined.is_none() { break },
                Some(batch) = self.resolved.recv() => self.resolve(batch),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(tasks = self.tasks.len(), "requests still in flight at shutdown; their conversions are sent again on restart");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        while let Ok(batch) = self.resolved.try_recv() {
            self.resolve(batch);
        }
        let committed = self.commit();
        // Leaving the groups revokes every partition: the callbacks commit
        // whatever finished meanwhile.
        self.main.unsubscribe();
        self.retries.unsubscribe();
        tracing::info!(group = %self.settings.group_id, "dispatcher stopped");
        committed
    }
}

/// A conversion waiting on the retry path until `not_before_ms`, with no
/// request made now.
fn retry_later(not_before_ms: i64, code: &str, status: bool) -> Resolution {
    Resolution::Retry {
        not_before_ms,
        reason: Reason::new(code, ""),
        status,
    }
}
