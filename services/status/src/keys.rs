//! Stable 64-bit hashes of what sites choose (event ids, order ids, click
//! ids), for the store's indexes and for which file holds a conversion
//! (`shards.rs`).
//!
//! Indexed by their text, the unique key, the order ids and the click ids
//! took 50 to 80 bytes an entry, and a batch's conversions landed on
//! nearly every page of each index, which its commit wrote again. An
//! index of 8-byte hashes is a third to a fifth the size, so a commit
//! writes that much less. A lookup by event id or order id also compares
//! the text, which the row keeps, so two keys of one hash never mix.
//! Click ids are kept as their hash alone (a SHA-256 already, hashed here
//! with the tenant): two of one tenant meet in 64 bits about once in
//! 10^7 searches at a million click ids.
//!
//! FNV-1a, written here (a few lines) rather than taken from a hasher
//! crate, whose output may change with its version: a stored hash must
//! stay what a query computes for the life of the store.

/// FNV-1a of `parts`, each ended by 0xff (which never occurs in UTF-8),
/// so ("ab", "c") and ("a", "bc") differ.
pub fn fnv1a(parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
    hash
}

/// A stored integer: the hash's bits as SQL's signed BIGINT.
fn stored(hash: u64) -> i64 {
    hash as i64
}

/// `conversions.key_hash`: a conversion's event id within its tenant.
pub fn event_id_hash(tenant: &str, event_id: &str) -> i64 {
    stored(fnv1a(&[tenant, event_id]))
}

/// `conversions.order_hash`.
pub fn order_id_hash(tenant: &str, order_id: &str) -> i64 {
    stored(fnv1a(&[tenant, order_id]))
}

/// `click_ids.click_key`: a hashed click id within its tenant.
pub fn click_key(tenant: &str, click_id_hash: &str) -> i64 {
    stored(fnv1a(&[tenant, click_id_hash]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_the_same_in_every_build() {
        // Pinned: a change here loses every stored conversion's index
        // entries (bump the store's layout instead).
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(event_id_hash("acme", "ord-1"), 7_700_960_293_652_950_866);
        assert_ne!(
            event_id_hash("acme", "ord-1"),
            event_id_hash("other", "ord-1")
        );
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }
}
