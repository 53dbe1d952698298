//! The deduplicator: consumes conversions.enriched and writes each
//! conversion once to dispatch.<platform> for every platform it is eligible
//! for, merging the browser's and the server's reports of it that arrive
//! within the merge window, and a status record per configured platform for
//! everything it decides (eligible, not eligible, duplicate). Its state is
//! per input partition, in an on-disk store mirrored to a compacted
//! changelog topic, so it survives crashes and follows partitions between
//! instances.

pub mod config;
pub mod dedup;
pub mod handler;
pub mod key;
pub mod merge;
pub mod metrics;
pub mod restore;
mod staged;
pub mod state;
pub mod store;
pub mod summary;

use std::time::Duration;

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{create_topics, topic_configs, ConsumerLoop, KafkaError, TopicSpec};
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{Readiness, StageOps};
use postback_core::Platform;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::DeduplicatorConfig;
use crate::dedup::{Deduplicator, OutputTopics, Settings};
use crate::store::{StateStore, StoreConfig};

pub const SERVICE: &str = "deduplicator";

#[derive(Debug, thiserror::Error)]
pub enum DeduplicatorError {
    #[error("cannot read the partitions of {topic}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create the changelog topic {topic}: {source}")]
    Changelog {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("changelog topic {topic} cannot hold the deduplicator's state: {problem}")]
    ChangelogConfig { topic: String, problem: String },
    #[error("changelog {changelog} has {existing} partitions but {input} has {partitions}: each input partition needs its own changelog partition")]
    ChangelogPartitions {
        changelog: String,
        existing: i32,
        input: String,
        partitions: i32,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    #[error(transparent)]
    Consumer(#[from] postback_core::kafka::ConsumerLoopError),
    #[error("ops server failed: {0}")]
    Ops(#[source] std::io::Error),
}

/// Runs the deduplicator until `shutdown`, serving /healthz, /readyz and
/// /metrics on `ops_listener`.
pub async fn run(
    config: DeduplicatorConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DeduplicatorError> {
    let service_metrics = ServiceMetrics::new(SERVICE);
    let metrics = metrics::DedupMetrics::new(&service_metrics);
    let readiness = Readiness::new();
    ensure_changelog(&config).await?;

    let store = StateStore::open(&StoreConfig {
        dir: config.stage.state.dir.clone(),
        cache_bytes: config.stage.state.cache_mb << 20,
        memtable_bytes: config.stage.state.memtable_mb << 20,
    })?;
    let dedup = Deduplicator::new(
        store,
        Settings {
            window_ms: config.stage.dedup.window().as_millis() as i64,
            merge_window_ms: config.stage.dedup.merge_window().as_millis() as i64,
            browser_wait_ms: config.stage.dedup.browser_wait().as_millis() as i64,
            platforms: config.platforms.clone(),
            max_emits_per_tick: config.consumer.max_batch,
        },
        OutputTopics {
            status: config.topics.status.clone(),
            changelog: config.stage.state.changelog_topic.clone(),
            dispatch: Platform::ALL.map(|p| config.topics.dispatch(p)),
            rejected: config.topics.rejected.clone(),
        },
        metrics.clone(),
    );
    let restorer = restore::Restorer::new(
        &config.kafka,
        config.stage.state.changelog_topic.clone(),
        "postback-deduplicator",
        Duration::from_secs(config.stage.state.restore_stall_secs),
        DeadLetters::by_reference(dedup::STAGE, config.topics.rejected.clone()),
        metrics.clone(),
    )?;
    let tick = (config.stage.dedup.merge_window() / 20)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut handler = handler::DedupHandler::new(
        dedup,
        restorer,
        config.topics.enriched.clone(),
        DeadLetters::by_reference(dedup::STAGE, config.topics.rejected.clone()),
        metrics,
        tick,
    );
    // A partition's restore runs between polls; give it room before the
    // group counts this member as stuck (unless the operator chose).
    let mut kafka = config.kafka.clone();
    kafka
        .consumer_properties
        .entry("max.poll.interval.ms".into())
        .or_insert_with(|| "900000".into());
    let consumer = ConsumerLoop::new(
        &kafka,
        config.loop_config(
            "postback-deduplicator",
            vec![config.topics.enriched.clone()],
        ),
        DeadLetters::by_reference(dedup::STAGE, config.topics.rejected.clone()),
        &service_metrics,
    )
    .await?;
    let stage_ops = StageOps::spawn(
        ops_listener,
        service_metrics,
        readiness,
        consumer.probe_client(),
        shutdown.clone(),
    );
    let result = consumer.run(&mut handler, shutdown.clone()).await;
    stage_ops.stop().await.map_err(DeduplicatorError::Ops)?;
    result.map_err(Into::into)
}

/// Creates the changelog topic if it is missing, with as many partitions as
/// the input (a changelog partition mirrors an input partition), compacted
/// and with a retention just past the dedup window; refuses to start if an
/// existing one does not match: too few partitions, not compacted, or
/// deleting state the window still needs.
async fn ensure_changelog(config: &DeduplicatorConfig) -> Result<(), DeduplicatorError> {
    let changelog = config.stage.state.changelog_topic.clone();
    let input = config.topics.enriched.clone();
    let partitions = partition_count(&config.kafka, &input).await?;
    let retention_ms = changelog_retention_ms(config);
    let mut spec = TopicSpec::new(&changelog, partitions);
    spec.configs = vec![
        ("cleanup.policy".into(), "compact,delete".into()),
        ("retention.ms".into(), retention_ms.to_string()),
    ];
    spec.configs.extend(
        config
            .stage
            .state
            .changelog_topic_configs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    create_topics(&config.kafka, &[spec])
        .await
        .map_err(|source| DeduplicatorError::Changelog {
            topic: changelog.clone(),
            source,
        })?;
    let existing = partition_count(&config.kafka, &changelog).await?;
    if existing != partitions {
        return Err(DeduplicatorError::ChangelogPartitions {
            changelog,
            existing,
            input,
            partitions,
        });
    }
    check_changelog_configs(config, &changelog).await
}

/// The changelog keeps a key's state at least as long as the dedup window.
fn changelog_retention_ms(config: &DeduplicatorConfig) -> u64 {
    config.stage.dedup.window_secs * 1000 + 3_600_000
}

/// An existing changelog (made by hand, or by an older configuration)
/// must be compacted, or a restore replays every state change ever made,
/// and must keep state for the whole window, or a restore forgets
/// conversions that are still duplicates.
async fn check_changelog_configs(
    config: &DeduplicatorConfig,
    changelog: &str,
) -> Result<(), DeduplicatorError> {
    let configs = topic_configs(&config.kafka, changelog)
        .await
        .map_err(|source| DeduplicatorError::Changelog {
            topic: changelog.to_string(),
            source,
        })?;
    let policy = configs.get("cleanup.policy").map_or("", String::as_str);
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(DeduplicatorError::ChangelogConfig {
            topic: changelog.to_string(),
            problem: format!("cleanup.policy is `{policy}`, not compact"),
        });
    }
    let deletes = policy.split(',').any(|p| p.trim() == "delete");
    let retention: i64 = configs
        .get("retention.ms")
        .and_then(|r| r.parse().ok())
        .unwrap_or(-1);
    let wanted = changelog_retention_ms(config) as i64;
    if deletes && retention >= 0 && retention < wanted {
        return Err(DeduplicatorError::ChangelogConfig {
            topic: changelog.to_string(),
            problem: format!(
                "retention.ms is {retention}, shorter than the dedup window + 1 h ({wanted}); \
                 raise it (kafka-configs --alter --add-config retention.ms={wanted})"
            ),
        });
    }
    Ok(())
}

async fn partition_count(
    kafka: &postback_core::config::KafkaConfig,
    topic: &str,
) -> Result<i32, DeduplicatorError> {
    postback_core::kafka::partition_count(kafka, topic)
        .await
        .map_err(|source| DeduplicatorError::Metadata {
            topic: topic.to_string(),
            source,
        })
}
