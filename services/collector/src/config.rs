//! The collector's configuration (docs/collector.md lists every key).

use std::collections::HashSet;
use std::net::SocketAddr;

use postback_core::config::{
    validate_keys, validate_tenant, validate_topic_name, ConfigError, KafkaConfig, LogConfig,
    TopicsConfig, Validate,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    /// Server-side API keys; each decides the tenant of what it sends.
    pub api_keys: Vec<ApiKey>,
    /// Public browser site keys, with the origins allowed to use them.
    pub site_keys: Vec<SiteKey>,
    pub ingest: IngestConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The API and the ops endpoints (/healthz, /readyz, /metrics) share it.
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    /// Seconds a client is told to wait (Retry-After) when the broker is unavailable.
    pub retry_after_secs: u64,
    /// How far in the future an event_time may be, in seconds.
    pub max_future_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 1000,
            retry_after_secs: 5,
            max_future_secs: 600,
        }
    }
}

/// A server API key: inline, or the name of an environment variable that
/// holds it (keeps secrets out of the file).
pub type ApiKey = postback_core::config::TenantKey;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteKey {
    pub key: String,
    pub tenant: String,
    /// Exact origins (scheme://host[:port]) allowed to send beacons with this key.
    pub allowed_origins: Vec<String>,
}

/// Consuming JSON conversions from retailers' own Kafka topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub enabled: bool,
    pub group_id: String,
    pub topics: Vec<IngestTopic>,
    /// Conversions from the ingest topics reach conversions.raw exactly
    /// once (one transaction per batch); false: at-least-once, for
    /// brokers without transactions.
    pub exactly_once: bool,
    /// This instance's stable name among the ingest group's members (see
    /// `consumer.instance_id` of the other stages).
    pub instance_id: Option<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: false,
            group_id: "postback-collector-ingest".into(),
            topics: Vec::new(),
            exactly_once: true,
            instance_id: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestTopic {
    pub topic: String,
    /// Every conversion on this topic belongs to this tenant.
    pub tenant: String,
}

impl Validate for CollectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        if self.http.max_batch_events == 0 || self.http.max_batch_events > 10_000 {
            return Err(ConfigError::invalid(
                "http.max_batch_events",
                "must be between 1 and 10000",
            ));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024",
            ));
        }
        validate_keys("api_keys", &self.api_keys)?;
        let mut seen = HashSet::new();
        for (i, s) in self.site_keys.iter().enumerate() {
            validate_tenant(&format!("site_keys[{i}].tenant"), &s.tenant)?;
            if s.key.len() < 8 || !seen.insert(s.key.clone()) {
                return Err(ConfigError::invalid(
                    format!("site_keys[{i}].key"),
                    "must be at least 8 characters and unique",
                ));
            }
            if s.allowed_origins.is_empty() {
                return Err(ConfigError::invalid(
                    format!("site_keys[{i}].allowed_origins"),
                    "must list at least one origin",
                ));
            }
            for (j, o) in s.allowed_origins.iter().enumerate() {
                let ok = (o.starts_with("https://") || o.starts_with("http://"))
                    && !o.ends_with('/')
                    && !o["https://".len().min(o.len())..].contains('/');
                if !ok {
                    return Err(ConfigError::invalid(
                        format!("site_keys[{i}].allowed_origins[{j}]"),
                        format!("`{o}` is not an origin (scheme://host[:port], no path)"),
                    ));
                }
            }
        }
        if self.ingest.enabled && self.ingest.topics.is_empty() {
            return Err(ConfigError::invalid(
                "ingest.topics",
                "must list at least one topic when ingest.enabled",
            ));
        }
        for (i, t) in self.ingest.topics.iter().enumerate() {
            validate_topic_name(&format!("ingest.topics[{i}].topic"), &t.topic)?;
            validate_tenant(&format!("ingest.topics[{i}].tenant"), &t.tenant)?;
        }
        Ok(())
    }
}

impl postback_core::config::PlainConfiguration for CollectorConfig {}

impl postback_core::service::ServiceConfig for CollectorConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> SocketAddr {
        self.http.listen
    }
}
