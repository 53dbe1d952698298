//! Which outcomes may be committed, and up to which offset.
//!
//! Conversions finish out of order (batches per account, isolation), but
//! an input partition's committed offset can only move over a contiguous
//! run of finished ones: per partition, the records read are kept in read
//! order, each open until its outcome (status, retry record, dead letter)
//! is known, and the committable part is the finished run at the front.
//! Its outcome records and the offset past it commit in one transaction,
//! so a conversion with a committed final status is never read again, and
//! one without is never skipped. Nothing waits long at the front: a
//! conversion that has to wait leaves for the retry path (its retry record
//! is its outcome here), so what holds a partition back is at most the
//! requests in flight.

use std::collections::{BTreeMap, HashMap};

use postback_core::kafka::OutboundRecord;

use crate::pending::{InputPartition, Origin};

enum Slot {
    Open,
    Done(Vec<OutboundRecord>),
}

#[derive(Default)]
struct Partition {
    generation: u64,
    /// Read but not committed, by offset (read order).
    slots: BTreeMap<i64, Slot>,
    /// The first offset read under this assignment: where to read again
    /// from if nothing was committed since.
    first_read: Option<i64>,
    /// One past the last committed offset (by this instance).
    committed: Option<i64>,
}

impl Partition {
    fn restart_at(&self) -> Option<i64> {
        self.committed.or(self.first_read)
    }
}

/// What one commit carries: the outcomes of the committable runs, and for
/// each partition the offset past its run.
#[derive(Default)]
pub struct Release {
    pub records: Vec<OutboundRecord>,
    pub offsets: Vec<(InputPartition, i64)>,
    /// What to put back if the commit fails for a reason that allows
    /// trying it again.
    taken: Vec<Taken>,
}

/// The released slots of one partition, under the assignment they were
/// read in.
struct Taken {
    input: InputPartition,
    generation: u64,
    slots: Vec<(i64, Vec<OutboundRecord>)>,
}

impl Release {
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Conversions it finishes.
    pub fn conversions(&self) -> usize {
        self.taken.iter().map(|t| t.slots.len()).sum()
    }
}

#[derive(Default)]
pub struct Tracker {
    partitions: HashMap<InputPartition, Partition>,
    open: usize,
    done: usize,
}

impl Tracker {
    pub fn assign(&mut self, input: InputPartition, generation: u64) {
        if let Some(old) = self.partitions.insert(
            input,
            Partition {
                generation,
                ..Default::default()
            },
        ) {
            self.forget(&old);
        }
    }

    /// Forgets a partition this instance lost; returns how many of its
    /// records were not committed.
    pub fn revoke(&mut self, input: InputPartition) -> usize {
        match self.partitions.remove(&input) {
            Some(old) => {
                self.forget(&old);
                old.slots.len()
            }
            None => 0,
        }
    }

    fn forget(&mut self, p: &Partition) {
        for slot in p.slots.values() {
            match slot {
                Slot::Open => self.open -= 1,
                Slot::Done(_) => self.done -= 1,
            }
        }
    }

    /// Drops everything read but not committed of `input`, to read it again
    /// under `generation` from the returned offset (the last commit, or the
    /// first record read).
    pub fn restart(&mut self, input: InputPartition, generation: u64) -> Option<i64> {
        let p = self.partitions.remove(&input)?;
        self.forget(&p);
        let at = p.restart_at();
        self.partitions.insert(
            input,
            Partition {
                generation,
                committed: p.committed,
                ..Default::default()
            },
        );
        at
    }

    /// A record was read; false if its partition is not (or no longer)
    /// this instance's under that generation.
    pub fn read(&mut self, origin: Origin) -> bool {
        let Some(p) = self.partitions.get_mut(&origin.input()) else {
            return false;
        };
        if p.generation != origin.generation {
            return false;
        }
        p.first_read.get_or_insert(origin.offset);
        if p.slots.insert(origin.offset, Slot::Open).is_none() {
            self.open += 1;
        }
        true
    }

    /// A record's outcome is known: `records` commit with its offset.
    /// False if the partition moved on (another generation) meanwhile.
    pub fn finish(&mut self, origin: Origin, records: Vec<OutboundRecord>) -> bool {
        let Some(p) = self.partitions.get_mut(&origin.input()) else {
            return false;
        };
        if p.generation != origin.generation {
            return false;
        }
        match p.slots.get_mut(&origin.offset) {
            Some(slot @ Slot::Open) => {
                *slot = Slot::Done(records);
                self.open -= 1;
                self.done += 1;
                true
            }
            _ => false,
        }
    }

