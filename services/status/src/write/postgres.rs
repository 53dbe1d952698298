//! PostgreSQL's writes, through sqlx: a batch's rows go as one JSON value
//! per table and chunk, unpacked by `jsonb_array_elements`, so a batch is
//! a handful of round trips however many rows it has.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::tables::{self, Cell, Column, Table};
use super::{
    numbers, unnumbered, Batch, Changes, Conversion, ConversionState, NewDuplicates, PlatformState,
};
use crate::fold::{self, StatusKey};
use crate::store::{int, text, StatusRow, StoreError};

/// Rows per statement: one JSON value of a few hundred kilobytes at most.
const CHUNK: usize = 1000;

/// The most records `write` takes in one transaction: each of their
/// conversions holds an advisory lock until the commit, and PostgreSQL's
/// lock table is shared by every session (64 locks per connection by
/// default); 10,000-record batches could fill it. A larger batch is
/// several transactions, all committed before its offsets move; a crash
/// between them reads the batch again, and the part already written
/// changes nothing. PostgreSQL folded no faster in batches of 10,000.
pub(crate) const RECORDS_PER_TRANSACTION: usize = 1000;

/// Folds `rows` (at most `RECORDS_PER_TRANSACTION`) into the tables, in
/// `tx`.
pub(crate) async fn write(
    tx: &mut Transaction<'_, Any>,
    rows: &[StatusRow],
) -> Result<(), StoreError> {
    let batch = Batch::new(rows);
    // `lock` then `load`: each statement must see what the replica it
    // waited for committed, or it numbers that replica's new conversion a
    // second time. A server whose default is REPEATABLE READ would give
    // the whole transaction the snapshot from before the wait.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut **tx)
        .await?;
    // sqlx prepares each statement once; after five runs PostgreSQL may
    // keep a generic plan made while the tables were small (a sequential
    // scan), 50-150 ms per batch at 200,000 conversions instead of 1 ms.
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut **tx)
        .await?;
    lock(tx, &batch).await?;
    let before = load(tx, &batch).await?;
    let ids = number(tx, &before).await?;
    let new_duplicates = insert_history(tx, &batch, &ids).await?;
    let after = batch.folded(&before, new_duplicates);
    let changes = Changes::between(&batch, &ids, &before, &after);
    execute(tx, &tables::CONVERSIONS, changes.conversions.into_iter()).await?;
    execute(tx, &tables::PLATFORMS, changes.platforms.into_iter()).await?;
    let click_ids = batch.click_ids(&ids);
    execute(
        tx,
        &tables::CLICK_IDS,
        click_ids.iter().map(tables::click_id_cells),
    )
    .await?;
    // Last: replicas on one PostgreSQL update the same rollup rows, and a
    // row's lock is held until the commit that follows.
    let rollups: Vec<_> = changes.rollups.rows().collect();
    execute(tx, &tables::ROLLUPS, rollups.iter().copied()).await?;
    Ok(delete_emptied_rollups(tx, &rollups).await?)
}

