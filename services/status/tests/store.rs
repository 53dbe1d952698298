//! The store against both databases, with the same cases: the embedded
//! SQLite file and PostgreSQL (the suite's own, or
//! POSTBACK_TEST_DATABASE_URL). Out-of-order and repeated records fold to
//! the state of the records in order; every filter and search finds what it
//! names and nothing else; pages follow each other without a gap or a
//! repeat; the summary counts what the states say; a tenant sees only its
//! own.

use std::collections::BTreeSet;

use postback_core::model::click_id_hash;
use postback_status::config::StoreConfig;
use postback_status::queries::{Cursor, ListFilter};
use postback_status::store::{Commit, StatusRow, Store, StoreError};
use postback_testkit::TestDatabase;

mod support;
use support::{history, T0};

/// The embedded store in one file.
async fn sqlite() -> (tempfile::TempDir, Store) {
    sqlite_in(1).await
}

/// The embedded store spread over `shards` files.
async fn sqlite_in(shards: u32) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&sqlite_config(&dir, shards)).await.unwrap();
    (dir, store)
}

fn sqlite_config(dir: &tempfile::TempDir, shards: u32) -> StoreConfig {
    StoreConfig {
        url: format!("sqlite://{}", dir.path().join("nested/status.db").display()),
        shards,
        ..StoreConfig::default()
    }
}

