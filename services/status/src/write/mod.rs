//! How a batch reaches the tables. With the batch's conversions locked
//! (SQLite has one writer; PostgreSQL replicas take advisory locks in the
//! order of their hashes, so two never wait on each other in a cycle), their rows and all
//! their platforms' rows are read, the records folded into them in memory
//! (`fold.rs`: maxima and minima by the records' keys, so any order and
//! any repeat give the same rows), and what changed is written back.
//!
//! Conversions met for the first time get the next numbers (`numbers`),
//! and every other table is keyed by the number: event ids are random,
//! and rows keyed by them put each record of a batch on a page of its
//! own (21,000 records/s into SQLite at 500,000 conversions, against
//! 64,000 keyed by number on the same machine).
//!
//! Reading the rows before writing them is what keeps the summary's
//! rollups exact (`rollups.rs`): a conversion's old contribution to its
//! hour leaves and its new one enters in the same transaction. It also
//! makes a replayed batch nearly free: rows that did not change are not
//! written.
//!
//! The fold and what it changes are this module's, one for both
//! databases; how rows travel is each database's (`tables.rs` gives both
//! the same columns in the same order):
//! - `postgres.rs`: one statement per table and chunk of rows, the rows
//!   passed as a single JSON value. A statement per record cost a round
//!   trip each (1,040 records/s).
//! - `sqlite.rs`: a connection of its own on a blocking thread, prepared
//!   statements and a value bound per column. Through sqlx's SQLite
//!   driver (a worker thread per connection and JSON to unpack, as for
//!   PostgreSQL) the same batches ran at 24,000 records/s at a million
//!   conversions, most of it in JSON and the driver, not in SQLite.

mod postgres;
pub(crate) mod sqlite;
pub(crate) mod tables;

pub(crate) use postgres::{
    write as write_postgres, RECORDS_PER_TRANSACTION as POSTGRES_RECORDS_PER_TRANSACTION,
};

use std::collections::BTreeSet;

use rustc_hash::{FxHashMap, FxHashSet};

use postback_core::model::{DeliveryStatus, ServerSideStatus};

use crate::fold::{self, StatusKey};
use crate::keys;
use crate::rollups::{self, Rollups};
use crate::store::StatusRow;
use tables::{Cell, ClickId};

/// A conversion: tenant, event name, event id.
pub(crate) type ConversionKey<'a> = (&'a str, &'a str, &'a str);

/// A conversion's row in `conversions`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConversionState {
    /// The event time once a summary gave one, the earliest record until
    /// then: what the list sorts and the summary's ranges select by.
    pub sort_time: i64,
    pub first_seen: i64,
    pub event_time: Option<i64>,
    pub value: Option<String>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    pub sources: String,
    /// The key of the record whose summary this is (`fold::status_key`).
    pub summary_key: StatusKey,
}

/// A conversion's row in `platform_states` for one platform.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlatformState {
    pub front_end_rank: i64,
    /// One of `fold::SERVER_SIDE_NAMES`.
    pub server_side: &'static str,
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub attempt: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub platform_request_id: Option<String>,
    pub status_time: Option<i64>,
    pub status_key: StatusKey,
    pub delivered_at: Option<i64>,
    /// `rollups::latency_bucket` of the delivery, kept with the row so the
    /// summary's exact scan and its rollups bucket alike.
    pub latency_bucket: Option<i64>,
    pub match_keys: String,
    pub match_keys_key: StatusKey,
    /// Reports of this conversion the deduplicator dropped as repeats.
    pub duplicates: i64,
}

impl ConversionState {
    /// A conversion's row before any summary: seen once, at `time`.
    pub(crate) fn first_seen_at(time: i64) -> ConversionState {
        ConversionState {
            sort_time: time,
            first_seen: time,
            event_time: None,
            value: None,
            currency: None,
            order_id: None,
            sources: String::new(),
            summary_key: StatusKey::default(),
        }
    }
}

impl PlatformState {
    pub(crate) fn new() -> PlatformState {
        PlatformState {
            front_end_rank: 0,
            server_side: "unknown",
            stage: None,
            reason: None,
            attempt: None,
            next_attempt_at: None,
            platform_request_id: None,
            status_time: None,
            status_key: StatusKey::default(),
            delivered_at: None,
            latency_bucket: None,
            match_keys: String::new(),
            match_keys_key: StatusKey::default(),
            duplicates: 0,
        }
    }
}

/// A conversion and its platforms, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Conversion {
    /// Its number, the key of its rows (`store.rs`' `CONVERSION_ID`);
    /// None until stored.
    pub id: Option<i64>,
    /// None until a first record made the row.
    pub state: Option<ConversionState>,
    pub platforms: Platforms,
}