/// Deletes the rollup rows the batch took away from that now count
/// nothing. Only rows the insert before locked: another replica's rows
/// taken here too could make the two wait on each other.
async fn delete_emptied_rollups(
    tx: &mut Transaction<'_, Any>,
    rows: &[[Cell<'_>; 11]],
) -> Result<(), sqlx::Error> {
    let emptied: Vec<[Cell<'_>; 11]> = rows
        .iter()
        .filter(|cells| tables::takes_away(cells))
        .copied()
        .collect();
    let r = &tables::ROLLUPS;
    let key: Vec<String> = r.columns[..tables::ROLLUP_KEY_COLUMNS]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = {}", c.name(), json_cell(i, *c)))
        .collect();
    let sql = format!(
        "DELETE FROM {} AS t USING {JSON_ROWS} WHERE {} AND {}",
        r.name,
        key.join(" AND "),
        tables::emptied_rollup("t.")
    );
    run_chunked(tx, &sql, &emptied).await
}

/// One advisory lock per conversion, for the transaction, in the order of
/// their hashes, so replicas writing overlapping batches (during a
/// rebalance) take turns instead of both reading the rows before the
/// other's write. A collision of hashes only serialises more. One
/// statement for all of them: locks taken chunk by chunk would be in
/// order only within each chunk, and two replicas could wait on each
/// other in a cycle.
async fn lock(tx: &mut Transaction<'_, Any>, batch: &Batch<'_>) -> Result<(), sqlx::Error> {
    // COUNT over the locks: the function returns void, which sqlx cannot
    // decode, and PostgreSQL keeps volatile outputs of a subquery.
    const SQL: &str = "SELECT COUNT(*) AS n FROM (
         SELECT pg_advisory_xact_lock(k) FROM (
           SELECT DISTINCT hashtextextended(r.value #>> '{}', 0) AS k
           FROM jsonb_array_elements($1::jsonb) AS r(value) ORDER BY k) AS ordered) AS locked";
    let names: Vec<String> = batch
        .conversions()
        .map(|(t, n, i)| format!("{t}\u{1f}{n}\u{1f}{i}"))
        .collect();
    sqlx::query(SQL)
        .bind(json(&names)?)
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// The stored rows of the batch's conversions, in its order; a conversion
/// not stored yet is there, empty.
async fn load(
    tx: &mut Transaction<'_, Any>,
    batch: &Batch<'_>,
) -> Result<Vec<Conversion>, sqlx::Error> {
    let conversions = format!(
        "SELECT c.* FROM {JSON_ROWS} CROSS JOIN conversions c WHERE c.tenant = r.value ->> 0
           AND c.event_name = r.value ->> 1 AND c.event_id = r.value ->> 2"
    );
    let platforms = format!(
        "SELECT p.* FROM {JSON_ROWS}
           JOIN platform_states p ON p.conversion_id = (r.value #>> '{{}}')::bigint"
    );
    let mut numbers: BTreeMap<StoredKey, i64> = BTreeMap::new();
    let mut stored: BTreeMap<i64, Conversion> = BTreeMap::new();
    let keys: Vec<_> = batch.conversions().collect();
    for chunk in keys.chunks(CHUNK) {
        let rows = sqlx::query(&conversions)
            .bind(json(chunk)?)
            .fetch_all(&mut **tx)
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            numbers.insert(stored_key(&row)?, id);
            let conversion = Conversion {
                id: Some(id),
                state: Some(conversion_state(&row)?),
                ..Conversion::default()
            };
            stored.insert(id, conversion);
            ids.push(id);
        }
        for row in sqlx::query(&platforms)
            .bind(json(&ids)?)
            .fetch_all(&mut **tx)
            .await?
        {
            let id: i64 = row.try_get("conversion_id")?;
            if let Some(conversion) = stored.get_mut(&id) {
                let platform = row.try_get::<String, _>("platform")?;
                conversion.platforms.insert(platform, platform_state(&row)?);
            }
        }
    }
    let in_order = keys.iter().map(|(t, n, i)| {
        let key = (t.to_string(), n.to_string(), i.to_string());
        let id = numbers.get(&key);
        id.and_then(|id| stored.remove(id)).unwrap_or_default()
    });
    Ok(in_order.collect())
}

/// Numbers the batch's new conversions from the identity's sequence,
/// which replicas share: numbers are unique, and nearly in the order
/// conversions were first seen.
async fn number(
    tx: &mut Transaction<'_, Any>,
    before: &[Conversion],
) -> Result<Vec<i64>, StoreError> {
    const SQL: &str = "SELECT nextval(pg_get_serial_sequence('conversions', 'id')) AS id
         FROM generate_series(1, $1) ORDER BY id";
    let fresh = match unnumbered(before) {
        0 => Vec::new(),
        wanted => sqlx::query(SQL)
            .bind(wanted as i64)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| row.try_get::<i64, _>("id"))
            .collect::<Result<_, _>>()?,
    };
    Ok(numbers(before, fresh)?)
}

/// A conversion's key as read from the database.
type StoredKey = (String, String, String);

fn stored_key(row: &AnyRow) -> Result<StoredKey, sqlx::Error> {
    Ok((
        row.try_get("tenant")?,
        row.try_get("event_name")?,
        row.try_get("event_id")?,
    ))
}

/// A key column (`fold::StatusKey`).
fn read_status_key(row: &AnyRow, column: &str) -> Result<StatusKey, sqlx::Error> {
    Ok(StatusKey::from_stored(&row.try_get::<String, _>(column)?))
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
        summary_key: read_status_key(row, "summary_key")?,
    })
}

fn platform_state(row: &AnyRow) -> Result<PlatformState, sqlx::Error> {
    Ok(PlatformState {
        front_end_rank: row.try_get("front_end_rank")?,
        server_side: fold::server_side_named(&row.try_get::<String, _>("server_side")?),
        stage: text(row, "stage")?,
        reason: text(row, "reason")?,
        attempt: int(row, "attempt")?,
        next_attempt_at: int(row, "next_attempt_at")?,
        platform_request_id: text(row, "platform_request_id")?,
        status_time: int(row, "status_time")?,
        status_key: read_status_key(row, "status_key")?,
        delivered_at: int(row, "delivered_at")?,
        latency_bucket: int(row, "latency_bucket")?,
        match_keys: row.try_get("match_keys")?,
        match_keys_key: read_status_key(row, "match_keys_key")?,
        duplicates: row.try_get("duplicates")?,
    })
}

/// Inserts the records the history does not hold yet, and answers the
/// `duplicate` records among them.
async fn insert_history(
    tx: &mut Transaction<'_, Any>,
    batch: &Batch<'_>,
    ids: &[i64],
) -> Result<NewDuplicates, sqlx::Error> {
    let (duplicates, others): (Vec<_>, Vec<_>) = batch
        .numbered(ids)
        .partition(|(_, r)| tables::is_duplicate(r));
    let history = &tables::HISTORY;
    let others = others.into_iter();
    execute(
        tx,
        history,
        others.map(|(id, r)| tables::history_cells(id, r)),
    )
    .await?;
    let returning = format!(
        "{} RETURNING src_partition, src_offset",
        insert_sql(history)
    );
    let mut inserted = NewDuplicates::default();
    for chunk in duplicates.chunks(CHUNK) {
        let cells: Vec<_> = chunk
            .iter()
            .map(|(id, r)| tables::history_cells(*id, r))
            .collect();
        for row in sqlx::query(&returning)
            .bind(json_rows(&cells)?)
            .fetch_all(&mut **tx)
            .await?
        {
            let partition: i64 = row.try_get("src_partition")?;
            let partition =
                i32::try_from(partition).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            inserted.insert((partition, row.try_get("src_offset")?));
        }
    }
    Ok(inserted)
}

/// The rows of `$1`, a JSON array of arrays, as a table `r` whose `value`
/// is one row.
const JSON_ROWS: &str = "jsonb_array_elements($1::jsonb) AS r(value)";

/// `INSERT INTO table (columns) SELECT ... FROM <the rows of $1> WHERE true
/// ON CONFLICT ...`.
fn insert_sql(table: &Table) -> String {
    let values: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| json_cell(i, *c))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {JSON_ROWS} WHERE true {}",
        table.name,
        table.column_names(),
        values.join(", "),
        table.conflict_clause()
    )
}

