//! Running deduplicators against a private broker: in-process (graceful
//! stops, metrics) or as a child process (kill -9).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use postback_core::config::{ConsumerConfig, TopicsConfig};
use postback_core::model::{ConversionEnriched, DeadLetter, DeliveryStatus, Source};
use postback_core::{Codec, SchemaKind};
use postback_deduplicator::config::{
    DedupConfig, DeduplicatorConfig, DeduplicatorSections, StateConfig,
};
use postback_testkit::fixtures::enriched_report;
use postback_testkit::{unique, Broker};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PLATFORMS: [&str; 3] = ["meta", "google_ads", "tiktok"];

pub struct Pipeline {
    pub broker: Broker,
    pub topics: TopicsConfig,
    pub changelog: String,
    pub group: String,
    pub input_partitions: i32,
}

impl Pipeline {
    pub async fn start(input_partitions: i32) -> anyhow::Result<Pipeline> {
        let broker = Broker::shared().await?;
        let topics = TopicsConfig {
            enriched: unique("enriched"),
            status: unique("status"),
            rejected: unique("rejected"),
            dispatch_prefix: format!("{}.", unique("dispatch")),
            ..TopicsConfig::default()
        };
        broker
            .create_topic(&topics.enriched, input_partitions)
            .await?;
        for t in [&topics.status, &topics.rejected] {
            broker.create_topic(t, 1).await?;
        }
        for p in PLATFORMS {
            broker
                .create_topic(&format!("{}{p}", topics.dispatch_prefix), 1)
                .await?;
        }
        Ok(Pipeline {
            broker,
            topics,
            // Created by the deduplicator itself, like in production.
            changelog: unique("changelog"),
            group: unique("dedup"),
            input_partitions,
        })
    }

    pub fn config(&self, state_dir: &Path, dedup: DedupConfig) -> DeduplicatorConfig {
        DeduplicatorConfig {
            kafka: self.broker.kafka_config(),
            topics: self.topics.clone(),
            log: Default::default(),
            ops: Default::default(),
            consumer: ConsumerConfig {
                group_id: Some(self.group.clone()),
                max_batch: 200,
                linger_ms: 5,
                ..ConsumerConfig::default()
            },
            platforms: Default::default(),
            stage: DeduplicatorSections {
                dedup,
                state: StateConfig {
                    dir: state_dir.to_path_buf(),
                    changelog_topic: self.changelog.clone(),
                    cache_mb: 8,
                    memtable_mb: 4,
                    restore_stall_secs: 30,
                    changelog_topic_configs: BTreeMap::new(),
                },
            },
        }
    }

    /// Produces reports, keyed like the collector keys them.
    pub async fn send(&self, reports: &[ConversionEnriched]) -> anyhow::Result<()> {
        let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
        for r in reports {
            self.broker
                .produce(&self.topics.enriched, &r.key(), &codec.encode(r)?)
                .await?;
        }
        Ok(())
    }

    /// Produces reports of distinct conversions at once (no order between
    /// them).
    pub async fn send_bulk(&self, reports: &[ConversionEnriched]) -> anyhow::Result<()> {
        let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
        let records: Vec<(Vec<u8>, Vec<u8>)> = reports
            .iter()
            .map(|r| Ok((r.key(), codec.encode(r)?)))
            .collect::<anyhow::Result<_>>()?;
        postback_testkit::bench::fill(&self.broker, &self.topics.enriched, &records).await
    }

    /// Everything on dispatch.<platform> after `n` arrived (or `timeout`),
    /// plus whatever else shows up within `settle` (to see extra emissions).
    pub async fn dispatched(
        &self,
        platform: &str,
        n: usize,
        timeout: Duration,
        settle: Duration,
    ) -> anyhow::Result<Vec<ConversionEnriched>> {
        let topic = format!("{}{platform}", self.topics.dispatch_prefix);
        let mut got = self.broker.consume(&topic, n, timeout).await?;
        if got.len() >= n && !settle.is_zero() {
            // Read again from the start, waiting for one more than expected.
            got = self.broker.consume(&topic, n + 1, settle).await?;
        }
        let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
        got.iter()
            .map(|r| Ok(codec.decode(r.payload.as_deref().unwrap_or_default())?))
            .collect()
    }

