//! Deduplicator throughput and memory with many live keys.
//!
//! 1. State engine, no broker: conversions flow through the deduplicator's
//!    decisions and its on-disk store (half of them reported by browser and
//!    server and merged, a few duplicates after emission, a simulated clock
//!    at BENCH_RATE reports/s so the merge window holds a realistic number
//!    of conversions) until 1M, then 10M live keys. Prints reports/s and the
//!    process's resident memory at each mark. Target: RSS < 512 MB at 10M.
//! 2. Through the broker, at each mark: BENCH_EVENTS fresh conversions
//!    consumed by the real handler (the store holding the live keys)
//!    against a pass-through of the same records (consume, produce the
//!    bytes unchanged) on the same broker; the ratio is what deduplication
//!    costs. Merge window 0 there, so every conversion is emitted within
//!    the timed run.
//!
//! `scripts/bench.sh`, or `cargo bench --workspace --bench dedup_throughput`.
//! BENCH_KEYS_MAX (default 10000000), BENCH_EVENTS (default 50000),
//! BENCH_RATE (default 20000).

use std::path::Path;
use std::time::{Duration, Instant};

use postback_core::dead_letter::DeadLetters;
use postback_core::eligibility::PlatformWindows;
use postback_core::kafka::{Delivered, OutboundRecord};
use postback_core::metrics::ServiceMetrics;
use postback_core::model::{now_millis, ConversionEnriched, Source};
use postback_core::{Codec, SchemaKind};
use postback_deduplicator::dedup::{Deduplicator, OutputTopics, Settings};
use postback_deduplicator::handler::DedupHandler;
use postback_deduplicator::metrics::DedupMetrics;
use postback_deduplicator::restore::Restorer;
use postback_deduplicator::store::{StateStore, StoreConfig};
use postback_testkit::bench::{fill, timed, PassThrough};
use postback_testkit::fixtures::enriched_report;
use postback_testkit::{unique, Broker};

// As in the deduplicator's binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 6;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (VmRSS, VmHWM) in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn settings(merge_window_ms: i64) -> Settings {
    Settings {
        window_ms: 48 * 3_600_000,
        merge_window_ms,
        browser_wait_ms: merge_window_ms,
        platforms: PlatformWindows::default(),
        max_emits_per_tick: 5_000,
    }
}

fn topics(prefix: &str) -> OutputTopics {
    OutputTopics {
        status: format!("{prefix}.status"),
        changelog: format!("{prefix}.changelog"),
        dispatch: ["meta", "google_ads", "tiktok"].map(|p| format!("{prefix}.dispatch.{p}")),
        rejected: format!("{prefix}.rejected"),
    }
}

fn open_store(dir: &Path) -> anyhow::Result<StateStore> {
    Ok(StateStore::open(&StoreConfig {
        dir: dir.to_path_buf(),
        cache_bytes: 64 << 20,
        memtable_bytes: 8 << 20,
    })?)
}

fn conversion(i: usize, source: Source, now: i64) -> ConversionEnriched {
    enriched_report("bench", &format!("c-{i}"), "Purchase", source, now - 60_000)
}

/// Drives the deduplicator without a broker; acknowledgements are
/// simulated (changelog offsets left at -1 so the store keeps no
/// checkpoint that the broker phase's fresh changelog would contradict).
struct Engine {
    dedup: Deduplicator,
    out: Vec<OutboundRecord>,
    at: Progress,
}

/// Where the simulated stream is; survives reopening the store.
#[derive(Clone, Copy)]
struct Progress {
    next_offset: [i64; PARTITIONS as usize],
    reports: usize,
    conversions: usize,
    started_ms: i64,
    rate: usize,
}

impl Engine {
    fn open(dir: &Path, at: Progress) -> anyhow::Result<Engine> {
        let mut dedup = Deduplicator::new(
            open_store(dir)?,
            settings(10_000),
            topics("engine"),
            DedupMetrics::new(&ServiceMetrics::new("deduplicator")),
        );
        for p in 0..PARTITIONS {
            dedup.adopt(p)?;
        }
        Ok(Engine {
            dedup,
            out: Vec::new(),
            at,
        })
    }