    /// Takes the committable run of every partition (of those `only`
    /// accepts).
    pub fn release(&mut self, only: impl Fn(&InputPartition) -> bool) -> Release {
        let mut release = Release::default();
        for (input, p) in self.partitions.iter_mut().filter(|(i, _)| only(i)) {
            let mut taken = Vec::new();
            while let Some(entry) = p.slots.first_entry() {
                if matches!(entry.get(), Slot::Open) {
                    break;
                }
                let (offset, slot) = entry.remove_entry();
                if let Slot::Done(records) = slot {
                    taken.push((offset, records));
                }
            }
            let Some((last, _)) = taken.last() else {
                continue;
            };
            release.offsets.push((*input, last + 1));
            release
                .records
                .extend(taken.iter().flat_map(|(_, r)| r.iter().cloned()));
            self.done -= taken.len();
            release.taken.push(Taken {
                input: *input,
                generation: p.generation,
                slots: taken,
            });
        }
        release
    }

    /// The release is committed.
    pub fn committed(&mut self, release: &Release) {
        for (input, offset) in &release.offsets {
            if let Some(p) = self.partitions.get_mut(input) {
                p.committed = Some(*offset);
            }
        }
    }

    /// The release did not commit, and may be tried again: its outcomes go
    /// back to the front of their partitions (if still owned under the same
    /// assignment).
    pub fn put_back(&mut self, release: Release) {
        for taken in release.taken {
            let Some(p) = self.partitions.get_mut(&taken.input) else {
                continue;
            };
            if p.generation != taken.generation {
                continue;
            }
            for (offset, records) in taken.slots {
                p.slots.insert(offset, Slot::Done(records));
                self.done += 1;
            }
        }
    }

    /// Records read and without an outcome yet.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Records read and not committed (open or finished).
    pub fn uncommitted(&self) -> usize {
        self.open + self.done
    }

    pub fn owned(&self) -> impl Iterator<Item = &InputPartition> {
        self.partitions.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Origin {
        Origin {
            source: 0,
            partition,
            offset,
            generation: 7,
        }
    }

    fn status(n: i64) -> Vec<OutboundRecord> {
        vec![OutboundRecord::new(
            "status",
            None,
            n.to_string().into_bytes(),
        )]
    }

    #[test]
    fn only_the_finished_run_at_the_front_is_released() {
        let mut t = Tracker::default();
        t.assign((0, 0), 7);
        for off in [10, 11, 13, 14] {
            assert!(t.read(at(0, off)));
        }
        assert!(t.finish(at(0, 11), status(11)));
        assert!(t.release(|_| true).is_empty(), "10 is still open");
        assert!(t.finish(at(0, 10), status(10)));
        assert!(t.finish(at(0, 14), status(14)));
        let r = t.release(|_| true);
        assert_eq!(r.offsets, vec![((0, 0), 12)], "past 11; 13 is open");
        assert_eq!(r.records.len(), 2);
        t.committed(&r);
        assert!(t.finish(at(0, 13), status(13)));
        let r = t.release(|_| true);
        assert_eq!(
            r.offsets,
            vec![((0, 0), 15)],
            "a gap in offsets is no gap in reads"
        );
        assert_eq!(t.uncommitted(), 0);
    }

    #[test]
    fn a_failed_commit_puts_the_run_back_and_a_restart_forgets_it() {
        let mut t = Tracker::default();
        t.assign((0, 1), 7);
        t.read(at(1, 5));
        t.finish(at(1, 5), status(5));
        let r = t.release(|_| true);
        t.put_back(r);
        assert_eq!(t.uncommitted(), 1);
        let r = t.release(|_| true);
        assert_eq!(r.conversions(), 1);
        t.put_back(r);
        assert_eq!(
            t.restart((0, 1), 8),
            Some(5),
            "nothing committed: from the first read"
        );
        assert_eq!(t.uncommitted(), 0);
        assert!(!t.read(at(1, 5)), "the old generation is gone");
    }

    #[test]
    fn a_lost_partition_forgets_its_work_and_stale_generations_are_ignored() {
        let mut t = Tracker::default();
        t.assign((0, 1), 7);
        t.read(at(1, 1));
        t.read(at(1, 2));
        assert_eq!(t.revoke((0, 1)), 2);
        assert_eq!(t.open(), 0);
        t.assign((0, 1), 8);
        assert!(!t.read(at(1, 3)));
        assert!(!t.finish(at(1, 1), status(1)));
    }
}
