//! The dispatcher: one consumer group per ad platform, reading
//! dispatch.<platform> and uploading every conversion to the tenant's
//! account on that platform, batched, paced by a quota its instances share,
//! retried honestly, and with every attempt's outcome on conversions.status.
//!
//! - [`adapters`]: the platforms' wire formats and answers, one per file;
//! - [`delivery`]: one batch to a final outcome for each of its events
//!   (throttles, retries, isolating bad events);
//! - [`driver`]: the consumer, batching, offsets and flow control;
//! - [`pacing`] and [`account`]: quotas and per-account state;
//! - [`outcome`]: status records, dead letters, releasing offsets.

pub mod account;
pub mod adapters;
pub mod batcher;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod metrics;
pub mod offsets;
pub mod outcome;
pub mod pacing;
pub mod pending;

use std::sync::Arc;
use std::time::Duration;

use postback_core::kafka::{KafkaError, Producer};
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{Readiness, StageOps};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::account::Accounts;
use crate::adapters::Adapter;
use crate::config::DispatcherConfig;
use crate::delivery::Engine;
use crate::driver::{Driver, DriverSettings};
use crate::metrics::DispatchMetrics;
use crate::outcome::Outcomes;
use crate::pending::Ownership;

pub const SERVICE: &str = "dispatcher";

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    Driver(#[from] driver::DriverError),
    #[error("ops server failed: {0}")]
    Ops(#[source] std::io::Error),
}

/// Runs the dispatcher of `config.platform` until `shutdown`, serving
/// /healthz, /readyz and /metrics on `ops_listener`.
pub async fn run(
    config: DispatcherConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DispatcherError> {
    let platform = config.platform();
    let service_metrics = ServiceMetrics::new(SERVICE);
    let metrics = DispatchMetrics::new(&service_metrics, platform);
    let readiness = Readiness::new();
    let client_id = format!("postback-dispatcher-{}", platform.as_str());
    let producer = Producer::new(&config.kafka, &client_id).map_err(DispatcherError::Producer)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.dispatch.request_timeout_ms))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("postback-dispatcher/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(DispatcherError::Http)?;
    let accounts = Arc::new(Accounts::from_config(&config));
    if accounts.is_empty() {
        tracing::warn!(
            platform = platform.as_str(),
            "no account configured: every conversion will be not_eligible (platform_not_configured)"
        );
    }
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Arc::new(Engine {
        adapter: Adapter::new(&config, http),
        outcomes: Outcomes::new(
            producer.clone(),
            platform,
            config.topics.status.clone(),
            config.topics.rejected.clone(),
            done_tx,
            metrics.clone(),
            shutdown.clone(),
        ),
        ownership: Arc::new(Ownership::default()),
        settings: config.dispatch.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    let driver = Driver::new(
        &config.kafka,
        DriverSettings {
            topic: config.topics.dispatch(platform),
            group_id: config.group_id(),
            platform,
            windows: config.platforms.clone(),
            batch_limit: config.dispatch.batch_limit(platform),
            linger: config.dispatch.linger(),
            max_pending: config.dispatch.max_pending_events,
            drain: Duration::from_millis(config.dispatch.request_timeout_ms)
                + Duration::from_secs(5),
        },
        engine,
        accounts.clone(),
        done_rx,
        metrics,
    )?;
    tracing::info!(
        platform = platform.as_str(),
        accounts = accounts.len(),
        group = %config.group_id(),
        "dispatcher starting"
    );
    let stage_ops = StageOps::spawn(
        ops_listener,
        service_metrics,
        readiness,
        producer.client(),
        shutdown.clone(),
    );
    let result = driver.run(shutdown.clone()).await;
    producer.flush(Duration::from_secs(5));
    stage_ops.stop().await.map_err(DispatcherError::Ops)?;
    result.map_err(Into::into)
}
