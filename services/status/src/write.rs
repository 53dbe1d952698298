//! How a batch reaches the tables. With the batch's conversions locked
//! (SQLite has one writer; PostgreSQL replicas take advisory locks in key
//! order, so two never wait on each other in a cycle), their rows and all
//! their platforms' rows are read, the records folded into them in memory
//! (`fold.rs`: maxima and minima by the records' keys, so any order and
//! any repeat give the same rows), and what changed is written back: one
//! statement per table and chunk, its rows passed as a single JSON value.
//!
//! Reading the rows before writing them is what keeps the summary's
//! rollups exact (`rollups.rs`): a conversion's old contribution to its
//! hour leaves and its new one enters in the same transaction. It also
//! makes a replayed batch nearly free: rows that did not change are not
//! written.
//!
//! A statement per record cost a round trip each (1,040 records/s into
//! PostgreSQL); a value bound per column cost sqlx's SQLite driver more
//! than the insert (see `json_rows`).

use std::collections::{BTreeMap, BTreeSet};

use postback_core::model::{DeliveryStatus, ServerSideStatus};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::fold;
use crate::rollups::{self, Rollups};
use crate::store::{int, text, Backend, StatusRow};

/// Rows per statement: one JSON value of a few hundred kilobytes at most.
const CHUNK: usize = 1000;

/// A conversion: tenant, event name, event id.
pub(crate) type ConversionKey = (String, String, String);

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
    pub summary_key: String,
}

/// A conversion's row in `platform_states` for one platform.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlatformState {
    pub front_end_rank: i64,
    pub server_side: String,
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub attempt: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub platform_request_id: Option<String>,
    pub status_time: Option<i64>,
    pub status_key: String,
    pub delivered_at: Option<i64>,
    /// `rollups::latency_bucket` of the delivery, kept with the row so the
    /// summary's exact scan and its rollups bucket alike.
    pub latency_bucket: Option<i64>,
    pub match_keys: String,
    pub match_keys_key: String,
    /// Reports of this conversion the deduplicator dropped as repeats.
    pub duplicates: i64,
}

impl PlatformState {
    fn new() -> PlatformState {
        PlatformState {
            front_end_rank: 0,
            server_side: "unknown".into(),
            stage: None,
            reason: None,
            attempt: None,
            next_attempt_at: None,
            platform_request_id: None,
            status_time: None,
            status_key: String::new(),
            delivered_at: None,
            latency_bucket: None,
            match_keys: String::new(),
            match_keys_key: String::new(),
            duplicates: 0,
        }
    }
}

/// A conversion and its platforms, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Conversion {
    /// None until a first record made the row.
    pub state: Option<ConversionState>,
    pub platforms: BTreeMap<String, PlatformState>,
}

