//! The summary's rollups: counts of conversions and of their platforms'
//! states per tenant and slot of the conversion's sort time, in slots of an
//! hour and of five minutes, so a summary over a day adds up a few thousand
//! rows instead of scanning a million conversions (7.9 s in SQLite at a
//! million a day, 3.2 s in PostgreSQL). A range takes its whole hours from
//! the hour slots, the whole five minutes at its edges from those, and
//! scans only what is left (under ten minutes; `cover`).
//!
//! Each conversion contributes one count to the row of its state: one for
//! the conversion (merged or not) and one per platform (server-side status,
//! the reason where it is a rejection or not eligible, front-end fired or
//! not, latency bucket, with its duplicates). `write/` holds the
//! conversion's rows before and after a batch, so the batch's deltas are
//! exact: the old contribution is taken away and the new one added, even
//! when a later summary moves the conversion to another slot.

use rustc_hash::FxHashMap;

use crate::write::tables::Cell;
use crate::write::{Conversion, ConversionKey};

pub const HOUR_MS: i64 = 3_600_000;

/// Slot widths, widest first: each conversion counts once in each. Each
/// divides the one before, so a slot of one lies whole in a slot of each
/// wider one (`Rollups::rows` adds them up so).
pub const WIDTHS: [i64; 2] = [HOUR_MS, 300_000];

/// Slots `[start, end)` of one width: `(width, start, end)`.
pub type SlotRange = (i64, i64, i64);

/// How `[from, to)` is added up: slot ranges `(width, start, end)` read
/// from the rollups and the ranges left to scan, each left over from the
/// narrowest width (so under a slot of it at either edge).
pub fn cover(from: i64, to: i64) -> (Vec<SlotRange>, Vec<(i64, i64)>) {
    fn go(
        from: i64,
        to: i64,
        widths: &[i64],
        slots: &mut Vec<SlotRange>,
        scans: &mut Vec<(i64, i64)>,
    ) {
        if from >= to {
            return;
        }
        let Some((&width, narrower)) = widths.split_first() else {
            scans.push((from, to));
            return;
        };
        let (first, last) = (slot_after(from, width), slot_of(to, width));
        if first < last {
            slots.push((width, first, last));
            go(from, first, narrower, slots, scans);
            go(last, to, narrower, slots, scans);
        } else {
            go(from, to, narrower, slots, scans);
        }
    }
    let (mut slots, mut scans) = (Vec::new(), Vec::new());
    go(from, to, &WIDTHS, &mut slots, &mut scans);
    (slots, scans)
}

/// A delivery's latency (event time to first `delivered`, in ms), rounded
/// down to 10 ms under 10 s, to the second under 10 minutes, to the minute
/// beyond: within 1 % of the exact value wherever it matters, and few
/// enough groups that a summary adds up few rows. None where nothing was
/// delivered or no summary gave the event time.
pub fn latency_bucket(delivered_at: Option<i64>, event_time: Option<i64>) -> Option<i64> {
    let latency = (delivered_at? - event_time?).max(0);
    Some(match latency {
        l if l < 10_000 => l / 10 * 10,
        l if l < 600_000 => l / 1000 * 1000,
        l => l / 60_000 * 60_000,
    })
}

/// The start of the slot of `width` holding `t`.
pub fn slot_of(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

/// The start of the first whole slot of `width` at or after `t`.
pub fn slot_after(t: i64, width: i64) -> i64 {
    let slot = slot_of(t, width);
    if slot == t {
        t
    } else {
        slot.saturating_add(width)
    }
}

/// A rollup row's key. `platform` is empty for the conversion's own row;
/// `latency` is -1 where there is none (the key's columns are NOT NULL, so
/// upserts find them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RollupKey<'a> {
    tenant: &'a str,
    width: i64,
    slot: i64,
    platform: &'a str,
    server_side: &'a str,
    reason: &'a str,
    front_end_fired: bool,
    latency: i64,
    merged: bool,
}

