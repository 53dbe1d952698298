// Shared by several test binaries; each uses part of it.
#![allow(dead_code)]

//! Starts a collector in-process against a test broker, on a free port.

use std::time::Duration;

use postback_collector::config::{ApiKey, CollectorConfig, IngestConfig, IngestTopic, SiteKey};
use postback_core::config::TopicsConfig;
use postback_testkit::{unique, Broker};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const API_KEY: &str = "sk_test_acme_0123456789";
pub const SITE_KEY: &str = "pk_test_acme";
pub const ORIGIN: &str = "https://shop.example";
/// A second site key of the same tenant whose beacons must carry signed
/// event ids (`event_signature`) made with this secret.
pub const SIGNED_SITE_KEY: &str = "pk_test_acme_signed";
pub const SIGNING_SECRET: &str = "test-signing-secret-0123456789abcdef";

pub struct Collector {
    pub base: String,
    /// Its /healthz, /readyz and /metrics.
    pub ops_base: String,
    pub topics: TopicsConfig,
    pub ingest_topic: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Collector {
    pub async fn start(broker: &Broker) -> Collector {
        Self::start_with(broker, |_| {}).await
    }

    pub async fn start_with(
        broker: &Broker,
        tweak: impl FnOnce(&mut CollectorConfig),
    ) -> Collector {
        postback_core::telemetry::init(&Default::default());
        let topics = TopicsConfig {
            raw: unique("raw"),
            rejected: unique("rejected"),
            ..TopicsConfig::default()
        };
        let ingest_topic = unique("orders");
        for t in [&topics.raw, &topics.rejected, &ingest_topic] {
            broker.create_topic(t, 3).await.expect("create topic");
        }
        let mut kafka = broker.kafka_config();
        kafka.delivery_timeout_ms = 3_000;
        let mut config = CollectorConfig {
            http: Default::default(),
            kafka,
            topics: topics.clone(),
            log: Default::default(),
            ops: Default::default(),
            api_keys: vec![ApiKey {
                tenant: "acme".into(),
                key: Some(API_KEY.into()),
                key_env: None,
            }],
            site_keys: vec![
                SiteKey {
                    key: SITE_KEY.into(),
                    tenant: "acme".into(),
                    allowed_origins: vec![ORIGIN.into()],
                    event_signing_secret: None,
                    event_signing_secret_env: None,
                },
                SiteKey {
                    key: SIGNED_SITE_KEY.into(),
                    tenant: "acme".into(),
                    allowed_origins: vec![ORIGIN.into()],
                    event_signing_secret: Some(SIGNING_SECRET.into()),
                    event_signing_secret_env: None,
                },
            ],
            ingest: IngestConfig {
                enabled: true,
                group_id: unique("ingest-group"),
                topics: vec![IngestTopic {
                    topic: ingest_topic.clone(),
                    tenant: "acme".into(),
                }],
                ..IngestConfig::default()
            },
        };
        config.http.max_batch_events = 100;
        config.http.max_body_bytes = 256 * 1024;
        tweak(&mut config);
        postback_core::config::Validate::validate(&config).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let ops_base = format!("http://{}", ops.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) =
                postback_collector::run_with_listeners(config, listener, ops, token).await
            {
                panic!("collector failed: {e}");
            }
        });
        let c = Collector {
            base,
            ops_base,
            topics,
            ingest_topic,
            shutdown,
            task: Some(task),
        };
        c.wait_healthy().await;
        c
    }

    async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(r) = client
                .get(format!("{}/healthz", self.ops_base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("collector did not become healthy");
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
