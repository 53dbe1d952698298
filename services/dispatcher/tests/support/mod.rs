//! A private broker, an in-process platform sandbox, and dispatchers
//! in-process (graceful stops, metrics) or as child processes (kill -9).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use postback_core::config::{ConsumerConfig, TopicsConfig};
use postback_core::model::{
    ClickIds, ConversionEnriched, DeadLetter, DeliveryStatus, Page, PlatformIdentifiers,
    ServerSideStatus, Source,
};
use postback_core::{Codec, Platform, SchemaKind};
use postback_dispatcher::config::{
    DispatchConfig, DispatcherConfig, GoogleAdsAccount, MetaAccount, TiktokAccount,
};
use postback_sandbox::config::{
    GoogleCustomer, MetaPixel, OAuthClient, SandboxConfig, TiktokPixel,
};
use postback_sandbox::faults::FaultSpec;
use postback_sandbox::hostile::{HostileAnswer, Redirected};
use postback_sandbox::store::Filter;
use postback_sandbox::{AppState, Sandbox};
use postback_testkit::fixtures::enriched_report;
use postback_testkit::{unique, Broker};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TENANT: &str = "shop";
pub const META_PIXEL: &str = "1234567890123456";
pub const META_TOKEN: &str = "EAAtestMetaToken";
pub const CUSTOMER: &str = "1234567890";
pub const PURCHASE_ACTION: &str = "111111111";
pub const LEAD_ACTION: &str = "222222222";
pub const DEV_TOKEN: &str = "dev-token";
pub const CLIENT_ID: &str = "client.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "client-secret";
pub const REFRESH_TOKEN: &str = "1//refresh";
pub const TIKTOK_PIXEL: &str = "CTESTPIXEL01";
pub const TIKTOK_TOKEN: &str = "tiktok-test-token";

pub fn sandbox_config() -> SandboxConfig {
    let mut c = SandboxConfig::default();
    c.meta.pixels = vec![MetaPixel {
        pixel_id: META_PIXEL.into(),
        access_tokens: vec![META_TOKEN.into()],
    }];
    c.google_ads.developer_tokens = vec![DEV_TOKEN.into()];
    c.google_ads.oauth_clients = vec![OAuthClient {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        refresh_tokens: vec![REFRESH_TOKEN.into()],
    }];
    c.google_ads.customers = vec![GoogleCustomer {
        customer_id: CUSTOMER.into(),
        conversion_actions: vec![PURCHASE_ACTION.into(), LEAD_ACTION.into()],
        customer_data_terms_accepted: true,
    }];
    c.tiktok.pixels = vec![TiktokPixel {
        pixel_code: TIKTOK_PIXEL.into(),
        access_tokens: vec![TIKTOK_TOKEN.into()],
    }];
    c
}

/// An in-process sandbox on a free port.
pub struct SandboxHandle {
    pub base: String,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
}