/// Counts to add to rollup rows (negative to take away), their keys
/// borrowed from the conversions they count. Hashed by Fx, not SipHash: a
/// batch bumps tens of thousands of keys it made itself, and SipHash was a
/// twentieth of a batch's time.
#[derive(Debug, Default)]
pub struct Rollups<'a> {
    deltas: FxHashMap<RollupKey<'a>, (i64, i64)>,
}

/// The narrowest width: a batch counts in its slots only, and `rows`
/// adds those up into the wider ones, which hold them whole (each width
/// divides the one before). Half the map's lookups of counting in every
/// width, and those lookups were most of a batch's rollups.
const NARROWEST: i64 = WIDTHS[WIDTHS.len() - 1];

/// The rows a conversion counts in at the narrowest width, one for the
/// conversion and one per platform, each with its duplicates.
fn contributions<'a>(tenant: &'a str, conversion: &'a Conversion) -> Vec<(RollupKey<'a>, i64)> {
    let Some(c) = &conversion.state else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(1 + conversion.platforms.len());
    let own = RollupKey {
        tenant,
        width: NARROWEST,
        slot: slot_of(c.sort_time, NARROWEST),
        platform: "",
        server_side: "",
        reason: "",
        front_end_fired: false,
        latency: -1,
        merged: merged(&c.sources),
    };
    for (platform, p) in conversion.platforms.iter() {
        let key = RollupKey {
            platform,
            server_side: p.server_side,
            reason: counted_reason(p.server_side, p.reason.as_deref()),
            front_end_fired: crate::fold::fired(p.front_end_rank),
            latency: p.latency_bucket.unwrap_or(-1),
            merged: false,
            ..own.clone()
        };
        out.push((key, p.duplicates));
    }
    out.push((own, 0));
    out
}

/// Whether a conversion was reported by the browser and by a server.
pub fn merged(sources: &str) -> bool {
    let has = |s: &str| sources.split(',').any(|x| x == s);
    has("browser") && (has("server") || has("offline"))
}

/// The reason a summary counts a state by: rejections and not eligible
/// only.
pub fn counted_reason<'a>(server_side: &str, reason: Option<&'a str>) -> &'a str {
    match server_side {
        "rejected" | "not_eligible" => reason.unwrap_or("unknown"),
        _ => "",
    }
}

impl<'a> Rollups<'a> {
    /// Moves a conversion's counts from its `old` rows to its `new` ones.
    /// Most of a conversion's rows stay where they were (one platform's
    /// status moved), and those are left alone. The deltas are the same
    /// whichever rows are paired (the map adds them up); pairing by place
    /// (`contributions`' order) finds the ones that stayed without
    /// searching.
    pub(crate) fn replace(
        &mut self,
        (tenant, _, _): ConversionKey<'a>,
        old: &'a Conversion,
        new: &'a Conversion,
    ) {
        let mut leaving = contributions(tenant, old).into_iter();
        let mut entering = contributions(tenant, new).into_iter();
        loop {
            match (leaving.next(), entering.next()) {
                (None, None) => return,
                (Some(left), Some(entered)) if left == entered => {}
                (left, entered) => {
                    if let Some((key, duplicates)) = left {
                        self.bump(key, -1, -duplicates);
                    }
                    if let Some((key, duplicates)) = entered {
                        self.bump(key, 1, duplicates);
                    }
                }
            }
        }
    }

    fn bump(&mut self, key: RollupKey<'a>, n: i64, duplicates: i64) {
        let d = self.deltas.entry(key).or_default();
        d.0 += n;
        d.1 += duplicates;
    }

