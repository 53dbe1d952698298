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
//! not, latency bucket, with its duplicates). `write.rs` holds the
//! conversion's rows before and after a batch, so the batch's deltas are
//! exact: the old contribution is taken away and the new one added, even
//! when a later summary moves the conversion to another slot.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::store::Backend;
use crate::write::{insert_rows, Column, Conversion, ConversionKey, ConversionState};

pub const HOUR_MS: i64 = 3_600_000;

/// Slot widths, widest first: each conversion counts once in each.
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RollupKey {
    tenant: String,
    width: i64,
    slot: i64,
    platform: String,
    server_side: String,
    reason: String,
    front_end_fired: bool,
    latency: i64,
    merged: bool,
}

/// Counts to add to rollup rows (negative to take away).
#[derive(Debug, Default)]
pub struct Rollups {
    deltas: BTreeMap<RollupKey, (i64, i64)>,
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

impl Rollups {
    pub(crate) fn add(&mut self, key: &ConversionKey, conversion: &Conversion) {
        self.contribute(key, conversion, 1);
    }

    pub(crate) fn retract(&mut self, key: &ConversionKey, conversion: &Conversion) {
        self.contribute(key, conversion, -1);
    }

    fn contribute(&mut self, (tenant, _, _): &ConversionKey, conversion: &Conversion, sign: i64) {
        let Some(c) = &conversion.state else {
            return;
        };
        for width in WIDTHS {
            self.contribute_to(tenant, width, c, conversion, sign);
        }
    }

    fn contribute_to(
        &mut self,
        tenant: &str,
        width: i64,
        c: &ConversionState,
        conversion: &Conversion,
        sign: i64,
    ) {
        let own = RollupKey {
            tenant: tenant.into(),
            width,
            slot: slot_of(c.sort_time, width),
            platform: String::new(),
            server_side: String::new(),
            reason: String::new(),
            front_end_fired: false,
            latency: -1,
            merged: merged(&c.sources),
        };
        for (platform, p) in &conversion.platforms {
            let key = RollupKey {
                platform: platform.clone(),
                server_side: p.server_side.clone(),
                reason: counted_reason(&p.server_side, p.reason.as_deref()).into(),
                front_end_fired: crate::fold::fired(p.front_end_rank),
                latency: p.latency_bucket.unwrap_or(-1),
                merged: false,
                ..own.clone()
            };
            self.bump(key, sign, sign * p.duplicates);
        }
        self.bump(own, sign, 0);
    }

    fn bump(&mut self, key: RollupKey, n: i64, duplicates: i64) {
        let d = self.deltas.entry(key).or_default();
        d.0 += n;
        d.1 += duplicates;
    }

    /// The rows to upsert, in key order, without the ones that cancelled.
    pub fn rows(&self) -> Vec<Value> {
        self.deltas
            .iter()
            .filter(|(_, d)| **d != (0, 0))
            .map(|(k, (n, duplicates))| {
                json!([
                    k.tenant,
                    k.width,
                    k.slot,
                    k.platform,
                    k.server_side,
                    k.reason,
                    i64::from(k.front_end_fired),
                    k.latency,
                    i64::from(k.merged),
                    n,
                    duplicates
                ])
            })
            .collect()
    }
}

pub fn upsert_sql(backend: Backend) -> String {
    use Column::{Int, Text};
    const COLUMNS: &[Column] = &[
        Text("tenant"),
        Int("width"),
        Int("slot"),
        Text("platform"),
        Text("server_side"),
        Text("reason"),
        Int("front_end_fired"),
        Int("latency"),
        Int("merged"),
        Int("n"),
        Int("duplicates"),
    ];
    insert_rows(
        backend,
        "summary_rollups",
        COLUMNS,
        "ON CONFLICT (tenant, width, slot, platform, server_side, reason, front_end_fired, latency, merged)
         DO UPDATE SET n = summary_rollups.n + excluded.n,
                       duplicates = summary_rollups.duplicates + excluded.duplicates",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
