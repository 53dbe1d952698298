//! Open batches, one per account (and per request group, TikTok's
//! event_source): a batch goes when it reaches the platform's limit, or when
//! its first event has waited `linger`, so a trickle still goes out promptly.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::pending::{InputPartition, Pending};

pub type BatchKey = (String, &'static str);

struct Open {
    since: Instant,
    events: Vec<Pending>,
}

pub struct Batcher {
    limit: usize,
    linger: Duration,
    open: HashMap<BatchKey, Open>,
}

impl Batcher {
    pub fn new(limit: usize, linger: Duration) -> Self {
        Batcher {
            limit: limit.max(1),
            linger,
            open: HashMap::new(),
        }
    }

    /// Adds an event; returns its batch if that made it full.
    pub fn add(&mut self, key: BatchKey, event: Pending) -> Option<(BatchKey, Vec<Pending>)> {
        let open = self.open.entry(key.clone()).or_insert_with(|| Open {
            since: Instant::now(),
            events: Vec::new(),
        });
        open.events.push(event);
        if open.events.len() >= self.limit {
            return self.open.remove(&key).map(|o| (key, o.events));
        }
        None
    }

    /// The batches whose linger is over at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<(BatchKey, Vec<Pending>)> {
        let keys: Vec<BatchKey> = self
            .open
            .iter()
            .filter(|(_, o)| o.since + self.linger <= now)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.open.remove(&k).map(|o| (k, o.events)))
            .collect()
    }

    /// When the next batch is due, if any is open.
    pub fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|o| o.since + self.linger).min()
    }

    /// Takes out the events of partitions this instance lost.
    pub fn forget_partitions(&mut self, inputs: &[InputPartition]) -> Vec<Pending> {
        let mut dropped = Vec::new();
        for open in self.open.values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut open.events)
                .into_iter()
                .partition(|p| inputs.contains(&p.origin.input()));
            open.events = kept;
            dropped.extend(gone);
        }
        self.open.retain(|_, o| !o.events.is_empty());
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pending::Origin;

    fn event(partition: i32, offset: i64) -> Pending {
        Pending {
            origin: Origin {
                source: 0,
                partition,
                offset,
                generation: 1,
            },
            topic: "t".into(),
            key: None,
            payload: None,
            tenant: "t".into(),
            event_id: offset.to_string(),
            event_name: "Purchase".into(),
            deadline_ms: i64::MAX,
            row: serde_json::Value::Null,
            sends: 0,
            failures: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_go_at_once_and_a_trickle_after_linger() {
        let mut b = Batcher::new(3, Duration::from_millis(100));
        let key: BatchKey = ("shop".into(), "");
        assert!(b.add(key.clone(), event(0, 1)).is_none());
        assert!(b.add(key.clone(), event(0, 2)).is_none());
        let (_, full) = b.add(key.clone(), event(1, 3)).unwrap();
        assert_eq!(full.len(), 3);
        b.add(key.clone(), event(0, 4));
        b.add(("other".into(), ""), event(2, 5));
        assert!(b.due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.due(Instant::now()).len(), 2);
        assert!(b.next_due().is_none());
    }

    #[test]
    fn lost_partitions_leave_their_batches() {
        let mut b = Batcher::new(10, Duration::from_millis(100));
        b.add(("a".into(), ""), event(0, 1));
        b.add(("a".into(), ""), event(1, 2));
        b.add(("b".into(), ""), event(1, 3));
        assert_eq!(b.forget_partitions(&[(0, 1)]).len(), 2);
        assert_eq!(b.open.len(), 1);
    }
}
