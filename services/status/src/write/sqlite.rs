//! SQLite's writes, on a connection of their own (rusqlite, over the same
//! SQLite library sqlx links) held by one blocking thread at a time:
//! prepared statements, cached for the connection's life, and a value
//! bound per column, so a row costs what SQLite needs to store it.
//!
//! Why not sqlx for these too: its SQLite driver hands every statement to
//! a worker thread and boxes every bound value, which cost more than the
//! insert, so the rows went as JSON unpacked by `json_each`, and then
//! JSON was most of the time (24,000 records/s at a million conversions).
//! SQLite has one writer anyway; readers (the API, through sqlx) never
//! wait for it in WAL mode.
//!
//! A transaction may stay open across batches (`Commit::Later`), so a
//! commit's cost (the log's pages written and synced, the checkpoint
//! copying them) is paid once for many: the random indexes' pages were
//! written again at every batch's commit. The consumer loop holds those
//! batches' offsets until the commit (`handler.rs`); an error rolls back
//! every batch the transaction held, and says so
//! (`StoreError::HeldWritesLost`), since retrying the last batch alone
//! would not bring the others back.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use super::tables::{self, Cell, Column, Table};
use super::{
    numbers, unnumbered, Batch, Changes, Conversion, ConversionState, NewDuplicates, PlatformState,
};
use crate::fold::{self, StatusKey};
use crate::keys;
use crate::store::{Commit, StatusRow, StoreError};

/// SQLite plans by its statistics table, which nothing fills unless asked:
/// without it a search by order id walks the time index instead of the
/// order id's. Refreshed at open and each time this many more records
/// were written (an approximate ANALYZE, a few milliseconds), so a
/// projection rebuilt from the topic's start soon plans by its real sizes.
const ANALYZE_EVERY_RECORDS: usize = 200_000;

/// How often the checkpointer copies the log's pages into the database
/// file, and the log's size in pages at which the writer does it itself
/// (SQLite's default, 1,000 pages, on the writer's commit, was half of a
/// commit's time).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

#[derive(Clone)]
pub(crate) struct SqliteWriter {
    inner: Arc<Mutex<Writer>>,
}

struct Writer {
    conn: Connection,
    records_since_analyze: usize,
    /// The records written in the open transaction; None when there is
    /// none.
    held: Option<usize>,
    /// A batch's write began and did not end: it panicked, and the open
    /// transaction holds half of it.
    writing: bool,
    /// Records of held batches a rollback lost (`roll_back`).
    lost: Option<usize>,
}

impl SqliteWriter {
    /// Opens the database at `path`, whose tables exist, with a page
    /// cache of `cache_mib` (its share of `store.cache_mib`). Through the
    /// broker at batches of 10,000, two files of 32 MiB each folded 6-8%
    /// more records/s with 4-10% less CPU than SQLite's default 2 MiB
    /// (fewer pages read again from the kernel's cache), for 60 MiB more;
    /// 96 MiB each was no faster than 2.
    pub fn open(path: &Path, cache_mib: u32) -> Result<SqliteWriter, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The pool's few writes (the projection's id, at start) take the
        // write lock too.
        conn.busy_timeout(Duration::from_secs(5))?;
        // A batch's offsets are committed to Kafka once its transaction
        // is: it must be on disk by then, not only in the WAL's buffers.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        // Negative: in KiB rather than pages.
        conn.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))?;
        refresh_statistics(&conn)?;
        let writer = SqliteWriter {
            inner: Arc::new(Mutex::new(Writer {
                conn,
                records_since_analyze: 0,
                held: None,
                writing: false,
                lost: None,
            })),
        };
        spawn_checkpointer(path, Arc::downgrade(&writer.inner))?;
        Ok(writer)
    }

    /// Folds the records of `rows` at the places `mine` (this file's
    /// conversions', `shards.rs`) into its tables, in the open
    /// transaction (or a new one), off the async threads; `Commit::Now`
    /// commits it.
    pub async fn apply(
        &self,
        rows: Arc<Vec<StatusRow>>,
        mine: Vec<usize>,
        commit: Commit,
    ) -> Result<(), StoreError> {
        self.with_writer(move |writer| {
            let records = writer.apply(Batch::new(mine.iter().filter_map(|&i| rows.get(i))))?;
            match commit {
                Commit::Now => writer.commit(records),
                Commit::Later => Ok(()),
            }
        })
        .await
    }

    /// Commits the open transaction, if there is one.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.with_writer(|writer| writer.commit(0)).await
    }

    async fn with_writer(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = inner.lock().unwrap_or_else(PoisonError::into_inner);
            writer.recover()?;
            f(&mut writer)
        })
        .await
        .map_err(StoreError::WriterStopped)?
    }
}

