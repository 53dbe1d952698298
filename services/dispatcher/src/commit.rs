//! Committing what the dispatcher finished: the outcome records of a
//! release (status records, retry records, dead letters) and the offsets
//! past it, in one Kafka transaction. Read committed downstream, so a
//! status is on conversions.status exactly when its conversion's input
//! offset is committed, and a restart or a rebalance never reads a
//! conversion with a final status again. The HTTP call before it is the one
//! step that cannot be in the transaction: what was sent and not yet
//! committed when an instance dies is sent again by the next owner (the
//! platforms' event_id / order_id dedup absorbs it).
//!
//! With `consumer.exactly_once = false` (brokers without transactions) the
//! records are written and acknowledged, then the offsets committed: a
//! crash between the two writes an outcome twice.
//!
//! The dispatch topic and its retry topics are read by two consumer groups
//! (so each group spreads its own topic's partitions evenly over the
//! instances), and a commit carries the offsets of each group with that
//! group's metadata.
//!
//! The calls block; the driver makes them between polls, and a rebalance
//! callback makes them for the partitions it is about to give away.

use std::sync::{Mutex, MutexGuard};

use postback_core::config::KafkaConfig;
use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{OutboundRecord, Producer, TransactionError, TransactionalProducer};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::driver::DriverContext;
use crate::metrics::DispatchMetrics;
use crate::retry::Tiers;
use crate::tracker::Release;

/// One of the two consumers, as a rebalance callback or the driver holds it.
#[derive(Clone, Copy)]
pub enum GroupConsumer<'a> {
    Base(&'a BaseConsumer<DriverContext>),
    Stream(&'a StreamConsumer<DriverContext>),
}

impl GroupConsumer<'_> {
    fn metadata(&self) -> Option<ConsumerGroupMetadata> {
        match self {
            GroupConsumer::Base(c) => c.group_metadata(),
            GroupConsumer::Stream(c) => c.group_metadata(),
        }
    }

    fn commit(&self, offsets: &TopicPartitionList) -> KafkaResult<()> {
        match self {
            GroupConsumer::Base(c) => c.commit(offsets, CommitMode::Sync),
            GroupConsumer::Stream(c) => c.commit(offsets, CommitMode::Sync),
        }
    }
}

/// The consumers whose offsets a commit carries: the dispatch topic's
/// (source 0) and the retry topics' (sources 1..). A rebalance callback
/// has only its own.
#[derive(Clone, Copy)]
pub struct Groups<'a> {
    pub main: Option<GroupConsumer<'a>>,
    pub retries: Option<GroupConsumer<'a>>,
}

pub enum Sink {
    Transactional(TransactionalProducer),
    Acknowledged(Producer),
}

/// What became of a commit.
#[derive(Debug)]
pub enum Committed {
    Done,
    /// Nothing was written; the same release may be committed again.
    Retry(String),
    /// The group refused this instance's offsets: it lost (some of) its
    /// partitions, and what it has not committed is the next owner's.
    Fenced(String),
}

/// How to make a new transactional producer when one fails for good.
pub struct Renewal {
    pub kafka: KafkaConfig,
    pub client_id: String,
    pub transactional_id: String,
}

pub struct Committer {
    /// Replaced when a transactional producer fails for good (commits run
    /// one at a time: between polls, or inside one).
    sink: Mutex<Sink>,
    renewal: Option<Renewal>,
    tiers: Tiers,
    dead_letters: DeadLetters,
    metrics: DispatchMetrics,
}

impl Committer {
    pub fn new(
        sink: Sink,
        renewal: Option<Renewal>,
        tiers: Tiers,
        dead_letters: DeadLetters,
        metrics: DispatchMetrics,
    ) -> Self {
        Committer {
            sink: Mutex::new(sink),
            renewal,
            tiers,
            dead_letters,
            metrics,
        }
    }

    fn sink(&self) -> MutexGuard<'_, Sink> {
        match self.sink.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// A client of the producer, for the broker readiness probe.
    pub fn probe_client(&self) -> rdkafka::producer::FutureProducer {
        match &*self.sink() {
            Sink::Transactional(t) => t.client(),
            Sink::Acknowledged(p) => p.client(),
        }
    }

    /// A new transactional producer with the same id, in place of one that
    /// failed for good (the broker fences the old one), tried for a while
    /// before the dispatcher gives up. Blocking.
    pub fn renew(&self) -> Result<(), KafkaError> {
        let Some(r) = &self.renewal else {
            return Ok(());
        };
        let producer =
            TransactionalProducer::renew_blocking(&r.kafka, &r.client_id, &r.transactional_id)?;
        *self.sink() = Sink::Transactional(producer);
        Ok(())
    }

