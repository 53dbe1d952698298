//! The dispatcher: one consumer group per ad platform, reading
//! dispatch.<platform> and uploading every conversion to the tenant's
//! account on that platform, batched, paced by a quota its instances share,
//! retried honestly, and with every attempt's outcome on conversions.status.
//!
//! - [`adapters`]: the platforms' wire formats and answers, one per file;
//! - [`delivery`]: one batch to a final outcome for each of its events
//!   (throttles, retries, isolating bad events);
//! - [`driver`]: the consumer, batching, rebalances and flow control;
//! - [`retry`]: the retry topics conversions wait on;
//! - [`tracker`] and [`commit`]: which outcomes may commit, and committing
//!   them with their input offsets in one transaction;
//! - [`pacing`] and [`account`]: quotas, per-account state and budgets;
//! - [`outcome`]: status records, retry records, dead letters.

pub mod account;
pub mod adapters;
pub mod batcher;
pub mod commit;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod metrics;
pub mod outcome;
pub mod pacing;
pub mod pending;
pub mod retry;
pub mod scrub;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use postback_core::config::KafkaConfig;
use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{
    create_topics, instance_id, transactional_id, KafkaError, Producer, TopicSpec,
    TransactionalProducer,
};
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{Readiness, StageOps};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::account::Accounts;
use crate::adapters::Adapter;
use crate::commit::{Committer, Renewal, Sink};
use crate::config::DispatcherConfig;
use crate::delivery::Engine;
use crate::driver::{Driver, DriverParts, DriverSettings, Shared};
use crate::metrics::DispatchMetrics;
use crate::outcome::{Outcomes, STAGE};
use crate::pending::Ownership;
use crate::retry::Tiers;

pub const SERVICE: &str = "dispatcher";

/// How long the dispatch topic's retry topics keep records (as long as the
/// dispatch topic itself: a conversion waits at most an hour per hop).
const RETRY_RETENTION_MS: u64 = 7 * 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("cannot read the partitions of {topic}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create the retry topics of {topic}: {source}")]
    RetryTopics {
        topic: String,
        #[source]
        source: KafkaError,
    },
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
    let platform = config.stage.platform();
    let service_metrics = ServiceMetrics::new(SERVICE);
    let metrics = DispatchMetrics::new(&service_metrics, platform);
    let readiness = Readiness::new();
    let client_id = format!("postback-dispatcher-{}", platform.as_str());
    let main_topic = config.topics.dispatch(platform);
    let tiers = Tiers::new(&main_topic, &config.stage.dispatch.retry_tiers());
    ensure_retry_topics(&config.kafka, &main_topic, &tiers).await?;
    let (sink, renewal) = if config.consumer.exactly_once {
        let transactional_id = transactional_id(
            &config.group_id(),
            &instance_id(config.consumer.instance_id.as_deref()),
        );
        let producer = TransactionalProducer::new(&config.kafka, &client_id, &transactional_id)
            .await
            .map_err(DispatcherError::Producer)?;
        let renewal = Renewal {
            kafka: config.kafka.clone(),
            client_id: client_id.clone(),
            transactional_id,
        };
        (Sink::Transactional(producer), Some(renewal))
    } else {
        let producer =
            Producer::new(&config.kafka, &client_id).map_err(DispatcherError::Producer)?;
        (Sink::Acknowledged(producer), None)
    };
    let dead_letters = DeadLetters::by_reference(
        format!("{STAGE}.{}", platform.as_str()),
        config.topics.rejected.clone(),
    );
    let committer = Committer::new(sink, renewal, tiers.clone(), dead_letters, metrics.clone());
    let probe_client = committer.probe_client();
    let ownership = Arc::new(Ownership::default());
    let shared = Arc::new(Shared::new(
        committer,
        ownership.clone(),
        tiers.clone(),
        metrics.clone(),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(
            config.stage.dispatch.request_timeout_ms,
        ))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("postback-dispatcher/", env!("CARGO_PKG_VERSION")))
        // The platforms never redirect an API call; a redirect is someone
        // else's answer (a hijacked name, a portal), and following it
        // would hand them the token headers and the events.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(DispatcherError::Http)?;
    let accounts = Arc::new(Accounts::from_config(&config.stage));
    if accounts.is_empty() {
        tracing::warn!(
            platform = platform.as_str(),
            "no account configured: every conversion will be not_eligible (platform_not_configured)"
        );
    }
    let (resolved_tx, resolved_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Arc::new(Engine {
        adapter: Adapter::new(&config.stage, http),
        ownership,
        settings: config.stage.dispatch.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        resolved: resolved_tx,
    });
    let outcomes = Arc::new(Outcomes::new(
        platform,
        config.topics.status.clone(),
        config.topics.rejected.clone(),
        tiers,
        metrics.clone(),
    ));
    let driver = Driver::new(
        &config.kafka,
        DriverSettings {
            group_id: config.group_id(),
            platform,
            windows: config.platforms.clone(),
            batch_limit: config.stage.dispatch.batch_limit(platform),
            linger: config.stage.dispatch.linger(),
            max_pending: config.stage.dispatch.max_pending_events,
            commit_interval: Duration::from_millis(config.stage.dispatch.commit_interval_ms),
            drain: Duration::from_millis(config.stage.dispatch.request_timeout_ms)
                + Duration::from_secs(5),
        },
        DriverParts {
            shared,
            engine,
            outcomes,
            accounts: accounts.clone(),
            resolved: resolved_rx,
            metrics,
        },
    )?;
    tracing::info!(
        platform = platform.as_str(),
        accounts = accounts.len(),
        group = %config.group_id(),
        exactly_once = config.consumer.exactly_once,
        "dispatcher starting"
    );
    let stage_ops = StageOps::spawn(
        ops_listener,
        service_metrics,
        readiness,
        probe_client,
        shutdown.clone(),
    );
    let result = driver.run(shutdown.clone()).await;
    stage_ops.stop().await.map_err(DispatcherError::Ops)?;
    result.map_err(Into::into)
}

/// Creates the retry topics of `main` that are missing, with its partition
/// count (existing ones are left alone).
async fn ensure_retry_topics(
    kafka: &KafkaConfig,
    main: &str,
    tiers: &Tiers,
) -> Result<(), DispatcherError> {
    let partitions = partition_count(kafka, main).await?;
    let specs: Vec<TopicSpec> = tiers
        .retry_topics()
        .map(|t| {
            let mut spec = TopicSpec::new(t, partitions);
            spec.configs = vec![("retention.ms".into(), RETRY_RETENTION_MS.to_string())];
            spec
        })
        .collect();
    create_topics(kafka, &specs)
        .await
        .map_err(|source| DispatcherError::RetryTopics {
            topic: main.to_string(),
            source,
        })
}

async fn partition_count(
    kafka: &postback_core::config::KafkaConfig,
    topic: &str,
) -> Result<i32, DispatcherError> {
    postback_core::kafka::partition_count(kafka, topic)
        .await
        .map_err(|source| DispatcherError::Metadata {
            topic: topic.to_string(),
            source,
        })
}