impl SandboxHandle {
    pub async fn start(config: SandboxConfig) -> SandboxHandle {
        let sandbox = Sandbox::new(&config);
        let state = sandbox.state();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = sandbox.serve(listener, token).await;
        });
        SandboxHandle {
            base,
            state,
            shutdown,
        }
    }

    /// Accepted events of `platform` (deduplicated resends are not in it).
    pub fn accepted(&self, platform: Platform) -> Vec<postback_sandbox::store::AcceptedEvent> {
        let filter = Filter {
            platform: Some(platform),
            limit: Some(1_000_000),
            ..Default::default()
        };
        self.state.store.accepted(&filter).items
    }

    /// The event ids of `platform` that arrived again after their first
    /// acceptance (one per resend).
    pub fn resent_ids(&self, platform: Platform) -> Vec<String> {
        let filter = Filter {
            platform: Some(platform),
            limit: Some(1_000_000),
            ..Default::default()
        };
        let duplicates = self.state.store.duplicates(&filter).items;
        duplicates.into_iter().filter_map(|d| d.event_id).collect()
    }

    pub fn duplicates(&self, platform: Platform) -> usize {
        let filter = Filter {
            platform: Some(platform),
            limit: Some(1_000_000),
            ..Default::default()
        };
        self.state.store.duplicates(&filter).total
    }

    pub fn stats(&self) -> Value {
        self.state.store.stats()
    }

    /// Requests of `platform` answered with `outcome` (accepted, throttled,
    /// outage, rejected, partial, injected_error, ...).
    pub fn requests(&self, platform: Platform, outcome: &str) -> u64 {
        self.stats()["requests"][platform.as_str()][outcome]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn set_fault(&self, platform: Platform, account: &str, spec: FaultSpec) {
        self.state
            .faults
            .set(platform, account, spec, self.state.clock.now_ms());
    }

    pub fn clear_faults(&self) {
        self.state.faults.clear_all();
        self.state.hostile.clear();
    }

    /// Answers `platform`'s uploads with a redirect or an oversized body.
    pub fn set_hostile(&self, platform: Platform, answer: HostileAnswer) {
        self.state.hostile.set(platform, Some(answer));
    }

    /// What followed a redirect to the sandbox's `/admin/redirected`.
    pub fn redirected(&self) -> Redirected {
        self.state.hostile.redirected()
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Rig {
    pub broker: Broker,
    pub topics: TopicsConfig,
    pub sandbox: SandboxHandle,
    pub partitions: i32,
}

impl Rig {
    pub async fn start(partitions: i32) -> Rig {
        Self::with_sandbox(partitions, sandbox_config()).await
    }

    pub async fn with_sandbox(partitions: i32, sandbox: SandboxConfig) -> Rig {
        let broker = Broker::shared().await.expect("broker");
        Self::on(broker, partitions, sandbox).await
    }

    /// A rig on `broker` (a private one, for tests that restart it).
    pub async fn on(broker: Broker, partitions: i32, sandbox: SandboxConfig) -> Rig {
        postback_core::telemetry::init(&Default::default());
        let topics = TopicsConfig {
            status: unique("status"),
            rejected: unique("rejected"),
            dispatch_prefix: format!("{}.", unique("dispatch")),
            ..TopicsConfig::default()
        };
        for t in [&topics.status, &topics.rejected] {
            broker.create_topic(t, 1).await.expect("topic");
        }
        for p in Platform::ALL {
            broker
                .create_topic(&topics.dispatch(p), partitions)
                .await
                .expect("topic");
        }
        Rig {
            broker,
            topics,
            sandbox: SandboxHandle::start(sandbox).await,
            partitions,
        }
    }

    /// A dispatcher of `platform` for tenant "shop", pointed at the
    /// sandbox, with short lingers and backoffs so tests run quickly.
    pub fn config(&self, platform: Platform) -> DispatcherConfig {
        let mut c = dispatcher_config(&self.sandbox.base, platform);
        c.kafka = self.broker.kafka_config();
        c.topics = self.topics.clone();
        c.consumer = ConsumerConfig {
            group_id: Some(format!("{}-{}", unique("dispatchers"), platform.as_str())),
            ..Default::default()
        };
        c
    }

    /// Produces conversions to dispatch.<platform>, keyed like the
    /// deduplicator keys them.
    pub async fn send(&self, platform: Platform, conversions: &[ConversionEnriched]) {
        self.fill(platform, conversions).await;
    }

    /// Produces many conversions at once (backlogs).
    pub async fn fill(&self, platform: Platform, conversions: &[ConversionEnriched]) {
        let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
        let records: Vec<(Vec<u8>, Vec<u8>)> = conversions
            .iter()
            .map(|c| (c.key(), codec.encode(c).expect("encode")))
            .collect();
        postback_testkit::bench::fill(&self.broker, &self.topics.dispatch(platform), &records)
            .await
            .expect("fill");
    }

    /// The conversions of `platform` whose final status was committed before
    /// `before_ms` (read committed: what a killed dispatcher had open when it
    /// died was aborted and is not there; its successor's records are younger).
    pub async fn finals_committed_before(
        &self,
        platform: Platform,
        before_ms: i64,
    ) -> BTreeSet<String> {
        let codec: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
        self.broker
            .read_to_end(&self.topics.status)
            .await
            .expect("statuses")
            .iter()
            .filter(|r| r.timestamp.is_some_and(|t| t < before_ms))
            .filter_map(|r| codec.decode(r.payload.as_deref()?).ok())
            .filter(|s| s.platform == platform.as_str() && is_final(s.server_side))
            .map(|s| s.event_id)
            .collect()
    }

    /// Every status record so far, waiting until `done` holds or `timeout`.
    pub async fn statuses_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[DeliveryStatus]) -> bool,
    ) -> Vec<DeliveryStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self.statuses().await;
            if done(&all) || tokio::time::Instant::now() >= deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn statuses(&self) -> Vec<DeliveryStatus> {
        self.decoded(&self.topics.status, SchemaKind::DeliveryStatus)
            .await
    }

    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.decoded(&self.topics.rejected, SchemaKind::DeadLetter)
            .await
    }

    /// Everything on `topic` so far, decoded.
    async fn decoded<T>(&self, topic: &str, kind: SchemaKind) -> Vec<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let codec: Codec<T> = Codec::new(kind);
        let records = self.broker.read_to_end(topic).await.expect("consume");
        records
            .iter()
            .filter_map(|r| codec.decode(r.payload.as_deref()?).ok())
            .collect()
    }
}

