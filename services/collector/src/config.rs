//! The collector's configuration (docs/collector.md lists every key).

use std::collections::HashSet;
use std::net::SocketAddr;

use postback_core::config::{
    validate_keys, validate_tenant, validate_topic_name, ConfigError, KafkaConfig, LogConfig,
    OpsConfig, TopicsConfig, Validate,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    pub http: HttpConfig,
    /// /healthz, /readyz and /metrics: on their own listener, loopback by
    /// default, never on the public API's.
    pub ops: OpsConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub log: LogConfig,
    /// Server-side API keys; each decides the tenant of what it sends.
    pub api_keys: Vec<ApiKey>,
    /// Public browser site keys, with the origins allowed to use them.
    pub site_keys: Vec<SiteKey>,
    pub ingest: IngestConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            http: HttpConfig::default(),
            ops: OpsConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9098)),
            },
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            log: LogConfig::default(),
            api_keys: Vec::new(),
            site_keys: Vec::new(),
            ingest: IngestConfig::default(),
        }
    }
}

/// The public API and what guards it (docs/collector.md#the-public-edge).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The public API: /v1/events, /v1/collect, /v1/tag.js.
    pub listen: SocketAddr,
    /// The largest body of `POST /v1/events` (servers, API key).
    pub max_body_bytes: usize,
    /// The largest body of `POST /v1/collect` (browsers, public site key):
    /// a beacon is a few kilobytes.
    pub max_beacon_bytes: usize,
    pub max_batch_events: usize,
    /// The most events one beacon may carry: a page reports its own
    /// conversion (and the few a failed send kept), never a batch.
    pub max_beacon_events: usize,
    /// Seconds a client is told to wait (Retry-After) when the broker is
    /// unavailable or the collector is full.
    pub retry_after_secs: u64,
    /// How far in the future an event_time may be, in seconds.
    pub max_future_secs: u64,
    /// The longest a request's body may take to arrive, before 408. The
    /// wait for the broker after it is `kafka.delivery_timeout_ms`'s (503).
    pub body_timeout_secs: u64,
    /// The longest wait for the next piece of a body before 408.
    pub body_idle_timeout_secs: u64,
    /// Requests in progress at once; beyond it, 503 with Retry-After
    /// (the memory they can hold is about this times `max_body_bytes`).
    pub max_concurrent_requests: usize,
    /// Requests per second each API key and each site key may make, and
    /// the burst above it, before 429 with Retry-After.
    pub requests_per_second_per_key: u32,
    pub burst_per_key: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            max_beacon_bytes: 64 * 1024,
            max_batch_events: 1000,
            max_beacon_events: 20,
            retry_after_secs: 5,
            max_future_secs: 600,
            body_timeout_secs: 10,
            body_idle_timeout_secs: 5,
            // A key can hold at most (rate x request timeout + burst)
            // slots: 600 of 1024, so the public site key alone cannot
            // fill the collector (docs/collector.md#the-public-edge).
            max_concurrent_requests: 1024,
            requests_per_second_per_key: 50,
            burst_per_key: 100,
        }
    }
}

/// A server API key: inline, or the name of an environment variable that
/// holds it (keeps secrets out of the file).
pub type ApiKey = postback_core::config::TenantKey;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteKey {
    pub key: String,
    pub tenant: String,
    /// Exact origins (scheme://host[:port]) allowed to send beacons with this key.
    pub allowed_origins: Vec<String>,
    /// With a secret (inline, or the name of the environment variable that
    /// holds it), every beacon's event must carry `event_signature`, the
    /// HMAC-SHA256 of its event_name and event_id under the secret, which
    /// the shop's server gives the page (`signed_ids.rs`).
    #[serde(default)]
    pub event_signing_secret: Option<String>,
    #[serde(default)]
    pub event_signing_secret_env: Option<String>,
}

impl std::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKey")
            .field("key", &self.key)
            .field("tenant", &self.tenant)
            .field("allowed_origins", &self.allowed_origins)
            .field(
                "event_signing_secret",
                &self.event_signing_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("event_signing_secret_env", &self.event_signing_secret_env)
            .finish()
    }
}

