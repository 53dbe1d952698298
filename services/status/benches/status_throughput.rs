//! The status service as it runs: its release binary folds a
//! conversions.status topic filled beforehand, through the broker, so the
//! figure includes fetching, decoding and committing offsets as well as the
//! store. A topic filled beforehand is a backlog, which is what a
//! projection behind the pipeline's peak has, and batches fill to
//! `consumer.max_batch` as they would then. Prints status records/s from
//! the first stored batch to the last (start-up and the group's join left
//! out) and the process's peak resident memory. Asserts nothing.
//!
//!   cargo bench -p postback-status --bench status_throughput
//!
//! POSTBACK_BENCH_CONVERSIONS (default 200,000; 6.3 records each),
//! POSTBACK_BENCH_BATCH (`consumer.max_batch`, a list: `10000,100000`;
//! default the service's), POSTBACK_BENCH_STORES=sqlite (or postgres),
//! POSTBACK_BENCH_SHARDS (`store.shards`; default the service's, one file
//! per core). The broker is the testkit's (`scripts/bench.sh` starts one,
//! or KAFKA_BOOTSTRAP_SERVERS).
//!
//! POSTBACK_BENCH_BINARIES (a list of paths to other builds of the
//! service; default this build's) runs each of them in turn on every
//! setting, over the same topic: this machine's speed drifts by a fifth
//! within an hour, so two builds compare only run against run. Each line
//! also gives the service's CPU-seconds (`/proc/<pid>/stat`), steadier
//! than the rate when both cores are busy, and the bytes it wrote to disk
//! (`/proc/<pid>/io`). A record counts once the loop committed its
//! offset, so a store's write left uncommitted counts at its commit.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use postback_core::model::{conversion_key, DeliveryStatus};
use postback_core::{Codec, SchemaKind};
use postback_testkit::bench::fill;
use postback_testkit::{free_ports, kafka_toml, service_command, unique, Broker, TestDatabase};

mod support;

/// The consumer loop's count of records whose offsets it committed, by
/// topic: the store holds them for good (a write left uncommitted,
/// `store.commit_every_records`, is not counted until its commit).
const COMMITTED: &str = "postback_status_consumer_records_total{";

/// The seconds the service spent in the store's writes and commits.
const WRITING: [&str; 2] = [
    "postback_status_store_write_duration_seconds_sum ",
    "postback_status_store_commit_duration_seconds_sum ",
];

/// Linux's USER_HZ, the unit of `/proc/<pid>/stat`'s CPU times.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// How long the count may stand still before the run is called stuck.
const STALL: Duration = Duration::from_secs(120);

/// The service's binary as a child process, killed when dropped, so a
/// failed run leaves nothing behind.
struct Service {
    child: Child,
    ops: String,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn start(
        binary: &Path,
        config: &str,
        dir: &Path,
        name: &str,
        ops_port: u16,
    ) -> anyhow::Result<Service> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        // Without this bench's own POSTBACK_BENCH_* variables.
        let child = service_command(binary)
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()?;
        Ok(Service {
            child,
            ops: format!("http://127.0.0.1:{ops_port}/metrics"),
            log,
        })
    }

    /// Records stored for good so far, and the seconds spent writing
    /// them, from one scrape; None while the service does not answer.
    async fn stored(&self) -> Option<(u64, f64)> {
        let text = reqwest::get(&self.ops).await.ok()?.text().await.ok()?;
        // The sum of the samples whose name and labels start so.
        let sum = |prefix: &str| -> f64 {
            let values = text.lines().filter_map(|l| {
                let rest = l.strip_prefix(prefix)?;
                rest.rsplit(' ').next()?.parse::<f64>().ok()
            });
            values.sum()
        };
        Some((sum(COMMITTED) as u64, WRITING.iter().map(|w| sum(w)).sum()))
    }

    /// Bytes the process had the kernel write to disk so far.
    fn written_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/io", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse::<f64>().ok())
            .map_or(0.0, |b| b / (1024.0 * 1024.0))
    }

    /// VmHWM: the most memory the process held at once, in MiB.
    fn peak_memory_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// User and system CPU-seconds the process has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields 14 and 15, counted after the command's closing parenthesis.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: Vec<f64> = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|t| t.parse().ok())
            .collect();
        ticks.iter().sum::<f64>() / CLOCK_TICKS_PER_SECOND
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// One run of the service over the whole topic.
struct Run<'a> {
    broker: &'a Broker,
    topic: &'a str,
    records: u64,
    dir: &'a Path,
}

