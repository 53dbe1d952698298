//! The read side of the projection: the list with its filters and cursor,
//! one conversion with its history, and the per-platform summary. Every
//! query is scoped to one tenant and reads only what a page shows (indexed
//! range scans and a LIMIT; never a whole table), so a million rows cost
//! what a page costs.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row};

use crate::fold;
use crate::keys;
use crate::legend::meaning;
use crate::rollups::{self, SlotRange};
use crate::store::{int, text, Store, StoreError};

/// What the list is narrowed to; every field optional.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Event time (or first record, until the deduplicator's summary),
    /// Unix ms, `from` inclusive, `to` exclusive.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub event_name: Option<String>,
    pub platform: Option<String>,
    pub front_end: Option<String>,
    pub server_side: Option<String>,
    pub reason: Option<String>,
    pub event_id: Option<String>,
    pub order_id: Option<String>,
    /// SHA-256 hex of a click id.
    pub click_id_hash: Option<String>,
}

impl ListFilter {
    /// Whether it names conversions by an id (event, order, click).
    pub fn is_search(&self) -> bool {
        self.event_id.is_some() || self.order_id.is_some() || self.click_id_hash.is_some()
    }
}

/// Where a page starts: after this conversion, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Cursor {
    pub sort_time: i64,
    pub event_name: String,
    pub event_id: String,
}

