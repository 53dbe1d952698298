//! The on-disk state: fjall, an embedded log-structured merge tree in pure
//! Rust. Why an LSM tree: every report is a write (held, merged, emitted,
//! duplicate) and most keys are written a few times and then only looked up
//! by point reads that mostly miss; an LSM tree turns those writes into
//! sequential appends, keeps memory to its memtables, block cache and bloom
//! filters whatever the number of keys, and drops expired keys during
//! compaction through a filter (no scan, no per-key timer). Writes go to a
//! journal as atomic batches, so after a crash the store is a consistent
//! prefix of what was written, including its changelog checkpoint.
//!
//! Layout: one database per instance; per input partition a `state.<p>`
//! keyspace (dedup key -> `KeyState` bytes, small: a held state's record is
//! not in it) and a `held.<p>` keyspace of the conversions waiting for
//! their merge window (dedup key -> emit time and the merged record), so the
//! timers can be rebuilt without scanning every key, and the big keyspace's
//! compactions never rewrite kilobyte records that live for seconds. The
//! `meta` keyspace keeps, per partition, the changelog offset the state
//! reflects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::compaction::filter::{CompactionFilter, Context, Factory, ItemAccessor, Verdict};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::key::DedupKey;
use crate::state::{encoded_expiry, KeyState, Phase};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// Block cache shared by all partitions.
    pub cache_bytes: u64,
    /// Largest memtable of one partition's state before it is flushed.
    pub memtable_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store at {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error("state store: {0}")]
    Io(#[from] fjall::Error),
    #[error("state of partition {partition} is not open")]
    NotOpen { partition: i32 },
    /// A stored value this version cannot read: the key's history is
    /// unknown, so its report must not be taken for a new conversion.
    #[error("unreadable state in partition {partition}: {reason}")]
    Unreadable { partition: i32, reason: String },
}

/// A stored key and its value, as bytes (`StateStore::dump`).
pub type StoredEntry = (Vec<u8>, Vec<u8>);

/// One change to apply: the key's new state, or None to forget it.
pub struct Change<'a> {
    pub partition: i32,
    pub key: &'a DedupKey,
    pub state: Option<&'a KeyState>,
}

struct PartitionKeyspaces {
    state: Keyspace,
    held: Keyspace,
}

pub struct StateStore {
    db: Database,
    meta: Keyspace,
    open: HashMap<i32, PartitionKeyspaces>,
    memtable_bytes: u64,
}

