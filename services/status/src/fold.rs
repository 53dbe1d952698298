//! How status records fold into a conversion's current state, whatever
//! order they arrive in and however often.
//!
//! Every record gets a key that orders it among the records of its
//! conversion and platform; the current server-side status is the record
//! with the greatest key, the front-end status the best one reported, the
//! delivery time the earliest `delivered`. Each is a maximum or a minimum,
//! so the fold is commutative and idempotent: a record read twice, or
//! before an older one, leaves the same state, and a projection rebuilt
//! from the topic gives the same answers.
//!
//! The key, most significant first:
//! 1. `eligible` below everything else: it is the deduplicator's "sent on",
//!    the state before any outcome, and must never hide one even when the
//!    deduplicator's clock runs ahead of a dispatcher's.
//! 2. The record's time: a later outcome wins (a replayed conversion's
//!    `delivered` after its `failed`; `retrying` then `delivered`).
//! 3. At the same millisecond, a final outcome over `retrying`.
//! 4. The record's place on the topic (partition, offset): a total order,
//!    so two records never tie.
//!
//! `duplicate` records are about a second report of the conversion, not
//! its delivery: they go to its history and counts, never to its state.

use postback_core::model::{FrontEndStatus, ServerSideStatus};

/// Whether a record changes the platform's current server-side status.
pub fn sets_status(status: ServerSideStatus) -> bool {
    status != ServerSideStatus::Duplicate
}

/// How long a key is: its parts' widths, 1 + 20 + 1 + 10 + 20.
const KEY_LEN: usize = 52;

/// A record's order among its conversion's records for one platform
/// (`status_key`): fixed-width text, so the database compares keys as
/// text, kept inline, so folding a record allocates nothing for it (a
/// `String` per key and per copy of it was a tenth of a batch's fold).
/// The default, no key, sorts below every key, as the empty text does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusKey([u8; KEY_LEN]);

impl Default for StatusKey {
    fn default() -> StatusKey {
        StatusKey([0; KEY_LEN])
    }
}

impl StatusKey {
    /// A key as stored. Only this module writes them; text of another
    /// shape still reads back as itself up to `KEY_LEN` bytes, and
    /// compares as text does (the padding's zero bytes below any
    /// character).
    pub fn from_stored(text: &str) -> StatusKey {
        let mut key = StatusKey::default();
        let mut len = text.len().min(KEY_LEN);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        key.0[..len].copy_from_slice(&text.as_bytes()[..len]);
        key
    }

    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(KEY_LEN);
        std::str::from_utf8(&self.0[..len]).unwrap_or_default()
    }
}

/// The record's order among its conversion's records for one platform.
pub fn status_key(status: ServerSideStatus, time: i64, partition: i32, offset: i64) -> StatusKey {
    let phase = u8::from(status != ServerSideStatus::Eligible);
    let rank: u64 = match status {
        ServerSideStatus::Eligible | ServerSideStatus::Unknown => 0,
        ServerSideStatus::Retrying => 1,
        ServerSideStatus::Duplicate => 2,
        ServerSideStatus::NotEligible
        | ServerSideStatus::Delivered
        | ServerSideStatus::Rejected
        | ServerSideStatus::Expired
        | ServerSideStatus::Failed => 3,
    };
    // By hand, not format!: a key per record, and format! was a twentieth
    // of a batch's time.
    let mut key = StatusKey::default();
    let mut at = 0;
    for (v, width) in [
        (phase.into(), 1),
        (time.max(0).unsigned_abs(), 20),
        (rank, 1),
        (partition.max(0).unsigned_abs().into(), 10),
        (offset.max(0).unsigned_abs(), 20),
    ] {
        put_padded(&mut key.0[at..at + width], v);
        at += width;
    }
    key
}

/// Writes the last `out.len()` decimal digits of `v`, zero-padded.
fn put_padded(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Front-end statuses, worst to best: a pixel that fired for the
/// conversion in any report fired.
pub fn front_end_rank(status: Option<FrontEndStatus>) -> i64 {
    match status {
        None | Some(FrontEndStatus::Unknown) => 0,
        Some(FrontEndStatus::NotFired) => 1,
        Some(FrontEndStatus::Fired) => 2,
    }
}

/// Whether a front-end rank says the pixel fired.
pub fn fired(rank: i64) -> bool {
    rank == front_end_rank(Some(FrontEndStatus::Fired))
}

pub fn front_end_name(rank: i64) -> &'static str {
    match rank {
        2 => "fired",
        1 => "not_fired",
        _ => "unknown",
    }
}

pub fn server_side_name(status: ServerSideStatus) -> &'static str {
    match status {
        ServerSideStatus::Eligible => "eligible",
        ServerSideStatus::NotEligible => "not_eligible",
        ServerSideStatus::Duplicate => "duplicate",
        ServerSideStatus::Delivered => "delivered",
        ServerSideStatus::Rejected => "rejected",
        ServerSideStatus::Retrying => "retrying",
        ServerSideStatus::Expired => "expired",
        ServerSideStatus::Failed => "failed",
        ServerSideStatus::Unknown => "unknown",
    }
}