/// The `i`-th cell of a row of `JSON_ROWS`, as its column's type.
fn json_cell(i: usize, column: Column) -> String {
    match column {
        Column::Int(_) => format!("(r.value ->> {i})::bigint"),
        Column::Text(_) => format!("r.value ->> {i}"),
    }
}

/// Inserts `rows` into `table`, a chunk a statement; rows go in key order,
/// so two writers lock rows in the same order.
async fn execute<'a, const N: usize>(
    tx: &mut Transaction<'_, Any>,
    table: &Table,
    rows: impl Iterator<Item = [Cell<'a>; N]>,
) -> Result<(), sqlx::Error> {
    debug_assert_eq!(N, table.columns.len(), "{}'s cells", table.name);
    let rows: Vec<[Cell<'a>; N]> = rows.collect();
    run_chunked(tx, &insert_sql(table), &rows).await
}

/// Runs `sql` once per chunk of `rows`, the chunk as `$1` (`JSON_ROWS`).
async fn run_chunked<const N: usize>(
    tx: &mut Transaction<'_, Any>,
    sql: &str,
    rows: &[[Cell<'_>; N]],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(CHUNK) {
        sqlx::query(sql)
            .bind(json_rows(chunk)?)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Rows of cells as `$1` for `JSON_ROWS`: an array of arrays.
fn json_rows<const N: usize>(rows: &[[Cell<'_>; N]]) -> Result<String, sqlx::Error> {
    let rows: Vec<&[Cell<'_>]> = rows.iter().map(|r| r.as_slice()).collect();
    json(&rows)
}

fn json(value: &(impl Serialize + ?Sized)) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unpacked_from_json_and_cast_by_column() {
        let table = Table {
            name: "t",
            key: "a",
            columns: &[Column::Int("a"), Column::Text("b")],
            on_conflict: tables::OnConflict::Keep,
        };
        assert_eq!(
            insert_sql(&table),
            "INSERT INTO t (a, b) SELECT (r.value ->> 0)::bigint, r.value ->> 1 \
             FROM jsonb_array_elements($1::jsonb) AS r(value) WHERE true ON CONFLICT (a) DO NOTHING"
        );
    }
}
