//! The broker a test talks to.
//!
//! A JVM per test is too heavy for two cores, so tests share one broker and
//! isolate themselves by their own topics, group ids and transactional ids
//! ([`unique`](crate::unique) names). Which broker that is:
//!
//! 1. `KAFKA_BOOTSTRAP_SERVERS`: any Kafka (a managed one too: its TLS and
//!    SASL settings come from `KAFKA_SECURITY_PROTOCOL`,
//!    `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`
//!    and `KAFKA_SSL_CA_LOCATION`).
//! 2. `TESTKIT_KAFKA_DIR`: the broker `scripts/test.sh` started for the
//!    whole run (`scripts/kafka.sh start --dir ...`), described by its
//!    `broker.env`. The script stops it when the run ends, however it ends.
//! 3. Otherwise one broker for this test process, started on first use and
//!    killed when the process exits (`cargo test` runs a whole test binary in
//!    one process; `cargo nextest` one test).
//!
//! Tests that stop, kill or restart the broker take a [`Broker::private`]
//! one of their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use postback_core::config::{KafkaConfig, SaslConfig, SaslMechanism, Secret, SecurityProtocol};
use postback_core::kafka::{create_topics, InboundRecord, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

use crate::kafka_process::{KafkaProcess, SaslSslListener};
use crate::unique;

/// How a test reaches the shared broker.
#[derive(Debug, Clone)]
struct Endpoint {
    kafka: KafkaConfig,
    sasl_ssl: Option<SaslSslListener>,
    /// Named by KAFKA_BOOTSTRAP_SERVERS: not ours to stop or fill with
    /// leftovers, so the topics a test makes there are deleted after it.
    external: bool,
}

/// A broker for one test: the shared one, or a private one.
pub struct Broker {
    endpoint: Endpoint,
    process: Option<KafkaProcess>,
    /// Private brokers' data; removed when the test ends.
    dir: Option<tempfile::TempDir>,
    created_topics: Mutex<Vec<String>>,
}

impl Broker {
    /// The broker this test run shares (see the module docs for which).
    pub async fn shared() -> anyhow::Result<Broker> {
        let endpoint = tokio::task::spawn_blocking(shared_endpoint).await??;
        Ok(Broker {
            endpoint,
            process: None,
            dir: None,
            created_topics: Mutex::new(Vec::new()),
        })
    }

    /// A broker of this test's own, to stop, kill and restart; None when
    /// the suite runs against `KAFKA_BOOTSTRAP_SERVERS`, which a test cannot
    /// restart (the caller says it skipped).
    pub async fn private() -> anyhow::Result<Option<Broker>> {
        if external_endpoint()?.is_some() {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("postback-kafka-private")
            .tempdir()?;
        let path = dir.path().to_path_buf();
        let process = on_a_lasting_thread(move || KafkaProcess::start(&path, false)).await?;
        let endpoint = Endpoint {
            kafka: KafkaConfig {
                bootstrap_servers: process.listeners.plaintext.clone(),
                ..KafkaConfig::default()
            },
            sasl_ssl: None,
            external: false,
        };
        Ok(Some(Broker {
            endpoint,
            process: Some(process),
            dir: Some(dir),
            created_topics: Mutex::new(Vec::new()),
        }))
    }

    /// Whether this test owns the broker process (and so can stop it).
    pub fn is_private(&self) -> bool {
        self.process.is_some()
    }

    /// Whether this is a broker named by KAFKA_BOOTSTRAP_SERVERS.
    pub fn is_external(&self) -> bool {
        self.endpoint.external
    }

    /// Which broker this is, for benchmark output.
    pub fn description(&self) -> String {
        if self.endpoint.external {
            format!("KAFKA_BOOTSTRAP_SERVERS={}", self.bootstrap())
        } else {
            let pom = std::fs::read_to_string(crate::repo_root().join("scripts/kafka/pom.xml"))
                .unwrap_or_default();
            let version = pom
                .split("<kafka.version>")
                .nth(1)
                .and_then(|rest| rest.split('<').next())
                .unwrap_or("?");
            let kind = if self.is_private() {
                "private"
            } else {
                "shared"
            };
            format!("Apache Kafka {version} (local single node, {kind})")
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.endpoint.kafka.bootstrap_servers
    }

    /// The services' connection settings for this broker.
    pub fn kafka_config(&self) -> KafkaConfig {
        self.endpoint.kafka.clone()
    }

    /// A librdkafka client configuration for this broker (test clients).
    pub fn client_config(&self) -> ClientConfig {
        self.endpoint.kafka.client_config()
    }

    /// The connection settings for the broker's SASL_SSL listener with
    /// `mechanism`, when the suite started the broker (it always opens one).
    /// Against KAFKA_BOOTSTRAP_SERVERS: that broker's own settings if they
    /// are SASL_SSL, else None.
    pub fn sasl_ssl(&self, mechanism: SaslMechanism) -> Option<KafkaConfig> {
        if self.endpoint.external {
            let k = &self.endpoint.kafka;
            return (k.security_protocol == SecurityProtocol::SaslSsl).then(|| k.clone());
        }
        let l = self.endpoint.sasl_ssl.as_ref()?;
        Some(KafkaConfig {
            bootstrap_servers: l.bootstrap.clone(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl: Some(SaslConfig {
                mechanism,
                username: l.username.clone(),
                password: Secret::new(l.password.clone()),
            }),
            ssl_ca_location: Some(l.ca_location.clone()),
            ..KafkaConfig::default()
        })
    }

    fn process(&mut self) -> &mut KafkaProcess {
        self.process
            .as_mut()
            .expect("only a Broker::private() can be stopped or restarted")
    }

    /// The private broker's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(KafkaProcess::pid)
    }

    /// Kills the private broker (SIGKILL, as a crash would). Its data stays
    /// for `restart`.
    pub fn kill(&mut self) {
        self.process().kill();
    }

    /// Stops the private broker cleanly (SIGTERM). Its data stays.
    pub fn stop(&mut self) {
        self.process().terminate();
    }

    /// Starts the stopped private broker again on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let mut process = self.process.take().context("not a private broker")?;
        let process = on_a_lasting_thread(move || process.restart().map(|()| process)).await?;
        self.process = Some(process);
        Ok(())
    }

    /// Creates `name` with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        self.create_topics(&[TopicSpec::new(name, partitions)])
            .await
    }

    /// Creates topics with their configs (retention, compaction, ...).
    pub async fn create_topics(&self, specs: &[TopicSpec]) -> anyhow::Result<()> {
        create_topics(&self.kafka_config(), specs)
            .await
            .with_context(|| {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                format!("create topics {names:?}")
            })?;
        if let Ok(mut created) = self.created_topics.lock() {
            created.extend(specs.iter().map(|s| s.name.clone()));
        }
        Ok(())
    }

    /// The topic's configuration as the broker reports it (every key, with
    /// its effective value).
    pub async fn topic_configs(&self, topic: &str) -> anyhow::Result<BTreeMap<String, String>> {
        postback_core::kafka::topic_configs(&self.kafka_config(), topic)
            .await
            .with_context(|| format!("describe the configs of {topic}"))
    }

    /// The partitions of `topic` and their count, waiting for it to exist.
    pub async fn partitions(&self, topic: &str) -> anyhow::Result<i32> {
        let config = self.client_config();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || partition_count(&config, &topic)).await?
    }

    /// The offsets `group` committed on `topic`, per partition (-1 where it
    /// committed none).
    pub async fn committed(&self, group: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        let n = self.partitions(topic).await?;
        let consumer: BaseConsumer = self.client_config().set("group.id", group).create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(topic, p);
        }
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(tpl, Duration::from_secs(10))
        })
        .await??;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), offset)
            })
            .collect())
    }

    /// Deletes every record of `topic`'s `partition` below its current end,
    /// as retention would: the partition's low watermark becomes its high
    /// one, which it returns.
    pub async fn delete_all_records(&self, topic: &str, partition: i32) -> anyhow::Result<i64> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::End)?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = admin.delete_records(&tpl, &options).await?;
        let element = result
            .find_partition(topic, partition)
            .with_context(|| format!("{topic}/{partition}: no answer to DeleteRecords"))?;
        element.error()?;
        match element.offset() {
            Offset::Offset(low) => Ok(low),
            other => bail!("{topic}/{partition}: DeleteRecords answered {other:?}"),
        }
    }

    /// Produces raw bytes to a topic and waits for the acknowledgement.
    pub async fn produce(&self, topic: &str, key: &[u8], payload: &[u8]) -> anyhow::Result<()> {
        let producer: FutureProducer = self.client_config().set("acks", "all").create()?;
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
        Ok(())
    }

    /// Reads `topic` from the beginning until `n` records arrived or
    /// `timeout` passed; returns what arrived. Committed records only
    /// (read_committed), as every consumer of the pipeline reads them.
    pub async fn consume(
        &self,
        topic: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<InboundRecord>> {
        self.read(topic, Until::Count(n), timeout).await
    }

    /// Everything on `topic` up to its current end (the last committed
    /// record), from the beginning.
    pub async fn read_to_end(&self, topic: &str) -> anyhow::Result<Vec<InboundRecord>> {
        self.read(topic, Until::End, Duration::from_secs(60)).await
    }

    async fn read(
        &self,
        topic: &str,
        until: Until,
        timeout: Duration,
    ) -> anyhow::Result<Vec<InboundRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let partitions = self.partitions(topic).await?;
        // Assigned by hand, not subscribed: no group to join, so a read
        // starts at once and never disturbs the pipeline's groups.
        let consumer: StreamConsumer<EndIsNotAnError> = self
            .client_config()
            .set("group.id", unique("postback-test-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(EndIsNotAnError)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut at_end = vec![false; partitions as usize];
        let mut out = Vec::new();
        loop {
            match until {
                Until::Count(n) if out.len() >= n => break,
                Until::End if at_end.iter().all(|e| *e) => break,
                _ => {}
            }
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => match until {
                    Until::End => bail!("{topic}: did not reach the end within {timeout:?}"),
                    Until::Count(_) => break,
                },
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(slot) = at_end.get_mut(p as usize) {
                        *slot = true;
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "test consumer error"),
                Ok(Ok(m)) => out.push(InboundRecord::detached(&m)),
            }
        }
        Ok(out)
    }
}