    pub async fn statuses(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<DeliveryStatus>> {
        let got = self.broker.consume(&self.topics.status, n, timeout).await?;
        let codec: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
        got.iter()
            .map(|r| Ok(codec.decode(r.payload.as_deref().unwrap_or_default())?))
            .collect()
    }
}

impl Pipeline {
    /// The dead letters on the rejected topic once `n` arrived (or `timeout`).
    pub async fn dead_letters(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let got = self
            .broker
            .consume(&self.topics.rejected, n, timeout)
            .await?;
        let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
        got.iter()
            .map(|r| Ok(codec.decode(r.payload.as_deref().unwrap_or_default())?))
            .collect()
    }
}

pub fn report(id: &str, name: &str, source: Source) -> ConversionEnriched {
    enriched_report(
        "acme",
        id,
        name,
        source,
        postback_core::model::now_millis() - 60_000,
    )
}

/// How many times each event id was dispatched.
pub fn counts(records: &[ConversionEnriched]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(format!("{}/{}", r.event_name, r.event_id))
            .or_default() += 1;
    }
    out
}

/// A deduplicator running inside the test process.
pub struct InProcess {
    pub shutdown: CancellationToken,
    pub ops: String,
    task: JoinHandle<Result<(), postback_deduplicator::DeduplicatorError>>,
}

impl InProcess {
    pub async fn start(config: DeduplicatorConfig) -> anyhow::Result<InProcess> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let ops = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(postback_deduplicator::run(
            config,
            listener,
            shutdown.clone(),
        ));
        Ok(InProcess {
            shutdown,
            ops,
            task,
        })
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        match reqwest::get(format!("{}/metrics", self.ops)).await {
            Ok(r) => Ok(r.text().await?),
            Err(e) if self.task.is_finished() => {
                anyhow::bail!("the deduplicator is not running ({e}); it stopped early")
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A metric's value (summed over its label sets), 0 when absent.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(sum_metric(&self.metrics().await?, name))
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// A deduplicator as its own process, for kill -9.
pub struct Process {
    child: Child,
    pub log: PathBuf,
    pub ops: String,
}

impl Process {
    pub fn start(config: &DeduplicatorConfig, dir: &Path, name: &str) -> anyhow::Result<Process> {
        let path = dir.join(format!("{name}.toml"));
        let port = postback_testkit::free_port();
        std::fs::write(&path, toml_of(config, port))?;
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = postback_testkit::service_command(env!("CARGO_BIN_EXE_postback-deduplicator"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()?;
        Ok(Process {
            child,
            log,
            ops: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A metric's value (summed over its label sets); None while the
    /// process does not answer yet.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.ops))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(sum_metric(&text, name))
    }

    /// SIGSTOP: frozen mid-whatever (a stop-the-world pause, a stalled
    /// node), its heartbeats too.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: back, unaware of what happened meanwhile.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {which} failed");
    }

    /// SIGKILL: no shutdown, no final commit, nothing flushed.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn toml_of(c: &DeduplicatorConfig, ops_port: u16) -> String {
    format!(
        r#"{kafka}
[topics]
enriched = "{enriched}"
status = "{status}"
rejected = "{rejected}"
dispatch_prefix = "{dispatch}"

[ops]
listen = "127.0.0.1:{ops_port}"

[consumer]
group_id = "{group}"
max_batch = {max_batch}
exactly_once = {exactly_once}

[dedup]
window_secs = {window}
merge_window_ms = {merge}
browser_wait_ms = {browser_wait}

[state]
dir = "{dir}"
changelog_topic = "{changelog}"
cache_mb = 8
memtable_mb = 4
{changelog_configs}
[log]
format = "json"
level = "info"
"#,
        kafka = postback_testkit::kafka_toml(&c.kafka),
        enriched = c.topics.enriched,
        status = c.topics.status,
        rejected = c.topics.rejected,
        dispatch = c.topics.dispatch_prefix,
        group = c
            .consumer
            .group_id
            .as_deref()
            .unwrap_or("postback-deduplicator"),
        max_batch = c.consumer.max_batch,
        exactly_once = c.consumer.exactly_once,
        window = c.stage.dedup.window_secs,
        merge = c.stage.dedup.merge_window_ms,
        browser_wait = c.stage.dedup.browser_wait_ms,
        dir = c.stage.state.dir.display(),
        changelog = c.stage.state.changelog_topic,
        changelog_configs = changelog_configs_toml(&c.stage.state.changelog_topic_configs),
    )
}

fn changelog_configs_toml(configs: &BTreeMap<String, String>) -> String {
    let mut out = String::from("[state.changelog_topic_configs]\n");
    for (k, v) in configs {
        out.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    out
}
