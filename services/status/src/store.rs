//! The projection's database: an embedded SQLite file by default, or
//! PostgreSQL for several replicas, behind one query layer for reads
//! (sqlx's `Any` driver; every query is written once, in SQL both
//! understand) and a writer per database (`write/`).
//!
//! Writes are idempotent and order-free (see `fold.rs`): a batch is one
//! transaction (on PostgreSQL one per 1,000 records) that reads its
//! conversions' rows, folds the records into them and writes back what
//! changed, so a batch written twice
//! (a crash between the database commit and the Kafka offset commit) or
//! records read out of order leave the same rows.
//!
//! Tables: `status_history` (every record, keyed by its conversion and
//! its place on the topic), `conversions` (one row per tenant, event name and event id: the
//! conversion's summary), `platform_states` (one row per conversion and
//! platform: the current front-end and server-side status), `click_ids`
//! (hashed click ids, for search), `summary_rollups` (counts per tenant
//! and slot of time, `rollups.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use postback_core::model::DeliveryStatus;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::config::{redacted_url, StoreConfig};
use crate::shards;
use crate::write::sqlite::SqliteWriter;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the status store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create {path} for the status store: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("status store: {0}")]
    Query(#[from] sqlx::Error),
    #[error("status store (SQLite writer): {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the status store's SQLite writer stopped: {0}")]
    WriterStopped(#[source] tokio::task::JoinError),
    #[error("cannot start the status store's checkpoint thread: {0}")]
    Checkpointer(#[source] std::io::Error),
    #[error("the status store's SQLite path {0:?} is not supported: give a file path without percent escapes")]
    SqlitePath(String),
    #[error("status store: {0}")]
    Numbering(#[from] crate::write::TooFewNumbers),
    #[error("the status store holds layout {found}, newer than this build's {want}: run the newer build, or point this one at another database (a projection of its own)")]
    NewerLayout { found: u32, want: u32 },
    #[error("the status store lost the writes of {records} records not committed yet, read again after a restart: {source}")]
    HeldWritesLost {
        records: usize,
        #[source]
        source: Box<StoreError>,
    },
    #[error("a status store write panicked")]
    WriterPanicked,
    #[error("the status store's writer lost the held writes of {0} records and writes no more until the service restarts (the records are read again then)")]
    WriterLost(usize),
    #[error("the status store cannot be an in-memory SQLite database: its writer and its readers are separate connections; give a file")]
    InMemory,
}

impl StoreError {
    /// Worth trying again: the database restarting, a lock, a dropped
    /// connection; not a statement it refuses.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Query(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                ) || e.as_database_error().is_some_and(|d| {
                    let code = d.code().unwrap_or_default();
                    // SQLite: busy, locked; PostgreSQL: serialization,
                    // deadlock, admin shutdown, cannot connect now.
                    matches!(
                        code.as_ref(),
                        "5" | "6" | "517" | "40001" | "40P01" | "57P01" | "57P03"
                    )
                })
            }
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// Whether a write commits its transaction, or leaves it open for the
/// next (SQLite; PostgreSQL always commits, `Store::apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Now,
    Later,
}

/// One status record and its place on the topic.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub partition: i32,
    pub offset: i64,
    pub status: DeliveryStatus,
}

/// Which database the store talks to, where their SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    /// The database's files (`shards.rs`): one for PostgreSQL, where
    /// replicas share the writing instead.
    shards: Arc<[Shard]>,
    backend: Backend,
}

/// One file of the store, or the PostgreSQL database.
pub(crate) struct Shard {
    /// Every read, the tables' creation, and PostgreSQL's writes.
    pub pool: AnyPool,
    /// SQLite's writes (`write/sqlite.rs`).
    writer: Option<SqliteWriter>,
}

/// Names of this projection: its id, and the tables' layout.
const PROJECTION_TABLE: &str = "CREATE TABLE IF NOT EXISTS projection (
    name TEXT NOT NULL PRIMARY KEY,
    id TEXT NOT NULL)";

