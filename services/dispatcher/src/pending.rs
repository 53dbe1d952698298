//! A conversion read from dispatch.<platform> and not yet given a final
//! outcome, and the bookkeeping that says whether this instance still owns
//! its partition.

use std::collections::HashMap;
use std::sync::RwLock;

use postback_core::kafka::InboundRecord;
use serde_json::Value;

/// Where a conversion came from, to release its offset once it is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
    /// The partition's assignment this record was read under.
    pub generation: u64,
}

pub struct Pending {
    pub origin: Origin,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// The record as read, for a dead letter that can be replayed.
    pub payload: Option<Vec<u8>>,
    pub tenant: String,
    pub event_id: String,
    pub event_name: String,
    /// Unix ms after which the platform no longer takes the event.
    pub deadline_ms: i64,
    /// The event as the platform's request carries it.
    pub row: Value,
    /// Requests that carried it so far.
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
    generations: RwLock<HashMap<i32, u64>>,
}

impl Ownership {
    pub fn owns(&self, origin: &Origin) -> bool {
        let map = match self.generations.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(&origin.partition) == Some(&origin.generation)
    }

    pub fn assign(&self, partition: i32, generation: u64) {
        let mut map = match self.generations.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.insert(partition, generation);
    }

    pub fn revoke(&self, partition: i32) {
        let mut map = match self.generations.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.remove(&partition);
    }

    pub fn generation(&self, partition: i32) -> Option<u64> {
        let map = match self.generations.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.get(&partition).copied()
    }
}
