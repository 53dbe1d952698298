//! Which file of the embedded store holds a conversion.
//!
//! SQLite has one writer per file, and a writer is one thread: one file
//! folded 50,000-70,000 records/s on one core, whatever its page size,
//! cache or sync setting (`benches/projection.rs`), a third to a half of
//! one deduplicator's peak. So the embedded store spreads conversions over
//! `store.shards` files by a hash of their key, each file with its own
//! writer thread: a batch's records go to their files' writers at once,
//! and a read asks the one file (a conversion's detail) or every file and
//! merges (the list, newest first) or adds up (the summary). Every table
//! is per file, a conversion's rows all in its own, so nothing joins
//! across files.
//!
//! The hash is `keys::fnv1a`, stable across builds: a conversion must hash
//! to the same file for the life of the store. The number of
//! files is part of the store's layout (`store.rs`): another number
//! rebuilds it from the topic.

use std::path::{Path, PathBuf};

/// The most files `store.shards` may ask for.
pub const MAX_SHARDS: u32 = 64;

/// `store.shards = 0`: a new store takes one file per core the machine
/// gives the process, up to eight; an existing one keeps its number. At a
/// million conversions on two cores: 52,300-53,500 records/s in one file,
/// 84,600 in two, 87,300 in four; at 300,000: 67,500 in one, 96,600 in
/// two, 110,900 in four, 103,500 in eight. More files than cores gain
/// little (a writer's fsync lets another use the core), and the list asks
/// every file: a filtered page took 2 ms in one file, 6 ms in two, 13 ms
/// in four and 27 ms in eight.
pub fn default_count() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, 8)
}

/// The file of the conversion (tenant, event name, event id) among
/// `count`.
pub fn shard_of(tenant: &str, event_name: &str, event_id: &str, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let hash = crate::keys::fnv1a(&[tenant, event_name, event_id]);
    (hash % count as u64) as usize
}

/// The `index`-th file of the store named `file`: the file itself, then
/// `file.1`, `file.2`, ... beside it.
pub fn shard_path(file: &Path, index: usize) -> PathBuf {
    if index == 0 {
        return file.to_path_buf();
    }
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversion_hashes_to_the_same_file_in_every_build() {
        // Pinned: a change here moves stored conversions to other files.
        assert_eq!(shard_of("acme", "Purchase", "ord-1", 4), 2);
        assert_eq!(shard_of("acme", "Purchase", "ord-2", 4), 1);
        assert_eq!(shard_of("acme", "Purchase", "ord-3", 4), 0);
        assert_eq!(shard_of("acme", "Purchase", "ord-1", 1), 0);
        assert_ne!(
            shard_of("ab", "c", "x", 1 << 20),
            shard_of("a", "bc", "x", 1 << 20),
            "the parts are delimited"
        );
    }

    #[test]
    fn conversions_spread_evenly() {
        let mut files = [0usize; 4];
        for n in 0..40_000 {
            files[shard_of("acme", "Purchase", &format!("ord-{n}"), 4)] += 1;
        }
        for count in files {
            assert!((9_000..11_000).contains(&count), "{files:?}");
        }
    }

    #[test]
    fn the_first_file_is_the_configured_one() {
        let file = Path::new(".postback/status.db");
        assert_eq!(shard_path(file, 0), file);
        assert_eq!(shard_path(file, 2), Path::new(".postback/status.db.2"));
    }
}