impl Run<'_> {
    async fn time(
        &self,
        binary: &Path,
        label: &str,
        store: &str,
        max_batch: Option<usize>,
    ) -> anyhow::Result<()> {
        let [ops_port, http_port] = free_ports();
        let mut config = format!(
            "{kafka}\n[topics]\nstatus = \"{topic}\"\nrejected = \"{rejected}\"\n\
             [ops]\nlisten = \"127.0.0.1:{ops_port}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [log]\nlevel = \"warn\"\n{store}\n",
            kafka = kafka_toml(&self.broker.kafka_config()),
            topic = self.topic,
            rejected = unique("bench.status.rejected"),
        );
        if let Some(n) = max_batch {
            config.push_str(&format!("[consumer]\nmax_batch = {n}\n"));
        }
        let mut service = Service::start(binary, &config, self.dir, &unique("status"), ops_port)?;
        let (first, last) = self.watch(&mut service).await?;
        let cpu = service.cpu_seconds();
        let written = service.written_mib();
        let took = last.at.duration_since(first.at).as_secs_f64();
        let rate = (last.stored - first.stored) as f64 / took;
        println!(
            "{label:<34} {rate:>9.0} records/s ({:>6.0} conversions/s) over {took:.1} s after the first batch, {:.0}% of it in the store's writes; {cpu:.1} CPU-seconds in all; {written:.0} MiB written; peak memory {:.0} MiB",
            rate / 6.3,
            100.0 * (last.writing - first.writing) / took,
            service.peak_memory_mib()
        );
        Ok(())
    }

    /// Polls the stored count until it reaches the topic's records: the
    /// first and the last sample seen.
    async fn watch(&self, service: &mut Service) -> anyhow::Result<(Sample, Sample)> {
        let mut first: Option<Sample> = None;
        let mut progress = (0, Instant::now());
        loop {
            if let Some(status) = service.exited() {
                anyhow::bail!("the service exited ({status}):\n{}", service.log_tail());
            }
            let at = Instant::now();
            let (stored, writing) = service.stored().await.unwrap_or((0, 0.0));
            let sample = Sample {
                stored,
                at,
                writing,
            };
            if stored > 0 && first.is_none() {
                first = Some(sample);
            }
            if stored >= self.records {
                let first = first.unwrap_or(sample);
                anyhow::ensure!(
                    stored > first.stored,
                    "one batch held the whole topic: nothing to time"
                );
                return Ok((first, sample));
            }
            if stored > progress.0 {
                progress = (stored, at);
            } else if at.duration_since(progress.1) > STALL {
                anyhow::bail!(
                    "stuck at {stored} of {} records:\n{}",
                    self.records,
                    service.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The service's progress at one moment.
#[derive(Clone, Copy)]
struct Sample {
    stored: u64,
    at: Instant,
    /// Seconds spent in the store's writes so far.
    writing: f64,
}

/// The builds to run, each with its label's prefix: POSTBACK_BENCH_BINARIES
/// in turn (named by file), or this build alone (unnamed).
fn binaries() -> Vec<(PathBuf, String)> {
    match std::env::var("POSTBACK_BENCH_BINARIES") {
        Ok(paths) => paths
            .split(',')
            .map(|p| {
                let path = PathBuf::from(p.trim());
                let name = path.file_name().map_or_else(
                    || p.trim().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                (path, format!("{name} "))
            })
            .collect(),
        Err(_) => vec![(
            PathBuf::from(env!("CARGO_BIN_EXE_postback-status")),
            String::new(),
        )],
    }
}

fn list(var: &str) -> Vec<Option<usize>> {
    match std::env::var(var) {
        Ok(v) => v.split(',').map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![None],
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let conversions: usize = std::env::var("POSTBACK_BENCH_CONVERSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let stores =
        std::env::var("POSTBACK_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    let broker = Broker::shared().await?;
    let topic = unique("bench.status");
    broker.create_topic(&topic, 6).await?;
    let codec = Codec::<DeliveryStatus>::new(SchemaKind::DeliveryStatus);
    let records: Vec<(Vec<u8>, Vec<u8>)> = support::records(conversions)
        .into_iter()
        .map(|row| {
            let key = conversion_key(&row.status.tenant, &row.status.event_id);
            Ok((key, codec.encode(&row.status)?))
        })
        .collect::<Result<_, postback_core::CodecError>>()?;
    let started = Instant::now();
    fill(&broker, &topic, &records).await?;
    println!(
        "status service through the broker: {} records ({conversions} conversions x 3 platforms) in {topic}, filled in {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir()?;
    let run = Run {
        broker: &broker,
        topic: &topic,
        records: records.len() as u64,
        dir: dir.path(),
    };
    drop(records);
    let binaries = binaries();
    for max_batch in list("POSTBACK_BENCH_BATCH") {
        let batch = max_batch.map_or("default".to_string(), |n| n.to_string());
        for (binary, build) in &binaries {
            if stores.contains("sqlite") {
                for shards in list("POSTBACK_BENCH_SHARDS") {
                    let db = dir.path().join(format!("{}.db", unique("status")));
                    let mut store = format!("[store]\nurl = \"sqlite://{}\"\n", db.display());
                    if let Some(n) = shards {
                        store.push_str(&format!("shards = {n}\n"));
                    }
                    let files = shards.map_or("default".to_string(), |n| n.to_string());
                    let label = format!("{build}sqlite/{files}, max_batch {batch}:");
                    run.time(binary, &label, &store, max_batch).await?;
                }
            }
            if stores.contains("postgres") {
                let db = TestDatabase::create().await?;
                // Without TLS, as earlier runs' figures were.
                let store = format!("[store]\nurl = \"{}?sslmode=disable\"\n", db.url);
                let label = format!("{build}postgres, max_batch {batch}:");
                run.time(binary, &label, &store, max_batch).await?;
            }
        }
    }
    Ok(())
}