pub fn dispatcher_config(sandbox: &str, platform: Platform) -> DispatcherConfig {
    let mut c: DispatcherConfig = postback_core::config::load_from(
        None,
        vec![("POSTBACK_PLATFORM".into(), platform.as_str().into())],
    )
    .expect("default config");
    c.ops.listen = "127.0.0.1:0".parse().expect("addr");
    c.stage.dispatch = DispatchConfig {
        linger_ms: 50,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        throttle_pause_ms: 200,
        request_timeout_ms: 5_000,
        ..DispatchConfig::default()
    };
    c.stage.meta.base_url = sandbox.into();
    c.stage.meta.accounts = BTreeMap::from([(
        TENANT.to_string(),
        MetaAccount {
            pixel_id: META_PIXEL.into(),
            access_token: META_TOKEN.into(),
            test_event_code: None,
            quota_per_sec: None,
        },
    )]);
    c.stage.google_ads.base_url = sandbox.into();
    c.stage.google_ads.token_url = format!("{sandbox}/token");
    c.stage.google_ads.accounts = BTreeMap::from([(
        TENANT.to_string(),
        GoogleAdsAccount {
            customer_id: CUSTOMER.into(),
            login_customer_id: None,
            developer_token: DEV_TOKEN.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            refresh_token: REFRESH_TOKEN.into(),
            conversion_actions: BTreeMap::from([
                ("Purchase".to_string(), PURCHASE_ACTION.to_string()),
                ("Lead".to_string(), LEAD_ACTION.to_string()),
            ]),
            quota_per_sec: None,
        },
    )]);
    c.stage.tiktok.base_url = sandbox.into();
    c.stage.tiktok.accounts = BTreeMap::from([(
        TENANT.to_string(),
        TiktokAccount {
            pixel_code: TIKTOK_PIXEL.into(),
            access_token: TIKTOK_TOKEN.into(),
            test_event_code: None,
            quota_per_sec: None,
        },
    )]);
    c
}

/// A purchase of tenant "shop" that every platform takes: a web visit with
/// its click ids and the customer's hashed email and phone.
pub fn conversion(event_id: &str, event_time_ms: i64) -> ConversionEnriched {
    let mut c = enriched_report(TENANT, event_id, "Purchase", Source::Server, event_time_ms);
    c.page = Some(Page {
        url: Some("https://shop.example/checkout/thank-you".into()),
        referrer: None,
    });
    c.click_ids = Some(ClickIds {
        // Google dedups on click + action + time: one click per conversion.
        gclid: Some(format!("Cj0KCQiA-{event_id}")),
        fbc: Some("fb.1.1732270000000.IwAR-test".into()),
        fbp: Some("fb.1.1732270000000.1234567890".into()),
        ttclid: Some("E.C.P.test-ttclid".into()),
        ..Default::default()
    });
    c.identifiers = Platform::ALL
        .into_iter()
        .map(|p| PlatformIdentifiers {
            platform: p.as_str().into(),
            email: Some(vec![0x5e; 32]),
            phone: Some(vec![0x50; 32]),
            ..Default::default()
        })
        .collect();
    c
}

pub fn now_ms() -> i64 {
    postback_core::model::now_millis()
}