impl Writer {
    /// Writes `batch` in the open transaction, and answers its records.
    fn apply(&mut self, batch: Batch<'_>) -> Result<usize, StoreError> {
        if self.held.is_none() {
            // IMMEDIATE: take the write lock first, so the rows read are
            // the rows written over.
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.held = Some(0);
        }
        self.writing = true;
        let written = write(&self.conn, &batch);
        self.writing = false;
        let earlier = self.held.unwrap_or(0);
        match written {
            Ok(records) => {
                self.held = Some(earlier + records);
                Ok(records)
            }
            Err(e) => Err(self.roll_back(e, earlier)),
        }
    }

    /// Commits the open transaction; `this_batch` of its records are the
    /// caller's own batch, which a retry of the caller writes again.
    fn commit(&mut self, this_batch: usize) -> Result<(), StoreError> {
        let Some(records) = self.held else {
            return Ok(());
        };
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            return Err(self.roll_back(e.into(), records.saturating_sub(this_batch)));
        }
        self.held = None;
        self.records_since_analyze += records;
        if self.records_since_analyze >= ANALYZE_EVERY_RECORDS {
            // Committed already: stale statistics only slow a plan.
            if let Err(e) = refresh_statistics(&self.conn) {
                tracing::warn!(error = %e, "status store statistics not refreshed");
            }
            self.records_since_analyze = 0;
        }
        Ok(())
    }

    /// Rolls the open transaction back after `error`. If it held `earlier`
    /// records of batches before the caller's, those are gone too, and the
    /// error says so: the caller's retry alone would not bring them back.
    /// That loss stays the writer's answer until it is restarted
    /// (`recover`): a writer of several files might see the error of
    /// another file first, retry, and commit this one's later batches
    /// without the earlier ones.
    fn roll_back(&mut self, error: StoreError, earlier: usize) -> StoreError {
        self.held = None;
        // SQLite rolls back itself after some errors (a full disk, I/O).
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "status store rollback failed");
            }
        }
        match earlier {
            0 => error,
            records => {
                self.lost = Some(records);
                StoreError::HeldWritesLost {
                    records,
                    source: Box::new(error),
                }
            }
        }
    }

    /// Refuses to go on after a loss of held writes, and rolls back the
    /// half batch of a write that panicked, with what the transaction held
    /// before it.
    fn recover(&mut self) -> Result<(), StoreError> {
        if let Some(records) = self.lost {
            return Err(StoreError::WriterLost(records));
        }
        if !std::mem::take(&mut self.writing) {
            return Ok(());
        }
        let earlier = self.held.unwrap_or(0);
        tracing::error!(
            records = earlier,
            "a status store write panicked; its transaction rolled back"
        );
        Err(self.roll_back(StoreError::WriterPanicked, earlier))
    }
}

/// Checkpoints the log on a thread of its own, beside the writer (a
/// passive checkpoint never waits for it nor it for the checkpoint), until
/// the writer is gone. A failed checkpoint is only logged: the writer's
/// own, past `WRITER_CHECKPOINT_PAGES`, bounds the log meanwhile.
fn spawn_checkpointer(path: &Path, writer: Weak<Mutex<Writer>>) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(1))?;
    let spawned = std::thread::Builder::new()
        .name("status-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if writer.strong_count() == 0 {
                return;
            }
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "status store checkpoint failed");
            }
        });
    spawned.map(|_| ()).map_err(StoreError::Checkpointer)
}

fn refresh_statistics(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch("PRAGMA analysis_limit = 1000; ANALYZE;")
}

