//! How a batch reaches the tables: folded in memory first (one change per
//! conversion and per conversion and platform, whatever the batch holds of
//! them), then one statement per table and chunk, its rows passed as a
//! single JSON value. A statement per record cost a round trip each (1,040
//! records/s into PostgreSQL); a value bound per column cost sqlx's SQLite
//! driver more than the insert (see `insert_rows`).
//!
//! The fold in memory is the fold of `fold.rs` (maxima and minima by its
//! keys), and each upsert's `DO UPDATE` applies the same maxima and minima
//! against the row already there, with `CASE` guards both databases
//! understand. So a batch folds to the same rows in any order, written once
//! or twice. Rows go in key order, so two replicas writing one PostgreSQL
//! lock rows in the same order and cannot deadlock each other.

use std::collections::{BTreeMap, BTreeSet};

use postback_core::model::{ConversionSummary, DeliveryStatus, ServerSideStatus};
use serde_json::{json, Value};
use sqlx::{Any, Transaction};

use crate::fold;
use crate::store::{Backend, StatusRow};

/// Rows per statement: one JSON value of a few hundred kilobytes at most.
const CHUNK: usize = 1000;

type ConversionKey<'a> = (&'a str, &'a str, &'a str);
type PlatformKey<'a> = (&'a str, &'a str, &'a str, &'a str);

/// A conversion's change from this batch: its earliest record and the
/// summary with the greatest key.
struct ConversionChange<'a> {
    first_seen: i64,
    summary: Option<(String, &'a ConversionSummary)>,
}

/// A platform's change from this batch.
struct PlatformChange<'a> {
    /// The record that sets the server-side status, with its key.
    status: Option<(String, &'a DeliveryStatus)>,
    front_end_rank: i64,
    delivered_at: Option<i64>,
    match_keys: Option<(String, String)>,
}

/// The batch, folded.
#[derive(Default)]
pub struct BatchFold<'a> {
    history: Vec<&'a StatusRow>,
    conversions: BTreeMap<ConversionKey<'a>, ConversionChange<'a>>,
    platforms: BTreeMap<PlatformKey<'a>, PlatformChange<'a>>,
    click_ids: BTreeSet<(&'a str, &'a str, &'a str, &'a str)>,
}

fn greater<T>(current: &mut Option<(String, T)>, key: String, value: T) {
    if current.as_ref().is_none_or(|(k, _)| *k < key) {
        *current = Some((key, value));
    }
}

