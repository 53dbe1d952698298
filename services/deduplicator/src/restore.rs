//! Bringing a partition's state up to date from the changelog before the
//! partition's first record is handled.
//!
//! The store remembers, per partition, the changelog offset it reflects.
//! A restore reads (committed records only) from there to the end of the
//! changelog partition: an instance that owned the partition before catches
//! up on what others wrote meanwhile, a new instance (or one that lost its
//! disk) reads it all. A store that claims more than the changelog holds
//! (the topic was recreated) is dropped and rebuilt. So is a store whose
//! checkpoint is below what retention kept: the changes it missed are gone,
//! and a conversion it still holds may have been emitted by another owner
//! since, so each such conversion becomes a dead letter (`stale_state`),
//! never a second upload. A changelog record that cannot be read becomes a
//! dead letter (`undecodable_state`), and the restore goes on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postback_core::config::KafkaConfig;
use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{InboundRecord, OutboundRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::key::DedupKey;
use crate::metrics::DedupMetrics;
use crate::state::{KeyState, Phase};
use crate::store::{Change, StateStore, StoreError};

/// Changes applied per store batch while restoring.
const RESTORE_BATCH: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot create the changelog reader: {0}")]
    Client(#[source] KafkaError),
    #[error(
        "changelog {topic}[{partition}]: no progress for {stalled:?} (last error: {last_error})"
    )]
    Stalled {
        topic: String,
        partition: i32,
        stalled: Duration,
        last_error: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// Changelog records applied.
    pub records: u64,
    /// Whether the local state had to be dropped and rebuilt from scratch.
    pub rebuilt: bool,
    /// What could not be restored, for conversions.rejected.
    pub dead_letters: Vec<OutboundRecord>,
}

pub struct Restorer {
    consumer: BaseConsumer,
    topic: String,
    stall: Duration,
    dead_letters: DeadLetters,
    metrics: DedupMetrics,
}