    /// Commits `release` (blocking). A record larger than the broker takes
    /// is replaced by its dead letter and the commit tried again.
    pub fn commit(
        &self,
        groups: Groups<'_>,
        release: &mut Release,
    ) -> Result<Committed, TransactionError> {
        let (main, retries) = self.offsets(release);
        let pairs = [(main, groups.main), (retries, groups.retries)];
        if let Some((_, None)) = pairs.iter().find(|(o, g)| o.count() > 0 && g.is_none()) {
            return Ok(Committed::Retry(
                "no consumer for some of the offsets".into(),
            ));
        }
        let sink = self.sink();
        loop {
            let result = match &*sink {
                Sink::Transactional(producer) => {
                    let with_metadata: Vec<(TopicPartitionList, Option<ConsumerGroupMetadata>)> =
                        pairs
                            .iter()
                            .map(|(o, g)| (o.clone(), g.and_then(|g| g.metadata())))
                            .collect();
                    producer
                        .commit_blocking(&release.records, &with_metadata)
                        .map(|_| ())
                }
                Sink::Acknowledged(producer) => acknowledge(producer, &pairs, &release.records),
            };
            match result {
                Ok(()) => {
                    self.metrics.commits.with_label_values(&["committed"]).inc();
                    return Ok(Committed::Done);
                }
                Err(TransactionError::TooLarge { index }) => {
                    self.metrics.commits.with_label_values(&["aborted"]).inc();
                    if !self.replace_too_large(release, index) {
                        return Err(TransactionError::TooLarge { index });
                    }
                }
                Err(TransactionError::Aborted {
                    reason,
                    fenced: true,
                }) => {
                    self.metrics.commits.with_label_values(&["fenced"]).inc();
                    return Ok(Committed::Fenced(reason));
                }
                Err(TransactionError::Aborted { reason, .. }) => {
                    self.metrics.commits.with_label_values(&["aborted"]).inc();
                    return Ok(Committed::Retry(reason));
                }
                Err(fatal @ TransactionError::Fatal(_)) => return Err(fatal),
            }
        }
    }

    /// The release's offsets: the dispatch topic's, the retry topics'.
    fn offsets(&self, release: &Release) -> (TopicPartitionList, TopicPartitionList) {
        let (mut main, mut retries) = (TopicPartitionList::new(), TopicPartitionList::new());
        for ((source, partition), offset) in &release.offsets {
            let topic = self.tiers.topic_of(*source);
            let tpl = if *source == 0 {
                &mut main
            } else {
                &mut retries
            };
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %e, "cannot build the offsets to commit");
            }
        }
        (main, retries)
    }

    fn replace_too_large(&self, release: &mut Release, index: usize) -> bool {
        let Some(record) = release.records.get(index) else {
            return false;
        };
        if record.topic == self.dead_letters.topic() {
            return false;
        }
        tracing::error!(topic = %record.topic, bytes = record.payload.len(),
            "record larger than the broker accepts; a dead letter takes its place");
        let detail = format!(
            "a record of {} bytes for {} is larger than the broker accepts",
            record.payload.len(),
            record.topic
        );
        match self
            .dead_letters
            .for_output(record, "output_too_large", detail)
        {
            Ok(letter) => {
                release.records[index] = letter;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a dead letter");
                false
            }
        }
    }
}

/// At-least-once: every record acknowledged, then the offsets committed.
fn acknowledge(
    producer: &Producer,
    pairs: &[(TopicPartitionList, Option<GroupConsumer<'_>>)],
    records: &[OutboundRecord],
) -> Result<(), TransactionError> {
    let results = futures::executor::block_on(producer.send_all(records));
    if let Some((index, error)) = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
    {
        if !error.is_retriable() {
            return Err(TransactionError::TooLarge { index });
        }
        return Err(TransactionError::Aborted {
            reason: error.to_string(),
            fenced: false,
        });
    }
    for (offsets, consumer) in pairs.iter().filter(|(o, _)| o.count() > 0) {
        let Some(consumer) = consumer else {
            continue;
        };
        if let Err(e) = consumer.commit(offsets) {
            let fenced = matches!(
                e,
                KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::IllegalGeneration
                        | RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::RebalanceInProgress
                        | RDKafkaErrorCode::FencedInstanceId
                )
            );
            return Err(TransactionError::Aborted {
                reason: e.to_string(),
                fenced,
            });
        }
    }
    Ok(())
}