/// A reader asks to be told where each partition ends; librdkafka also
/// reports that through the client's error callback, which the default
/// context would log as an error.
struct EndIsNotAnError;

impl ClientContext for EndIsNotAnError {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(error = %error, reason, "test reader client error");
        }
    }
}

impl ConsumerContext for EndIsNotAnError {}

#[derive(Clone, Copy)]
enum Until {
    Count(usize),
    End,
}

fn partition_count(config: &ClientConfig, topic: &str) -> anyhow::Result<i32> {
    let client: BaseConsumer = config.create()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        if let Some(t) = metadata.topics().first() {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len() as i32);
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("topic {topic} does not exist");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.endpoint.external {
            let topics = self
                .created_topics
                .lock()
                .map(|t| t.clone())
                .unwrap_or_default();
            delete_topics(&self.endpoint.kafka, &topics);
        }
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        // Keep a private broker's directory (log, data) to debug a failure.
        if std::env::var_os("TESTKIT_KEEP_BROKER").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("broker data kept in {}", dir.keep().display());
            }
        }
    }
}

/// Best effort: a leftover topic on someone else's Kafka is untidy, not wrong.
fn delete_topics(kafka: &KafkaConfig, topics: &[String]) {
    if topics.is_empty() {
        return;
    }
    let Ok(admin) = kafka
        .client_config()
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // librdkafka's own threads drive the request; no runtime needed here.
    let _ = futures::executor::block_on(admin.delete_topics(&names, &options));
}