    fn now(&self) -> i64 {
        self.at.started_ms + (self.at.reports as i64 * 1000) / self.at.rate as i64
    }

    fn report(&mut self, i: usize, source: Source) -> anyhow::Result<()> {
        let partition = (i % PARTITIONS as usize) as i32;
        let now = self.now();
        let offset = &mut self.at.next_offset[partition as usize];
        *offset += 1;
        let offset = *offset;
        self.dedup.report(
            partition,
            offset,
            conversion(i, source, now),
            now,
            &mut self.out,
        )?;
        self.at.reports += 1;
        Ok(())
    }

    /// Lets the merge window of every held conversion close (simulated
    /// time moves on 11 s), so the broker run starts with none due.
    fn settle(&mut self) -> anyhow::Result<()> {
        self.at.started_ms += 11_000;
        while self.dedup.held_count() > 0 {
            self.round()?;
        }
        Ok(())
    }

    fn round(&mut self) -> anyhow::Result<()> {
        let now = self.now();
        self.dedup.tick(now, &mut self.out)?;
        let deliveries: Vec<Delivered> = self
            .out
            .iter()
            .map(|o| Delivered {
                partition: o.partition.unwrap_or(0),
                offset: -1,
            })
            .collect();
        self.dedup.acknowledged(&deliveries)?;
        self.out.clear();
        Ok(())
    }

    /// Starts conversions until `keys` exist: each reported by the server;
    /// every other one also by the browser two (simulated) seconds later;
    /// one in fifty reported again a minute later (a duplicate).
    fn fill_to(&mut self, keys: usize) -> anyhow::Result<()> {
        let merge_lag = self.at.rate * 2;
        let dup_lag = self.at.rate * 60;
        while self.at.conversions < keys {
            let i = self.at.conversions;
            self.report(i, Source::Server)?;
            if i >= merge_lag && (i - merge_lag) % 2 == 0 {
                self.report(i - merge_lag, Source::Browser)?;
            }
            if i >= dup_lag && i % 50 == 0 {
                self.report(i - dup_lag, Source::Browser)?;
            }
            self.at.conversions += 1;
            if self.at.conversions % 1000 == 0 {
                self.round()?;
            }
        }
        self.round()
    }
}

struct BrokerRun {
    dedup: f64,
    pass: f64,
    rss: f64,
}

/// Fresh conversions through the broker: the deduplicator (on the store at
/// `dir`) against a pass-through, best of two pass-throughs.
async fn through_broker(
    broker: &Broker,
    dir: &Path,
    n: usize,
    first_id: usize,
    exactly_once: bool,
) -> anyhow::Result<BrokerRun> {
    let prefix = unique("bench.dedup");
    let input = format!("{prefix}.enriched");
    let t = topics(&prefix);
    let rejected = format!("{prefix}.rejected");
    let pass_out = format!("{prefix}.pass");
    for topic in [&input, &t.changelog] {
        broker.create_topic(topic, PARTITIONS).await?;
    }
    for topic in t.dispatch.iter().chain([&t.status, &rejected, &pass_out]) {
        broker.create_topic(topic, 3).await?;
    }
    let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
    let now = now_millis();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (first_id..first_id + n)
        .map(|i| {
            let r = conversion(i, Source::Server, now);
            Ok((r.key(), codec.encode(&r)?))
        })
        .collect::<Result<_, postback_core::CodecError>>()?;
    fill(broker, &input, &records).await?;

    let pass = timed(
        broker,
        &input,
        "bench-pass",
        PassThrough {
            topic: pass_out.clone(),
        },
        n,
        exactly_once,
    )
    .await?;
    let service = ServiceMetrics::new("deduplicator");
    let metrics = DedupMetrics::new(&service);
    let handler = DedupHandler::new(
        Deduplicator::new(open_store(dir)?, settings(0), t.clone(), metrics.clone()),
        Restorer::new(
            &broker.kafka_config(),
            t.changelog.clone(),
            "bench-dedup",
            Duration::from_secs(60),
            DeadLetters::by_reference("deduplicator", rejected.clone()),
            metrics.clone(),
        )?,
        input.clone(),
        DeadLetters::by_reference("deduplicator", rejected),
        metrics.clone(),
        Duration::from_millis(100),
    );
    let dedup = timed(broker, &input, "bench-dedup", handler, n, exactly_once).await?;
    let rss = memory_mib().0;
    let pass_again = timed(
        broker,
        &input,
        "bench-pass-2",
        PassThrough { topic: pass_out },
        n,
        exactly_once,
    )
    .await?;
    Ok(BrokerRun {
        dedup,
        pass: pass.max(pass_again),
        rss,
    })
}

