//! State changes waiting for the outputs that caused them to commit.
//!
//! Every change is staged twice: as a changelog record pushed among the
//! batch's outputs, and here. The loop reports a committed batch with
//! `deliveries[i]` for its i-th output, so a change's changelog record is
//! found again by the index it was pushed at (its slot). A partition's
//! checkpoint moves only to an offset the broker acknowledged on that same
//! changelog partition: the store never claims a change the changelog
//! lacks, and a restore from the checkpoint replays exactly what follows.

use std::collections::{BTreeMap, HashMap};

use postback_core::kafka::Delivered;

use crate::key::DedupKey;
use crate::metrics::DedupMetrics;
use crate::state::KeyState;
use crate::store::Change;

#[derive(Default)]
pub struct Staged {
    states: HashMap<i32, HashMap<DedupKey, KeyState>>,
    /// (index in the outputs, partition) of each changelog record pushed
    /// since the last commit.
    changelog_slots: Vec<(usize, i32)>,
}

impl Staged {
    /// The newest staged state of `key`, ahead of the store's.
    pub fn get(&self, partition: i32, key: &DedupKey) -> Option<&KeyState> {
        self.states.get(&partition).and_then(|m| m.get(key))
    }

    /// `state` is `key`'s new state; its changelog record is output `slot`.
    pub fn stage(&mut self, partition: i32, key: DedupKey, state: KeyState, slot: usize) {
        self.changelog_slots.push((slot, partition));
        self.states.entry(partition).or_default().insert(key, state);
    }

    pub fn forget_partition(&mut self, partition: i32) {
        self.states.remove(&partition);
    }

    /// The outputs were thrown away (an aborted transaction).
    pub fn discard(&mut self) {
        self.states.clear();
        self.changelog_slots.clear();
    }

    /// The outputs committed: per changelog partition, the offset after the
    /// last changelog record the broker acknowledged there.
    pub fn checkpoints(
        &mut self,
        deliveries: &[Delivered],
        metrics: &DedupMetrics,
    ) -> Vec<(i32, i64)> {
        let mut checkpoints: BTreeMap<i32, i64> = BTreeMap::new();
        for (slot, partition) in std::mem::take(&mut self.changelog_slots) {
            match deliveries.get(slot) {
                // A dead letter took its place (the broker would not take
                // it). The state stays in this store only; reports are kept
                // below that size, so this is a broker limit lower than ours.
                Some(d) if d.partition < 0 => {
                    tracing::error!(
                        partition,
                        "a changelog record was replaced by a dead letter; its state is in this store only"
                    );
                    metrics
                        .dead_letters
                        .with_label_values(&["changelog_too_large"])
                        .inc();
                }
                Some(d) if d.partition == partition => {
                    let c = checkpoints.entry(partition).or_insert(0);
                    *c = (*c).max(d.offset + 1);
                }
                other => tracing::error!(slot, partition, delivered = ?other,
                    "changelog acknowledgement does not match what was sent; checkpoint not moved"),
            }
        }
        checkpoints.into_iter().collect()
    }

    /// Every staged change, for the store.
    pub fn changes(&self) -> impl Iterator<Item = Change<'_>> {
        self.states.iter().flat_map(|(partition, states)| {
            states.iter().map(|(key, state)| Change {
                partition: *partition,
                key,
                state: Some(state),
            })
        })
    }

    /// The staged changes are in the store.
    pub fn clear(&mut self) {
        self.states.clear();
    }
}
