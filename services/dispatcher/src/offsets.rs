//! Which offsets may be committed: per partition, the lowest offset whose
//! conversion has no final outcome yet. Conversions finish out of order
//! (batches per account, retries, isolation), so the committed position is
//! a low watermark: a crash replays everything from the oldest unfinished
//! conversion on, and never skips one.

use std::collections::{BTreeSet, HashMap};

use crate::pending::Origin;

#[derive(Default)]
struct Partition {
    generation: u64,
    unfinished: BTreeSet<i64>,
    /// One past the highest offset read.
    next: Option<i64>,
    /// The position last handed out for storing.
    stored: Option<i64>,
}

impl Partition {
    fn position(&self) -> Option<i64> {
        self.unfinished.first().copied().or(self.next)
    }
}

#[derive(Default)]
pub struct Offsets {
    partitions: HashMap<i32, Partition>,
    unfinished: usize,
}

impl Offsets {
    pub fn assign(&mut self, partition: i32, generation: u64) {
        if let Some(old) = self.partitions.insert(
            partition,
            Partition {
                generation,
                ..Default::default()
            },
        ) {
            self.unfinished -= old.unfinished.len();
        }
    }

    /// Forgets a partition this instance lost; returns how many of its
    /// conversions were unfinished.
    pub fn revoke(&mut self, partition: i32) -> usize {
        let n = self
            .partitions
            .remove(&partition)
            .map_or(0, |p| p.unfinished.len());
        self.unfinished -= n;
        n
    }

    /// A conversion was read; false if its partition is not (or no longer)
    /// this instance's under that generation.
    pub fn read(&mut self, origin: Origin) -> bool {
        let Some(p) = self.partitions.get_mut(&origin.partition) else {
            return false;
        };
        if p.generation != origin.generation {
            return false;
        }
        if p.unfinished.insert(origin.offset) {
            self.unfinished += 1;
        }
        p.next = Some(
            p.next
                .map_or(origin.offset + 1, |n| n.max(origin.offset + 1)),
        );
        true
    }

    /// A conversion is final. Returns the partition's new position to store
    /// if it moved.
    pub fn finished(&mut self, origin: Origin) -> Option<(i32, i64)> {
        let p = self.partitions.get_mut(&origin.partition)?;
        if p.generation != origin.generation || !p.unfinished.remove(&origin.offset) {
            return None;
        }
        self.unfinished -= 1;
        let position = p.position()?;
        if p.stored.is_some_and(|s| s >= position) {
            return None;
        }
        p.stored = Some(position);
        Some((origin.partition, position))
    }

    /// Conversions read and not final, over all partitions.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    pub fn owned(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Origin {
        Origin {
            partition,
            offset,
            generation: 7,
        }
    }

    #[test]
    fn the_position_is_the_oldest_unfinished_conversion() {
        let mut o = Offsets::default();
        o.assign(0, 7);
        for off in 10..15 {
            assert!(o.read(at(0, off)));
        }
        assert_eq!(o.finished(at(0, 12)), Some((0, 10)));
        assert_eq!(o.finished(at(0, 13)), None);
        assert_eq!(o.finished(at(0, 10)), Some((0, 11)));
        assert_eq!(o.finished(at(0, 11)), Some((0, 14)));
        assert_eq!(o.finished(at(0, 14)), Some((0, 15)));
        assert_eq!(o.unfinished(), 0);
    }

    #[test]
    fn a_lost_partition_forgets_its_work_and_stale_generations_are_ignored() {
        let mut o = Offsets::default();
        o.assign(1, 7);
        o.read(at(1, 1));
        o.read(at(1, 2));
        assert_eq!(o.revoke(1), 2);
        assert_eq!(o.unfinished(), 0);
        o.assign(1, 8);
        assert!(!o.read(at(1, 3)));
        assert_eq!(o.finished(at(1, 1)), None);
    }
}