impl Conversion {
    /// Folds one record in. `duplicates` the platform counts only for
    /// records the history did not hold yet, so it is added apart.
    fn fold(&mut self, row: &StatusRow) {
        let s = &row.status;
        let key = fold::status_key(s.server_side, s.time, row.partition, row.offset);
        let c = self.state.get_or_insert_with(|| ConversionState {
            sort_time: s.time,
            first_seen: s.time,
            event_time: None,
            value: None,
            currency: None,
            order_id: None,
            sources: String::new(),
            summary_key: String::new(),
        });
        c.first_seen = c.first_seen.min(s.time);
        if let Some(summary) = s.conversion.as_ref().filter(|_| key > c.summary_key) {
            c.event_time = Some(summary.event_time);
            c.value.clone_from(&summary.value);
            c.currency.clone_from(&summary.currency);
            c.order_id.clone_from(&summary.order_id);
            c.sources = summary.sources.join(",");
            c.summary_key.clone_from(&key);
        }
        c.sort_time = c.event_time.unwrap_or(c.first_seen);
        let p = self
            .platforms
            .entry(s.platform.clone())
            .or_insert_with(PlatformState::new);
        p.front_end_rank = p.front_end_rank.max(fold::front_end_rank(s.front_end));
        if s.server_side == ServerSideStatus::Delivered {
            p.delivered_at = Some(p.delivered_at.map_or(s.time, |t| t.min(s.time)));
        }
        if let Some(summary) = s.conversion.as_ref().filter(|_| key > p.match_keys_key) {
            p.match_keys = summary.match_keys.join(",");
            p.match_keys_key.clone_from(&key);
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

fn take_status(p: &mut PlatformState, s: &DeliveryStatus, key: String) {
    p.server_side = fold::server_side_name(s.server_side).into();
    p.stage = Some(s.stage.clone());
    p.reason.clone_from(&s.reason);
    p.attempt = s.attempt.map(i64::from);
    p.next_attempt_at = s.next_attempt_at;
    p.platform_request_id.clone_from(&s.platform_request_id);
    p.status_time = Some(s.time);
    p.status_key = key;
}

/// Folds `rows` into the tables, in `tx`.
pub async fn write(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    rows: &[StatusRow],
) -> Result<(), sqlx::Error> {
    let keys: BTreeSet<ConversionKey> = rows.iter().map(|r| conversion_key(&r.status)).collect();
    let keys: Vec<&ConversionKey> = keys.iter().collect();
    if backend == Backend::Postgres {
        // sqlx prepares each statement once; after five runs PostgreSQL
        // may keep a generic plan made while the tables were small (a
        // sequential scan), 50-150 ms per batch at 200,000 conversions
        // instead of 1 ms.
        sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
            .execute(&mut **tx)
            .await?;
        lock(tx, &keys).await?;
    }
    let before = load(tx, backend, &keys).await?;
    let new_duplicates = insert_history(tx, backend, rows).await?;
    let after = folded(&before, rows, &new_duplicates);
    let changes = Changes::between(&before, &after);
    execute(tx, &conversions_sql(backend), changes.conversions).await?;
    execute(tx, &platforms_sql(backend), changes.platforms).await?;
    execute(tx, &click_ids_sql(backend), click_id_rows(rows)).await?;
    // Last: replicas on one PostgreSQL update the same rollup rows, and a
    // row's lock is held until the commit that follows.
    execute(tx, &rollups::upsert_sql(backend), changes.rollups.rows()).await
}

/// `before` with `rows` folded in, and the duplicates the history did not
/// hold yet counted.
fn folded(
    before: &BTreeMap<ConversionKey, Conversion>,
    rows: &[StatusRow],
    new_duplicates: &[(ConversionKey, String)],
) -> BTreeMap<ConversionKey, Conversion> {
    let mut after = before.clone();
    for row in rows {
        if let Some(c) = after.get_mut(&conversion_key(&row.status)) {
            c.fold(row);
        }
    }
    for (key, platform) in new_duplicates {
        if let Some(p) = after
            .get_mut(key)
            .and_then(|c| c.platforms.get_mut(platform))
        {
            p.duplicates += 1;
        }
    }
    for c in after.values_mut() {
        c.derive();
    }
    after
}

/// The rows that changed, and the rollups' deltas.
struct Changes {
    conversions: Vec<Value>,
    platforms: Vec<Value>,
    rollups: Rollups,
}

impl Changes {
    fn between(
        before: &BTreeMap<ConversionKey, Conversion>,
        after: &BTreeMap<ConversionKey, Conversion>,
    ) -> Changes {
        let mut changes = Changes {
            conversions: Vec::new(),
            platforms: Vec::new(),
            rollups: Rollups::default(),
        };
        for ((key, old), new) in before.iter().zip(after.values()) {
            if old == new {
                continue;
            }
            changes.rollups.retract(key, old);
            changes.rollups.add(key, new);
            if let Some(state) = new
                .state
                .as_ref()
                .filter(|s| old.state.as_ref() != Some(*s))
            {
                changes.conversions.push(conversion_row(key, state));
            }
            for (platform, p) in &new.platforms {
                if old.platforms.get(platform) != Some(p) {
                    changes.platforms.push(platform_row(key, platform, p));
                }
            }
        }
        changes
    }
}

/// The batch's hashed click ids, once each, in key order.
fn click_id_rows(rows: &[StatusRow]) -> Vec<Value> {
    let ids: BTreeSet<(&str, &str, &str, &str)> = rows
        .iter()
        .flat_map(|r| {
            let s = &r.status;
            let hashes = s.conversion.iter().flat_map(|c| &c.click_id_hashes);
            hashes.map(|h| {
                (
                    s.tenant.as_str(),
                    h.as_str(),
                    s.event_name.as_str(),
                    s.event_id.as_str(),
                )
            })
        })
        .collect();
    ids.iter().map(|(t, h, n, i)| json!([t, h, n, i])).collect()
}

fn conversion_key(s: &DeliveryStatus) -> ConversionKey {
    (s.tenant.clone(), s.event_name.clone(), s.event_id.clone())
}

/// PostgreSQL: one advisory lock per conversion, for the transaction, in
/// the order of their hashes, so replicas writing overlapping batches
/// (during a rebalance) take turns instead of both reading the rows before
/// the other's write. A collision of hashes only serialises more.
async fn lock(tx: &mut Transaction<'_, Any>, keys: &[&ConversionKey]) -> Result<(), sqlx::Error> {
    // COUNT over the locks: the function returns void, which sqlx cannot
    // decode, and PostgreSQL keeps volatile outputs of a subquery.
    const SQL: &str = "SELECT COUNT(*) AS n FROM (
         SELECT pg_advisory_xact_lock(k) FROM (
           SELECT DISTINCT hashtextextended(r.value #>> '{}', 0) AS k
           FROM jsonb_array_elements($1::jsonb) AS r(value) ORDER BY k) AS ordered) AS locked";
    for chunk in keys.chunks(CHUNK) {
        let names: Vec<String> = chunk
            .iter()
            .map(|(t, n, i)| format!("{t}\u{1f}{n}\u{1f}{i}"))
            .collect();
        sqlx::query(SQL)
            .bind(Value::from(names).to_string())
            .fetch_one(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The stored rows of `keys`; a conversion not stored yet is there, empty.
async fn load(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    keys: &[&ConversionKey],
) -> Result<BTreeMap<ConversionKey, Conversion>, sqlx::Error> {
    let mut out: BTreeMap<ConversionKey, Conversion> = keys
        .iter()
        .map(|k| ((*k).clone(), Conversion::default()))
        .collect();
    // The rows of `table` whose conversion is one of `$1`'s.
    let of_keys = |table: &str| {
        format!(
            "SELECT c.* FROM {} CROSS JOIN {table} c WHERE c.tenant = r.value ->> 0
               AND c.event_name = r.value ->> 1 AND c.event_id = r.value ->> 2",
            json_rows(backend)
        )
    };
    let (conversions, platforms) = (of_keys("conversions"), of_keys("platform_states"));
    for chunk in keys.chunks(CHUNK) {
        let rows = Value::from(
            chunk
                .iter()
                .map(|(t, n, i)| json!([t, n, i]))
                .collect::<Vec<_>>(),
        )
        .to_string();
        for row in sqlx::query(&conversions)
            .bind(&rows)
            .fetch_all(&mut **tx)
            .await?
        {
            if let Some(c) = out.get_mut(&stored_key(&row)?) {
                c.state = Some(conversion_state(&row)?);
            }
        }
        for row in sqlx::query(&platforms)
            .bind(&rows)
            .fetch_all(&mut **tx)
            .await?
        {
            if let Some(c) = out.get_mut(&stored_key(&row)?) {
                let platform = row.try_get::<String, _>("platform")?;
                c.platforms.insert(platform, platform_state(&row)?);
            }
        }
    }
    Ok(out)
}

fn stored_key(row: &AnyRow) -> Result<ConversionKey, sqlx::Error> {
    Ok((
        row.try_get("tenant")?,
        row.try_get("event_name")?,
        row.try_get("event_id")?,
    ))
}

fn conversion_state(row: &AnyRow) -> Result<ConversionState, sqlx::Error> {
    Ok(ConversionState {
        sort_time: row.try_get("sort_time")?,
        first_seen: row.try_get("first_seen")?,
        event_time: int(row, "event_time")?,
        value: text(row, "value")?,
        currency: text(row, "currency")?,
        order_id: text(row, "order_id")?,
        sources: row.try_get("sources")?,
        summary_key: row.try_get("summary_key")?,
    })
}

fn platform_state(row: &AnyRow) -> Result<PlatformState, sqlx::Error> {
    Ok(PlatformState {
        front_end_rank: row.try_get("front_end_rank")?,
        server_side: row.try_get("server_side")?,
        stage: text(row, "stage")?,
        reason: text(row, "reason")?,
        attempt: int(row, "attempt")?,
        next_attempt_at: int(row, "next_attempt_at")?,
        platform_request_id: text(row, "platform_request_id")?,
        status_time: int(row, "status_time")?,
        status_key: row.try_get("status_key")?,
        delivered_at: int(row, "delivered_at")?,
        latency_bucket: int(row, "latency_bucket")?,
        match_keys: row.try_get("match_keys")?,
        match_keys_key: row.try_get("match_keys_key")?,
        duplicates: row.try_get("duplicates")?,
    })
}

/// Inserts the records the history does not hold yet, and answers the
/// conversion and platform of each `duplicate` among them: the count of
/// repeats must not grow when a batch is written again.
async fn insert_history(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    rows: &[StatusRow],
) -> Result<Vec<(ConversionKey, String)>, sqlx::Error> {
    let (duplicates, others): (Vec<&StatusRow>, Vec<&StatusRow>) = rows
        .iter()
        .partition(|r| r.status.server_side == ServerSideStatus::Duplicate);
    let sql = history_sql(backend);
    execute(tx, &sql, others.into_iter().map(history_row).collect()).await?;
    let returning = format!("{sql} RETURNING tenant, event_name, event_id, platform");
    let mut inserted = Vec::new();
    for chunk in duplicates.chunks(CHUNK) {
        let rows = Value::Array(chunk.iter().map(|r| history_row(r)).collect()).to_string();
        for row in sqlx::query(&returning)
            .bind(rows)
            .fetch_all(&mut **tx)
            .await?
        {
            inserted.push((stored_key(&row)?, row.try_get("platform")?));
        }
    }
    Ok(inserted)
}

/// A column of a table, as the rows' JSON carries it.
#[derive(Clone, Copy)]
pub(crate) enum Column {
    Int(&'static str),
    Text(&'static str),
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Int(n) | Column::Text(n) => n,
        }
    }
}

/// The rows of `$1`, a JSON array of arrays, as a table `r` whose `value`
/// is one row: SQLite's json_each, PostgreSQL's jsonb_array_elements.
/// Binding each value apart cost sqlx's SQLite driver more than the insert
/// itself, and more per value the more a statement had.
fn json_rows(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "json_each($1) AS r",
        Backend::Postgres => "jsonb_array_elements($1::jsonb) AS r(value)",
    }
}

/// `INSERT INTO table (columns) SELECT ... FROM <the rows of $1> WHERE true
/// <tail>`. `WHERE true` keeps SQLite from reading the upsert's ON as a
/// join's.
pub(crate) fn insert_rows(backend: Backend, table: &str, columns: &[Column], tail: &str) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
    let values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match (backend, c) {
            (Backend::Sqlite, _) => format!("r.value ->> {i}"),
            (Backend::Postgres, Column::Int(_)) => format!("(r.value ->> {i})::bigint"),
            (Backend::Postgres, Column::Text(_)) => format!("r.value ->> {i}"),
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {} WHERE true {tail}",
        names.join(", "),
        values.join(", "),
        json_rows(backend)
    )
}

/// Runs `sql` over `rows`, a chunk at a time; rows go in key order, so two
/// PostgreSQL writers lock rows in the same order.
async fn execute(
    tx: &mut Transaction<'_, Any>,
    sql: &str,
    rows: Vec<Value>,
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(CHUNK) {
        sqlx::query(sql)
            .bind(Value::from(chunk.to_vec()).to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// `ON CONFLICT (key) DO UPDATE SET col = excluded.col` for each column
/// not in the key: the row was folded in memory from the stored one.
fn replace(key: &str, columns: &[Column]) -> String {
    let set: Vec<String> = columns
        .iter()
        .map(|c| c.name())
        .filter(|c| !key.split(", ").any(|k| k == *c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!("ON CONFLICT ({key}) DO UPDATE SET {}", set.join(", "))
}

use Column::{Int, Text};

fn history_sql(backend: Backend) -> String {
    const COLUMNS: &[Column] = &[
        Int("src_partition"),
        Int("src_offset"),
        Text("tenant"),
        Text("event_name"),
        Text("event_id"),
        Text("platform"),
        Text("stage"),
        Text("server_side"),
        Text("front_end"),
        Text("reason"),
        Int("attempt"),
        Int("next_attempt_at"),
        Text("duplicate_of"),
        Text("reported_by"),
        Text("platform_request_id"),
        Int("status_time"),
    ];
    insert_rows(
        backend,
        "status_history",
        COLUMNS,
        "ON CONFLICT (src_partition, src_offset) DO NOTHING",
    )
}

fn history_row(row: &StatusRow) -> Value {
    let s = &row.status;
    json!([
        row.partition,
        row.offset,
        s.tenant,
        s.event_name,
        s.event_id,
        s.platform,
        s.stage,
        fold::server_side_name(s.server_side),
        s.front_end
            .map(|f| fold::front_end_name(fold::front_end_rank(Some(f)))),
        s.reason,
        s.attempt,
        s.next_attempt_at,
        s.duplicate_of,
        s.reported_by,
        s.platform_request_id,
        s.time,
    ])
}

fn conversions_sql(backend: Backend) -> String {
    const COLUMNS: &[Column] = &[
        Text("tenant"),
        Text("event_name"),
        Text("event_id"),
        Int("sort_time"),
        Int("first_seen"),
        Int("event_time"),
        Text("value"),
        Text("currency"),
        Text("order_id"),
        Text("sources"),
        Text("summary_key"),
    ];
    let tail = replace("tenant, event_name, event_id", COLUMNS);
    insert_rows(backend, "conversions", COLUMNS, &tail)
}

fn conversion_row((tenant, event_name, event_id): &ConversionKey, c: &ConversionState) -> Value {
    json!([
        tenant,
        event_name,
        event_id,
        c.sort_time,
        c.first_seen,
        c.event_time,
        c.value,
        c.currency,
        c.order_id,
        c.sources,
        c.summary_key,
    ])
}

fn platforms_sql(backend: Backend) -> String {
    const COLUMNS: &[Column] = &[
        Text("tenant"),
        Text("event_name"),
        Text("event_id"),
        Text("platform"),
        Int("front_end_rank"),
        Text("server_side"),
        Text("stage"),
        Text("reason"),
        Int("attempt"),
        Int("next_attempt_at"),
        Text("platform_request_id"),
        Int("status_time"),
        Text("status_key"),
        Int("delivered_at"),
        Int("latency_bucket"),
        Text("match_keys"),
        Text("match_keys_key"),
        Int("duplicates"),
    ];
    let tail = replace("tenant, event_name, event_id, platform", COLUMNS);
    insert_rows(backend, "platform_states", COLUMNS, &tail)
}

fn platform_row(
    (tenant, event_name, event_id): &ConversionKey,
    platform: &str,
    p: &PlatformState,
) -> Value {
    json!([
        tenant,
        event_name,
        event_id,
        platform,
        p.front_end_rank,
        p.server_side,
        p.stage,
        p.reason,
        p.attempt,
        p.next_attempt_at,
        p.platform_request_id,
        p.status_time,
        p.status_key,
        p.delivered_at,
        p.latency_bucket,
        p.match_keys,
        p.match_keys_key,
        p.duplicates,
    ])
}

fn click_ids_sql(backend: Backend) -> String {
    insert_rows(
        backend,
        "click_ids",
        &[
            Text("tenant"),
            Text("click_id_hash"),
            Text("event_name"),
            Text("event_id"),
        ],
        "ON CONFLICT (tenant, click_id_hash, event_name, event_id) DO NOTHING",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_unpacks_the_rows_in_its_own_json_functions() {
        let cols = [Int("a"), Text("b")];
        assert_eq!(
            insert_rows(Backend::Sqlite, "t", &cols, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) SELECT r.value ->> 0, r.value ->> 1 FROM json_each($1) AS r \
             WHERE true ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            insert_rows(Backend::Postgres, "t", &cols, "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, b) SELECT (r.value ->> 0)::bigint, r.value ->> 1 \
             FROM jsonb_array_elements($1::jsonb) AS r(value) WHERE true ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn an_upsert_replaces_every_column_but_the_key() {
        assert_eq!(
            replace("a, b", &[Int("a"), Text("b"), Int("c"), Text("d")]),
            "ON CONFLICT (a, b) DO UPDATE SET c = excluded.c, d = excluded.d"
        );
    }
}
