//! Fixtures for postback's integration tests.
//!
//! `Broker::start()` gives each test a private tansu broker on a free port
//! with its own sqlite file, so tests run in parallel and leave nothing
//! behind. When `KAFKA_BOOTSTRAP_SERVERS` is set the tests use that broker
//! instead (real Kafka) and isolate themselves by unique topic names.

pub mod bench;
pub mod fixtures;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use postback_core::config::KafkaConfig;
use postback_core::kafka::{create_topics, InboundRecord, TopicSpec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// A name no other test (or earlier run against a shared broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}.{}.{}.{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

/// A broker for one test.
pub struct Broker {
    bootstrap: String,
    port: u16,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Broker {
    /// Starts a private tansu broker, or uses KAFKA_BOOTSTRAP_SERVERS when set.
    pub async fn start() -> anyhow::Result<Broker> {
        if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            if !servers.trim().is_empty() {
                return Ok(Broker {
                    bootstrap: servers,
                    port: 0,
                    dir: None,
                    child: None,
                });
            }
        }
        // A free port can be taken by another test between our check and
        // tansu's bind; tansu then exits, and we try another port.
        let mut last_error = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("postback-tansu")
                .tempdir()?;
            let port = free_port();
            let mut broker = Broker {
                bootstrap: format!("127.0.0.1:{port}"),
                port,
                dir: Some(dir),
                child: None,
            };
            match broker.spawn().await {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    /// Whether this test owns the broker process (and so can stop it).
    pub fn is_private(&self) -> bool {
        self.dir.is_some()
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            ..KafkaConfig::default()
        }
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.as_ref().context("not a private broker")?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(dir.path().join("tansu.log"))?;
        let mut command = Command::new(tansu_binary());
        // If the test process dies (a panic in a signal, a kill -9 of the
        // runner), its broker goes with it instead of lingering.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .current_dir(dir.path())
            .args([
                "broker",
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start tansu (run scripts/install-tansu.sh)")?;
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("tansu did not listen on {addr} within 30 s");
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("tansu exited at start: {status}");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Something answered on the port; make sure it is our broker and not
        // another test's that got the port first (ours would exit on bind).
        for _ in 0..6 {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    bail!(
                        "tansu exited at start (port {} taken?): {status}",
                        self.port
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills the broker (as a crash would). Its data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped broker again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    /// Creates `name` with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        create_topics(&self.kafka_config(), &[TopicSpec::new(name, partitions)])
            .await
            .with_context(|| format!("create topic {name}"))
    }

    /// Produces raw bytes to a topic and waits for the acknowledgement.
    pub async fn produce(&self, topic: &str, key: &[u8], payload: &[u8]) -> anyhow::Result<()> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("acks", "all")
            .create()?;
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
    /// `timeout` passed; returns what arrived.
    pub async fn consume(
        &self,
        topic: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<InboundRecord>> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", unique("postback-test-reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "test consumer error");
                }
                Ok(Ok(m)) => out.push(InboundRecord::detached(&m)),
            }
        }
        Ok(out)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        // Keep the broker's directory (log, sqlite file) to debug a failure.
        if std::env::var_os("POSTBACK_TEST_KEEP_BROKER").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("broker data kept in {}", dir.keep().display());
            }
        }
    }
}