async fn postgres() -> (TestDatabase, Store) {
    let db = TestDatabase::create().await.unwrap();
    let store = Store::open(&StoreConfig {
        url: db.url.clone(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    (db, store)
}

/// A deterministic shuffle (xorshift), so a failure repeats.
fn shuffled(mut rows: Vec<StatusRow>, seed: u64) -> Vec<StatusRow> {
    let mut x = seed | 1;
    for i in (1..rows.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rows.swap(i, (x % (i as u64 + 1)) as usize);
    }
    rows
}

async fn everything(store: &Store, tenant: &str) -> serde_json::Value {
    let page = store
        .list(tenant, &ListFilter::default(), 1000, None)
        .await
        .unwrap();
    let mut details = Vec::new();
    for c in &page.conversions {
        details.push(
            store
                .detail(tenant, &c.event_name, &c.event_id)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let summary = store.summary(tenant, 0, i64::MAX / 2).await.unwrap();
    serde_json::json!({"list": page.conversions, "details": details, "summary": summary})
}

async fn out_of_order_and_repeated_records_fold_to_the_same_state(store: Store, reference: Store) {
    // The reference takes one record at a time, in order: every merge is
    // the database's (the upserts' guards). The store takes them shuffled,
    // in batches of 7 written twice: merges in memory and in the database.
    for row in history() {
        reference.apply(vec![row]).await.unwrap();
    }
    let rows = shuffled(history(), 42);
    for batch in rows.chunks(7) {
        store.apply(batch.to_vec()).await.unwrap();
        store.apply(batch.to_vec()).await.unwrap();
    }
    assert_eq!(store.history_len().await.unwrap(), history().len() as i64);
    for tenant in ["acme", "other"] {
        assert_eq!(
            everything(&store, tenant).await,
            everything(&reference, tenant).await,
            "{tenant}"
        );
    }
    let d = store
        .detail("acme", "Purchase", "ord-3")
        .await
        .unwrap()
        .unwrap();
    let meta = &d.conversion.platforms["meta"];
    assert_eq!(meta.server_side, "failed");
    assert_eq!(meta.front_end, "fired", "n % 3 == 0 fired");
    assert_eq!(meta.match_keys, ["email", "fbp"]);
    assert_eq!(
        d.conversion.platforms["google_ads"].server_side,
        "not_eligible"
    );
    assert_eq!(
        d.conversion.platforms["google_ads"].reason.as_deref(),
        Some("no_consent")
    );
    assert_eq!(d.conversion.value.as_deref(), Some("3.50"));
    assert_eq!(d.history.len(), 4);
    assert!(d.history.windows(2).all(|w| w[0].time <= w[1].time));
    // A duplicate report never hides the outcome; it upgrades front-end.
    let d = store
        .detail("acme", "Purchase", "ord-5")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.conversion.platforms["meta"].server_side, "delivered");
    assert_eq!(d.conversion.platforms["meta"].front_end, "fired");
    assert_eq!(
        d.conversion.platforms["meta"]
            .platform_request_id
            .as_deref(),
        Some("fbtrace-5")
    );
}

async fn filters_and_searches_find_what_they_name(store: Store) {
    store.apply(history()).await.unwrap();
    let ids = |filter: ListFilter| {
        let store = store.clone();
        async move {
            store
                .list("acme", &filter, 1000, None)
                .await
                .unwrap()
                .conversions
                .into_iter()
                .map(|c| c.event_id)
                .collect::<BTreeSet<_>>()
        }
    };
    let expect = |f: &dyn Fn(usize) -> bool| {
        (0..40)
            .filter(|n| f(*n))
            .map(|n| format!("ord-{n}"))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(ids(ListFilter::default()).await.len(), 40);
    assert_eq!(
        ids(ListFilter {
            platform: Some("meta".into()),
            server_side: Some("delivered".into()),
            ..Default::default()
        })
        .await,
        expect(&|n| n % 4 < 2)
    );
    assert_eq!(
        ids(ListFilter {
            server_side: Some("rejected".into()),
            reason: Some("invalid_parameter".into()),
            ..Default::default()
        })
        .await,
        expect(&|n| n % 4 == 2)
    );
    assert_eq!(
        ids(ListFilter {
            platform: Some("google_ads".into()),
            server_side: Some("not_eligible".into()),
            ..Default::default()
        })
        .await,
        expect(&|n| n % 2 == 1)
    );
    assert_eq!(
        ids(ListFilter {
            platform: Some("meta".into()),
            front_end: Some("fired".into()),
            ..Default::default()
        })
        .await,
        expect(&|n| n % 3 == 0 || n % 5 == 0)
    );
    assert_eq!(
        ids(ListFilter {
            platform: Some("google_ads".into()),
            front_end: Some("not_fired".into()),
            ..Default::default()
        })
        .await
        .len(),
        40
    );
    assert_eq!(
        ids(ListFilter {
            from: Some(T0 + 10_000),
            to: Some(T0 + 20_000),
            ..Default::default()
        })
        .await,
        expect(&|n| (10..20).contains(&n))
    );
    assert_eq!(
        ids(ListFilter {
            event_id: Some("ord-7".into()),
            ..Default::default()
        })
        .await,
        expect(&|n| n == 7)
    );
    assert_eq!(
        ids(ListFilter {
            order_id: Some("A-12".into()),
            ..Default::default()
        })
        .await,
        expect(&|n| n == 12)
    );
    assert_eq!(
        ids(ListFilter {
            click_id_hash: Some(click_id_hash("gclid-21")),
            ..Default::default()
        })
        .await,
        expect(&|n| n == 21)
    );
    assert_eq!(
        ids(ListFilter {
            event_name: Some("Lead".into()),
            ..Default::default()
        })
        .await
        .len(),
        0
    );
    assert_eq!(
        ids(ListFilter {
            platform: Some("tiktok".into()),
            ..Default::default()
        })
        .await
        .len(),
        0
    );
    // Another tenant's conversions are not there, by any path.
    assert_eq!(
        store
            .list("other", &ListFilter::default(), 1000, None)
            .await
            .unwrap()
            .conversions
            .len(),
        3
    );
    assert!(store
        .detail("other", "Purchase", "ord-7")
        .await
        .unwrap()
        .is_none());
    // The same event id under two tenants is two conversions, each with
    // only its own records and platforms.
    let theirs = store
        .detail("other", "Purchase", "ord-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(theirs.history.len(), 1);
    assert_eq!(
        theirs.conversion.platforms.keys().collect::<Vec<_>>(),
        ["meta"]
    );
    let ours = store
        .detail("acme", "Purchase", "ord-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ours.history.len(), 6);
    assert_eq!(ours.conversion.platforms.len(), 2);
    assert!(store
        .detail("nobody", "Purchase", "ord-1")
        .await
        .unwrap()
        .is_none());
}

async fn pages_follow_each_other_newest_first(store: Store) {
    store.apply(history()).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list("acme", &ListFilter::default(), 7, cursor.as_ref())
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.conversions.iter().map(|c| c.event_id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(pages, 6);
    let want: Vec<String> = (0..40).rev().map(|n| format!("ord-{n}")).collect();
    assert_eq!(seen, want);
}

async fn the_summary_counts_the_states(store: Store) {
    store.apply(history()).await.unwrap();
    let s = store.summary("acme", 0, i64::MAX / 2).await.unwrap();
    assert_eq!(s.conversions, 40);
    assert_eq!(s.merged, 20, "even n: browser + server");
    let meta = &s.platforms["meta"];
    assert_eq!(meta.conversions, 40);
    assert_eq!(meta.server_side["delivered"], 20);
    assert_eq!(meta.server_side["rejected"], 10);
    assert_eq!(meta.server_side["failed"], 10);
    assert_eq!(meta.rejected_by_reason["invalid_parameter"], 10);
    assert_eq!(meta.duplicates, 8);
    assert_eq!(
        meta.front_end_fired,
        (0..40).filter(|n| n % 3 == 0 || n % 5 == 0).count() as i64
    );
    // Delivered 300 + n ms after the event, n in {0, 1, 4, 5, 8, ...}.
    let mut lat: Vec<i64> = (0..40)
        .filter(|n| n % 4 < 2)
        .map(|n| 300 + n as i64)
        .collect();
    lat.sort();
    // Quantiles come from 10 ms buckets under 10 s: the exact one rounded
    // down to its bucket.
    assert_eq!(meta.delivered_latency_ms_p50, Some(lat[9] / 10 * 10));
    assert_eq!(meta.delivered_latency_ms_p95, Some(lat[18] / 10 * 10));
    let google = &s.platforms["google_ads"];
    assert_eq!(google.not_eligible_by_reason["no_consent"], 20);
    assert_eq!(google.server_side["delivered"], 20);
    assert_eq!(google.delivered_latency_ms_p50, Some(500));
    // A range holds only the conversions whose event time is in it.
    let s = store.summary("acme", T0, T0 + 10_000).await.unwrap();
    assert_eq!(s.conversions, 10);
    assert_eq!(
        store
            .summary("nobody", 0, i64::MAX / 2)
            .await
            .unwrap()
            .conversions,
        0
    );
}

/// `history()` spread over a day: conversion n an hour and 17 minutes
/// after the one before, the dispatchers' records 40 minutes after the
/// deduplicator's. Read out of order, a conversion sorts by its first
/// dispatcher record until the summary comes, often in another hour.
fn history_over_a_day() -> Vec<StatusRow> {
    history()
        .into_iter()
        .map(|mut row| {
            let n: i64 = row
                .status
                .event_id
                .trim_start_matches("ord-")
                .parse()
                .unwrap();
            let shift = n * 77 * 60_000;
            row.status.time += shift;
            if row.status.stage == "dispatcher" {
                row.status.time += 40 * 60_000;
            }
            if let Some(c) = row.status.conversion.as_mut() {
                c.event_time += shift;
            }
            row
        })
        .collect()
}

async fn the_rollups_agree_with_a_scan_over_any_range(store: Store) {
    let rows = shuffled(history_over_a_day(), 7);
    for batch in rows.chunks(5) {
        store.apply(batch.to_vec()).await.unwrap();
        store.apply(batch.to_vec()).await.unwrap();
    }
    const HOUR: i64 = 3_600_000;
    let day = T0 - T0 % HOUR;
    let ranges = [
        (0, i64::MAX / 2),
        (day, day + 24 * HOUR),
        (day + HOUR, day + 5 * HOUR),
        (T0, T0 + 50 * HOUR),
        (T0 + 123_456, T0 + 7 * HOUR + 1),
        (day + 2 * HOUR + 1, day + 2 * HOUR + 59 * 60_000),
        (T0 + 3 * HOUR, T0 + 3 * HOUR),
        (day - 5 * HOUR, day + HOUR),
    ];
    let mut seen = 0;
    for tenant in ["acme", "other", "nobody"] {
        for (from, to) in ranges {
            let fast = store.summary(tenant, from, to).await.unwrap();
            let exact = store.summary_by_scan(tenant, from, to).await.unwrap();
            assert_eq!(fast, exact, "{tenant} [{from}, {to})");
            seen += fast.conversions;
        }
    }
    assert!(seen > 40, "the ranges hold conversions: {seen}");
    let all = store.summary("acme", 0, i64::MAX / 2).await.unwrap();
    assert_eq!(all.conversions, 40);
    assert_eq!(all.platforms["meta"].duplicates, 8);
}

/// Two replicas on one PostgreSQL database, both writing every batch at
/// once (as around a rebalance): the advisory locks make them take turns
/// per conversion, so the rollups still count each conversion once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_writing_the_same_conversions_at_once_keep_the_rollups_exact() {
    let (db, a) = postgres().await;
    replicas_write_the_same_conversions_at_once(db, a).await;
}

/// The same, on a server whose transactions default to REPEATABLE READ: a
/// replica that waited for the other's lock must still see the
/// conversion the other numbered, not number it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_number_a_conversion_once_whatever_the_default_isolation() {
    let db = TestDatabase::create().await.unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    use sqlx::Connection;
    let mut admin = sqlx::postgres::PgConnection::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    let a = Store::open(&StoreConfig {
        url: db.url.clone(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    replicas_write_the_same_conversions_at_once(db, a).await;
}

async fn replicas_write_the_same_conversions_at_once(db: TestDatabase, a: Store) {
    let b = Store::open(&StoreConfig {
        url: db.url.clone(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let rows = shuffled(history_over_a_day(), 11);
    let batches: Vec<Vec<StatusRow>> = rows.chunks(9).map(<[StatusRow]>::to_vec).collect();
    let write_all = |store: Store, batches: Vec<Vec<StatusRow>>| async move {
        for batch in batches {
            store
                .write_with_retry(batch, Commit::Now, std::time::Duration::from_secs(30))
                .await
                .unwrap();
        }
    };
    let mut reversed = batches.clone();
    reversed.reverse();
    tokio::join!(write_all(a.clone(), batches), write_all(b, reversed));
    let (_r, reference) = sqlite().await;
    reference.apply(history_over_a_day()).await.unwrap();
    for tenant in ["acme", "other"] {
        let fast = a.summary(tenant, 0, i64::MAX / 2).await.unwrap();
        assert_eq!(
            fast,
            a.summary_by_scan(tenant, 0, i64::MAX / 2).await.unwrap()
        );
        assert_eq!(
            fast,
            reference.summary(tenant, 0, i64::MAX / 2).await.unwrap()
        );
    }
}

/// A batch that holds a record twice (its place on the topic is the same)
/// leaves what the batch without the repeat leaves: a repeated `duplicate`
/// report is counted once, like any record.
async fn a_record_twice_in_one_batch_counts_once(store: Store) {
    let (_r, reference) = sqlite().await;
    reference.apply(history()).await.unwrap();
    let mut rows = history();
    let repeats: Vec<StatusRow> = rows
        .iter()
        .filter(|r| r.status.server_side == postback_core::model::ServerSideStatus::Duplicate)
        .cloned()
        .collect();
    assert!(!repeats.is_empty(), "the history has duplicate reports");
    rows.extend(repeats);
    store.apply(rows).await.unwrap();
    for tenant in ["acme", "other"] {
        assert_eq!(
            everything(&store, tenant).await,
            everything(&reference, tenant).await,
            "{tenant}"
        );
    }
}

/// The embedded store's writer is a connection of its own: an in-memory
/// database, or a path sqlx would read otherwise than the writer (empty:
/// a private temporary database; percent escapes: decoded), would be a
/// different database for it and for the readers, so it is refused,
/// saying why, instead of answering nothing.
#[tokio::test]
async fn a_sqlite_url_the_writer_cannot_share_is_refused_with_the_reason() {
    for (url, says) in [
        ("sqlite::memory:", "in-memory"),
        ("sqlite://:memory:", "in-memory"),
        ("sqlite://x.db?mode=memory", "in-memory"),
        ("sqlite:", "path"),
        ("sqlite://a%20b.db", "percent"),
    ] {
        let err = Store::open(&StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{url} opened"));
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
}

/// The embedded store's log is copied into the database file beside the
/// writer (its own checkpoints wait for a far larger log): the file grows
/// soon after a write, long before the writer's threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_log_is_checkpointed_beside_the_writer() {
    let (dir, store) = sqlite().await;
    let file = dir.path().join("nested/status.db");
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let empty = size();
    store.apply(history_over_a_day()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while size() <= empty {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was checkpointed into the file ({empty} bytes)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let wal = std::fs::metadata(dir.path().join("nested/status.db-wal")).unwrap();
    assert!(wal.len() > 0, "the store writes through its log");
}

/// Event ids and order ids are found by their hashes' index: a stored
/// conversion whose hashes are another's (here made by hand, as 64 bits
/// rarely collide; numbered first, so the index meets it first) is never
/// taken for it, by a search, the detail, or the
/// writer folding new records in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversions_of_one_hash_stay_apart() {
    let (dir, store) = sqlite().await;
    store.apply(history()).await.unwrap();
    let before = store
        .detail("acme", "Purchase", "ord-1")
        .await
        .unwrap()
        .unwrap();
    let db = rusqlite::Connection::open(dir.path().join("nested/status.db")).unwrap();
    db.execute_batch(
        "INSERT INTO conversions (id, tenant, event_name, event_id, key_hash, sort_time,
           first_seen, order_id, order_hash, sources, summary_key)
         SELECT -id, tenant, event_name, 'impostor', key_hash, sort_time, first_seen,
           'B-1', order_hash, sources, summary_key FROM conversions
         WHERE tenant = 'acme' AND event_id = 'ord-1'",
    )
    .unwrap();
    let found = |filter: ListFilter| {
        let store = store.clone();
        async move {
            let page = store.list("acme", &filter, 100, None).await.unwrap();
            page.conversions
                .into_iter()
                .map(|c| c.event_id)
                .collect::<Vec<_>>()
        }
    };
    let by_event_id = ListFilter {
        event_id: Some("ord-1".into()),
        ..Default::default()
    };
    assert_eq!(found(by_event_id).await, ["ord-1"]);
    let by_order_id = ListFilter {
        order_id: Some("A-1".into()),
        ..Default::default()
    };
    assert_eq!(found(by_order_id).await, ["ord-1"]);

    let mut later = history()
        .into_iter()
        .find(|r| r.status.event_id == "ord-1" && r.status.platform == "meta")
        .unwrap();
    later.offset += 1_000_000;
    later.status.server_side = postback_core::model::ServerSideStatus::Delivered;
    later.status.time += 100_000;
    later.status.platform_request_id = Some("fbtrace-later".into());
    store.apply(vec![later]).await.unwrap();
    let after = store
        .detail("acme", "Purchase", "ord-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.conversion.event_id, "ord-1");
    assert_eq!(after.history.len(), before.history.len() + 1);
    assert_eq!(
        after.conversion.platforms["meta"]
            .platform_request_id
            .as_deref(),
        Some("fbtrace-later")
    );
    let impostor: (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), (SELECT COUNT(*) FROM status_history h WHERE h.conversion_id = c.id)
             FROM conversions c WHERE event_id = 'impostor'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(impostor, (1, 0), "the impostor got nothing");
}

/// Writes left open (`Commit::Later`) are seen once committed; a write
/// that fails rolls back the batches the transaction held before it too,
/// says so, and the writer refuses every later write until restarted,
/// where a first batch's failure is only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_show_once_committed_and_a_failure_loses_them_all_and_says_so() {
    let (dir, store) = sqlite().await;
    rusqlite::Connection::open(dir.path().join("nested/status.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON status_history \
             WHEN NEW.platform = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
    let n = history().len() as i64;
    let later = |offset: i64| -> Vec<StatusRow> {
        let mut rows = history();
        for row in &mut rows {
            row.offset += offset;
        }
        rows
    };
    let mut refused = history()[0].clone();
    refused.offset += 9_000_000;
    refused.status.platform = "refused".into();

    store.write(history(), Commit::Later).await.unwrap();
    assert_eq!(store.history_len().await.unwrap(), 0, "not committed yet");
    store.commit().await.unwrap();
    assert_eq!(store.history_len().await.unwrap(), n);

    store.write(later(1_000_000), Commit::Later).await.unwrap();
    match store.write(vec![refused.clone()], Commit::Later).await {
        Err(StoreError::HeldWritesLost { records, .. }) => assert_eq!(records as i64, n),
        other => panic!("expected the held writes lost, got {other:?}"),
    }
    assert_eq!(store.history_len().await.unwrap(), n, "rolled back");
    // Every later write is refused: a retry must not commit the writer's
    // later batches without the lost ones.
    for refused_too in [
        store.write(later(2_000_000), Commit::Now).await,
        store.commit().await,
    ] {
        assert!(
            matches!(refused_too, Err(StoreError::WriterLost(n)) if n as i64 == history().len() as i64),
            "{refused_too:?}"
        );
    }
    drop(store);
    let store = Store::open(&sqlite_config(&dir, 1)).await.unwrap();

    let alone = store.write(vec![refused], Commit::Later).await;
    assert!(
        matches!(alone, Err(StoreError::Sqlite(_))),
        "nothing held, nothing else lost: {alone:?}"
    );
    store.apply(later(1_000_000)).await.unwrap();
    assert_eq!(store.history_len().await.unwrap(), 2 * n);
}

/// A store of another layout (here: the one before the history was keyed
/// by conversion) is dropped at open and made again under a new projection
/// id, so the service's group reads the topic from its start to fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_another_layout_is_rebuilt_under_a_new_name() {
    let (dir, store) = sqlite().await;
    store.apply(history()).await.unwrap();
    let before = store.projection_id().await.unwrap();
    drop(store);
    let file = dir.path().join("nested/status.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute("UPDATE projection SET id = '2' WHERE name = 'schema'", [])
        .unwrap();
    let store = Store::open(&StoreConfig {
        url: format!("sqlite://{}", file.display()),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(store.history_len().await.unwrap(), 0);
    assert_ne!(store.projection_id().await.unwrap(), before);
    store.apply(history()).await.unwrap();
    assert_eq!(store.history_len().await.unwrap(), history().len() as i64);
}

/// The embedded store spreads its conversions over its files, each file
/// holding some and none held twice; reopened with `shards = 0` it keeps
/// its number, and another number rebuilds it under a new name (its
/// conversions would hash to other files), removing the files past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keeps_its_number_of_files_and_another_number_rebuilds_it() {
    let (dir, store) = sqlite_in(3).await;
    store.apply(history()).await.unwrap();
    let id = store.projection_id().await.unwrap();
    let everything_before = everything(&store, "acme").await;
    drop(store);
    let file = dir.path().join("nested/status.db");
    let per_file: Vec<i64> = (0..3)
        .map(|i| {
            let path = match i {
                0 => file.clone(),
                i => dir.path().join(format!("nested/status.db.{i}")),
            };
            rusqlite::Connection::open(path)
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM conversions WHERE tenant = 'acme'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        })
        .collect();
    let conversions = everything_before["list"].as_array().unwrap().len() as i64;
    assert!(per_file.iter().all(|&n| n > 0), "{per_file:?}");
    assert_eq!(per_file.iter().sum::<i64>(), conversions, "{per_file:?}");

    let kept = Store::open(&sqlite_config(&dir, 0)).await.unwrap();
    assert_eq!(kept.projection_id().await.unwrap(), id);
    assert_eq!(everything(&kept, "acme").await, everything_before);
    drop(kept);

    let rebuilt = Store::open(&sqlite_config(&dir, 2)).await.unwrap();
    assert_ne!(rebuilt.projection_id().await.unwrap(), id);
    assert_eq!(rebuilt.history_len().await.unwrap(), 0);
    assert!(!dir.path().join("nested/status.db.2").exists());
    rebuilt.apply(history()).await.unwrap();
    assert_eq!(everything(&rebuilt, "acme").await, everything_before);
}

/// Opening a store of layout 99 (newer than any build) is refused, and
/// the error says why.
async fn refuses_layout_99(config: &StoreConfig) {
    let refused = Store::open(config)
        .await
        .err()
        .expect("a newer layout is refused");
    assert!(
        refused.to_string().contains("layout 99, newer than"),
        "{refused}"
    );
}

/// A build older than the store's layout (a rollback, an old replica in
/// a rolling update) refuses it and leaves its tables and files alone
/// (whatever number of files it would make): dropping them would have the
/// newer build drop them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_a_newer_layout_is_refused_and_kept() {
    let (dir, store) = sqlite_in(3).await;
    store.apply(history()).await.unwrap();
    drop(store);
    let file = dir.path().join("nested/status.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute("UPDATE projection SET id = '99' WHERE name = 'schema'", [])
        .unwrap();
    let config = StoreConfig {
        url: format!("sqlite://{}", file.display()),
        ..StoreConfig::default()
    };
    refuses_layout_99(&config).await;
    let kept: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM status_history", [], |r| r.get(0))
        .unwrap();
    assert!(kept > 0);
    assert!(
        dir.path().join("nested/status.db.2").exists(),
        "its other files are kept too"
    );
}

/// The rollup rows of the states conversions pass through (`eligible`,
/// `retrying`, a slot a later summary moved them from) count nothing
/// once the conversions moved on; they are deleted, not left behind.
const EMPTY_ROLLUPS: &str = "SELECT COUNT(*) FROM summary_rollups WHERE n = 0 AND duplicates = 0";
const ROLLUP_ROWS: &str = "SELECT COUNT(*) FROM summary_rollups";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_rollup_rows_are_deleted_in_sqlite() {
    let (dir, store) = sqlite().await;
    // In small batches, so conversions pass through states batch by batch.
    for part in shuffled(history(), 11).chunks(17) {
        store.apply(part.to_vec()).await.unwrap();
    }
    let file = rusqlite::Connection::open(dir.path().join("nested/status.db")).unwrap();
    let count = |sql: &str| -> i64 { file.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert!(count(ROLLUP_ROWS) > 0);
    assert_eq!(count(EMPTY_ROLLUPS), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_rollup_rows_are_deleted_in_postgres() {
    let (db, store) = postgres().await;
    for part in shuffled(history(), 11).chunks(17) {
        store.apply(part.to_vec()).await.unwrap();
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    for (sql, nothing) in [(ROLLUP_ROWS, false), (EMPTY_ROLLUPS, true)] {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        assert_eq!(n == 0, nothing, "{sql}: {n}");
    }
    pool.close().await;
}

/// PostgreSQL's tables come from the same migration as SQLite's: a
/// newer layout is refused and its tables kept, another (older) one is
/// dropped and made again under a new projection id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_of_a_newer_layout_is_kept_and_of_an_older_one_rebuilt() {
    let (db, store) = postgres().await;
    store.apply(history()).await.unwrap();
    let before = store.projection_id().await.unwrap();
    drop(store);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let set_layout = |layout: &'static str| {
        sqlx::query("UPDATE projection SET id = $1 WHERE name = 'schema'")
            .bind(layout)
            .execute(&pool)
    };
    let config = StoreConfig {
        url: db.url.clone(),
        ..StoreConfig::default()
    };

    set_layout("99").await.unwrap();
    refuses_layout_99(&config).await;
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM status_history")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, history().len() as i64);

    set_layout("2").await.unwrap();
    let rebuilt = Store::open(&config).await.unwrap();
    assert_eq!(rebuilt.history_len().await.unwrap(), 0);
    assert_ne!(rebuilt.projection_id().await.unwrap(), before);
    rebuilt.apply(history()).await.unwrap();
    assert_eq!(rebuilt.history_len().await.unwrap(), kept);
    pool.close().await;
}

/// The store reaches PostgreSQL over TLS when its URL asks (managed
/// PostgreSQL services require it), the server's certificate checked
/// against the CA `sslrootcert` names, and refused when no trusted CA
/// signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_connects_over_tls_and_checks_the_certificate() {
    let db = TestDatabase::create().await.unwrap();
    let Some(root) = db.tls_root() else {
        eprintln!(
            "not checked: the TLS of POSTBACK_TEST_DATABASE_URL's server is not this suite's"
        );
        return;
    };
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        root.display()
    );
    let store = Store::open(&StoreConfig {
        url: verified.clone(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.apply(history()).await.unwrap();
    assert_eq!(store.history_len().await.unwrap(), history().len() as i64);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&verified).await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted);
    pool.close().await;

    // The system's CAs did not sign the suite's certificate.
    let unverifiable = Store::open(&StoreConfig {
        url: format!("{}?sslmode=verify-full", db.url),
        ..StoreConfig::default()
    })
    .await
    .err()
    .expect("a certificate no trusted CA signed is refused");
    // Not some other refusal: the issuer is what is unknown (the name
    // would do, 127.0.0.1 is in the certificate).
    let message = format!("{unverifiable:#}").to_lowercase();
    assert!(message.contains("unknownissuer"), "{message}");
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_a, store) = sqlite().await;
                    super::both!(@call $name store);
                }
            )*
        }
        mod sqlite_in_three_files {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_a, store) = sqlite_in(3).await;
                    super::both!(@call $name store);
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_a, store) = postgres().await;
                    super::both!(@call $name store);
                }
            )*
        }
    };
    (@call out_of_order_and_repeated_records_fold_to_the_same_state $store:ident) => {{
        let (_b, reference) = sqlite().await;
        super::out_of_order_and_repeated_records_fold_to_the_same_state($store, reference).await
    }};
    (@call $name:ident $store:ident) => { super::$name($store).await };
}
use both;

both!(
    out_of_order_and_repeated_records_fold_to_the_same_state,
    a_record_twice_in_one_batch_counts_once,
    filters_and_searches_find_what_they_name,
    pages_follow_each_other_newest_first,
    the_summary_counts_the_states,
    the_rollups_agree_with_a_scan_over_any_range,
);