const SCHEMA: &[&str] = &[
    // `id` numbers conversions in the order they were first seen: the
    // other tables are keyed by it, so the rows of conversions seen
    // together sit together, whatever their event ids (`CONVERSION_ID`).
    "CREATE TABLE IF NOT EXISTS conversions (
        id {CONVERSION_ID} PRIMARY KEY,
        tenant TEXT NOT NULL,
        event_name TEXT NOT NULL,
        event_id TEXT NOT NULL,
        key_hash BIGINT NOT NULL,
        sort_time BIGINT NOT NULL,
        first_seen BIGINT NOT NULL,
        event_time BIGINT,
        value TEXT,
        currency TEXT,
        order_id TEXT,
        order_hash BIGINT,
        sources TEXT NOT NULL DEFAULT '',
        summary_key TEXT NOT NULL DEFAULT ''{CONVERSION_KEY})",
    "CREATE INDEX IF NOT EXISTS conversions_by_time
        ON conversions (tenant, sort_time, event_name, event_id)",
    // Hashes, not the text (`keys.rs`); lookups compare the text too.
    "CREATE INDEX IF NOT EXISTS conversions_by_order_id ON conversions (tenant, order_hash)",
    "CREATE TABLE IF NOT EXISTS status_history (
        conversion_id BIGINT NOT NULL,
        src_partition BIGINT NOT NULL,
        src_offset BIGINT NOT NULL,
        platform TEXT NOT NULL,
        stage TEXT NOT NULL,
        server_side TEXT NOT NULL,
        front_end TEXT,
        reason TEXT,
        attempt BIGINT,
        next_attempt_at BIGINT,
        duplicate_of TEXT,
        reported_by TEXT,
        platform_request_id TEXT,
        status_time BIGINT NOT NULL,
        PRIMARY KEY (conversion_id, src_partition, src_offset)) {CLUSTERED}",
    "CREATE TABLE IF NOT EXISTS platform_states (
        conversion_id BIGINT NOT NULL,
        platform TEXT NOT NULL,
        front_end_rank BIGINT NOT NULL DEFAULT 0,
        server_side TEXT NOT NULL DEFAULT 'unknown',
        stage TEXT,
        reason TEXT,
        attempt BIGINT,
        next_attempt_at BIGINT,
        platform_request_id TEXT,
        status_time BIGINT,
        status_key TEXT NOT NULL DEFAULT '',
        delivered_at BIGINT,
        latency_bucket BIGINT,
        match_keys TEXT NOT NULL DEFAULT '',
        match_keys_key TEXT NOT NULL DEFAULT '',
        duplicates BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (conversion_id, platform)) {CLUSTERED}",
    PROJECTION_TABLE,
    "CREATE TABLE IF NOT EXISTS click_ids (
        click_key BIGINT NOT NULL,
        conversion_id BIGINT NOT NULL,
        PRIMARY KEY (click_key, conversion_id)) {CLUSTERED}",
    "CREATE TABLE IF NOT EXISTS summary_rollups (
        tenant TEXT NOT NULL,
        width BIGINT NOT NULL,
        slot BIGINT NOT NULL,
        platform TEXT NOT NULL,
        server_side TEXT NOT NULL,
        reason TEXT NOT NULL,
        front_end_fired BIGINT NOT NULL,
        latency BIGINT NOT NULL,
        merged BIGINT NOT NULL,
        n BIGINT NOT NULL,
        duplicates BIGINT NOT NULL,
        PRIMARY KEY (tenant, width, slot, platform, server_side, reason, front_end_fired, latency, merged))",
];

/// The tables' layout. A database of another layout is dropped and made
/// again at open: it is a projection, and its new name (`projection_id`)
/// reads the topic from its start to fill it.
///
/// Layout 5 spreads SQLite's conversions over files (`shards.rs`), each
/// with the tables below and numbering its conversions itself; the number
/// of files is in `projection` beside the layout.
///
/// Layout 6 indexes event ids, order ids and click ids by 64-bit hashes
/// (`keys.rs`): 8 bytes an entry instead of the text, so a commit rewrites
/// a third to a fifth as many index pages.
///
/// Layout 7 writes the records' keys (`fold::StatusKey`: which record a
/// platform's status, its match keys and a conversion's summary come
/// from) in 27 characters of base 64 instead of 52 decimal digits: two
/// were over half of a platform's row.
const SCHEMA_VERSION: u32 = 7;