/// The final outcome records (delivered, rejected, expired, failed,
/// not_eligible) of `platform`, by event id.
pub fn finals(
    statuses: &[DeliveryStatus],
    platform: Platform,
) -> BTreeMap<String, Vec<DeliveryStatus>> {
    let mut out: BTreeMap<String, Vec<DeliveryStatus>> = BTreeMap::new();
    for s in statuses {
        if s.platform == platform.as_str() && is_final(s.server_side) {
            out.entry(s.event_id.clone()).or_default().push(s.clone());
        }
    }
    out
}

pub fn is_final(s: ServerSideStatus) -> bool {
    matches!(
        s,
        ServerSideStatus::Delivered
            | ServerSideStatus::Rejected
            | ServerSideStatus::Expired
            | ServerSideStatus::Failed
            | ServerSideStatus::NotEligible
    )
}

/// A dispatcher running in this process.
pub struct InProcess {
    pub shutdown: CancellationToken,
    pub ops: String,
    task: JoinHandle<()>,
}

impl InProcess {
    pub async fn start(config: DispatcherConfig) -> InProcess {
        postback_core::config::Validate::validate(&config).expect("valid dispatcher config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ops = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = postback_dispatcher::run(config, listener, token).await {
                panic!("dispatcher failed: {e}");
            }
        });
        InProcess {
            shutdown,
            ops,
            task,
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.ops))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Sum of a metric's samples whose labels contain every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' ']).next() == Some(name)
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// A dispatcher as a child process, logging JSON at info to a file.
pub struct Process {
    child: Child,
    pub log: std::path::PathBuf,
}

impl Process {
    pub fn start(config: &DispatcherConfig) -> Process {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.keep().join("dispatcher.toml");
        std::fs::write(&path, toml_of(config)).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-dispatcher"));
        for (k, _) in std::env::vars() {
            if k.starts_with("POSTBACK_") {
                cmd.env_remove(k);
            }
        }
        let log = path.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .arg("--config")
            .arg(&path)
            .env("POSTBACK_LOG__LEVEL", "info")
            .env("POSTBACK_LOG__FORMAT", "json")
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("spawn dispatcher");
        Process { child, log }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn toml_of(config: &DispatcherConfig) -> String {
    let value = serde_json::to_value(config).expect("config as json");
    let mut out = String::new();
    write_table(&mut out, "", &value);
    out
}

// A tiny TOML writer for the config's shapes (tables, strings, numbers,
// booleans, string lists); keeps serde's field names.
fn write_table(out: &mut String, path: &str, v: &Value) {
    let Value::Object(map) = v else { return };
    let mut tables = Vec::new();
    for (k, v) in map {
        match v {
            Value::Null => {}
            Value::Object(_) => tables.push((k, v)),
            other => out.push_str(&format!("{k} = {}\n", scalar(other))),
        }
    }
    for (k, v) in tables {
        let p = if path.is_empty() {
            format!("\"{k}\"")
        } else {
            format!("{path}.\"{k}\"")
        };
        out.push_str(&format!("[{p}]\n"));
        write_table(out, &p, v);
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(scalar).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// One of the pipeline's binaries as a child process (kill -9 and restart
/// with the same configuration), logging JSON to a file.
pub struct Service {
    pub name: String,
    binary: std::path::PathBuf,
    config: std::path::PathBuf,
    pub log: std::path::PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Service {
    /// Starts `binary` (a package's binary of this workspace) with
    /// `config` written to `dir/<name>.toml`.
    pub fn start(
        binary: &str,
        name: &str,
        dir: &std::path::Path,
        config: &str,
        args: &[&str],
    ) -> Service {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write config");
        let mut s = Service {
            name: name.to_string(),
            binary: workspace_binary(binary),
            config: path,
            log: dir.join(format!("{name}.log")),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.binary);
        for (k, _) in std::env::vars() {
            if k.starts_with("POSTBACK_") {
                cmd.env_remove(k);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = cmd
            .args(&self.args)
            .arg("--config")
            .arg(&self.config)
            .env("POSTBACK_LOG__LEVEL", "info")
            .env("POSTBACK_LOG__FORMAT", "json")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no commit, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, same configuration (same instance id).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub use postback_testkit::workspace_binary;

impl Process {
    /// The TOML a dispatcher child process is started with.
    pub fn config_text(config: &DispatcherConfig) -> String {
        toml_of(config)
    }
}