impl Restorer {
    pub fn new(
        kafka: &KafkaConfig,
        topic: String,
        client_id: &str,
        stall: Duration,
        dead_letters: DeadLetters,
        metrics: DedupMetrics,
    ) -> Result<Self, RestoreError> {
        let mut cfg = kafka.client_config();
        cfg.set("client.id", client_id)
            // Never joins the group (partitions are assigned by hand) and
            // never commits: the store's checkpoint is the position.
            .set("group.id", format!("{client_id}-restore"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // What an aborted transaction wrote never happened; the end of
            // a partition is its last stable offset.
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &kafka.consumer_properties {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().map_err(RestoreError::Client)?;
        Ok(Restorer {
            consumer,
            topic,
            stall,
            dead_letters,
            metrics,
        })
    }

    fn stalled(&self, partition: i32, last_error: String) -> RestoreError {
        RestoreError::Stalled {
            topic: self.topic.clone(),
            partition,
            stalled: self.stall,
            last_error,
        }
    }

    fn watermarks(&self, partition: i32) -> Result<(i64, i64), RestoreError> {
        let started = Instant::now();
        loop {
            match self
                .consumer
                .fetch_watermarks(&self.topic, partition, Duration::from_secs(5))
            {
                Ok(w) => return Ok(w),
                Err(e) if started.elapsed() >= self.stall => {
                    return Err(self.stalled(partition, e.to_string()))
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition, error = %e, "cannot read changelog offsets; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Brings `partition` of `store` up to the changelog's end.
    pub fn restore(
        &self,
        store: &mut StateStore,
        partition: i32,
    ) -> Result<Restored, RestoreError> {
        store.open_partition(partition)?;
        let (low, high) = self.watermarks(partition)?;
        let mut checkpoint = store.checkpoint(partition)?;
        let mut rebuilt = false;
        let mut stale_held = Vec::new();
        if checkpoint.is_some_and(|c| c > high) {
            tracing::warn!(topic = %self.topic, partition, checkpoint, high,
                "local state is ahead of the changelog (topic recreated?); rebuilding it");
            store.clear_partition(partition)?;
            checkpoint = None;
            rebuilt = true;
        } else if checkpoint.is_some_and(|c| c < low) {
            tracing::warn!(topic = %self.topic, partition, checkpoint, low,
                "local state is older than what the changelog keeps; rebuilding it");
            stale_held = held_records(store, partition)?;
            store.clear_partition(partition)?;
            checkpoint = None;
            rebuilt = true;
        }
        let mut restored = Restored {
            records: 0,
            rebuilt,
            dead_letters: Vec::new(),
        };
        let start = checkpoint.unwrap_or(low);
        if start >= high {
            if checkpoint != Some(high) {
                store.write([], &[(partition, high)])?;
            }
        } else {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(start))
                .map_err(RestoreError::Client)?;
            self.consumer.assign(&tpl).map_err(RestoreError::Client)?;
            let result = self.read_until(store, partition, start, high, &mut restored);
            if let Err(e) = self.consumer.unassign() {
                tracing::warn!(error = %e, "cannot unassign the changelog reader");
            }
            restored.records = result?;
        }
        self.stale_letters(store, partition, stale_held, &mut restored)?;
        Ok(restored)
    }

    /// The held conversions of a stale store that the changelog no longer
    /// knows: another owner may have emitted them, so they are not emitted
    /// again; a dead letter keeps each for a look and a replay.
    fn stale_letters(
        &self,
        store: &StateStore,
        partition: i32,
        stale_held: Vec<(DedupKey, Vec<u8>)>,
        restored: &mut Restored,
    ) -> Result<(), RestoreError> {
        for (key, record) in stale_held {
            if matches!(store.get(partition, &key), Ok(Some(_))) {
                continue;
            }
            self.metrics
                .dead_letters
                .with_label_values(&["stale_state"])
                .inc();
            restored.dead_letters.extend(self.letter(
                partition,
                -1,
                key.as_bytes(),
                Some(&record),
                "stale_state",
                "held by an out-of-date store; the changelog no longer knows it and another \
                 owner may have sent it",
            ));
        }
        Ok(())
    }

    fn letter(
        &self,
        partition: i32,
        offset: i64,
        key: &[u8],
        value: Option<&[u8]>,
        reason: &str,
        detail: &str,
    ) -> Option<OutboundRecord> {
        let source = InboundRecord {
            topic: self.topic.clone(),
            partition,
            offset,
            key: Some(key.to_vec()),
            payload: value.map(<[u8]>::to_vec),
            ..Default::default()
        };
        self.dead_letters
            .for_record(&source, reason, detail.to_string(), Vec::new(), None)
            .inspect_err(|e| tracing::error!(error = %e, "dead letter does not encode"))
            .ok()
    }

    fn read_until(
        &self,
        store: &mut StateStore,
        partition: i32,
        start: i64,
        high: i64,
        restored: &mut Restored,
    ) -> Result<u64, RestoreError> {
        // Latest state per key in this batch: a store batch must not hold
        // two writes of one key.
        let mut batch: HashMap<DedupKey, Option<KeyState>> = HashMap::new();
        let mut next = start;
        let mut applied = 0u64;
        let mut progress = Instant::now();
        let mut last_error = String::from("none");
        while next < high {
            match self.consumer.poll(Duration::from_millis(500)) {
                None => {}
                // The last stable offset: what follows is an open (or
                // aborted) transaction's, never to be applied.
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    last_error = e.to_string();
                    tracing::warn!(topic = %self.topic, partition, error = %e, "changelog read error");
                }
                Some(Ok(m)) => {
                    progress = Instant::now();
                    next = m.offset() + 1;
                    applied += 1;
                    match self.decode(&m) {
                        Ok((key, state)) => {
                            batch.insert(key, state);
                        }
                        Err(reason) => {
                            tracing::error!(
                                partition,
                                offset = m.offset(),
                                reason,
                                "unreadable changelog record; it becomes a dead letter"
                            );
                            self.metrics
                                .restore_skipped
                                .with_label_values(&[reason])
                                .inc();
                            // Offset -1: a state record, which a replay must
                            // never write back to the changelog; where it is
                            // goes into the detail.
                            restored.dead_letters.extend(self.letter(
                                partition,
                                -1,
                                m.key().unwrap_or_default(),
                                m.payload(),
                                "undecodable_state",
                                &format!("changelog record at offset {}: {reason}", m.offset()),
                            ));
                        }
                    }
                    if batch.len() >= RESTORE_BATCH {
                        flush(store, partition, &mut batch, next)?;
                    }
                }
            }
            if progress.elapsed() >= self.stall {
                return Err(self.stalled(partition, last_error));
            }
        }
        flush(
            store,
            partition,
            &mut batch,
            self.position(partition).unwrap_or(next),
        )?;
        self.metrics.restored_records.inc_by(applied);
        Ok(applied)
    }

    /// A changelog record's key and state (None: a tombstone, the key is
    /// forgotten), or why it cannot be read.
    fn decode(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(DedupKey, Option<KeyState>), &'static str> {
        let key = m
            .key()
            .and_then(|k| DedupKey::from_bytes(k).ok())
            .ok_or("bad_key")?;
        match m.payload() {
            None => Ok((key, None)),
            Some(bytes) => KeyState::decode(bytes)
                .map(|s| (key, Some(s)))
                .map_err(|_| "bad_value"),
        }
    }

    /// Where the reader stands in `partition` (past the last stable record,
    /// control records included).
    fn position(&self, partition: i32) -> Option<i64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }
}

/// The held conversions of `partition` in `store`, with their records.
fn held_records(
    store: &StateStore,
    partition: i32,
) -> Result<Vec<(DedupKey, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for (key, _) in store.held(partition)? {
        if let Ok(Some(state)) = store.get(partition, &key) {
            if let Phase::Held { record, .. } = state.phase {
                out.push((key, record));
            }
        }
    }
    Ok(out)
}

fn flush(
    store: &StateStore,
    partition: i32,
    batch: &mut HashMap<DedupKey, Option<KeyState>>,
    checkpoint: i64,
) -> Result<(), StoreError> {
    let changes = batch.iter().map(|(key, state)| Change {
        partition,
        key,
        state: state.as_ref(),
    });
    store.write(changes, &[(partition, checkpoint)])?;
    batch.clear();
    Ok(())
}