/// The Kafka named by KAFKA_BOOTSTRAP_SERVERS, with its security settings.
fn external_endpoint() -> anyhow::Result<Option<Endpoint>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some(servers) = var("KAFKA_BOOTSTRAP_SERVERS") else {
        return Ok(None);
    };
    let mut kafka = KafkaConfig {
        bootstrap_servers: servers,
        ..KafkaConfig::default()
    };
    if let Some(protocol) = var("KAFKA_SECURITY_PROTOCOL") {
        kafka.security_protocol =
            serde_json::from_value(serde_json::Value::String(protocol.to_ascii_lowercase()))
                .with_context(|| format!("KAFKA_SECURITY_PROTOCOL={protocol}"))?;
    }
    if let Some(mechanism) = var("KAFKA_SASL_MECHANISM") {
        kafka.sasl = Some(SaslConfig {
            mechanism: serde_json::from_value(serde_json::Value::String(
                mechanism.to_ascii_uppercase(),
            ))
            .with_context(|| format!("KAFKA_SASL_MECHANISM={mechanism}"))?,
            username: var("KAFKA_SASL_USERNAME").context("KAFKA_SASL_USERNAME")?,
            password: Secret::new(var("KAFKA_SASL_PASSWORD").context("KAFKA_SASL_PASSWORD")?),
        });
    }
    kafka.ssl_ca_location = var("KAFKA_SSL_CA_LOCATION").map(PathBuf::from);
    postback_core::config::Validate::validate(&kafka)
        .map_err(|e| anyhow::anyhow!("the KAFKA_* test settings: {e}"))?;
    Ok(Some(Endpoint {
        kafka,
        sasl_ssl: None,
        external: true,
    }))
}