/// A conversion's platforms by name, in name order: a sorted vector, as
/// a conversion has a few. A BTreeMap's first node holds room for eleven,
/// about 3 KiB per conversion, and allocating them was a third of a
/// batch's fold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Platforms(Vec<(String, PlatformState)>);

impl Platforms {
    fn find(&self, platform: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|(name, _)| name.as_str().cmp(platform))
    }

    pub fn get(&self, platform: &str) -> Option<&PlatformState> {
        self.find(platform).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, platform: &str) -> Option<&mut PlatformState> {
        self.find(platform).ok().map(|i| &mut self.0[i].1)
    }

    /// The platform's state, made empty if it has none yet.
    pub fn entry(&mut self, platform: &str) -> &mut PlatformState {
        let i = self.find(platform).unwrap_or_else(|i| {
            self.0
                .insert(i, (platform.to_owned(), PlatformState::new()));
            i
        });
        &mut self.0[i].1
    }

    pub fn insert(&mut self, platform: String, state: PlatformState) {
        match self.find(&platform) {
            Ok(i) => self.0[i].1 = state,
            Err(i) => self.0.insert(i, (platform, state)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &PlatformState)> {
        self.0.iter().map(|(name, p)| (name.as_str(), p))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut PlatformState> {
        self.0.iter_mut().map(|(_, p)| p)
    }
}

impl Conversion {
    /// Folds one record in. `duplicates` the platform counts only for
    /// records the history did not hold yet, so it is added apart.
    fn fold(&mut self, row: &StatusRow) {
        let s = &row.status;
        let key = fold::status_key(s.server_side, s.time, row.partition, row.offset);
        let c = self
            .state
            .get_or_insert_with(|| ConversionState::first_seen_at(s.time));
        c.first_seen = c.first_seen.min(s.time);
        if let Some(summary) = s.conversion.as_ref().filter(|_| key > c.summary_key) {
            c.event_time = Some(summary.event_time);
            c.value.clone_from(&summary.value);
            c.currency.clone_from(&summary.currency);
            c.order_id.clone_from(&summary.order_id);
            set_joined(&mut c.sources, &summary.sources);
            c.summary_key = key;
        }
        c.sort_time = c.event_time.unwrap_or(c.first_seen);
        let p = self.platforms.entry(&s.platform);
        p.front_end_rank = p.front_end_rank.max(fold::front_end_rank(s.front_end));
        if s.server_side == ServerSideStatus::Delivered {
            p.delivered_at = Some(p.delivered_at.map_or(s.time, |t| t.min(s.time)));
        }
        if let Some(summary) = s.conversion.as_ref().filter(|_| key > p.match_keys_key) {
            set_joined(&mut p.match_keys, &summary.match_keys);
            p.match_keys_key = key;
        }
        if fold::sets_status(s.server_side) && key > p.status_key {
            take_status(p, s, key);
        }
    }

    /// What depends on the conversion and the platform together: the
    /// delivery's latency from the event time (which a later summary may
    /// give or change).
    fn derive(&mut self) {
        let event_time = self.state.as_ref().and_then(|c| c.event_time);
        for p in self.platforms.values_mut() {
            p.latency_bucket = rollups::latency_bucket(p.delivered_at, event_time);
        }
    }
}

/// `parts` joined by commas into `out`, reusing its buffer.
fn set_joined(out: &mut String, parts: &[String]) {
    out.clear();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(part);
    }
}

fn take_status(p: &mut PlatformState, s: &DeliveryStatus, key: StatusKey) {
    p.server_side = fold::server_side_name(s.server_side);
    match &mut p.stage {
        Some(stage) => stage.clone_from(&s.stage),
        None => p.stage = Some(s.stage.clone()),
    }
    p.reason.clone_from(&s.reason);
    p.attempt = s.attempt.map(i64::from);
    p.next_attempt_at = s.next_attempt_at;
    p.platform_request_id.clone_from(&s.platform_request_id);
    p.status_time = Some(s.time);
    p.status_key = key;
}

/// The batch's records by conversion, in key order: the order `load`
/// answers in, and the order rows are written in (so two PostgreSQL
/// writers lock rows in the same order).
pub(crate) struct Batch<'a> {
    by_conversion: Vec<(ConversionKey<'a>, Vec<&'a StatusRow>)>,
}