/// Writes `batch`, and answers how many records it held.
fn write(tx: &Connection, batch: &Batch<'_>) -> Result<usize, StoreError> {
    let before = load(tx, batch)?;
    let ids = number(tx, &before)?;
    let new_duplicates = insert_history(tx, batch, &ids)?;
    let after = batch.folded(&before, new_duplicates);
    let changes = Changes::between(batch, &ids, &before, &after);
    insert(tx, &tables::CONVERSIONS, changes.conversions.into_iter())?;
    insert(tx, &tables::PLATFORMS, changes.platforms.into_iter())?;
    let click_ids = batch.click_ids(&ids);
    insert(
        tx,
        &tables::CLICK_IDS,
        click_ids.iter().map(tables::click_id_cells),
    )?;
    let rollups: Vec<_> = changes.rollups.rows().collect();
    insert(tx, &tables::ROLLUPS, rollups.iter().copied())?;
    delete_emptied_rollups(tx, &rollups)?;
    Ok(batch.records())
}

/// Deletes the rollup rows the batch took away from that now count
/// nothing.
fn delete_emptied_rollups(tx: &Connection, rows: &[[Cell<'_>; 11]]) -> Result<(), rusqlite::Error> {
    let r = &tables::ROLLUPS;
    let key: Vec<String> = r.columns[..tables::ROLLUP_KEY_COLUMNS]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ?{}", c.name(), i + 1))
        .collect();
    let sql = format!(
        "DELETE FROM {} WHERE {} AND {}",
        r.name,
        key.join(" AND "),
        tables::emptied_rollup("")
    );
    let mut statement = tx.prepare_cached(&sql)?;
    for cells in rows.iter().filter(|cells| tables::takes_away(cells)) {
        statement.execute(params_from_iter(&cells[..tables::ROLLUP_KEY_COLUMNS]))?;
    }
    Ok(())
}

/// `SELECT <columns> FROM table WHERE <filter>`: columns of `table` in
/// its order, read by place.
fn select<'c>(
    columns: impl IntoIterator<Item = &'c Column>,
    table: &Table,
    filter: &str,
) -> String {
    let names: Vec<&str> = columns.into_iter().map(|c| c.name()).collect();
    format!(
        "SELECT {} FROM {} WHERE {filter}",
        names.join(", "),
        table.name
    )
}

/// The stored rows of the batch's conversions, in its order; a conversion
/// not stored yet is there, empty.
fn load(tx: &Connection, batch: &Batch<'_>) -> Result<Vec<Conversion>, rusqlite::Error> {
    let (c, p) = (&tables::CONVERSIONS, &tables::PLATFORMS);
    // The number, then what follows the key.
    let state = &c.columns[tables::CONVERSION_KEY_COLUMNS..];
    let number_and_state = c.columns[..1].iter().chain(state);
    // The hash finds it (`keys.rs`), the text makes sure.
    let by_key = "tenant = ?1 AND key_hash = ?2 AND event_name = ?3 AND event_id = ?4";
    let mut conversions = tx.prepare_cached(&select(number_and_state, c, by_key))?;
    let mut platforms = tx.prepare_cached(&select(&p.columns[1..], p, "conversion_id = ?1"))?;
    let mut out = Vec::with_capacity(batch.conversions().len());
    for (tenant, event_name, event_id) in batch.conversions() {
        let hash = keys::event_id_hash(tenant, event_id);
        let key = rusqlite::params![tenant, hash, event_name, event_id];
        let Some((id, state)) = conversions.query_row(key, conversion_state).optional()? else {
            out.push(Conversion::default());
            continue;
        };
        let mut conversion = Conversion {
            id: Some(id),
            state: Some(state),
            ..Conversion::default()
        };
        let mut rows = platforms.query([id])?;
        while let Some(row) = rows.next()? {
            conversion
                .platforms
                .insert(row.get(0)?, platform_state(row)?);
        }
        out.push(conversion);
    }
    Ok(out)
}

/// Numbers the batch's new conversions after the highest stored: this
/// connection is the only writer, and holds the write lock.
fn number(tx: &Connection, before: &[Conversion]) -> Result<Vec<i64>, StoreError> {
    let highest: i64 = match unnumbered(before) {
        0 => 0,
        _ => tx.query_row("SELECT COALESCE(MAX(id), 0) FROM conversions", [], |r| {
            r.get(0)
        })?,
    };
    Ok(numbers(before, highest + 1..)?)
}

/// A `conversions` row: its number, then its columns in
/// `tables::CONVERSIONS`' order after the key (the order id's hash, 7,
/// is the order id's, not the state's).
fn conversion_state(row: &rusqlite::Row<'_>) -> Result<(i64, ConversionState), rusqlite::Error> {
    let state = ConversionState {
        sort_time: row.get(1)?,
        first_seen: row.get(2)?,
        event_time: row.get(3)?,
        value: row.get(4)?,
        currency: row.get(5)?,
        order_id: row.get(6)?,
        sources: row.get(8)?,
        summary_key: read_status_key(row, 9)?,
    };
    Ok((row.get(0)?, state))
}

/// A `platform_states` row, its columns in `tables::PLATFORMS`' order
/// after the conversion's number (the platform first).
fn platform_state(row: &rusqlite::Row<'_>) -> Result<PlatformState, rusqlite::Error> {
    Ok(PlatformState {
        front_end_rank: row.get(1)?,
        server_side: fold::server_side_named(row.get_ref(2)?.as_str()?),
        stage: row.get(3)?,
        reason: row.get(4)?,
        attempt: row.get(5)?,
        next_attempt_at: row.get(6)?,
        platform_request_id: row.get(7)?,
        status_time: row.get(8)?,
        status_key: read_status_key(row, 9)?,
        delivered_at: row.get(10)?,
        latency_bucket: row.get(11)?,
        match_keys: row.get(12)?,
        match_keys_key: read_status_key(row, 13)?,
        duplicates: row.get(14)?,
    })
}

/// A key column (`fold::StatusKey`), read without a String between.
fn read_status_key(row: &rusqlite::Row<'_>, i: usize) -> Result<StatusKey, rusqlite::Error> {
    Ok(StatusKey::from_stored(row.get_ref(i)?.as_str()?))
}

/// Inserts the records the history does not hold yet, and answers the
/// `duplicate` records among them.
fn insert_history(
    tx: &Connection,
    batch: &Batch<'_>,
    ids: &[i64],
) -> Result<NewDuplicates, rusqlite::Error> {
    let mut statement = tx.prepare_cached(&insert_sql(&tables::HISTORY))?;
    let mut new_duplicates = NewDuplicates::default();
    for (id, row) in batch.numbered(ids) {
        let cells = tables::history_cells(id, row);
        let inserted = statement.execute(params_from_iter(cells.iter()))?;
        if inserted > 0 && tables::is_duplicate(row) {
            new_duplicates.insert((row.partition, row.offset));
        }
    }
    Ok(new_duplicates)
}

/// `INSERT INTO table (columns) VALUES (?1, ...) ON CONFLICT ...`.
fn insert_sql(table: &Table) -> String {
    let values: Vec<String> = (1..=table.columns.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) {}",
        table.name,
        table.column_names(),
        values.join(", "),
        table.conflict_clause()
    )
}

