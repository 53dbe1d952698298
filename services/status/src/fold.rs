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

/// How long a key is: its parts' 160 bits, 6 to a character.
const KEY_LEN: usize = 27;

/// The digits of a key, in ASCII order, so keys compare as their numbers
/// do. Sixty-four of them: a key is half as long as in decimal, and two
/// decimal keys were over half of what a platform's row stored (at a
/// million conversions the table took 18% fewer pages).
const DIGITS: &[u8; 64] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

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

/// The record's order among its conversion's records for one platform:
/// its parts as one 160-bit number, most significant first, written in
/// `DIGITS`. Negative parts (never on the topic) count as zero.
pub fn status_key(status: ServerSideStatus, time: i64, partition: i32, offset: i64) -> StatusKey {
    let phase = u64::from(status != ServerSideStatus::Eligible);
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
    let (time, partition, offset) = (
        time.max(0).unsigned_abs(),
        u64::from(partition.max(0).unsigned_abs()),
        offset.max(0).unsigned_abs(),
    );
    // phase (1 bit) time (63) | rank (2) partition (31) offset's top 31
    // | offset's low 32, then zeros.
    let words = [
        phase << 63 | time,
        rank << 62 | partition << 31 | offset >> 32,
        (offset & 0xffff_ffff) << 32,
        0,
    ];
    // By hand, not format!: a key per record, and format! was a twentieth
    // of a batch's time.
    let mut key = StatusKey::default();
    for (i, digit) in key.0.iter_mut().enumerate() {
        let (word, bit) = (i * 6 / 64, i * 6 % 64);
        let pair = u128::from(words[word]) << 64 | u128::from(words[word + 1]);
        *digit = DIGITS[((pair >> (122 - bit)) & 63) as usize];
    }
    key
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

    /// A key's parts back from its text, bit by bit: phase, time, rank,
    /// partition, offset.
    fn parts(key: StatusKey) -> [u64; 5] {
        let bits: Vec<u64> = key
            .as_str()
            .bytes()
            .map(|c| DIGITS.iter().position(|&d| d == c).expect("a digit") as u64)
            .flat_map(|d| (0..6).rev().map(move |i| d >> i & 1))
            .collect();
        assert_eq!(bits.len(), 162);
        assert_eq!(bits[160..], [0, 0], "padding");
        let mut at = 0;
        [1, 63, 2, 31, 63].map(|width| {
            let field = bits[at..at + width].iter().fold(0, |n, b| n << 1 | b);
            at += width;
            field
        })
    }

    #[test]
    fn a_key_is_its_parts_in_order() {
        for (status, time, partition, offset, rank) in [
            (Delivered, 1_790_000_000_123, 5, 987_654_321, 3),
            (Eligible, 0, 0, 0, 0),
            (Retrying, i64::MAX, i32::MAX, i64::MAX, 1),
            (Duplicate, 7, 1 << 30, 1 << 32, 2),
            (Failed, -5, -1, -9, 3),
        ] {
            let phase = u64::from(status != Eligible);
            let key = status_key(status, time, partition, offset);
            assert_eq!(key.as_str().len(), KEY_LEN);
            assert_eq!(
                parts(key),
                [
                    phase,
                    time.max(0) as u64,
                    rank,
                    partition.max(0) as u64,
                    offset.max(0) as u64
                ]
            );
        }
    }

    #[test]
    fn keys_compare_as_their_parts_do() {
        // SplitMix64: parts spread over their whole widths, the same
        // every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let statuses = [Eligible, Retrying, Duplicate, Delivered];
        let mut keys: Vec<_> = (0..2_000)
            .map(|_| {
                let r = next();
                // Small values too, so parts tie and later ones decide.
                let narrow = |v: u64| if r & 1 == 0 { v % 4 } else { v };
                let status = statuses[(r >> 1) as usize % 4];
                let time = narrow(next() >> 1) as i64;
                let partition = narrow(next() >> 33) as i32;
                let offset = narrow(next() >> 1) as i64;
                let key = status_key(status, time, partition, offset);
                (parts(key), key)
            })
            .collect();
        keys.sort();
        assert!(keys.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(keys
            .windows(2)
            .all(|w| (w[0].0 == w[1].0) == (w[0].1 == w[1].1)));
    }

    #[test]
    fn a_stored_key_reads_back_as_itself_and_compares_as_its_text() {
        let key = status_key(Delivered, 1_790_000_000_123, 5, 987_654_321);
        assert_eq!(StatusKey::from_stored(key.as_str()), key);
        assert_eq!(StatusKey::from_stored(""), StatusKey::default());
        assert_eq!(StatusKey::from_stored("").as_str(), "");
        let (short, long) = (StatusKey::from_stored("1"), StatusKey::from_stored("10"));
        assert!(short < long && long < StatusKey::from_stored("2"));
        let odd = "é".repeat(20);
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
