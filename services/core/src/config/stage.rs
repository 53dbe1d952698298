//! A Kafka stage's configuration: the sections every stage shares and the
//! stage's own, read apart so the stage's part stays a plain struct.
//!
//! serde's `flatten` would do this in one derive, but it cannot deny unknown
//! keys and loses the key of a nested error; reading the two parts from the
//! same sources keeps both, and the loader refuses a top-level key neither
//! part knows.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    ConfigError, Configuration, ConsumerConfig, KafkaConfig, LogConfig, OpsConfig, Sources,
    TopicsConfig, Validate,
};
use crate::eligibility::PlatformWindows;

/// What a stage adds to the shared sections: a plain struct of its own
/// sections (no `deny_unknown_fields` at its top level, which the shared
/// keys would trip; the loader refuses unknown top-level keys instead).
pub trait Stage: DeserializeOwned + Validate {
    /// Where this stage's ops endpoints listen unless `ops.listen` is set.
    const OPS_PORT: u16;

    /// The consumer group unless `consumer.group_id` is set.
    fn default_group_id(&self) -> String;

    /// `consumer.max_batch` unless set: the records handled as one unit.
    const MAX_BATCH: usize = ConsumerConfig::DEFAULT_MAX_BATCH;

    /// The most `consumer.max_batch` may be set to.
    const LARGEST_MAX_BATCH: usize = ConsumerConfig::LARGEST_MAX_BATCH;
}

#[derive(Debug, Clone, Serialize)]
pub struct StageConfig<S> {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    pub ops: OpsConfig,
    pub consumer: ConsumerConfig,
    /// How old an event each platform still accepts.
    pub platforms: PlatformWindows,
    /// The stage's own sections, at the top level of the file beside these.
    #[serde(flatten)]
    pub stage: S,
}

#[derive(Deserialize)]
struct SharedSections {
    #[serde(default)]
    kafka: KafkaConfig,
    #[serde(default)]
    topics: TopicsConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    ops: OpsConfig,
    #[serde(default)]
    consumer: ConsumerConfig,
    #[serde(default)]
    platforms: PlatformWindows,
}

const SHARED_KEYS: [&str; 6] = ["kafka", "topics", "log", "ops", "consumer", "platforms"];

impl<S: Stage> StageConfig<S> {
    /// The stage's shared sections at their defaults, beside `stage`.
    pub fn with_defaults(stage: S) -> Self {
        StageConfig {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            log: LogConfig::default(),
            ops: OpsConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], S::OPS_PORT)),
            },
            consumer: ConsumerConfig {
                max_batch: S::MAX_BATCH,
                ..ConsumerConfig::default()
            },
            platforms: PlatformWindows::default(),
            stage,
        }
    }

    /// The consumer group: `consumer.group_id`, else the stage's own.
    pub fn group_id(&self) -> String {
        self.consumer
            .group_id
            .clone()
            .unwrap_or_else(|| self.stage.default_group_id())
    }

    /// The consumer loop's settings for this stage.
    pub fn loop_config(
        &self,
        client_id: &str,
        topics: Vec<String>,
    ) -> crate::kafka::ConsumerLoopConfig {
        self.consumer
            .loop_config(&self.group_id(), client_id, topics)
    }
}

impl<S: Stage> Configuration for StageConfig<S> {
    fn extract(sources: &Sources) -> Result<Self, ConfigError> {
        let own = serde_aux::serde_introspection::serde_introspect::<S>();
        sources.refuse_unknown_keys(SHARED_KEYS.iter().chain(own).copied())?;
        let sources = sources
            .with_default("ops.listen", SocketAddr::from(([0, 0, 0, 0], S::OPS_PORT)))
            .with_default("consumer.max_batch", S::MAX_BATCH);
        let shared: SharedSections = sources.extract()?;
        Ok(StageConfig {
            kafka: shared.kafka,
            topics: shared.topics,
            log: shared.log,
            ops: shared.ops,
            consumer: shared.consumer,
            platforms: shared.platforms,
            stage: sources.extract()?,
        })
    }
}

impl<S: Stage> Validate for StageConfig<S> {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        self.consumer
            .validate_with_largest_batch(S::LARGEST_MAX_BATCH)?;
        self.platforms.validate()?;
        self.stage.validate()
    }
}

impl<S: Stage> crate::service::ServiceConfig for StageConfig<S> {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> SocketAddr {
        self.ops.listen
    }
}