/// Where a conversion is found by its key: on SQLite an index of the
/// tenant and the hash, which the writer's lookups and the searches by
/// event id take (one writer, so nothing else need keep the key unique);
/// on PostgreSQL the text key's unique index, which keeps replicas from
/// storing a conversion twice.
const CONVERSION_KEY: &str = "{CONVERSION_KEY}";
const SQLITE_KEY_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS conversions_by_key ON conversions (tenant, key_hash)";

/// Layout 4 keys the tables by a conversion's number instead of its text
/// key. Event ids are the site's (often random UUIDs): keyed by them,
/// every record landed on its own page of each table and index, and a
/// batch rewrote a page per record. At 500,000 conversions with random
/// ids, layout 3 folded 21,000-23,000 records/s against 64,000 for
/// layout 4 on the same machine (`benches/projection.rs`). Numbered as
/// first seen, a batch's records touch the few pages where their
/// conversions are; only the indexes on what the site chose
/// (`conversions`' unique key, its order ids, the click ids) still take a
/// random place, once per conversion. SQLite assigns the next number itself (one writer);
/// PostgreSQL's replicas take theirs from the identity's sequence.
const CONVERSION_ID: &str = "{CONVERSION_ID}";

/// The tables keyed by conversion are kept in their key's order where the
/// database can (SQLite's WITHOUT ROWID): one B-tree serves the insert
/// and the reads of a conversion's rows, where a rowid table keeps the
/// rows and the key apart. `conversions` stays a rowid table: its number
/// is the rowid.
const CLUSTERED: &str = "{CLUSTERED}";
const TABLES: &[&str] = &[
    "status_history",
    "conversions",
    "platform_states",
    "click_ids",
    "summary_rollups",
    "projection",
];