impl StateStore {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let opened = |e| StoreError::Open {
            dir: config.dir.clone(),
            source: e,
        };
        std::fs::create_dir_all(&config.dir).map_err(|e| opened(fjall::Error::Io(e)))?;
        let db = Database::builder(&config.dir)
            .cache_size(config.cache_bytes)
            .with_compaction_filter_factories(Arc::new(|keyspace: &str| {
                keyspace
                    .starts_with("state.")
                    .then(|| Arc::new(ExpiryFilterFactory) as Arc<dyn Factory>)
            }))
            .open()
            .map_err(opened)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(opened)?;
        Ok(StateStore {
            db,
            meta,
            open: HashMap::new(),
            memtable_bytes: config.memtable_bytes,
        })
    }

    /// Opens (creating if new) the keyspaces of `partition`.
    pub fn open_partition(&mut self, partition: i32) -> Result<(), StoreError> {
        if self.open.contains_key(&partition) {
            return Ok(());
        }
        let memtable = self.memtable_bytes;
        let state = self.db.keyspace(&format!("state.{partition}"), || {
            KeyspaceCreateOptions::default().max_memtable_size(memtable)
        })?;
        let held = self.db.keyspace(&format!("held.{partition}"), || {
            KeyspaceCreateOptions::default().max_memtable_size((memtable / 4).max(1 << 20))
        })?;
        self.open
            .insert(partition, PartitionKeyspaces { state, held });
        Ok(())
    }

    /// Forgets the in-memory handles of `partition`; its data stays on disk
    /// for when the partition comes back.
    pub fn close_partition(&mut self, partition: i32) {
        self.open.remove(&partition);
    }

    /// Drops everything stored for `partition` (its changelog was recreated
    /// or truncated, so the local copy cannot be brought up to date).
    pub fn clear_partition(&mut self, partition: i32) -> Result<(), StoreError> {
        self.open_partition(partition)?;
        // The checkpoint goes first: a crash half-way must leave "restore
        // from scratch", never an emptied state that claims an offset.
        self.meta.remove(checkpoint_key(partition))?;
        let ks = self.keyspaces(partition)?;
        ks.state.clear()?;
        ks.held.clear()?;
        Ok(())
    }

    fn keyspaces(&self, partition: i32) -> Result<&PartitionKeyspaces, StoreError> {
        self.open
            .get(&partition)
            .ok_or(StoreError::NotOpen { partition })
    }

    pub fn get(&self, partition: i32, key: &DedupKey) -> Result<Option<KeyState>, StoreError> {
        let ks = self.keyspaces(partition)?;
        let Some(bytes) = ks.state.get(key.as_bytes())? else {
            return Ok(None);
        };
        match KeyState::decode(&bytes) {
            Ok(mut s) => {
                if let Phase::Held { record, .. } = &mut s.phase {
                    match ks.held.get(key.as_bytes())? {
                        Some(entry) if entry.len() >= 8 => *record = entry[8..].to_vec(),
                        // Left empty: emitting it fails to decode and is
                        // reported as unreadable state.
                        _ => tracing::error!(partition, "held state without its record"),
                    }
                }
                Ok(Some(s))
            }
            // Not "absent": a key seen as new would be uploaded again.
            Err(e) => Err(StoreError::Unreadable {
                partition,
                reason: e.to_string(),
            }),
        }
    }

    /// The changelog offset `partition`'s state reflects: every changelog
    /// record below it is applied.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .meta
            .get(checkpoint_key(partition))?
            .and_then(|v| v[..].try_into().ok().map(i64::from_be_bytes)))
    }

    /// Applies `changes` and moves the checkpoints, as one atomic batch.
    pub fn write<'a>(
        &self,
        changes: impl IntoIterator<Item = Change<'a>>,
        checkpoints: &[(i32, i64)],
    ) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for c in changes {
            let ks = self.keyspaces(c.partition)?;
            let key = c.key.as_bytes();
            match c.state {
                Some(state) => match &state.phase {
                    Phase::Held { emit_at, record } => {
                        let small = KeyState {
                            phase: Phase::Held {
                                emit_at: *emit_at,
                                record: Vec::new(),
                            },
                            ..state.clone()
                        };
                        batch.insert(&ks.state, key, small.encode());
                        let mut entry = Vec::with_capacity(8 + record.len());
                        entry.extend_from_slice(&emit_at.to_be_bytes());
                        entry.extend_from_slice(record);
                        batch.insert(&ks.held, key, entry);
                    }
                    Phase::Emitted { .. } => {
                        batch.insert(&ks.state, key, state.encode());
                        // The held keyspace is small and mostly in memory: a
                        // lookup is cheaper than a tombstone per write.
                        if ks.held.contains_key(key)? {
                            batch.remove(&ks.held, key);
                        }
                    }
                },
                None => {
                    batch.remove(&ks.state, key);
                    if ks.held.contains_key(key)? {
                        batch.remove(&ks.held, key);
                    }
                }
            }
        }
        for (partition, offset) in checkpoints {
            batch.insert(&self.meta, checkpoint_key(*partition), offset.to_be_bytes());
        }
        batch.commit()?;
        Ok(())
    }

    /// The keys of `partition` waiting for their merge window, with when.
    pub fn held(&self, partition: i32) -> Result<Vec<(DedupKey, i64)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.keyspaces(partition)?.held.iter() {
            let (k, v) = guard.into_inner()?;
            let at = v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok());
            let (Ok(key), Some(at)) = (DedupKey::from_bytes(&k), at) else {
                tracing::error!(partition, "unreadable held-index entry skipped");
                continue;
            };
            out.push((key, i64::from_be_bytes(at)));
        }
        Ok(out)
    }

    /// Every key and value stored for `partition`, states and the held
    /// index alike: what an audit of the store (the personal-data test)
    /// reads, since the files on disk are compressed.
    pub fn dump(&self, partition: i32) -> Result<Vec<StoredEntry>, StoreError> {
        let ks = self.keyspaces(partition)?;
        let mut out = Vec::new();
        for guard in ks.state.iter().chain(ks.held.iter()) {
            let (k, v) = guard.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Approximate number of keys stored for the open partitions (counts
    /// versions not yet compacted away).
    pub fn approximate_keys(&self) -> u64 {
        self.open
            .values()
            .map(|ks| ks.state.approximate_len() as u64)
            .sum()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        self.db_path()
    }

    fn db_path(&self) -> &Path {
        self.meta.path()
    }
}

fn checkpoint_key(partition: i32) -> String {
    format!("changelog.{partition}")
}

/// Drops expired keys while compacting: the dedup window without a sweep.
struct ExpiryFilterFactory;

impl Factory for ExpiryFilterFactory {
    fn name(&self) -> &str {
        "postback-dedup-expiry"
    }

    fn make_filter(&self, _ctx: &Context) -> Box<dyn CompactionFilter> {
        Box::new(ExpiryFilter {
            now: postback_core::model::now_millis(),
        })
    }
}

struct ExpiryFilter {
    now: i64,
}

impl CompactionFilter for ExpiryFilter {
    fn filter_item(
        &mut self,
        item: ItemAccessor<'_>,
        ctx: &Context,
    ) -> fjall::compaction::filter::CompactionFilterResult {
        let expired = encoded_expiry(&item.value()?).is_some_and(|at| at <= self.now);
        // Remove, never Destroy: a key is written several times (held, then
        // emitted), the filter sees each version on its own, and destroying
        // the newest would bring back an older held one. The tombstone keeps
        // them all hidden until compaction drops it at the last level.
        let _ = ctx;
        Ok(if expired {
            Verdict::Remove
        } else {
            Verdict::Keep
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FrontEnd, Sources};
    use postback_core::model::Source;

    fn state(phase: Phase, expires_at: i64) -> KeyState {
        KeyState {
            first_seen: 1,
            expires_at,
            last_offset: 7,
            first_source: Source::Server,
            sources: Sources::of(Source::Server),
            reports: 1,
            front_end: FrontEnd::default(),
            phase,
        }
    }

    fn store(dir: &Path) -> StateStore {
        StateStore::open(&StoreConfig {
            dir: dir.to_path_buf(),
            cache_bytes: 8 << 20,
            memtable_bytes: 4 << 20,
        })
        .expect("open store")
    }

    #[test]
    fn writes_checkpoints_and_held_index_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = DedupKey::new("t", "Purchase", "a");
        let b = DedupKey::new("t", "Purchase", "b");
        {
            let mut s = store(dir.path());
            s.open_partition(3).unwrap();
            let held = state(
                Phase::Held {
                    emit_at: 500,
                    record: vec![1, 2, 3],
                },
                i64::MAX,
            );
            let emitted = state(Phase::Emitted { at: 9 }, i64::MAX);
            s.write(
                [
                    Change {
                        partition: 3,
                        key: &a,
                        state: Some(&held),
                    },
                    Change {
                        partition: 3,
                        key: &b,
                        state: Some(&held),
                    },
                ],
                &[(3, 10)],
            )
            .unwrap();
            s.write(
                [Change {
                    partition: 3,
                    key: &b,
                    state: Some(&emitted),
                }],
                &[(3, 11)],
            )
            .unwrap();
        }
        let mut s = store(dir.path());
        assert!(matches!(
            s.get(3, &a),
            Err(StoreError::NotOpen { partition: 3 })
        ));
        s.open_partition(3).unwrap();
        assert_eq!(s.checkpoint(3).unwrap(), Some(11));
        assert_eq!(s.checkpoint(4).unwrap(), None);
        assert_eq!(
            s.get(3, &a).unwrap().unwrap().phase,
            Phase::Held {
                emit_at: 500,
                record: vec![1, 2, 3]
            }
        );
        assert_eq!(
            s.get(3, &b).unwrap().unwrap().phase,
            Phase::Emitted { at: 9 }
        );
        assert_eq!(s.held(3).unwrap(), vec![(a.clone(), 500)]);

        s.write(
            [Change {
                partition: 3,
                key: &a,
                state: None,
            }],
            &[],
        )
        .unwrap();
        assert_eq!(s.get(3, &a).unwrap(), None);
        assert!(s.held(3).unwrap().is_empty());

        s.clear_partition(3).unwrap();
        assert_eq!(s.get(3, &b).unwrap(), None);
        assert_eq!(s.checkpoint(3).unwrap(), None);
    }

    #[test]
    fn compaction_never_brings_back_an_older_version() {
        // Held, then emitted (and since expired), in two different tables:
        // compaction filters each version on its own.
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        s.open_partition(0).unwrap();
        let k = DedupKey::new("t", "Purchase", "twice-written");
        let held = state(
            Phase::Held {
                emit_at: 1,
                record: vec![9; 16],
            },
            i64::MAX,
        );
        let expired = state(Phase::Emitted { at: 2 }, 1);
        let ks = s.keyspaces(0).unwrap().state.clone();
        s.write(
            [Change {
                partition: 0,
                key: &k,
                state: Some(&held),
            }],
            &[],
        )
        .unwrap();
        ks.rotate_memtable_and_wait().unwrap();
        s.write(
            [Change {
                partition: 0,
                key: &k,
                state: Some(&expired),
            }],
            &[],
        )
        .unwrap();
        ks.rotate_memtable_and_wait().unwrap();
        ks.major_compact().unwrap();
        let now = s.get(0, &k).unwrap();
        assert!(now.as_ref().is_none_or(|st| !st.is_held()), "{now:?}");
        assert!(s.held(0).unwrap().is_empty());
    }

    #[test]
    fn compaction_drops_expired_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path());
        s.open_partition(0).unwrap();
        let live = DedupKey::new("t", "Lead", "live");
        let old = DedupKey::new("t", "Lead", "old");
        let now = postback_core::model::now_millis();
        let emitted = |exp| state(Phase::Emitted { at: 1 }, exp);
        let (l, o) = (emitted(now + 3_600_000), emitted(now - 1));
        s.write(
            [
                Change {
                    partition: 0,
                    key: &live,
                    state: Some(&l),
                },
                Change {
                    partition: 0,
                    key: &old,
                    state: Some(&o),
                },
            ],
            &[],
        )
        .unwrap();
        let ks = &s.keyspaces(0).unwrap().state;
        ks.rotate_memtable_and_wait().unwrap();
        ks.major_compact().unwrap();
        assert!(ks.contains_key(live.as_bytes()).unwrap());
        assert!(!ks.contains_key(old.as_bytes()).unwrap());
    }
}