impl<'a> BatchFold<'a> {
    pub fn new(rows: &'a [StatusRow]) -> BatchFold<'a> {
        let mut batch = BatchFold::default();
        for row in rows {
            batch.add(row);
        }
        batch
    }

    fn add(&mut self, row: &'a StatusRow) {
        let s = &row.status;
        self.history.push(row);
        let key = fold::status_key(s.server_side, s.time, row.partition, row.offset);
        let conversion = self
            .conversions
            .entry((&s.tenant, &s.event_name, &s.event_id))
            .or_insert(ConversionChange {
                first_seen: s.time,
                summary: None,
            });
        conversion.first_seen = conversion.first_seen.min(s.time);
        if let Some(c) = &s.conversion {
            greater(&mut conversion.summary, key.clone(), c);
            for hash in &c.click_id_hashes {
                self.click_ids
                    .insert((&s.tenant, hash, &s.event_name, &s.event_id));
            }
        }
        let platform = self
            .platforms
            .entry((&s.tenant, &s.event_name, &s.event_id, &s.platform))
            .or_insert(PlatformChange {
                status: None,
                front_end_rank: 0,
                delivered_at: None,
                match_keys: None,
            });
        platform.front_end_rank = platform
            .front_end_rank
            .max(fold::front_end_rank(s.front_end));
        if s.server_side == ServerSideStatus::Delivered {
            platform.delivered_at = Some(platform.delivered_at.map_or(s.time, |t| t.min(s.time)));
        }
        if let Some(c) = &s.conversion {
            greater(
                &mut platform.match_keys,
                key.clone(),
                c.match_keys.join(","),
            );
        }
        if fold::sets_status(s.server_side) {
            greater(&mut platform.status, key, s);
        }
    }

    /// Writes the fold in `tx`: history, conversions, platforms, click ids.
    pub async fn write(
        &self,
        tx: &mut Transaction<'_, Any>,
        backend: Backend,
    ) -> Result<(), sqlx::Error> {
        for chunk in self.history.chunks(CHUNK) {
            let rows = chunk.iter().map(|r| history_row(r));
            execute(tx, &history_sql(backend), rows).await?;
        }
        let conversions: Vec<_> = self.conversions.iter().collect();
        for chunk in conversions.chunks(CHUNK) {
            let rows = chunk.iter().map(|(k, c)| conversion_row(k, c));
            execute(tx, &conversions_sql(backend), rows).await?;
        }
        let platforms: Vec<_> = self.platforms.iter().collect();
        for chunk in platforms.chunks(CHUNK) {
            let rows = chunk.iter().map(|(k, c)| platform_row(k, c));
            execute(tx, &platforms_sql(backend), rows).await?;
        }
        let click_ids: Vec<_> = self.click_ids.iter().collect();
        for chunk in click_ids.chunks(CHUNK) {
            let rows = chunk.iter().map(|(t, h, n, i)| json!([t, h, n, i]));
            execute(tx, &click_ids_sql(backend), rows).await?;
        }
        Ok(())
    }
}

/// A column of a table, as the rows' JSON carries it.
#[derive(Clone, Copy)]
enum Column {
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

/// `INSERT INTO table (columns) SELECT ... FROM <the rows of $1> WHERE true
/// <tail>`: the rows come as one JSON array of arrays, unpacked by the
/// database (SQLite's json_each, PostgreSQL's jsonb_array_elements). Binding
/// each value apart cost sqlx's SQLite driver more than the insert itself,
/// and more per value the more a statement had. `WHERE true` keeps SQLite
/// from reading the upsert's ON as a join's.
fn insert_rows(backend: Backend, table: &str, columns: &[Column], tail: &str) -> String {
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
    let source = match backend {
        Backend::Sqlite => "json_each($1) AS r",
        Backend::Postgres => "jsonb_array_elements($1::jsonb) AS r(value)",
    };
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {source} WHERE true {tail}",
        names.join(", "),
        values.join(", ")
    )
}

async fn execute(
    tx: &mut Transaction<'_, Any>,
    sql: &str,
    rows: impl Iterator<Item = Value>,
) -> Result<(), sqlx::Error> {
    let rows = Value::Array(rows.collect()).to_string();
    sqlx::query(sql)
        .bind(rows)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// `col = CASE WHEN <wins> THEN excluded.col ELSE table.col END` for each.
fn take_if(table: &str, wins: &str, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("{c} = CASE WHEN {wins} THEN excluded.{c} ELSE {table}.{c} END"))
        .collect::<Vec<_>>()
        .join(",\n")
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
    let newer = "excluded.summary_key > conversions.summary_key";
    // A conversion sorts by its event time once a summary gave one, by its
    // earliest record until then.
    let tail = format!(
        "ON CONFLICT (tenant, event_name, event_id) DO UPDATE SET
         sort_time = CASE WHEN {newer} THEN excluded.event_time
                          WHEN conversions.event_time IS NOT NULL THEN conversions.sort_time
                          WHEN excluded.first_seen < conversions.first_seen THEN excluded.first_seen
                          ELSE conversions.sort_time END,
         first_seen = CASE WHEN excluded.first_seen < conversions.first_seen
                           THEN excluded.first_seen ELSE conversions.first_seen END,
         {}",
        take_if(
            "conversions",
            newer,
            &[
                "event_time",
                "value",
                "currency",
                "order_id",
                "sources",
                "summary_key"
            ]
        )
    );
    insert_rows(backend, "conversions", COLUMNS, &tail)
}

fn conversion_row(key: &ConversionKey<'_>, change: &ConversionChange<'_>) -> Value {
    let (tenant, event_name, event_id) = key;
    let c = change.summary.as_ref().map(|(_, c)| *c);
    json!([
        tenant,
        event_name,
        event_id,
        c.map_or(change.first_seen, |c| c.event_time),
        change.first_seen,
        c.map(|c| c.event_time),
        c.and_then(|c| c.value.as_deref()),
        c.and_then(|c| c.currency.as_deref()),
        c.and_then(|c| c.order_id.as_deref()),
        c.map(|c| c.sources.join(",")).unwrap_or_default(),
        change.summary.as_ref().map_or("", |(k, _)| k.as_str()),
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
        Text("match_keys"),
        Text("match_keys_key"),
    ];
    const T: &str = "platform_states";
    let tail = format!(
        "ON CONFLICT (tenant, event_name, event_id, platform) DO UPDATE SET
         front_end_rank = CASE WHEN excluded.front_end_rank > platform_states.front_end_rank
                               THEN excluded.front_end_rank ELSE platform_states.front_end_rank END,
         delivered_at = CASE WHEN excluded.delivered_at IS NOT NULL
                               AND (platform_states.delivered_at IS NULL
                                    OR excluded.delivered_at < platform_states.delivered_at)
                             THEN excluded.delivered_at ELSE platform_states.delivered_at END,
         {},
         {}",
        take_if(
            T,
            "excluded.status_key > platform_states.status_key",
            &[
                "server_side",
                "stage",
                "reason",
                "attempt",
                "next_attempt_at",
                "platform_request_id",
                "status_time",
                "status_key",
            ]
        ),
        take_if(
            T,
            "excluded.match_keys_key > platform_states.match_keys_key",
            &["match_keys", "match_keys_key"]
        )
    );
    insert_rows(backend, T, COLUMNS, &tail)
}

fn platform_row(key: &PlatformKey<'_>, change: &PlatformChange<'_>) -> Value {
    let (tenant, event_name, event_id, platform) = key;
    let status = change.status.as_ref();
    let s = status.map(|(_, s)| *s);
    let (match_keys, match_keys_key) = change
        .match_keys
        .as_ref()
        .map_or(("", ""), |(k, m)| (m.as_str(), k.as_str()));
    json!([
        tenant,
        event_name,
        event_id,
        platform,
        change.front_end_rank,
        s.map_or("unknown", |s| fold::server_side_name(s.server_side)),
        s.map(|s| s.stage.as_str()),
        s.and_then(|s| s.reason.as_deref()),
        s.and_then(|s| s.attempt),
        s.and_then(|s| s.next_attempt_at),
        s.and_then(|s| s.platform_request_id.as_deref()),
        s.map(|s| s.time),
        status.map_or("", |(k, _)| k.as_str()),
        change.delivered_at,
        match_keys,
        match_keys_key,
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
}