// One core for the stage's own work, as in the enricher's benchmark
// (fjall's background flushes and compactions use their own threads).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let keys_max = env("BENCH_KEYS_MAX", 10_000_000);
    let n = env("BENCH_EVENTS", 50_000);
    let rate = env("BENCH_RATE", 20_000).max(1);
    let marks: Vec<usize> = [1_000_000, 10_000_000]
        .into_iter()
        .map(|m| m.min(keys_max))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("postback-dedup-bench")
        .tempdir()?;
    let broker = Broker::shared().await?;
    println!(
        "deduplicator benchmark: state engine to {keys_max} live keys at a simulated {rate} reports/s \
         (10 s merge window, half merged, 2% duplicates), then {n} fresh conversions through the broker \
         ({}) at each mark",
        broker.description()
    );
    let mut engine = Engine::open(
        dir.path(),
        Progress {
            next_offset: [0; PARTITIONS as usize],
            reports: 0,
            conversions: 0,
            started_ms: now_millis() - 3_600_000,
            rate,
        },
    )?;
    let mut rows = Vec::new();
    for mark in marks {
        let (reports_before, t) = (engine.at.reports, Instant::now());
        engine.fill_to(mark)?;
        let engine_rate = (engine.at.reports - reports_before) as f64 / t.elapsed().as_secs_f64();
        let (rss, hwm) = memory_mib();
        let store = engine.dedup.store();
        let (keys, disk) = (store.approximate_keys(), store.disk_bytes());
        println!(
            "  {mark:>9} live keys: engine {engine_rate:>8.0} reports/s, RSS {rss:.0} MiB (peak {hwm:.0}), \
             store ~{keys} versions, {:.0} MiB on disk, {} held",
            disk as f64 / 1048576.0,
            engine.dedup.held_count()
        );
        // The broker run opens the same store: fjall locks its directory.
        engine.settle()?;
        let at = engine.at;
        drop(engine);
        let mut runs = Vec::new();
        for (i, exactly_once) in [true, false].into_iter().enumerate() {
            let first_id = 1_000_000_000 + mark + i * n;
            let run = through_broker(&broker, dir.path(), n, first_id, exactly_once).await?;
            println!(
                "  {mark:>9} live keys: through the broker, {}: deduplicator {:.0} events/s, \
                 pass-through {:.0} events/s, ratio {:.2}; RSS after {:.0} MiB",
                if exactly_once {
                    "exactly-once"
                } else {
                    "at-least-once"
                },
                run.dedup,
                run.pass,
                run.dedup / run.pass,
                run.rss
            );
            runs.push(run);
        }
        let run = BrokerRun {
            dedup: runs[0].dedup,
            pass: runs[0].pass,
            rss: runs[0].rss,
        };
        println!(
            "  {mark:>9} live keys: deduplicator with / without transactions {:.2}",
            runs[0].dedup / runs[1].dedup
        );
        rows.push((mark, engine_rate, rss, run));
        engine = Engine::open(dir.path(), at)?;
    }
    println!("summary");
    for (mark, engine_rate, rss, run) in rows {
        println!(
            "  {mark:>9} live keys   engine {engine_rate:>8.0} reports/s   RSS {rss:>5.0} MiB (target < 512 at 10M)   \
             broker (exactly-once) {:>6.0} vs pass-through {:>6.0} events/s   ratio {:.2}",
            run.dedup, run.pass, run.dedup / run.pass
        );
    }
    Ok(())
}