impl Store {
    /// Opens the database of `config.url` (creating an SQLite file and its
    /// directory) and creates the tables that are missing.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, sqlite_file) = prepare_url(&config.url)?;
        let Some(file) = sqlite_file else {
            let pool = connect(config, &url, config.max_connections).await?;
            migrate(&pool, Backend::Postgres, 1).await?;
            return Ok(Store {
                shards: Arc::new([Shard { pool, writer: None }]),
                backend: Backend::Postgres,
            });
        };
        // The rest of the URL (its options) after the file's name.
        let options = &url["sqlite://".len() + file.as_os_str().len()..];
        let url_of = |path: &Path| format!("sqlite://{}{options}", path.display());
        let first = connect_sqlite(config, &url_of(&file)).await?;
        let stored = StoredLayout::read(&first).await?;
        // Before any file is removed: a newer build's files are its own.
        stored.refuse_newer()?;
        let count = match config.shards {
            0 => stored
                .shards_of_this_layout()
                .unwrap_or_else(shards::default_count),
            n => n as usize,
        };
        remove_files_past(&file, count)?;
        let mut opened = Vec::with_capacity(count);
        for index in 0..count {
            let path = shards::shard_path(&file, index);
            let pool = match index {
                0 => first.clone(),
                _ => connect_sqlite(config, &url_of(&path)).await?,
            };
            migrate(&pool, Backend::Sqlite, count).await?;
            // Opening runs ANALYZE: file work, off the async threads.
            // The cache is the store's, shared out: its memory does not
            // grow with the machine's cores (one file per core).
            let cache_mib = (config.cache_mib / count as u32).max(1);
            let writer = tokio::task::spawn_blocking(move || SqliteWriter::open(&path, cache_mib));
            let writer = writer.await.map_err(StoreError::WriterStopped)??;
            opened.push(Shard {
                pool,
                writer: Some(writer),
            });
        }
        Ok(Store {
            shards: opened.into(),
            backend: Backend::Sqlite,
        })
    }

    /// This database's name among projections, made when its tables are:
    /// the consumer group's offsets belong to the rows they were applied
    /// to, so the service reads with a group of this name. A database lost
    /// or replaced is a new projection, read from the topic's start; the
    /// replicas that share one PostgreSQL database share its group.
    pub async fn projection_id(&self) -> Result<String, StoreError> {
        let candidate = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{:x}{:04x}", nanos, std::process::id() & 0xffff)
        };
        sqlx::query(
            "INSERT INTO projection (name, id) VALUES ('status', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&candidate)
        .execute(self.first())
        .await?;
        let row = sqlx::query("SELECT id FROM projection WHERE name = 'status'")
            .fetch_one(self.first())
            .await?;
        Ok(row.try_get::<String, _>("id")?)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database's files, in their order (`shards::shard_of`).
    pub(crate) fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The place in `shards()` of the file of the conversion (tenant,
    /// event name, event id).
    pub(crate) fn shard_of(&self, tenant: &str, event_name: &str, event_id: &str) -> usize {
        shards::shard_of(tenant, event_name, event_id, self.shards.len())
    }

    /// The places in `rows` of each file's records, in file order.
    fn records_by_file(&self, rows: &[StatusRow]) -> Vec<Vec<usize>> {
        let mut by_file = vec![Vec::new(); self.shards.len()];
        for (i, row) in rows.iter().enumerate() {
            let s = &row.status;
            by_file[self.shard_of(&s.tenant, &s.event_name, &s.event_id)].push(i);
        }
        by_file
    }

    /// The first file: the one `store.url` names, which holds the
    /// projection's name.
    fn first(&self) -> &AnyPool {
        &self.shards[0].pool
    }

    /// Writes `rows` (`write`), trying again for `retry_for` while the
    /// database's errors are transient.
    pub async fn write_with_retry(
        &self,
        rows: impl Into<Arc<Vec<StatusRow>>>,
        commit: Commit,
        retry_for: Duration,
    ) -> Result<(), StoreError> {
        let rows = rows.into();
        (|| self.write(rows.clone(), commit))
            .retry(retry_backoff(retry_for))
            .when(StoreError::is_transient)
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "status store write failed; trying again"))
            .await
    }

    /// Folds `rows` into the projection and commits, with whatever
    /// earlier writes left uncommitted.
    pub async fn apply(&self, rows: impl Into<Arc<Vec<StatusRow>>>) -> Result<(), StoreError> {
        self.write(rows, Commit::Now).await
    }

    /// Folds `rows` into the projection: on SQLite in each file's open
    /// transaction (or a new one), the files' writers at once, committed
    /// if `commit` says so; on PostgreSQL in transactions of at most 1,000
    /// records (its advisory locks, `write/postgres.rs`), always
    /// committed. Shared, not borrowed: SQLite's writers take them to
    /// their own threads, and a batch's retries take them again.
    ///
    /// A batch whose write failed in one file may be written (or
    /// committed) in another: its retry writes it again there, which the
    /// fold makes a no-op (`write/`), and its offsets are committed only
    /// once every file has it.
    ///
    /// A vector, not a slice: the caller gets its buffer back once the
    /// write is done (`Arc::try_unwrap`), where a slice would be a copy.
    pub async fn write(
        &self,
        rows: impl Into<Arc<Vec<StatusRow>>>,
        commit: Commit,
    ) -> Result<(), StoreError> {
        let rows = rows.into();
        if self.backend == Backend::Sqlite {
            let mut writes = Vec::with_capacity(self.shards.len());
            for (shard, mine) in self.shards.iter().zip(self.records_by_file(&rows)) {
                let Some(writer) = shard.writer.as_ref() else {
                    continue;
                };
                if !mine.is_empty() {
                    writes.push(writer.apply(rows.clone(), mine, commit).boxed());
                } else if commit == Commit::Now {
                    writes.push(writer.commit().boxed());
                }
            }
            return every_file(writes).await;
        }
        for part in rows.chunks(crate::write::POSTGRES_RECORDS_PER_TRANSACTION) {
            let mut tx = self.first().begin().await?;
            crate::write::write_postgres(&mut tx, part).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Commits what writes left uncommitted (`Commit::Later`), in every
    /// file at once.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let writers = self.shards.iter().filter_map(|s| s.writer.as_ref());
        every_file(writers.map(|w| w.commit().boxed())).await
    }

    /// Whether `Commit::Later` leaves anything uncommitted: SQLite's
    /// writers keep their transactions open; PostgreSQL's commit always.
    pub fn holds_writes(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    /// Records in the history: how far the projection got (tests, metrics).
    pub async fn history_len(&self) -> Result<i64, StoreError> {
        let mut total = 0;
        for shard in self.shards.iter() {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM status_history")
                .fetch_one(&shard.pool)
                .await?;
            total += row.try_get::<i64, _>("n")?;
        }
        Ok(total)
    }
}

/// Waits for every file's write, and answers the worst error: one that
/// must stop the loop (held writes lost) over one worth retrying, which
/// alone would let the retry commit the other file's later batches.
async fn every_file(
    writes: impl IntoIterator<Item = futures::future::BoxFuture<'_, Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    let results = futures::future::join_all(writes).await;
    let mut errors: Vec<StoreError> = results.into_iter().filter_map(Result::err).collect();
    match errors.iter().position(|e| !e.is_transient()) {
        Some(worst) => Err(errors.swap_remove(worst)),
        None => errors.pop().map_or(Ok(()), Err),
    }
}

/// A transient error's retries: from 100 ms, doubling to 5 s, for
/// `retry_for` in all.
fn retry_backoff(retry_for: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(retry_for))
        .without_max_times()
}