    /// The rows to upsert in every width, in key order (replicas on one
    /// PostgreSQL lock them in the same order), without the ones that
    /// cancelled.
    pub(crate) fn rows(&self) -> impl Iterator<Item = [Cell<'a>; 11]> {
        let mut widths: FxHashMap<RollupKey<'a>, (i64, i64)> = FxHashMap::default();
        for (key, (n, duplicates)) in &self.deltas {
            for width in WIDTHS {
                let wide = RollupKey {
                    width,
                    slot: slot_of(key.slot, width),
                    ..key.clone()
                };
                let d = widths.entry(wide).or_default();
                d.0 += n;
                d.1 += duplicates;
            }
        }
        let mut deltas: Vec<_> = widths.into_iter().filter(|(_, d)| *d != (0, 0)).collect();
        deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        deltas.into_iter().map(|(k, (n, duplicates))| {
            [
                Cell::Text(Some(k.tenant)),
                Cell::Int(Some(k.width)),
                Cell::Int(Some(k.slot)),
                Cell::Text(Some(k.platform)),
                Cell::Text(Some(k.server_side)),
                Cell::Text(Some(k.reason)),
                Cell::Int(Some(i64::from(k.front_end_fired))),
                Cell::Int(Some(k.latency)),
                Cell::Int(Some(i64::from(k.merged))),
                Cell::Int(Some(n)),
                Cell::Int(Some(duplicates)),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_width_divides_the_one_before_so_narrow_slots_add_up_into_wide_ones() {
        for pair in WIDTHS.windows(2) {
            assert_eq!(pair[0] % pair[1], 0, "{pair:?}");
        }
        for t in [
            -HOUR_MS - 1,
            -1,
            0,
            299_999,
            HOUR_MS + 300_001,
            1_790_000_123_456,
        ] {
            for width in WIDTHS {
                assert_eq!(slot_of(slot_of(t, NARROWEST), width), slot_of(t, width));
            }
        }
    }

    #[test]
    fn latencies_round_down_to_their_bucket() {
        assert_eq!(latency_bucket(Some(1_305), Some(1_000)), Some(300));
        assert_eq!(latency_bucket(Some(13_999), Some(0)), Some(13_000));
        assert_eq!(latency_bucket(Some(3_599_999), Some(0)), Some(3_540_000));
        assert_eq!(latency_bucket(Some(5), Some(10)), Some(0), "clock skew");
        assert_eq!(latency_bucket(None, Some(10)), None);
        assert_eq!(latency_bucket(Some(10), None), None);
    }

    #[test]
    fn slots_round_down_and_up() {
        assert_eq!(slot_of(HOUR_MS + 1, HOUR_MS), HOUR_MS);
        assert_eq!(slot_of(-1, HOUR_MS), -HOUR_MS);
        assert_eq!(slot_after(HOUR_MS, HOUR_MS), HOUR_MS);
        assert_eq!(slot_after(HOUR_MS + 1, HOUR_MS), 2 * HOUR_MS);
        assert_eq!(slot_after(i64::MAX, HOUR_MS), i64::MAX);
    }

    #[test]
    fn a_range_is_covered_by_whole_slots_and_short_edges_exactly_once() {
        const M: i64 = 60_000;
        let h = 1_000 * HOUR_MS;
        // 10:02:30 to 13:31:00: 11-13 by hours, 10:05-11 and 13:00-13:30
        // by five minutes, the rest scanned.
        let (slots, scans) = cover(h + 150_000, h + 3 * HOUR_MS + 31 * M);
        assert_eq!(
            slots,
            [
                (HOUR_MS, h + HOUR_MS, h + 3 * HOUR_MS),
                (300_000, h + 5 * M, h + HOUR_MS),
                (300_000, h + 3 * HOUR_MS, h + 3 * HOUR_MS + 30 * M),
            ]
        );
        assert_eq!(
            scans,
            [
                (h + 150_000, h + 5 * M),
                (h + 3 * HOUR_MS + 30 * M, h + 3 * HOUR_MS + 31 * M)
            ]
        );
        assert_eq!(
            cover(h, h + HOUR_MS),
            (vec![(HOUR_MS, h, h + HOUR_MS)], vec![])
        );
        assert_eq!(cover(h + 1, h + 2), (vec![], vec![(h + 1, h + 2)]));
        assert_eq!(cover(h, h), (vec![], vec![]));
        let (slots, scans) = cover(0, i64::MAX / 2);
        assert_eq!(slots.len(), 2);
        assert_eq!(scans.len(), 1, "the tail under five minutes: {scans:?}");
    }

    #[test]
    fn merged_needs_the_browser_and_a_server() {
        assert!(merged("browser,server"));
        assert!(merged("offline,browser"));
        assert!(!merged("browser"));
        assert!(!merged("server"));
        assert!(!merged(""));
    }
}