impl<'a> Batch<'a> {
    /// Grouped in a hash map and sorted once: a BTreeMap compared each
    /// record's key with a dozen others on the way in, a fifth of the
    /// time the writers spent outside SQLite.
    pub fn new(rows: impl IntoIterator<Item = &'a StatusRow>) -> Batch<'a> {
        let mut groups: FxHashMap<ConversionKey<'a>, Vec<&'a StatusRow>> = FxHashMap::default();
        for row in rows {
            let s = &row.status;
            groups
                .entry((&s.tenant, &s.event_name, &s.event_id))
                .or_default()
                .push(row);
        }
        let mut by_conversion: Vec<_> = groups.into_iter().collect();
        by_conversion.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Batch { by_conversion }
    }

    fn groups(&self) -> impl Iterator<Item = &Vec<&'a StatusRow>> + '_ {
        self.by_conversion.iter().map(|(_, rows)| rows)
    }

    pub fn records(&self) -> usize {
        self.groups().map(Vec::len).sum()
    }

    pub fn conversions(&self) -> impl ExactSizeIterator<Item = ConversionKey<'a>> + '_ {
        self.by_conversion.iter().map(|(key, _)| *key)
    }

    /// The conversions' rows with the batch's records folded in (`before`
    /// in `conversions()`' order), each newly stored duplicate counted
    /// once, even if the batch held it twice.
    fn folded(&self, before: &[Conversion], mut new_duplicates: NewDuplicates) -> Vec<Conversion> {
        let folded = self.groups().zip(before).map(|(records, stored)| {
            let mut c = stored.clone();
            for row in records {
                c.fold(row);
                if new_duplicates.remove(&(row.partition, row.offset)) {
                    if let Some(p) = c.platforms.get_mut(&row.status.platform) {
                        p.duplicates += 1;
                    }
                }
            }
            c.derive();
            c
        });
        folded.collect()
    }

    /// The batch's records, each with its conversion's number (`ids` in
    /// `conversions()`' order).
    fn numbered<'b>(&'b self, ids: &'b [i64]) -> impl Iterator<Item = (i64, &'a StatusRow)> + 'b {
        let groups = self.groups().zip(ids);
        groups.flat_map(|(rows, id)| rows.iter().map(move |row| (*id, *row)))
    }

    /// The batch's hashed click ids, once each, in key order.
    fn click_ids(&self, ids: &[i64]) -> BTreeSet<ClickId> {
        let numbered = self.numbered(ids);
        numbered
            .flat_map(|(id, row)| {
                let s = &row.status;
                let hashes = s.conversion.iter().flat_map(|c| &c.click_id_hashes);
                hashes.map(move |h| (keys::click_key(&s.tenant, h), id))
            })
            .collect()
    }
}

/// How many of the batch's conversions are not stored yet: the numbers a
/// writer takes for them.
fn unnumbered(before: &[Conversion]) -> usize {
    before.iter().filter(|c| c.id.is_none()).count()
}

/// Each conversion's number: the stored one, or the next of `fresh`,
/// the numbers the database gave the new ones.
fn numbers(
    before: &[Conversion],
    fresh: impl IntoIterator<Item = i64>,
) -> Result<Vec<i64>, TooFewNumbers> {
    let mut fresh = fresh.into_iter();
    let numbered = before.iter().map(|c| c.id.or_else(|| fresh.next()));
    numbered.collect::<Option<_>>().ok_or(TooFewNumbers)
}

#[derive(Debug, thiserror::Error)]
#[error("the database gave fewer conversion numbers than the batch has new conversions")]
pub struct TooFewNumbers;

/// The `duplicate` records the history did not hold yet, by their place on
/// the topic: the platform counts only those, so a batch written again
/// counts none.
pub(crate) type NewDuplicates = FxHashSet<(i32, i64)>;

/// The rows that changed, as cells for `tables::CONVERSIONS` and
/// `tables::PLATFORMS`, and the rollups' deltas.
struct Changes<'a> {
    conversions: Vec<[Cell<'a>; 14]>,
    platforms: Vec<[Cell<'a>; 16]>,
    rollups: Rollups<'a>,
}

impl<'a> Changes<'a> {
    fn between(
        batch: &Batch<'a>,
        ids: &[i64],
        before: &'a [Conversion],
        after: &'a [Conversion],
    ) -> Changes<'a> {
        // Sized for every row changing (most do): grown by doubling, the
        // cells' copies and first touches were two fifths of this step.
        let mut changes = Changes {
            conversions: Vec::with_capacity(after.len()),
            platforms: Vec::with_capacity(after.iter().map(|c| c.platforms.len()).sum()),
            rollups: Rollups::default(),
        };
        let conversions = batch.conversions().zip(ids);
        for ((key, &id), (old, new)) in conversions.zip(before.iter().zip(after)) {
            if old == new {
                continue;
            }
            changes.rollups.replace(key, old, new);
            if let Some(state) = new
                .state
                .as_ref()
                .filter(|s| old.state.as_ref() != Some(*s))
            {
                changes
                    .conversions
                    .push(tables::conversion_cells(id, key, state));
            }
            for (platform, p) in new.platforms.iter() {
                if old.platforms.get(platform) != Some(p) {
                    changes
                        .platforms
                        .push(tables::platform_cells(id, platform, p));
                }
            }
        }
        changes
    }
}