fn insert<'a, const N: usize>(
    tx: &Connection,
    table: &Table,
    rows: impl Iterator<Item = [Cell<'a>; N]>,
) -> Result<(), rusqlite::Error> {
    debug_assert_eq!(N, table.columns.len(), "{}'s cells", table.name);
    let mut statement = tx.prepare_cached(&insert_sql(table))?;
    for cells in rows {
        statement.execute(params_from_iter(cells.iter()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_bound_by_place_and_read_by_place() {
        assert_eq!(
            insert_sql(&tables::CLICK_IDS),
            "INSERT INTO click_ids (click_key, conversion_id) \
             VALUES (?1, ?2) ON CONFLICT (click_key, conversion_id) DO NOTHING"
        );
        let c = &tables::CONVERSIONS;
        assert_eq!(
            select(
                c.columns[..1]
                    .iter()
                    .chain(&c.columns[tables::CONVERSION_KEY_COLUMNS..]),
                c,
                "id = ?1"
            ),
            "SELECT id, sort_time, first_seen, event_time, value, currency, order_id, \
             order_hash, sources, summary_key FROM conversions WHERE id = ?1"
        );
        let p = &tables::PLATFORMS;
        assert_eq!(
            select(&p.columns[1..], p, "conversion_id = ?1")
                .split(", ")
                .take(3)
                .collect::<Vec<_>>(),
            ["SELECT platform", "front_end_rank", "server_side"]
        );
    }
}
