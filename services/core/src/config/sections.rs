//! The sections most services share besides the broker: topic names, how a
//! stage consumes, where its ops endpoints listen, and logging.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validate};

/// Topic names. Overridable so tests and multi-pipeline clusters can share a broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub raw: String,
    pub enriched: String,
    pub status: String,
    pub rejected: String,
    /// dispatch.<platform> topics are `<dispatch_prefix><platform>`.
    pub dispatch_prefix: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            raw: "conversions.raw".into(),
            enriched: "conversions.enriched".into(),
            status: "conversions.status".into(),
            rejected: "conversions.rejected".into(),
            dispatch_prefix: "dispatch.".into(),
        }
    }
}

impl TopicsConfig {
    pub fn dispatch(&self, platform: crate::Platform) -> String {
        format!("{}{}", self.dispatch_prefix, platform.as_str())
    }
}

impl Validate for TopicsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("topics.raw", &self.raw),
            ("topics.enriched", &self.enriched),
            ("topics.status", &self.status),
            ("topics.rejected", &self.rejected),
        ] {
            validate_topic_name(key, name)?;
        }
        Ok(())
    }
}

/// Kafka's own rule: 1-249 characters of [a-zA-Z0-9._-].
pub fn validate_topic_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("`{name}` is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

/// How a stage consumes its input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer group; each service has its own default.
    pub group_id: Option<String>,
    /// Most records handled (and acknowledged) as one unit.
    pub max_batch: usize,
    /// How long to wait for more records once one arrived.
    pub linger_ms: u64,
    /// Outputs and input offsets commit in one Kafka transaction, and
    /// nothing between the collector and conversions.status is written
    /// twice. `false` writes at-least-once (each output acknowledged, then
    /// the offset stored), for brokers without transactions.
    pub exactly_once: bool,
    /// This instance's name among its group's live members (a StatefulSet
    /// pod's name): with a stable one, a restarted instance aborts at once
    /// what its previous life left open (its transactional id is
    /// `<group>.<instance_id>`). Default: made up per start. Never the same
    /// for two live instances: each would fence the other.
    pub instance_id: Option<String>,
}

impl ConsumerConfig {
    /// Most stages' batch: a transaction of their outputs every 1,000
    /// records keeps a batch's outputs and its latency small.
    pub const DEFAULT_MAX_BATCH: usize = 1000;

    /// The largest `max_batch` a stage accepts unless it says otherwise
    /// ([`Stage::LARGEST_MAX_BATCH`](super::Stage::LARGEST_MAX_BATCH)):
    /// a batch is one transaction, and its records and outputs are held in
    /// memory until it commits.
    pub const LARGEST_MAX_BATCH: usize = 10_000;
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            max_batch: Self::DEFAULT_MAX_BATCH,
            linger_ms: 5,
            exactly_once: true,
            instance_id: None,
        }
    }
}

impl ConsumerConfig {
    /// The consumer loop's settings, `default_group` unless configured.
    pub fn loop_config(
        &self,
        default_group: &str,
        client_id: &str,
        topics: Vec<String>,
    ) -> crate::kafka::ConsumerLoopConfig {
        crate::kafka::ConsumerLoopConfig {
            group_id: self
                .group_id
                .clone()
                .unwrap_or_else(|| default_group.to_string()),
            client_id: client_id.to_string(),
            topics,
            max_batch: self.max_batch,
            linger: std::time::Duration::from_millis(self.linger_ms),
            exactly_once: self.exactly_once,
            instance_id: crate::kafka::instance_id(self.instance_id.as_deref()),
        }
    }
}

impl Validate for ConsumerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with_largest_batch(Self::LARGEST_MAX_BATCH)
    }
}

impl ConsumerConfig {
    /// As `validate`, with `largest` the most `max_batch` may be.
    pub fn validate_with_largest_batch(&self, largest: usize) -> Result<(), ConfigError> {
        if self
            .group_id
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "consumer.group_id",
                "must not be empty",
            ));
        }
        if self.max_batch == 0 || self.max_batch > largest {
            return Err(ConfigError::invalid(
                "consumer.max_batch",
                format!("must be between 1 and {largest}"),
            ));
        }
        if self.linger_ms > 10_000 {
            return Err(ConfigError::invalid(
                "consumer.linger_ms",
                "must be at most 10000",
            ));
        }
        if let Some(id) = &self.instance_id {
            let ok = !id.is_empty()
                && id.len() <= 200
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(ConfigError::invalid(
                    "consumer.instance_id",
                    "must be 1-200 of a-z A-Z 0-9 . _ -",
                ));
            }
        }
        Ok(())
    }
}

/// Where /healthz, /readyz and /metrics are served.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    pub listen: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            // A stage's own port replaces it (`Stage::OPS_PORT`).
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info,postback_collector=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}
