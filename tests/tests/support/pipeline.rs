//! The whole pipeline in this test process: the platform sandbox, the
//! status service, the three dispatchers, the deduplicator, the enricher
//! and the collector, each on a free port, on unique topics and groups of
//! the test broker. Shared by the integration tests of this crate
//! (`mod support;`); each uses what it needs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use postback_core::config::{load_from, Validate};
use postback_core::model::{DeliveryStatus, ServerSideStatus};
use postback_core::Platform;
use postback_testkit::{free_port, repo_root, unique, Broker};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a test wants beyond the pipeline itself.
#[derive(Default)]
pub struct Options {
    /// Kafka ingest on the collector (topic `Names::ingest`).
    pub ingest: bool,
    /// A second collector whose broker is gone (503s, publish failures).
    pub broken_collector: bool,
    /// Origins allowed for the demo site key besides the configured ones.
    pub extra_origins: Vec<String>,
    /// Read keys of the status service besides the demo tenant's:
    /// (tenant, key).
    pub extra_read_keys: Vec<(String, String)>,
    /// The deduplicator's merge window (default 3 s).
    pub merge_window_ms: Option<u64>,
    /// How long a browser-only conversion waits for the server's report
    /// (default: the merge window).
    pub browser_wait_ms: Option<u64>,
}

/// A service running in this process until stopped; dropped (a failing
/// test), it is cancelled and aborted.
pub struct Running {
    pub name: String,
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub fn spawn<F, E>(name: &str, addr: SocketAddr, stop: CancellationToken, run: F) -> Running
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let label = name.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("{label} failed: {e}");
            }
        });
        Running {
            name: name.to_string(),
            addr,
            stop,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .is_err()
            {
                eprintln!("{} did not stop within 30 s", self.name);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub async fn wait_for(http: &reqwest::Client, service: &Running, path: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let ok = http
            .get(format!("http://{}{path}", service.addr))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} on {} did not answer {path} with 2xx within 90 s",
            service.name,
            service.addr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn config<C: postback_core::config::Configuration>(
    file: &str,
    env: Vec<(String, String)>,
) -> C {
    load_from(Some(&repo_root().join(file)), env).unwrap_or_else(|e| panic!("{file}: {e}"))
}

pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

pub fn example(file: &str, event_id: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).expect("example");
    let mut v: Value = serde_json::from_str(&text).expect("example json");
    v["event_id"] = json!(event_id);
    if v["order"].is_object() {
        v["order"]["order_id"] = json!(event_id);
    }
    v
}

/// Everything the test started, stopped in order by `stop`, or aborted by
/// Drop when the test fails half-way.
pub struct Pipeline {
    pub services: Vec<Running>,
    /// The status service's query API (its /metrics is on the ops port).
    pub status_api: SocketAddr,
    state: tempfile::TempDir,
}

impl Pipeline {
    /// Where the deduplicator's store (`dedup/`) and the status database
    /// (`status.db`) live.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    pub async fn stop(self) {
        self.stop_keeping_state().await;
    }

    /// Stops every service and hands over their state directory (see
    /// `state_dir`), which is deleted when the returned value drops.
    pub async fn stop_keeping_state(mut self) -> tempfile::TempDir {
        // Front to back: nothing new enters a stage that has stopped.
        while let Some(s) = self.services.pop() {
            s.stop().await;
        }
        self.state
    }
}

/// What the test names its topics and groups (unique on the shared broker).
pub struct Names {
    pub prefix: String,
    pub raw: String,
    pub enriched: String,
    pub status: String,
    pub rejected: String,
    pub dispatch_prefix: String,
    pub ingest: String,
    /// The deduplicator's changelog (it creates the topic itself).
    pub changelog: String,
}

impl Names {
    /// Topic and group names under `prefix` (unique on the shared broker).
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            raw: unique(&format!("{prefix}.raw")),
            enriched: unique(&format!("{prefix}.enriched")),
            status: unique(&format!("{prefix}.status")),
            rejected: unique(&format!("{prefix}.rejected")),
            dispatch_prefix: format!("{}.", unique(&format!("{prefix}.dispatch"))),
            ingest: unique(&format!("{prefix}.orders")),
            changelog: unique(&format!("{prefix}.changelog")),
        }
    }

    /// Creates the topics, two partitions each.
    pub async fn create(&self, broker: &Broker) {
        for t in [
            &self.raw,
            &self.enriched,
            &self.status,
            &self.rejected,
            &self.ingest,
        ] {
            broker.create_topic(t, 2).await.expect("topic");
        }
        for p in Platform::ALL {
            broker
                .create_topic(&format!("{}{}", self.dispatch_prefix, p.as_str()), 2)
                .await
                .expect("topic");
        }
    }

    pub fn topics(&self) -> postback_core::config::TopicsConfig {
        postback_core::config::TopicsConfig {
            raw: self.raw.clone(),
            enriched: self.enriched.clone(),
            status: self.status.clone(),
            rejected: self.rejected.clone(),
            dispatch_prefix: self.dispatch_prefix.clone(),
        }
    }
}

