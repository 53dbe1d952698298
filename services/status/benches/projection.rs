//! The projection's figures: status records folded per second into the
//! embedded store (SQLite) and PostgreSQL, and list, search and detail
//! latency (p50 / p99) once it holds POSTBACK_BENCH_CONVERSIONS
//! conversions (default 200,000; the target is 1,000,000) across
//! three platforms. Prints figures, asserts nothing. The embedded store
//! commits as the service's handler does by default: its transaction
//! held across batches until it holds `store.commit_every_records` or
//! `store.commit_within_ms` passed since its first write, whichever comes
//! first; PostgreSQL commits every batch (without TLS, so its figures
//! compare with earlier runs').
//!
//!   cargo bench -p postback-status --bench projection
//!
//! POSTBACK_BENCH_STORES=sqlite (or postgres) times only that store,
//! POSTBACK_BENCH_SHARDS the embedded store's numbers of files (`1,2`;
//! by default one and one per core, `shards.rs`),
//! POSTBACK_BENCH_BATCH another batch size, POSTBACK_BENCH_IDS=ordered
//! event ids that sort as they come (`event_id`).
//!
//! PostgreSQL is the testkit's (a private server, or
//! POSTBACK_TEST_DATABASE_URL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use postback_core::config::Stage;
use postback_core::model::click_id_hash;
use postback_status::config::{StatusSections, StoreConfig};
use postback_status::queries::ListFilter;
use postback_status::store::{Commit, StatusRow, Store};
use postback_testkit::TestDatabase;

mod support;

use support::{event_id, records, T0};

// As the service's binary (main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn quantiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    format!(
        "p50 {:>8.2} ms  p99 {:>8.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    )
}

async fn time<F, Fut>(times: usize, mut f: F) -> String
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(times);
    for i in 0..times {
        let started = Instant::now();
        f(i).await;
        samples.push(started.elapsed());
    }
    quantiles(samples)
}

/// Records per batch: the service's `consumer.max_batch`, full as under
/// a backlog (POSTBACK_BENCH_BATCH to try another).
fn batch_size() -> usize {
    std::env::var("POSTBACK_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(<StatusSections as Stage>::MAX_BATCH)
}

/// The embedded store's numbers of files to time: POSTBACK_BENCH_SHARDS
/// (a list, `1,4`), else one file and the default for this machine (one
/// per core), so the gain of more writers is a ratio within one run.
fn shard_counts() -> Vec<usize> {
    if let Ok(list) = std::env::var("POSTBACK_BENCH_SHARDS") {
        return list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
    }
    let mut counts = vec![1, postback_status::shards::default_count()];
    counts.dedup();
    counts
}

/// The records in batches the store takes as they are, as the service's
/// handler hands over the batch it collected.
fn batches(conversions: usize) -> (usize, Vec<Arc<Vec<StatusRow>>>) {
    let mut rows = records(conversions).into_iter().peekable();
    let (total, size) = (rows.len(), batch_size());
    let mut out = Vec::new();
    while rows.peek().is_some() {
        out.push(Arc::new(rows.by_ref().take(size).collect()));
    }
    (total, out)
}

async fn bench(name: &str, store: Store, conversions: usize) {
    let (records, batches) = batches(conversions);
    let started = Instant::now();
    // As the service's handler commits by default (`handler.rs`).
    let policy = StoreConfig::default();
    let within = Duration::from_millis(policy.commit_within_ms);
    let mut held: Option<(usize, Instant)> = None;
    for batch in batches {
        let (records, since) = held.unwrap_or((0, Instant::now()));
        let records = records + batch.len();
        match store.holds_writes() {
            true => store.write(batch, Commit::Later).await.expect("write"),
            false => store.write(batch, Commit::Now).await.expect("write"),
        }
        held = Some((records, since));
        if records >= policy.commit_every_records || since.elapsed() >= within {
            store.commit().await.expect("commit");
            held = None;
        }
    }
    store.commit().await.expect("commit");
    let took = started.elapsed().as_secs_f64();
    println!(
        "{name:<10} ingest: {records} records ({conversions} conversions x 3 platforms) in {took:.1} s = {:.0} records/s",
        records as f64 / took
    );
    let q = 200;
    let step = (conversions / q).max(1);
    // Each list query: its label, its filter for the i-th sample, and how
    // many conversions a search must find (None: a page, not checked).
    type Case = (
        &'static str,
        Box<dyn Fn(usize) -> ListFilter>,
        Option<usize>,
    );
    let cases: [Case; 4] = [
        (
            "list, first page of 50:         ",
            Box::new(|_| ListFilter::default()),
            None,
        ),
        (
            "list, meta rejected (1 in 20):  ",
            Box::new(|_| ListFilter {
                platform: Some("meta".into()),
                server_side: Some("rejected".into()),
                ..Default::default()
            }),
            None,
        ),
        (
            "search by order id:             ",
            Box::new(move |i| ListFilter {
                order_id: Some(format!("A-{}", i * step)),
                ..Default::default()
            }),
            Some(1),
        ),
        (
            "search by click id:             ",
            Box::new(move |i| ListFilter {
                click_id_hash: Some(click_id_hash(&format!("gclid-{}", i * step))),
                ..Default::default()
            }),
            Some(1),
        ),
    ];
    for (label, filter, found) in &cases {
        let figures = time(q, |i| {
            let (store, filter) = (store.clone(), filter(i));
            async move {
                let page = store.list("acme", &filter, 50, None).await.expect("list");
                if let Some(n) = found {
                    assert_eq!(page.conversions.len(), *n, "{label}");
                }
            }
        })
        .await;
        println!("{name:<10} {label}   {figures}");
    }
    let detail = time(q, |i| {
        let store = store.clone();
        async move {
            store
                .detail("acme", "Purchase", &event_id(i * step))
                .await
                .expect("detail")
                .expect("found");
        }
    })
    .await;
    println!("{name:<10} detail with history:               {detail}");
    let summary = time(5, |_| {
        let store = store.clone();
        async move {
            store
                .summary("acme", T0, T0 + 86_400_000)
                .await
                .expect("summary");
        }
    })
    .await;
    println!("{name:<10} summary over a day (5 runs):       {summary}");
}

#[tokio::main]
async fn main() {
    let conversions: usize = std::env::var("POSTBACK_BENCH_CONVERSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!(
        "status projection: {conversions} conversions x 3 platforms, batches of {} records",
        batch_size()
    );
    // POSTBACK_BENCH_STORES=sqlite (or postgres) times one of them.
    let stores =
        std::env::var("POSTBACK_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    let dir = tempfile::tempdir().expect("tempdir");
    for shards in shard_counts()
        .into_iter()
        .filter(|_| stores.contains("sqlite"))
    {
        let sqlite = Store::open(&StoreConfig {
            url: format!(
                "sqlite://{}",
                dir.path().join(format!("bench-{shards}.db")).display()
            ),
            shards: shards as u32,
            ..StoreConfig::default()
        })
        .await
        .expect("sqlite");
        bench(&format!("sqlite/{shards}"), sqlite, conversions).await;
    }
    if !stores.contains("postgres") {
        return;
    }
    let db = TestDatabase::create().await.expect("postgres");
    let postgres = Store::open(&StoreConfig {
        url: format!("{}?sslmode=disable", db.url),
        ..StoreConfig::default()
    })
    .await
    .expect("postgres");
    bench("postgres", postgres, conversions).await;
}