impl Cursor {
    /// Opaque to clients: hex of a JSON triple.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(&(self.sort_time, &self.event_name, &self.event_id))
            .unwrap_or_default();
        hex::encode(json)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = hex::decode(text).ok()?;
        let (sort_time, event_name, event_id): (i64, String, String) =
            serde_json::from_slice(&bytes).ok()?;
        Some(Cursor {
            sort_time,
            event_name,
            event_id,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConversionView {
    pub event_id: String,
    pub event_name: String,
    /// Unix ms; null until the deduplicator's record arrives.
    pub event_time: Option<i64>,
    pub first_seen: i64,
    pub value: Option<String>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    /// browser, server, offline.
    pub sources: Vec<String>,
    pub platforms: BTreeMap<String, PlatformView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlatformView {
    pub front_end: &'static str,
    pub server_side: String,
    pub reason: Option<String>,
    pub platform_request_id: Option<String>,
    pub attempt: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub delivered_at: Option<i64>,
    /// Which identifiers the upload carries (never their values).
    pub match_keys: Vec<String>,
    /// What the front-end and server-side statuses mean together.
    pub meaning: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryEntry {
    pub platform: String,
    pub time: i64,
    pub stage: String,
    pub server_side: String,
    pub front_end: Option<String>,
    pub reason: Option<String>,
    pub attempt: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub platform_request_id: Option<String>,
    pub duplicate_of: Option<String>,
    pub reported_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detail {
    pub conversion: ConversionView,
    /// Every status record, oldest first.
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub conversions: Vec<ConversionView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub conversions: i64,
    /// Conversions reported by both the browser and a server.
    pub merged: i64,
    pub merge_rate: f64,
    pub platforms: BTreeMap<String, PlatformSummary>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PlatformSummary {
    pub conversions: i64,
    /// Current server-side status counts (eligible = sent on, no outcome yet).
    pub server_side: BTreeMap<String, i64>,
    pub rejected_by_reason: BTreeMap<String, i64>,
    pub not_eligible_by_reason: BTreeMap<String, i64>,
    /// Reports the deduplicator dropped as repeats.
    pub duplicates: i64,
    pub front_end_fired: i64,
    pub front_end_fired_rate: f64,
    /// Event time to the first `delivered`, in ms.
    pub delivered_latency_ms_p50: Option<i64>,
    pub delivered_latency_ms_p95: Option<i64>,
}

/// A conversion of a list's page and where it is stored.
struct Listed {
    shard: usize,
    id: i64,
    sort_time: i64,
    view: ConversionView,
}

impl Listed {
    /// The list's order (newest first is this, descending).
    fn order(&self) -> (i64, &str, &str) {
        (self.sort_time, &self.view.event_name, &self.view.event_id)
    }
}

/// SQL with numbered placeholders, built clause by clause.
#[derive(Default)]
struct Sql {
    text: String,
    args: Vec<Arg>,
}

enum Arg {
    Int(i64),
    Text(String),
}

impl Sql {
    fn new(text: &str) -> Sql {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.args.push(Arg::Int(v));
        self.text.push_str(&format!("${}", self.args.len()));
        self
    }

    fn text(&mut self, v: &str) -> &mut Self {
        self.args.push(Arg::Text(v.to_string()));
        self.text.push_str(&format!("${}", self.args.len()));
        self
    }

    fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
            };
        }
        q
    }
}

impl Store {
    /// One page of `tenant`'s conversions, newest first.
    pub async fn list(
        &self,
        tenant: &str,
        filter: &ListFilter,
        limit: u32,
        after: Option<&Cursor>,
    ) -> Result<Page, StoreError> {
        let mut sql = Sql::new(
            "SELECT c.id, c.event_id, c.event_name, c.sort_time, c.first_seen, c.event_time,
                c.value, c.currency, c.order_id, c.sources FROM conversions c WHERE c.tenant = ",
        );
        sql.text(tenant);
        conversion_filters(&mut sql, tenant, filter);
        if let Some(c) = after {
            sql.push(" AND (c.sort_time < ")
                .int(c.sort_time)
                .push(" OR (c.sort_time = ")
                .int(c.sort_time)
                .push(" AND (c.event_name < ")
                .text(&c.event_name)
                .push(" OR (c.event_name = ")
                .text(&c.event_name)
                .push(" AND c.event_id < ")
                .text(&c.event_id)
                .push("))))");
        }
        // A search finds a handful of rows by its own index; the unary plus
        // keeps SQLite from walking the time index in order instead and
        // testing every conversion against the search.
        let order = if filter.is_search() {
            " ORDER BY +c.sort_time DESC, c.event_name DESC, c.event_id DESC LIMIT "
        } else {
            " ORDER BY c.sort_time DESC, c.event_name DESC, c.event_id DESC LIMIT "
        };
        sql.push(order).int(i64::from(limit) + 1);
        let mut listed = self.list_in_every_file(&sql).await?;
        let more = listed.len() > limit as usize;
        listed.truncate(limit as usize);
        let next_cursor = listed.last().filter(|_| more).map(|last| {
            Cursor {
                sort_time: last.sort_time,
                event_name: last.view.event_name.clone(),
                event_id: last.view.event_id.clone(),
            }
            .encode()
        });
        let ids: Vec<(usize, i64)> = listed.iter().map(|l| (l.shard, l.id)).collect();
        let mut conversions: Vec<ConversionView> = listed.into_iter().map(|l| l.view).collect();
        self.attach_platforms(&ids, &mut conversions).await?;
        Ok(Page {
            conversions,
            next_cursor,
        })
    }

    /// `sql`'s page in each of the store's files at once, merged newest
    /// first: each file's rows come in the list's order, so the first
    /// rows of the merge are the first of the whole store.
    async fn list_in_every_file(&self, sql: &Sql) -> Result<Vec<Listed>, StoreError> {
        let queries = self
            .shards()
            .iter()
            .enumerate()
            .map(|(shard, s)| async move {
                let rows = sql.query().fetch_all(&s.pool).await?;
                rows.iter()
                    .map(|row| {
                        Ok(Listed {
                            shard,
                            id: row.try_get::<i64, _>("id")?,
                            sort_time: row.try_get::<i64, _>("sort_time")?,
                            view: conversion_view(row)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            });
        let mut listed: Vec<Listed> = futures::future::try_join_all(queries)
            .await?
            .into_iter()
            .flatten()
            .collect();
        if self.shards().len() > 1 {
            // SQLite's order of text is its bytes', as Rust's is.
            listed.sort_by(|a, b| b.order().cmp(&a.order()));
        }
        Ok(listed)
    }

    /// The platforms' current states of a page of conversions (`ids`:
    /// their files and numbers, in the same order; read from the tenant's
    /// own `conversions` rows), in one query per file.
    async fn attach_platforms(
        &self,
        ids: &[(usize, i64)],
        conversions: &mut [ConversionView],
    ) -> Result<(), StoreError> {
        let place: BTreeMap<(usize, i64), usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        for (shard, s) in self.shards().iter().enumerate() {
            let mut numbers = ids.iter().filter(|(f, _)| *f == shard).map(|(_, id)| *id);
            let Some(first) = numbers.next() else {
                continue;
            };
            let mut sql = Sql::new("SELECT * FROM platform_states WHERE conversion_id IN (");
            sql.int(first);
            for id in numbers {
                sql.push(", ").int(id);
            }
            sql.push(")");
            for row in sql.query().fetch_all(&s.pool).await? {
                let id = row.try_get::<i64, _>("conversion_id")?;
                if let Some(i) = place.get(&(shard, id)) {
                    let platform = row.try_get::<String, _>("platform")?;
                    conversions[*i]
                        .platforms
                        .insert(platform, platform_view(&row)?);
                }
            }
        }
        Ok(())
    }

    /// One conversion of `tenant`, with every status record.
    pub async fn detail(
        &self,
        tenant: &str,
        event_name: &str,
        event_id: &str,
    ) -> Result<Option<Detail>, StoreError> {
        let mut sql = Sql::new(
            "SELECT id, event_id, event_name, sort_time, first_seen, event_time, value,
                currency, order_id, sources FROM conversions WHERE tenant = ",
        );
        sql.text(tenant)
            .push(" AND key_hash = ")
            .int(keys::event_id_hash(tenant, event_id))
            .push(" AND event_name = ")
            .text(event_name)
            .push(" AND event_id = ")
            .text(event_id);
        let shard = self.shard_of(tenant, event_name, event_id);
        let pool = &self.shards()[shard].pool;
        let Some(row) = sql.query().fetch_optional(pool).await? else {
            return Ok(None);
        };
        let id = row.try_get::<i64, _>("id")?;
        let mut conversion = [conversion_view(&row)?];
        self.attach_platforms(&[(shard, id)], &mut conversion)
            .await?;
        let [conversion] = conversion;
        let mut sql = Sql::new("SELECT * FROM status_history WHERE conversion_id = ");
        sql.int(id)
            .push(" ORDER BY status_time, src_partition, src_offset");
        let history = sql
            .query()
            .fetch_all(pool)
            .await?
            .iter()
            .map(history_entry)
            .collect::<Result<_, _>>()?;
        Ok(Some(Detail {
            conversion,
            history,
        }))
    }

    /// Counts per platform over the conversions of `[from, to)`: whole
    /// slots from the rollups, the short edges left scanned
    /// (`rollups::cover`).
    pub async fn summary(&self, tenant: &str, from: i64, to: i64) -> Result<Summary, StoreError> {
        let (slots, scans) = rollups::cover(from, to);
        let mut counts = SummaryCounts::default();
        for shard in self.shards() {
            for &(width, start, end) in &slots {
                count_rollups(&shard.pool, tenant, (width, start, end), &mut counts).await?;
            }
            for &(start, end) in &scans {
                count_by_scan(&shard.pool, tenant, start, end, &mut counts).await?;
            }
        }
        Ok(counts.finish())
    }

    /// The summary from the conversions' own rows alone: what the rollups
    /// must agree with (tests, and a check when in doubt).
    pub async fn summary_by_scan(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
    ) -> Result<Summary, StoreError> {
        let mut counts = SummaryCounts::default();
        for shard in self.shards() {
            count_by_scan(&shard.pool, tenant, from, to, &mut counts).await?;
        }
        Ok(counts.finish())
    }
}

/// Adds up one file's rollups of one width over slots `[from, to)`.
async fn count_rollups(
    pool: &AnyPool,
    tenant: &str,
    (width, from, to): SlotRange,
    counts: &mut SummaryCounts,
) -> Result<(), StoreError> {
    let mut sql = Sql::new(
        // SUMs cast back to BIGINT: PostgreSQL's of bigints is a
        // numeric, which sqlx's `Any` driver does not read.
        "SELECT platform, server_side, reason, front_end_fired, latency, merged,
                    CAST(SUM(n) AS BIGINT) AS n,
                    CAST(SUM(duplicates) AS BIGINT) AS duplicates
             FROM summary_rollups WHERE tenant = ",
    );
    sql.text(tenant)
        .push(" AND width = ")
        .int(width)
        .push(" AND slot >= ")
        .int(from)
        .push(" AND slot < ")
        .int(to)
        .push(" GROUP BY platform, server_side, reason, front_end_fired, latency, merged");
    for row in sql.query().fetch_all(pool).await? {
        let n = row.try_get::<i64, _>("n")?;
        let platform = row.try_get::<String, _>("platform")?;
        if platform.is_empty() {
            counts.conversion(row.try_get::<i64, _>("merged")? == 1, n);
            continue;
        }
        let latency = row.try_get::<i64, _>("latency")?;
        counts.platform(PlatformCount {
            platform,
            server_side: row.try_get("server_side")?,
            reason: row.try_get("reason")?,
            fired: row.try_get::<i64, _>("front_end_fired")? == 1,
            latency: (latency >= 0).then_some(latency),
            n,
            duplicates: row.try_get::<i64, _>("duplicates")?,
        });
    }
    Ok(())
}

/// Counts one file's conversions of `[from, to)` from their rows.
async fn count_by_scan(
    pool: &AnyPool,
    tenant: &str,
    from: i64,
    to: i64,
    counts: &mut SummaryCounts,
) -> Result<(), StoreError> {
    if from >= to {
        return Ok(());
    }
    let mut sql = Sql::new("SELECT c.sources, COUNT(*) AS n FROM conversions c WHERE c.tenant = ");
    sql.text(tenant);
    time_range(&mut sql, from, to);
    sql.push(" GROUP BY c.sources");
    for row in sql.query().fetch_all(pool).await? {
        let sources = row.try_get::<String, _>("sources")?;
        counts.conversion(rollups::merged(&sources), row.try_get::<i64, _>("n")?);
    }
    let mut sql = Sql::new(
        "SELECT p.platform, p.server_side, p.reason, p.front_end_rank, p.latency_bucket,
                    COUNT(*) AS n, CAST(SUM(p.duplicates) AS BIGINT) AS duplicates
             FROM conversions c JOIN platform_states p ON p.conversion_id = c.id
             WHERE c.tenant = ",
    );
    sql.text(tenant);
    time_range(&mut sql, from, to);
    sql.push(" GROUP BY p.platform, p.server_side, p.reason, p.front_end_rank, p.latency_bucket");
    for row in sql.query().fetch_all(pool).await? {
        let server_side = row.try_get::<String, _>("server_side")?;
        let reason = text(&row, "reason")?;
        counts.platform(PlatformCount {
            platform: row.try_get("platform")?,
            reason: rollups::counted_reason(&server_side, reason.as_deref()).into(),
            server_side,
            fired: fold::fired(row.try_get::<i64, _>("front_end_rank")?),
            latency: int(&row, "latency_bucket")?,
            n: row.try_get::<i64, _>("n")?,
            duplicates: row.try_get::<i64, _>("duplicates")?,
        });
    }
    Ok(())
}

/// One group of a summary's counts: platform rows of one state.
struct PlatformCount {
    platform: String,
    server_side: String,
    /// `rollups::counted_reason`.
    reason: String,
    fired: bool,
    latency: Option<i64>,
    n: i64,
    duplicates: i64,
}

/// A summary being added up, from rollups and scans alike.
#[derive(Default)]
struct SummaryCounts {
    summary: Summary,
    latencies: BTreeMap<String, BTreeMap<i64, i64>>,
}

impl SummaryCounts {
    fn conversion(&mut self, merged: bool, n: i64) {
        self.summary.conversions += n;
        if merged {
            self.summary.merged += n;
        }
    }

    fn platform(&mut self, c: PlatformCount) {
        // A rollup row whose counts went back to zero adds nothing.
        if c.n == 0 && c.duplicates == 0 {
            return;
        }
        if let Some(latency) = c.latency {
            *self
                .latencies
                .entry(c.platform.clone())
                .or_default()
                .entry(latency)
                .or_default() += c.n;
        }
        let p = self.summary.platforms.entry(c.platform).or_default();
        p.conversions += c.n;
        p.duplicates += c.duplicates;
        *p.server_side.entry(c.server_side.clone()).or_default() += c.n;
        match c.server_side.as_str() {
            "rejected" => *p.rejected_by_reason.entry(c.reason).or_default() += c.n,
            "not_eligible" => *p.not_eligible_by_reason.entry(c.reason).or_default() += c.n,
            _ => {}
        }
        if c.fired {
            p.front_end_fired += c.n;
        }
    }

    fn finish(mut self) -> Summary {
        let s = &mut self.summary;
        s.merge_rate = rate(s.merged, s.conversions);
        for (platform, p) in s.platforms.iter_mut() {
            p.front_end_fired_rate = rate(p.front_end_fired, p.conversions);
            if let Some(buckets) = self.latencies.get(platform) {
                p.delivered_latency_ms_p50 = quantile(buckets, 0.5);
                p.delivered_latency_ms_p95 = quantile(buckets, 0.95);
            }
        }
        self.summary
    }
}

fn rate(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The `q` quantile of the counted buckets (`rollups::latency_bucket`):
/// the bucket holding the ceil(q * n)-th smallest latency.
fn quantile(buckets: &BTreeMap<i64, i64>, q: f64) -> Option<i64> {
    let total: i64 = buckets.values().sum();
    if total <= 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as i64).clamp(1, total);
    let mut seen = 0;
    for (bucket, n) in buckets {
        seen += n;
        if seen >= rank {
            return Some(*bucket);
        }
    }
    buckets.keys().next_back().copied()
}

fn time_range(sql: &mut Sql, from: i64, to: i64) {
    sql.push(" AND c.sort_time >= ")
        .int(from)
        .push(" AND c.sort_time < ")
        .int(to);
}

fn conversion_filters(sql: &mut Sql, tenant: &str, f: &ListFilter) {
    if let Some(from) = f.from {
        sql.push(" AND c.sort_time >= ").int(from);
    }
    if let Some(to) = f.to {
        sql.push(" AND c.sort_time < ").int(to);
    }
    if let Some(v) = &f.event_name {
        sql.push(" AND c.event_name = ").text(v);
    }
    // Each by its hash's index (`keys.rs`) and its text.
    if let Some(v) = &f.event_id {
        sql.push(" AND c.key_hash = ")
            .int(keys::event_id_hash(tenant, v))
            .push(" AND c.event_id = ")
            .text(v);
    }
    if let Some(v) = &f.order_id {
        sql.push(" AND c.order_hash = ")
            .int(keys::order_id_hash(tenant, v))
            .push(" AND c.order_id = ")
            .text(v);
    }
    if let Some(v) = &f.click_id_hash {
        // Driven from the click id's own rows, not probed per conversion;
        // `c.tenant` keeps another tenant's click of the same hash out.
        sql.push(" AND c.id IN (SELECT k.conversion_id FROM click_ids k WHERE k.click_key = ")
            .int(keys::click_key(tenant, v))
            .push(")");
    }
    if f.platform.is_some()
        || f.front_end.is_some()
        || f.server_side.is_some()
        || f.reason.is_some()
    {
        sql.push(" AND EXISTS (SELECT 1 FROM platform_states p WHERE p.conversion_id = c.id");
        if let Some(v) = &f.platform {
            sql.push(" AND p.platform = ").text(v);
        }
        if let Some(v) = &f.server_side {
            sql.push(" AND p.server_side = ").text(v);
        }
        if let Some(v) = &f.reason {
            sql.push(" AND p.reason = ").text(v);
        }
        if let Some(v) = &f.front_end {
            let rank = match v.as_str() {
                "fired" => 2,
                "not_fired" => 1,
                _ => 0,
            };
            sql.push(" AND p.front_end_rank = ").int(rank);
        }
        sql.push(")");
    }
}

fn conversion_view(row: &sqlx::any::AnyRow) -> Result<ConversionView, sqlx::Error> {
    let sources = row.try_get::<String, _>("sources")?;
    Ok(ConversionView {
        event_id: row.try_get("event_id")?,
        event_name: row.try_get("event_name")?,
        event_time: int(row, "event_time")?,
        first_seen: row.try_get("first_seen")?,
        value: text(row, "value")?,
        currency: text(row, "currency")?,
        order_id: text(row, "order_id")?,
        sources: split_list(&sources),
        platforms: BTreeMap::new(),
    })
}

fn platform_view(row: &sqlx::any::AnyRow) -> Result<PlatformView, sqlx::Error> {
    let front_end = fold::front_end_name(row.try_get::<i64, _>("front_end_rank")?);
    let server_side = row.try_get::<String, _>("server_side")?;
    Ok(PlatformView {
        front_end,
        meaning: meaning(front_end, &server_side),
        server_side,
        reason: text(row, "reason")?,
        platform_request_id: text(row, "platform_request_id")?,
        attempt: int(row, "attempt")?,
        next_attempt_at: int(row, "next_attempt_at")?,
        updated_at: int(row, "status_time")?,
        delivered_at: int(row, "delivered_at")?,
        match_keys: split_list(&row.try_get::<String, _>("match_keys")?),
    })
}

fn history_entry(row: &sqlx::any::AnyRow) -> Result<HistoryEntry, sqlx::Error> {
    Ok(HistoryEntry {
        platform: row.try_get("platform")?,
        time: row.try_get("status_time")?,
        stage: row.try_get("stage")?,
        server_side: row.try_get("server_side")?,
        front_end: text(row, "front_end")?,
        reason: text(row, "reason")?,
        attempt: int(row, "attempt")?,
        next_attempt_at: int(row, "next_attempt_at")?,
        platform_request_id: text(row, "platform_request_id")?,
        duplicate_of: text(row, "duplicate_of")?,
        reported_by: text(row, "reported_by")?,
    })
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor {
            sort_time: 1_790_000_000_000,
            event_name: "Purchase".into(),
            event_id: "ord:1,\"x\"".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(&hex::encode("[1,2]")), None);
    }
}
