//! Bringing a partition's state up to date from the changelog before the
//! partition's first record is handled.
//!
//! The store remembers, per partition, the changelog offset it reflects.
//! A restore reads from there to the end of the changelog partition: an
//! instance that owned the partition before catches up on what others wrote
//! meanwhile, a new instance (or one that lost its disk) reads it all. A
//! store that claims more than the changelog holds (the topic was
//! recreated) is dropped and rebuilt.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postback_core::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

use crate::key::DedupKey;
use crate::metrics::DedupMetrics;
use crate::state::KeyState;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Changelog records applied.
    pub records: u64,
    /// Whether the local state had to be dropped and rebuilt from scratch.
    pub rebuilt: bool,
}

pub struct Restorer {
    consumer: BaseConsumer,
    topic: String,
    stall: Duration,
    metrics: DedupMetrics,
}

impl Restorer {
    pub fn new(
        kafka: &KafkaConfig,
        topic: String,
        client_id: &str,
        stall: Duration,
        metrics: DedupMetrics,
    ) -> Result<Self, RestoreError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
            .set("client.id", client_id)
            // Never joins the group (partitions are assigned by hand) and
            // never commits: the store's checkpoint is the position.
            .set("group.id", format!("{client_id}-restore"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        for (k, v) in kafka.properties.iter().chain(&kafka.consumer_properties) {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().map_err(RestoreError::Client)?;
        Ok(Restorer {
            consumer,
            topic,
            stall,
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
        if checkpoint.is_some_and(|c| c > high) {
            tracing::warn!(topic = %self.topic, partition, checkpoint, high,
                "local state is ahead of the changelog (topic recreated?); rebuilding it");
            store.clear_partition(partition)?;
            checkpoint = None;
            rebuilt = true;
        }
        // Below `low` the changelog was deleted by retention: those keys
        // expired, and the local state drops them by itself.
        let start = checkpoint.unwrap_or(low).max(low);
        if start >= high {
            if checkpoint != Some(high) {
                store.write([], &[(partition, high)])?;
            }
            return Ok(Restored {
                records: 0,
                rebuilt,
            });
        }

        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(start))
            .map_err(RestoreError::Client)?;
        self.consumer.assign(&tpl).map_err(RestoreError::Client)?;
        let result = self.read_until(store, partition, start, high);
        if let Err(e) = self.consumer.unassign() {
            tracing::warn!(error = %e, "cannot unassign the changelog reader");
        }
        let records = result?;
        Ok(Restored { records, rebuilt })
    }

    fn read_until(
        &self,
        store: &mut StateStore,
        partition: i32,
        start: i64,
        high: i64,
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
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    last_error = e.to_string();
                    tracing::warn!(topic = %self.topic, partition, error = %e, "changelog read error");
                }
                Some(Ok(m)) => {
                    progress = Instant::now();
                    next = m.offset() + 1;
                    applied += 1;
                    let Some(key) = m.key().and_then(|k| DedupKey::from_bytes(k).ok()) else {
                        self.metrics
                            .restore_skipped
                            .with_label_values(&["bad_key"])
                            .inc();
                        continue;
                    };
                    let state = match m.payload() {
                        // A tombstone: the key is forgotten.
                        None => None,
                        Some(bytes) => match KeyState::decode(bytes) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                tracing::error!(partition, offset = m.offset(), error = %e,
                                    "unreadable changelog record skipped");
                                self.metrics
                                    .restore_skipped
                                    .with_label_values(&["bad_value"])
                                    .inc();
                                continue;
                            }
                        },
                    };
                    batch.insert(key, state);
                    if batch.len() >= RESTORE_BATCH {
                        flush(store, partition, &mut batch, next)?;
                    }
                }
            }
            if progress.elapsed() >= self.stall {
                return Err(self.stalled(partition, last_error));
            }
        }
        flush(store, partition, &mut batch, next.max(high))?;
        self.metrics.restored_records.inc_by(applied);
        Ok(applied)
    }
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