impl SiteKey {
    /// The signing secret, from the file or its environment variable.
    pub fn signing_secret(&self) -> Option<String> {
        self.event_signing_secret.clone().or_else(|| {
            self.event_signing_secret_env
                .as_ref()
                .and_then(|name| std::env::var(name).ok())
        })
    }

    fn validate_signing(&self, i: usize) -> Result<(), ConfigError> {
        let key = format!("site_keys[{i}].event_signing_secret");
        match (&self.event_signing_secret, &self.event_signing_secret_env) {
            (None, None) => Ok(()),
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                key,
                "set either event_signing_secret or event_signing_secret_env, not both",
            )),
            (_, env) => match self.signing_secret() {
                Some(s) if s.len() >= crate::signed_ids::MIN_SECRET_LEN => Ok(()),
                Some(_) => Err(ConfigError::invalid(
                    key,
                    format!(
                        "must be at least {} bytes",
                        crate::signed_ids::MIN_SECRET_LEN
                    ),
                )),
                None => Err(ConfigError::invalid(
                    format!("site_keys[{i}].event_signing_secret_env"),
                    format!(
                        "environment variable `{}` is not set",
                        env.as_deref().unwrap_or_default()
                    ),
                )),
            },
        }
    }
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
        if self.http.max_beacon_events == 0
            || self.http.max_beacon_events > self.http.max_batch_events
        {
            return Err(ConfigError::invalid(
                "http.max_beacon_events",
                "must be at least 1 and at most http.max_batch_events",
            ));
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.http.max_beacon_bytes < 1024
            || self.http.max_beacon_bytes > self.http.max_body_bytes
        {
            return Err(ConfigError::invalid(
                "http.max_beacon_bytes",
                "must be at least 1024 and at most http.max_body_bytes",
            ));
        }
        for (key, value) in [
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            (
                "http.body_idle_timeout_secs",
                self.http.body_idle_timeout_secs,
            ),
            (
                "http.max_concurrent_requests",
                self.http.max_concurrent_requests as u64,
            ),
            (
                "http.requests_per_second_per_key",
                u64::from(self.http.requests_per_second_per_key),
            ),
            ("http.burst_per_key", u64::from(self.http.burst_per_key)),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
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
            s.validate_signing(i)?;
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

    /// The ops listener: `run` binds the public one itself.
    fn listen(&self) -> SocketAddr {
        self.ops.listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: Vec<(String, String)>) -> Result<CollectorConfig, ConfigError> {
        postback_core::config::load_toml(toml, env)
    }

    const SITE: &str = "[[site_keys]]\nkey = \"pk_site_key_1\"\ntenant = \"acme\"\nallowed_origins = [\"https://shop.example\"]\n";

    #[test]
    fn a_signing_secret_is_checked_and_never_repeated() {
        let short = format!("{SITE}event_signing_secret = \"too-short-secret\"\n");
        let e = load(&short, vec![]).unwrap_err().to_string();
        assert!(e.contains("site_keys[0].event_signing_secret"), "{e}");
        assert!(!e.contains("too-short-secret"), "{e}");

        let both = format!(
            "{SITE}event_signing_secret = \"{}\"\nevent_signing_secret_env = \"X\"\n",
            "s".repeat(40)
        );
        let e = load(&both, vec![]).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");

        let env = format!("{SITE}event_signing_secret_env = \"POSTBACK_TEST_NO_SUCH_VAR_4242\"\n");
        let e = load(&env, vec![]).unwrap_err().to_string();
        assert!(e.contains("site_keys[0].event_signing_secret_env"), "{e}");

        let good = format!("{SITE}event_signing_secret = \"{}\"\n", "s".repeat(40));
        let c = load(&good, vec![]).unwrap();
        assert_eq!(c.site_keys[0].signing_secret(), Some("s".repeat(40)));
        let debug = format!("{:?}", c.site_keys[0]);
        assert!(!debug.contains(&"s".repeat(40)) && debug.contains("[redacted]"));
    }

    #[test]
    fn beacons_carry_fewer_events_than_batches() {
        assert_eq!(CollectorConfig::default().http.max_beacon_events, 20);
        let e = load("[http]\nmax_beacon_events = 0\n", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.max_beacon_events"), "{e}");
    }
}
