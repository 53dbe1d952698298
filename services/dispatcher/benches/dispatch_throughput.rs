//! Dispatcher throughput and bad-event isolation, against the in-process
//! platform sandbox with no quota, through a private broker.
//!
//! 1. Per platform: BENCH_EVENTS conversions (default 100000) on
//!    dispatch.<platform> (4 partitions), one dispatcher instance with its
//!    defaults; delivered events/s from the first delivery to the last,
//!    against uploading the same rows straight to the sandbox with the same
//!    adapter (1,000-event requests, 4 in flight, best of three): the
//!    ratio is what consuming, decoding, batching, pacing and writing a
//!    status record per event cost. Twice: outcomes and offsets in Kafka
//!    transactions (the default), and acknowledged writes then offset
//!    commits (`consumer.exactly_once = false`).
//! 2. Meta and TikTok: one 1,000-event batch with one bad event at a random
//!    place; the requests it takes to deliver the 999 and reject the one,
//!    using the index the platform's error names and by halving alone.
//!    Target: at most 2*log2(1000)+2 = 21.9.
//!
//! Figures only. `scripts/bench.sh`, or
//! `cargo bench --workspace --bench dispatch_throughput`.

// As in the binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use postback_core::Platform;
use postback_dispatcher::account::Accounts;
use postback_dispatcher::adapters::{Adapter, Answer};
use rand::Rng;
use serde_json::Value;
use support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sum of a metric's samples with all `labels`, from an instance.
async fn wait_for(
    d: &InProcess,
    name: &str,
    labels: &[(&str, &str)],
    n: f64,
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if d.metric(name, labels).await >= n {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delivered events/s of one dispatcher over a backlog of `events`, and
/// the requests it took.
async fn dispatch_rate(
    platform: Platform,
    events: usize,
    exactly_once: bool,
) -> anyhow::Result<(f64, f64)> {
    let rig = Rig::start(4).await;
    let now = now_ms();
    let backlog: Vec<_> = (0..events)
        .map(|i| conversion(&format!("bench-{i:07}"), now - 60_000))
        .collect();
    rig.fill(platform, &backlog).await;
    let mut config = rig.config(platform);
    config.consumer.exactly_once = exactly_once;
    let d = InProcess::start(config).await;
    let delivered = [("outcome", "delivered")];
    let first = wait_for(
        &d,
        "postback_dispatcher_events_total",
        &delivered,
        1.0,
        Duration::from_secs(60),
    )
    .await
    .ok_or_else(|| anyhow::anyhow!("{platform}: nothing delivered"))?;
    let last = wait_for(
        &d,
        "postback_dispatcher_events_total",
        &delivered,
        events as f64,
        Duration::from_secs(600),
    )
    .await
    .ok_or_else(|| anyhow::anyhow!("{platform}: not all delivered"))?;
    let secs = (last - first).as_secs_f64().max(1e-3);
    let rate = (events - 1) as f64 / secs;
    let requests = d
        .metric(
            "postback_dispatcher_requests_total",
            &[("outcome", "accepted")],
        )
        .await;
    d.stop().await;
    Ok((rate, requests))
}

/// The same kind of rows uploaded straight to the sandbox with the same
/// adapter, 4 requests in flight: events/s, best of three.
async fn direct_rate(platform: Platform, events: usize) -> anyhow::Result<f64> {
    let rig = Rig::start(1).await;
    let now = now_ms();
    let config = rig.config(platform);
    let adapter = Adapter::new(&config.stage, reqwest::Client::new());
    let accounts = Accounts::from_config(&config.stage);
    let account = accounts
        .get(TENANT)
        .ok_or_else(|| anyhow::anyhow!("no account"))?;
    let direct_events: Vec<_> = (0..events)
        .map(|i| conversion(&format!("direct-{i:07}"), now - 60_000))
        .collect();
    let rows: Vec<Value> = direct_events
        .iter()
        .map(|c| {
            adapter
                .row(account, c)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        })
        .collect::<Result<_, _>>()?;
    let group = adapter.group(&direct_events[0]);
    let limit = config.stage.dispatch.batch_limit(platform);
    // Best of three: one pass is a fraction of a second, easily disturbed.
    let mut direct: f64 = 0.0;
    for _ in 0..3 {
        let started = Instant::now();
        let failures = stream::iter(rows.chunks(limit))
            .map(|chunk| {
                let refs: Vec<&Value> = chunk.iter().collect();
                let adapter = &adapter;
                async move { adapter.send(account, group, &refs).await }
            })
            .buffer_unordered(4)
            .filter(|a| {
                futures::future::ready(!matches!(a, Answer::Accepted { .. } | Answer::Rows { .. }))
            })
            .count()
            .await;
        anyhow::ensure!(failures == 0, "{platform}: direct uploads failed");
        direct = direct.max(events as f64 / started.elapsed().as_secs_f64());
    }
    Ok(direct)
}

async fn throughput(platform: Platform, events: usize) -> anyhow::Result<()> {
    let (exactly_once, requests) = dispatch_rate(platform, events, true).await?;
    let (at_least_once, _) = dispatch_rate(platform, events, false).await?;
    let direct = direct_rate(platform, events).await?;
    println!(
        "{:<11} {events:>7} events  transactions {exactly_once:>9.0}/s  acknowledged writes {at_least_once:>9.0}/s  ({:.0} events/request)  direct upload {direct:>9.0}/s  ratios {:.2} / {:.2} of direct, {:.2} with vs without transactions",
        platform.as_str(),
        events as f64 / requests.max(1.0),
        exactly_once / direct,
        at_least_once / direct,
        exactly_once / at_least_once,
    );
    Ok(())
}

async fn isolation(platform: Platform, use_error_index: bool) -> anyhow::Result<()> {
    let rig = Rig::start(1).await;
    let now = now_ms();
    let bad = rand::rng().random_range(0..1000);
    let batch: Vec<_> = (0..1000)
        .map(|i| {
            let mut c = conversion(&format!("iso-{i:04}"), now - 60_000);
            if i == bad {
                if let Some(o) = c.order.as_mut() {
                    o.currency = Some("ZZZ".into());
                }
            }
            c
        })
        .collect();
    rig.fill(platform, &batch).await;
    let mut config = rig.config(platform);
    config.stage.dispatch.use_error_index = use_error_index;
    // One batch of 1,000: long linger, everything already on the topic.
    config.stage.dispatch.linger_ms = 5_000;
    let d = InProcess::start(config).await;
    let finals = wait_for(
        &d,
        "postback_dispatcher_events_total",
        &[("outcome", "delivered")],
        999.0,
        Duration::from_secs(120),
    )
    .await;
    anyhow::ensure!(finals.is_some(), "{platform}: the 999 were not delivered");
    wait_for(
        &d,
        "postback_dispatcher_events_total",
        &[("outcome", "rejected")],
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let requests: f64 = ["accepted", "rejected", "partial"]
        .iter()
        .map(|o| rig.sandbox.requests(platform, o) as f64)
        .sum();
    d.stop().await;
    println!(
        "{:<11} 1000-event batch, bad event at {bad:>3}: {requests:>3.0} requests ({}; target <= {:.1})",
        platform.as_str(),
        if use_error_index { "error index, then halving" } else { "halving only" },
        2.0 * 1000f64.log2() + 2.0,
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let events = env_usize("BENCH_EVENTS", 100_000);
    println!("dispatcher throughput, sandbox without quota, one instance, 4 partitions");
    for p in Platform::ALL {
        throughput(p, events).await?;
    }
    println!("isolating one bad event in a 1,000-event batch");
    for p in [Platform::Meta, Platform::Tiktok] {
        for use_index in [true, false] {
            isolation(p, use_index).await?;
        }
    }
    Ok(())
}
