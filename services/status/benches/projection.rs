//! The projection's figures: status records folded per second into the
//! embedded store (SQLite) and PostgreSQL, and list, search and detail
//! latency (p50 / p99) once it holds POSTBACK_BENCH_CONVERSIONS
//! conversions (default 200,000; the target is 1,000,000) across
//! three platforms. Prints figures, asserts nothing.
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
use postback_core::model::{
    click_id_hash, ConversionSummary, DeliveryStatus, FrontEndStatus, ServerSideStatus,
};
use postback_status::config::{StatusSections, StoreConfig};
use postback_status::queries::ListFilter;
use postback_status::store::{StatusRow, Store};
use postback_testkit::TestDatabase;

// As the service's binary (main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PLATFORMS: [&str; 3] = ["meta", "google_ads", "tiktok"];
const T0: i64 = 1_790_000_000_000;

/// The n-th conversion's event id: what the page gave the pixels, often a
/// random UUID, so ids in a batch are scattered over the key space
/// (POSTBACK_BENCH_IDS=ordered for order numbers, `ord-<n>`, which sort as
/// they come). Random but the same every run: n through SplitMix64.
fn event_id(n: usize) -> String {
    if std::env::var("POSTBACK_BENCH_IDS").as_deref() == Ok("ordered") {
        return format!("ord-{n}");
    }
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = (
        mix((n as u64).wrapping_add(0x9e37_79b9_7f4a_7c15)),
        mix(n as u64),
    );
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn record(
    n: usize,
    platform: &str,
    server_side: ServerSideStatus,
    time: i64,
    summary: bool,
) -> DeliveryStatus {
    DeliveryStatus {
        tenant: "acme".into(),
        event_id: event_id(n),
        event_name: "Purchase".into(),
        platform: platform.into(),
        stage: if summary {
            "deduplicator"
        } else {
            "dispatcher"
        }
        .into(),
        front_end: summary.then_some(if n % 3 == 0 {
            FrontEndStatus::Fired
        } else {
            FrontEndStatus::NotFired
        }),
        server_side,
        reason: (server_side == ServerSideStatus::Rejected).then(|| "invalid_parameter".into()),
        attempt: (!summary).then_some(1),
        next_attempt_at: None,
        duplicate_of: None,
        reported_by: summary.then(|| "server".into()),
        platform_request_id: (server_side == ServerSideStatus::Delivered)
            .then(|| format!("req-{n}")),
        time,
        conversion: summary.then(|| ConversionSummary {
            event_time: T0 + n as i64 * 100,
            value: Some("19.90".into()),
            currency: Some("EUR".into()),
            order_id: Some(format!("A-{n}")),
            sources: vec!["browser".into(), "server".into()],
            match_keys: vec!["email".into(), "phone".into(), "fbp".into()],
            click_id_hashes: vec![click_id_hash(&format!("gclid-{n}"))],
        }),
    }
}

/// Per conversion and platform: the deduplicator's `eligible`, then one in
/// ten retried once, then the outcome (one in twenty rejected), in time
/// order across conversions as the topic has them. A conversion every
/// 100 ms, its retry and its outcome far enough behind that no batch holds
/// both a conversion's `eligible` and its outcome, as at the pipeline's
/// peak: there a second between the two is 25,000 conversions, 150,000
/// records, 2,500 s at this bench's pace. Each batch is then the first
/// records of some conversions and the updates of others.
const RETRY_AFTER_MS: i64 = 1_250_000;
const OUTCOME_AFTER_MS: i64 = 2_500_000;

fn records(conversions: usize) -> Vec<StatusRow> {
    let mut out = Vec::with_capacity(conversions * 7);
    for n in 0..conversions {
        let t = T0 + n as i64 * 100;
        for p in PLATFORMS {
            out.push(record(n, p, ServerSideStatus::Eligible, t + 10, true));
            if n % 10 == 0 {
                out.push(record(
                    n,
                    p,
                    ServerSideStatus::Retrying,
                    t + RETRY_AFTER_MS,
                    false,
                ));
            }
            let outcome = if n % 20 == 0 {
                ServerSideStatus::Rejected
            } else {
                ServerSideStatus::Delivered
            };
            out.push(record(n, p, outcome, t + OUTCOME_AFTER_MS, false));
        }
    }
    out.sort_by_key(|s| s.time);
    out.into_iter()
        .enumerate()
        .map(|(i, status)| StatusRow {
            partition: (i % 6) as i32,
            offset: (i / 6) as i64,
            status,
        })
        .collect()
}

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
fn batches(conversions: usize) -> (usize, Vec<Arc<[StatusRow]>>) {
    let mut rows = records(conversions).into_iter().peekable();
    let (total, size) = (rows.len(), batch_size());
    let mut out = Vec::new();
    while rows.peek().is_some() {
        out.push(rows.by_ref().take(size).collect());
    }
    (total, out)
}

async fn bench(name: &str, store: Store, conversions: usize) {
    let (records, batches) = batches(conversions);
    let started = Instant::now();
    for batch in batches {
        store.apply(batch).await.expect("apply");
    }
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
        url: db.url.clone(),
        ..StoreConfig::default()
    })
    .await
    .expect("postgres");
    bench("postgres", postgres, conversions).await;
}