fn endpoint_of_dir(dir: &Path) -> anyhow::Result<Endpoint> {
    let listeners = crate::kafka_process::Listeners::read(dir)?;
    Ok(Endpoint {
        kafka: KafkaConfig {
            bootstrap_servers: listeners.plaintext,
            ..KafkaConfig::default()
        },
        sasl_ssl: listeners.sasl_ssl,
        external: false,
    })
}

/// The process-wide broker of case 3: its process and data dir, removed at exit.
struct ProcessBroker {
    pid: u32,
    dir: PathBuf,
}

static PROCESS_BROKER: Mutex<Option<ProcessBroker>> = Mutex::new(None);

extern "C" fn stop_process_broker() {
    if let Ok(mut guard) = PROCESS_BROKER.lock() {
        if let Some(b) = guard.take() {
            unsafe {
                libc::kill(b.pid as libc::pid_t, libc::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(&b.dir);
        }
    }
}

fn shared_endpoint() -> anyhow::Result<Endpoint> {
    static SHARED: OnceLock<Result<Endpoint, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| resolve_shared().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no broker for the tests: {e}"))
}

fn resolve_shared() -> anyhow::Result<Endpoint> {
    if let Some(external) = external_endpoint()? {
        return Ok(external);
    }
    if let Some(dir) = std::env::var_os("TESTKIT_KAFKA_DIR") {
        return endpoint_of_dir(Path::new(&dir))
            .context("TESTKIT_KAFKA_DIR names no running broker (scripts/kafka.sh start)");
    }
    let dir = std::env::temp_dir().join(format!("postback-kafka-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = dir.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // The broker lives as long as the thread that started it (the parent-
    // death signal follows the thread): this one never ends, so the broker
    // goes when the process does.
    std::thread::Builder::new()
        .name("testkit-kafka".into())
        .spawn(move || {
            let result = KafkaProcess::start(&started, true);
            let outcome = result.map(|process| {
                let endpoint = endpoint_of_dir(&started);
                if let Some(pid) = process.pid() {
                    if let Ok(mut guard) = PROCESS_BROKER.lock() {
                        *guard = Some(ProcessBroker {
                            pid,
                            dir: started.clone(),
                        });
                    }
                }
                (process, endpoint)
            });
            match outcome {
                Ok((process, endpoint)) => {
                    let _ = tx.send(endpoint);
                    // Held, never dropped: dropping would kill the broker.
                    let _process = process;
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    let endpoint = rx.recv().context("the broker thread ended")??;
    unsafe {
        libc::atexit(stop_process_broker);
    }
    Ok(endpoint)
}

/// Runs `f` on a thread that outlives this call, and returns its result:
/// a broker started there dies with that thread, not with the (pooled,
/// short-lived) thread the test happens to run on. The thread stays until
/// the result it made is dropped.
async fn on_a_lasting_thread<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("testkit-private-kafka".into())
        .spawn(move || {
            let _ = tx.send(f());
            // Lives on while the process runs; a private broker is killed by
            // its owner (Drop), and at worst when the process exits.
            loop {
                std::thread::park();
            }
        })?;
    rx.await.context("the broker thread ended")?
}