async fn connect(config: &StoreConfig, url: &str, connections: u32) -> Result<AnyPool, StoreError> {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|source| StoreError::Open {
            url: redacted_url(&config.url),
            source,
        })
}

/// A pool on one SQLite file. Readers share it: a file's writer is a
/// connection of its own, and in WAL mode readers never wait for it, nor
/// it for them.
async fn connect_sqlite(config: &StoreConfig, url: &str) -> Result<AnyPool, StoreError> {
    let pool = connect(config, url, config.max_connections.max(2)).await?;
    sqlx::query("PRAGMA journal_mode=WAL")
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// What the `projection` table says of the tables' layout.
#[derive(Debug, Default)]
struct StoredLayout {
    /// A projection id was made: the tables have been written.
    made: bool,
    /// `SCHEMA_VERSION` when they were made (none before layout 2).
    version: Option<String>,
    /// How many files (`shards.rs`) SQLite's conversions spread over (one
    /// before layout 5). A row of its own: builds of layout 4 read
    /// `schema` as a number, and refuse a greater one.
    shards: Option<usize>,
}

impl StoredLayout {
    async fn read(pool: &AnyPool) -> Result<StoredLayout, StoreError> {
        sqlx::query(PROJECTION_TABLE).execute(pool).await?;
        let rows = sqlx::query("SELECT name, id FROM projection")
            .fetch_all(pool)
            .await?;
        let mut stored = StoredLayout::default();
        for row in &rows {
            let id = row.try_get::<String, _>("id")?;
            match row.try_get::<String, _>("name")?.as_str() {
                "status" => stored.made = true,
                "schema" => stored.version = Some(id),
                "shards" => stored.shards = id.parse().ok(),
                _ => {}
            }
        }
        Ok(stored)
    }

    fn layout(&self) -> Option<u32> {
        self.version.as_deref().and_then(|v| v.parse().ok())
    }

    /// An older build beside a newer one (a rolling update, a rollback)
    /// must not drop the newer build's tables, which it would then drop
    /// back.
    fn refuse_newer(&self) -> Result<(), StoreError> {
        match self.layout().filter(|&found| found > SCHEMA_VERSION) {
            Some(found) => Err(StoreError::NewerLayout {
                found,
                want: SCHEMA_VERSION,
            }),
            None => Ok(()),
        }
    }

    /// How many files the store was made with, if it is of this layout:
    /// `store.shards = 0` keeps that number.
    fn shards_of_this_layout(&self) -> Option<usize> {
        self.shards
            .filter(|_| self.layout() == Some(SCHEMA_VERSION))
    }

    /// Whether tables of this layout, spread over `shards` files, are
    /// these.
    fn is(&self, shards: usize) -> bool {
        self.layout() == Some(SCHEMA_VERSION) && self.shards.unwrap_or(1) == shards
    }
}

/// Removes the files an earlier, larger number of shards left past
/// `count` (with their logs): their conversions belong to other files
/// now, which are rebuilt from the topic.
fn remove_files_past(file: &Path, count: usize) -> Result<(), StoreError> {
    for index in count.. {
        let path = shards::shard_path(file, index);
        if !path.exists() {
            return Ok(());
        }
        tracing::warn!(file = %path.display(), "removing a status store file of an earlier number of shards");
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            match std::fs::remove_file(&name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Directory {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Creates the tables, first dropping those of another layout or another
/// number of files: a conversion's rows are in the file its key hashes to
/// among that number.
async fn migrate(pool: &AnyPool, backend: Backend, shards: usize) -> Result<(), StoreError> {
    let stored = StoredLayout::read(pool).await?;
    stored.refuse_newer()?;
    if (stored.made || stored.version.is_some()) && !stored.is(shards) {
        tracing::warn!(
            found = stored.version.as_deref().unwrap_or("1"),
            found_shards = stored.shards.unwrap_or(1),
            want = SCHEMA_VERSION,
            want_shards = shards,
            "the status store has another layout or number of files; rebuilding it from the topic"
        );
        for table in TABLES {
            sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(pool)
                .await?;
        }
    }
    let (clustered, conversion_id, conversion_key, only_here) = match backend {
        Backend::Sqlite => ("WITHOUT ROWID", "INTEGER", "", Some(SQLITE_KEY_INDEX)),
        Backend::Postgres => (
            "",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY",
            ",\n        UNIQUE (tenant, event_id, event_name)",
            None,
        ),
    };
    for statement in SCHEMA.iter().copied().chain(only_here) {
        let statement = statement
            .replace(CLUSTERED, clustered)
            .replace(CONVERSION_ID, conversion_id)
            .replace(CONVERSION_KEY, conversion_key);
        sqlx::query(&statement).execute(pool).await?;
    }
    for (name, id) in [
        ("schema", SCHEMA_VERSION.to_string()),
        ("shards", shards.to_string()),
    ] {
        sqlx::query(
            "INSERT INTO projection (name, id) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET id = excluded.id",
        )
        .bind(name)
        .bind(id)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// The sqlx URL for `url`, and the SQLite file it names (None for
/// PostgreSQL). An SQLite file is created, with its directory, if missing.
fn prepare_url(url: &str) -> Result<(String, Option<PathBuf>), StoreError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let file = path.split('?').next().unwrap_or(path);
        if file == ":memory:" || path.contains("mode=memory") {
            return Err(StoreError::InMemory);
        }
        // sqlx decodes percent escapes and opens an empty path as a
        // private temporary database per connection; the writer would
        // open another file, or none.
        if file.is_empty() || file.contains('%') {
            return Err(StoreError::SqlitePath(file.to_string()));
        }
        if let Some(dir) = Path::new(file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let sep = if path.contains('?') { "&" } else { "?" };
        let url = if path.contains("mode=") {
            format!("sqlite://{path}")
        } else {
            format!("sqlite://{path}{sep}mode=rwc")
        };
        return Ok((url, Some(PathBuf::from(file))));
    }
    Ok((url.to_string(), None))
}

/// Reads a text column that may be NULL.
pub(crate) fn text(row: &AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(column)
}

/// Reads an integer column that may be NULL.
pub(crate) fn int(row: &AnyRow, column: &str) -> Result<Option<i64>, sqlx::Error> {
    row.try_get::<Option<i64>, _>(column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ))
    }

    #[tokio::test]
    async fn a_loss_in_one_file_is_the_answer_though_another_file_only_retries() {
        assert!(busy().is_transient());
        let lost = || StoreError::HeldWritesLost {
            records: 7,
            source: Box::new(StoreError::WriterPanicked),
        };
        for order in [[true, false], [false, true]] {
            let writes = order.map(|first_busy| {
                let e = if first_busy { busy() } else { lost() };
                async move { Err(e) }.boxed()
            });
            let answer = every_file(writes).await;
            assert!(
                matches!(answer, Err(StoreError::HeldWritesLost { records: 7, .. })),
                "{answer:?}"
            );
        }
        let answer = every_file([async { Ok(()) }.boxed(), async { Err(busy()) }.boxed()]).await;
        assert!(answer.is_err_and(|e| e.is_transient()));
        assert!(every_file([async { Ok(()) }.boxed()]).await.is_ok());
    }
}