/// Starts the sandbox, the three dispatchers, the deduplicator, the
/// enricher, the collector (with ingest) and a collector whose broker is
/// gone, each on its own free port, and waits until each answers.
pub async fn start_pipeline(
    broker: &Broker,
    names: &Names,
    http: &reqwest::Client,
    options: Options,
) -> (Pipeline, BTreeMap<String, SocketAddr>) {
    let state = tempfile::tempdir().expect("tempdir");
    let topics = names.topics();
    let kafka = broker.kafka_config();
    let mut services = Vec::new();
    let mut addrs = BTreeMap::new();
    // The collectors' public APIs (their `Running` address is the ops one).
    let mut collector_apis = BTreeMap::new();

    // The platform sandbox, with the accounts of config/dispatcher.local.toml.
    let mut sandbox: postback_sandbox::config::SandboxConfig =
        config("tools/sandbox/sandbox.example.toml", vec![]);
    let (l, a) = listener().await;
    sandbox.http.listen = a;
    sandbox.validate().expect("sandbox config");
    let stop = CancellationToken::new();
    services.push(Running::spawn(
        "sandbox",
        a,
        stop.clone(),
        postback_sandbox::run(sandbox, l, stop),
    ));
    let sandbox_url = format!("http://{a}");

    // The status service, last in the pipeline: started first, stopped last.
    let mut c: postback_status::config::StatusConfig = config("config/status.local.toml", vec![]);
    c.kafka = kafka.clone();
    c.topics = topics.clone();
    c.consumer.group_id = Some(unique(&format!("{}.status-group", names.prefix)));
    c.stage.store.url = format!("sqlite://{}", state.path().join("status.db").display());
    for (tenant, key) in &options.extra_read_keys {
        c.stage.read_keys.push(postback_core::config::TenantKey {
            tenant: tenant.clone(),
            key: Some(key.clone()),
            key_env: None,
        });
    }
    let (l, a) = listener().await;
    c.ops.listen = a;
    c.validate().expect("status config");
    let (api, status_api) = listener().await;
    let stop = CancellationToken::new();
    services.push(Running::spawn(
        "status",
        a,
        stop.clone(),
        postback_status::run_with_listener(c, api, l, stop),
    ));

    for p in Platform::ALL {
        let mut c: postback_dispatcher::config::DispatcherConfig = config(
            "config/dispatcher.local.toml",
            vec![("POSTBACK_PLATFORM".into(), p.as_str().into())],
        );
        c.kafka = kafka.clone();
        c.topics = topics.clone();
        c.consumer.group_id = Some(unique(&format!(
            "{}.dispatcher-{}",
            names.prefix,
            p.as_str()
        )));
        c.stage.dispatch.linger_ms = 50;
        c.stage.meta.base_url = sandbox_url.clone();
        c.stage.google_ads.base_url = sandbox_url.clone();
        c.stage.google_ads.token_url = format!("{sandbox_url}/token");
        c.stage.tiktok.base_url = sandbox_url.clone();
        let (l, a) = listener().await;
        c.ops.listen = a;
        c.validate().expect("dispatcher config");
        let stop = CancellationToken::new();
        let name = format!("dispatcher-{}", p.as_str());
        services.push(Running::spawn(
            &name,
            a,
            stop.clone(),
            postback_dispatcher::run(c, l, stop),
        ));
    }

    let mut c: postback_deduplicator::config::DeduplicatorConfig =
        config("config/deduplicator.local.toml", vec![]);
    c.kafka = kafka.clone();
    c.topics = topics.clone();
    c.consumer.group_id = Some(unique(&format!("{}.dedup", names.prefix)));
    c.stage.dedup.merge_window_ms = options.merge_window_ms.unwrap_or(3_000);
    c.stage.dedup.browser_wait_ms = options
        .browser_wait_ms
        .unwrap_or(c.stage.dedup.merge_window_ms);
    c.stage.state.dir = state.path().join("dedup");
    c.stage.state.changelog_topic = names.changelog.clone();
    let (l, a) = listener().await;
    c.ops.listen = a;
    c.validate().expect("deduplicator config");
    let stop = CancellationToken::new();
    services.push(Running::spawn(
        "deduplicator",
        a,
        stop.clone(),
        postback_deduplicator::run(c, l, stop),
    ));

    let mut c: postback_enricher::config::EnricherConfig =
        config("config/enricher.local.toml", vec![]);
    c.kafka = kafka.clone();
    c.topics = topics.clone();
    c.consumer.group_id = Some(unique(&format!("{}.enricher", names.prefix)));
    let (l, a) = listener().await;
    c.ops.listen = a;
    c.validate().expect("enricher config");
    let stop = CancellationToken::new();
    services.push(Running::spawn(
        "enricher",
        a,
        stop.clone(),
        postback_enricher::run(c, l, stop),
    ));

    let mut c: postback_collector::config::CollectorConfig =
        config("config/collector.local.toml", vec![]);
    c.kafka = kafka.clone();
    c.topics = topics.clone();
    c.ingest.enabled = options.ingest;
    for site in &mut c.site_keys {
        site.allowed_origins
            .extend(options.extra_origins.iter().cloned());
    }
    c.ingest.group_id = unique(&format!("{}.ingest", names.prefix));
    for t in &mut c.ingest.topics {
        t.topic = names.ingest.clone();
    }
    let (l, a) = listener().await;
    let (ops_l, ops_a) = listener().await;
    c.http.listen = a;
    c.ops.listen = ops_a;
    c.validate().expect("collector config");
    let stop = CancellationToken::new();
    collector_apis.insert("collector.api".to_string(), a);
    services.push(Running::spawn(
        "collector",
        ops_a,
        stop.clone(),
        postback_collector::run_with_listeners(c, l, ops_l, stop),
    ));

    // A collector whose broker is gone: 503s and publish failures.
    if options.broken_collector {
        let mut c: postback_collector::config::CollectorConfig =
            config("config/collector.local.toml", vec![]);
        c.kafka.bootstrap_servers = format!("127.0.0.1:{}", free_port());
        c.kafka.delivery_timeout_ms = 1_000;
        c.topics = topics.clone();
        c.ingest.enabled = false;
        let (l, a) = listener().await;
        let (ops_l, ops_a) = listener().await;
        c.http.listen = a;
        c.ops.listen = ops_a;
        c.validate().expect("collector config");
        let stop = CancellationToken::new();
        collector_apis.insert("collector-without-broker.api".to_string(), a);
        services.push(Running::spawn(
            "collector-without-broker",
            ops_a,
            stop.clone(),
            postback_collector::run_with_listeners(c, l, ops_l, stop),
        ));
    }

    let pipeline = Pipeline {
        services,
        status_api,
        state,
    };
    for s in &pipeline.services {
        let path = if s.name == "collector-without-broker" {
            "/healthz"
        } else {
            "/readyz"
        };
        wait_for(http, s, path).await;
        addrs.insert(s.name.clone(), s.addr);
    }
    addrs.extend(collector_apis);
    (pipeline, addrs)
}

/// Now, in Unix seconds (event times of the tests' conversions).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Whether `event_id` has a `want` status record on each of the three
/// platforms.
pub fn on_every_platform(
    statuses: &[DeliveryStatus],
    event_id: &str,
    want: ServerSideStatus,
) -> bool {
    ["meta", "google_ads", "tiktok"].iter().all(|p| {
        statuses
            .iter()
            .any(|s| s.event_id == event_id && s.platform == *p && s.server_side == want)
    })
}

/// The status topic's records, read again every half second until `done`
/// says they are complete (at most 120 s, then the test fails with them).
pub async fn statuses_once(
    broker: &Broker,
    topic: &str,
    done: impl Fn(&[DeliveryStatus]) -> bool,
) -> Vec<DeliveryStatus> {
    use postback_core::{Codec, SchemaKind};
    let codec: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let statuses: Vec<_> = broker
            .read_to_end(topic)
            .await
            .expect("status topic")
            .iter()
            .filter_map(|r| codec.decode(r.payload.as_deref()?).ok())
            .collect();
        if done(&statuses) {
            return statuses;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status records were not complete within 120 s: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
