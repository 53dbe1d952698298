//! A conversion read from dispatch.<platform> (or one of its retry topics)
//! and not yet given an outcome, and the bookkeeping that says whether this
//! instance still owns its partition.

use std::collections::HashMap;
use std::sync::RwLock;

use postback_core::kafka::InboundRecord;
use serde_json::Value;

/// Which input a record came from: 0 is dispatch.<platform>, 1.. its retry
/// topics in the order of `dispatch.retry_tiers_secs`.
pub type Source = u8;

/// A partition of one of the inputs.
pub type InputPartition = (Source, i32);

/// Where a conversion came from, to commit its offset with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub partition: i32,
    pub offset: i64,
    /// The partition's assignment this record was read under.
    pub generation: u64,
}

impl Origin {
    pub fn input(&self) -> InputPartition {
        (self.source, self.partition)
    }
}

pub struct Pending {
    pub origin: Origin,
    /// The topic it was read from (for a dead letter).
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// The record as read (the conversion, unchanged on the retry path), for
    /// a retry record and for a dead letter that can be replayed.
    pub payload: Option<Vec<u8>>,
    pub tenant: String,
    pub event_id: String,
    pub event_name: String,
    /// Unix ms after which the platform no longer takes the event.
    pub deadline_ms: i64,
    /// The event as the platform's request carries it.
    pub row: Value,
    /// Requests that carried it so far (over every attempt, retry path
    /// included).
    pub sends: u32,
    /// Failed attempts so far (throttles do not count).
    pub failures: u32,
}

impl Pending {
    /// The record again, for a dead letter.
    pub fn as_inbound(&self) -> InboundRecord {
        InboundRecord {
            topic: self.topic.clone(),
            partition: self.origin.partition,
            offset: self.origin.offset,
            key: self.key.clone(),
            payload: self.payload.clone(),
            ..Default::default()
        }
    }
}

/// Which partitions this instance owns, and under which assignment: work
/// read under an older assignment is abandoned (the partition's new owner
/// reads it again from the last commit).
#[derive(Default)]
pub struct Ownership {
    generations: RwLock<HashMap<InputPartition, u64>>,
}

impl Ownership {
    pub fn owns(&self, origin: &Origin) -> bool {
        let map = match self.generations.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(&origin.input()) == Some(&origin.generation)
    }

    pub fn assign(&self, input: InputPartition, generation: u64) {
        let mut map = match self.generations.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.insert(input, generation);
    }

    pub fn revoke(&self, input: InputPartition) {
        let mut map = match self.generations.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.remove(&input);
    }

    pub fn generation(&self, input: InputPartition) -> Option<u64> {
        let map = match self.generations.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(&input).copied()
    }

    /// Partitions of dispatch.<platform> owned (the quota share's numerator).
    pub fn main_partitions(&self) -> usize {
        let map = match self.generations.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.keys().filter(|(source, _)| *source == 0).count()
    }
}