/// A stored server-side status by its name; a name this build does not
/// know (none is written) reads as `unknown`.
pub fn server_side_named(name: &str) -> &'static str {
    SERVER_SIDE_NAMES
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("unknown")
}

pub const SERVER_SIDE_NAMES: [&str; 9] = [
    "eligible",
    "not_eligible",
    "duplicate",
    "delivered",
    "rejected",
    "retrying",
    "expired",
    "failed",
    "unknown",
];

pub const FRONT_END_NAMES: [&str; 3] = ["fired", "not_fired", "unknown"];

#[cfg(test)]
mod tests {
    use super::*;
    use ServerSideStatus::*;

    /// The status a sequence of (status, time, offset) folds to.
    fn fold(records: &[(ServerSideStatus, i64, i64)]) -> ServerSideStatus {
        records
            .iter()
            .filter(|(s, _, _)| sets_status(*s))
            .max_by_key(|(s, t, o)| status_key(*s, *t, 0, *o))
            .map(|(s, _, _)| *s)
            .unwrap_or(Unknown)
    }

    fn permutations(v: &[(ServerSideStatus, i64, i64)]) -> Vec<Vec<(ServerSideStatus, i64, i64)>> {
        if v.len() <= 1 {
            return vec![v.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..v.len() {
            let mut rest = v.to_vec();
            let x = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, x);
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn any_order_and_any_repeat_fold_to_the_same_status() {
        let history = [
            (Eligible, 1_000, 1),
            (Retrying, 2_000, 2),
            (Duplicate, 2_500, 3),
            (Retrying, 3_000, 4),
            (Failed, 4_000, 5),
            // Replayed after the outage: a fresh attempt, then delivered.
            (Retrying, 5_000, 6),
            (Delivered, 6_000, 7),
        ];
        for p in permutations(&history) {
            assert_eq!(fold(&p), Delivered, "{p:?}");
            let mut twice = p.clone();
            twice.extend(p.iter().rev().copied());
            assert_eq!(fold(&twice), Delivered);
        }
    }

    #[test]
    fn eligible_never_hides_an_outcome_and_a_final_beats_retrying_in_a_tie() {
        // The deduplicator's clock 50 ms ahead of the dispatcher's.
        assert_eq!(
            fold(&[(Delivered, 1_000, 9), (Eligible, 1_050, 1)]),
            Delivered
        );
        assert_eq!(
            fold(&[(Delivered, 1_000, 1), (Retrying, 1_000, 9)]),
            Delivered
        );
        assert_eq!(fold(&[(Eligible, 1_000, 1)]), Eligible);
        assert_eq!(fold(&[(Duplicate, 1_000, 1)]), Unknown);
        assert_eq!(fold(&[(Failed, 1_000, 1), (Retrying, 2_000, 2)]), Retrying);
    }

    #[test]
    fn a_key_is_its_parts_zero_padded() {
        for (status, time, partition, offset) in [
            (Delivered, 1_790_000_000_123, 5, 987_654_321),
            (Eligible, 0, 0, 0),
            (Retrying, i64::MAX, i32::MAX, i64::MAX),
            (Failed, -5, -1, -9),
        ] {
            let phase = u8::from(status != Eligible);
            let rank = match status {
                Eligible => 0,
                Retrying => 1,
                _ => 3,
            };
            assert_eq!(
                status_key(status, time, partition, offset).as_str(),
                format!(
                    "{phase}{:020}{rank}{:010}{:020}",
                    time.max(0),
                    partition.max(0),
                    offset.max(0)
                )
            );
        }
    }

    #[test]
    fn a_stored_key_reads_back_as_itself_and_compares_as_its_text() {
        let key = status_key(Delivered, 1_790_000_000_123, 5, 987_654_321);
        assert_eq!(StatusKey::from_stored(key.as_str()), key);
        assert_eq!(StatusKey::from_stored(""), StatusKey::default());
        assert_eq!(StatusKey::from_stored("").as_str(), "");
        let (short, long) = (StatusKey::from_stored("1"), StatusKey::from_stored("10"));
        assert!(short < long && long < StatusKey::from_stored("2"));
        let odd = "é".repeat(40);
        assert!(odd.starts_with(StatusKey::from_stored(&odd).as_str()));
    }

    #[test]
    fn keys_compare_as_text_in_the_order_of_their_parts() {
        let a = status_key(Retrying, 9, 0, 99);
        let b = status_key(Retrying, 10, 0, 1);
        assert!(a < b);
        assert!(status_key(Eligible, 99_999, 5, 5) < status_key(Retrying, 0, 0, 0));
        assert!(status_key(Delivered, 5, 0, 1) > status_key(Retrying, 5, 3, 9));
        assert_eq!(a.as_str().len(), b.as_str().len());
        assert!(StatusKey::default() < status_key(Eligible, 0, 0, 0));
        assert!(
            front_end_rank(Some(FrontEndStatus::Fired))
                > front_end_rank(Some(FrontEndStatus::NotFired))
        );
    }
}
