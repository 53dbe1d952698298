//! Configuration: a TOML file plus `POSTBACK_` environment overrides
//! (`POSTBACK_KAFKA__BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`),
//! validated at start-up. Every error names the key it is about, so a typo in
//! a deployment fails loudly at boot instead of misbehaving at 3 a.m.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "POSTBACK_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::File { .. } => None,
        }
    }
}

/// Checked once after loading; report the first bad key.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from an optional TOML file and the environment, then validates it.
pub fn load<T: DeserializeOwned + Validate>(file: Option<&Path>) -> Result<T, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, env)
}

/// Like [`load`], with the environment given explicitly (tests).
pub fn load_from<T: DeserializeOwned + Validate>(
    file: Option<&Path>,
    env: Vec<(String, String)>,
) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "does not exist".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // Figment's Env provider reads the process environment; we pass our own
    // snapshot through a small provider so tests need not mutate globals.
    figment = figment.merge(EnvSnapshot(env));
    let value: T = figment.extract().map_err(|e| from_figment(e, file))?;
    value.validate()?;
    Ok(value)
}

fn from_figment(error: figment::Error, file: Option<&Path>) -> ConfigError {
    let key = error.path.join(".");
    let message = error.kind.to_string();
    if key.is_empty() {
        match file {
            Some(path) => ConfigError::File {
                path: path.to_owned(),
                message,
            },
            None => ConfigError::invalid("<root>", message),
        }
    } else {
        ConfigError::invalid(key, message)
    }
}

struct EnvSnapshot(Vec<(String, String)>);

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.is_empty() || rest == "CONFIG" || rest == "LOG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let parsed = figment::value::Value::from(value.as_str());
            let parsed = match value.parse::<figment::value::Value>() {
                Ok(v) => v,
                Err(_) => parsed,
            };
            insert_path(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// The path given with `--config PATH` or `POSTBACK_CONFIG`.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("POSTBACK_CONFIG").map(PathBuf::from)
}

/// Broker connection shared by every service.
///
/// Managed Kafka (MSK, Confluent Cloud, Aiven) takes TLS and SASL: set
/// `security_protocol` and the `[kafka.sasl]` table, e.g.
/// `POSTBACK_KAFKA__SASL__PASSWORD` from a secret. Anything else librdkafka
/// knows goes in `properties`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// How long the producer keeps retrying one record before reporting it
    /// failed (librdkafka `message.timeout.ms`).
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long a transaction may stay open before the broker aborts it:
    /// also how long what a crashed instance left open holds up its
    /// readers (read committed), unless it restarts with the same
    /// `consumer.instance_id`.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// SASL credentials; required by the sasl_* protocols.
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// PEM file of the CA(s) that signed the brokers' certificates; the
    /// system's trust store when unset.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// How producers compress record batches.
    #[serde(default)]
    pub compression: Compression,
    /// Extra librdkafka properties for every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers only (linger.ms, ...).
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (fetch.max.bytes, ...).
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

impl std::fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// A credential: read from configuration, handed to the one client that
/// needs it, and shown nowhere else (its `Debug` is a placeholder).
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    /// Any scalar: a password of digits arrives from the environment as a
    /// number, and is still the password.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl serde::de::Visitor<'_> for Scalar {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    /// Fast, and cheap on the broker's CPU: the default.
    #[default]
    Lz4,
    /// The best ratio for a little more CPU.
    Zstd,
}

impl Compression {
    /// librdkafka's `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Whether a librdkafka property name carries a credential, so its value
/// is never shown (`sasl.password`, `ssl.key.password`, `ssl.key.pem`, ...).
fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key.pem", "jaas", "token"]
        .iter()
        .any(|word| name.contains(word))
}

struct RedactedProperties<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for RedactedProperties<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.0 {
            if is_secret_property(k) {
                map.entry(k, &"<redacted>");
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("delivery_timeout_ms", &self.delivery_timeout_ms)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("security_protocol", &self.security_protocol)
            .field("sasl", &self.sasl)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("compression", &self.compression)
            .field("properties", &RedactedProperties(&self.properties))
            .field(
                "producer_properties",
                &RedactedProperties(&self.producer_properties),
            )
            .field(
                "consumer_properties",
                &RedactedProperties(&self.consumer_properties),
            )
            .finish()
    }
}

fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}
fn default_delivery_timeout_ms() -> u64 {
    30_000
}
fn default_transaction_timeout_ms() -> u64 {
    30_000
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: default_bootstrap(),
            delivery_timeout_ms: default_delivery_timeout_ms(),
            transaction_timeout_ms: default_transaction_timeout_ms(),
            security_protocol: SecurityProtocol::default(),
            sasl: None,
            ssl_ca_location: None,
            compression: Compression::default(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }
}

impl Validate for KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must list at least one host:port",
            ));
        }
        for server in self.bootstrap_servers.split(',') {
            let server = server.trim();
            let ok = server
                .rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                return Err(ConfigError::invalid(
                    "kafka.bootstrap_servers",
                    format!("`{server}` is not host:port"),
                ));
            }
        }
        if !(1_000..=600_000).contains(&self.delivery_timeout_ms) {
            return Err(ConfigError::invalid(
                "kafka.delivery_timeout_ms",
                "must be between 1000 and 600000",
            ));
        }
        // The broker's transaction.max.timeout.ms defaults to 15 minutes.
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            return Err(ConfigError::invalid(
                "kafka.transaction_timeout_ms",
                "must be between 1000 and 900000",
            ));
        }
        self.validate_security()?;
        for (table, properties) in [
            ("kafka.properties", &self.properties),
            ("kafka.producer_properties", &self.producer_properties),
            ("kafka.consumer_properties", &self.consumer_properties),
        ] {
            for name in properties.keys() {
                if MANAGED_PROPERTIES.contains(&name.as_str()) {
                    return Err(ConfigError::invalid(
                        format!("{table}.{name}"),
                        "is set by postback itself; use the kafka section's own key",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// librdkafka properties that `KafkaConfig` has keys of its own for: set
/// twice, one would silently win.
const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "compression.type",
    "compression.codec",
];

impl KafkaConfig {
    fn validate_security(&self) -> Result<(), ConfigError> {
        match (&self.sasl, self.security_protocol.uses_sasl()) {
            (None, true) => {
                return Err(ConfigError::invalid(
                    "kafka.sasl",
                    format!(
                        "security_protocol {} needs a [kafka.sasl] table (mechanism, username, password)",
                        self.security_protocol.as_str()
                    ),
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::invalid(
                    "kafka.sasl",
                    format!(
                        "is set, but security_protocol {} does not use SASL (sasl_ssl or sasl_plaintext do)",
                        self.security_protocol.as_str()
                    ),
                ))
            }
            (Some(sasl), true) => {
                if sasl.username.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        "kafka.sasl.username",
                        "must not be empty",
                    ));
                }
                if sasl.password.expose().is_empty() {
                    return Err(ConfigError::invalid(
                        "kafka.sasl.password",
                        "must not be empty",
                    ));
                }
            }
            (None, false) => {}
        }
        if let Some(ca) = &self.ssl_ca_location {
            if !self.security_protocol.uses_tls() {
                return Err(ConfigError::invalid(
                    "kafka.ssl_ca_location",
                    format!(
                        "is set, but security_protocol {} does not use TLS (ssl or sasl_ssl do)",
                        self.security_protocol.as_str()
                    ),
                ));
            }
            if !ca.is_file() {
                return Err(ConfigError::invalid(
                    "kafka.ssl_ca_location",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        Ok(())
    }

    /// The settings every client of this broker needs: where it is and how
    /// to authenticate. Producers, consumers and admin clients start here.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_str());
        if let Some(sasl) = &self.sasl {
            cfg.set("sasl.mechanism", sasl.mechanism.as_str())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
        if let Some(ca) = &self.ssl_ca_location {
            cfg.set("ssl.ca.location", ca.to_string_lossy());
        }
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        cfg
    }
}

/// Topic names. Overridable so tests and multi-pipeline clusters can share a broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    #[serde(default = "t_raw")]
    pub raw: String,
    #[serde(default = "t_enriched")]
    pub enriched: String,
    #[serde(default = "t_status")]
    pub status: String,
    #[serde(default = "t_rejected")]
    pub rejected: String,
    /// dispatch.<platform> topics are `<dispatch_prefix><platform>`.
    #[serde(default = "t_dispatch")]
    pub dispatch_prefix: String,
}

fn t_raw() -> String {
    "conversions.raw".into()
}
fn t_enriched() -> String {
    "conversions.enriched".into()
}
fn t_status() -> String {
    "conversions.status".into()
}
fn t_rejected() -> String {
    "conversions.rejected".into()
}
fn t_dispatch() -> String {
    "dispatch.".into()
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            raw: t_raw(),
            enriched: t_enriched(),
            status: t_status(),
            rejected: t_rejected(),
            dispatch_prefix: t_dispatch(),
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
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer group; each service has its own default.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Most records handled (and acknowledged) as one unit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long to wait for more records once one arrived.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Outputs and input offsets commit in one Kafka transaction, and
    /// nothing between the collector and conversions.status is written
    /// twice. `false` writes at-least-once (each output acknowledged, then
    /// the offset stored), for brokers without transactions.
    #[serde(default = "yes")]
    pub exactly_once: bool,
    /// This instance's name among its group's live members (a StatefulSet
    /// pod's name): with a stable one, a restarted instance aborts at once
    /// what its previous life left open (its transactional id is
    /// `<group>.<instance_id>`). Default: made up per start. Never the same
    /// for two live instances: each would fence the other.
    #[serde(default)]
    pub instance_id: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_max_batch() -> usize {
    1000
}
fn default_linger_ms() -> u64 {
    5
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            max_batch: default_max_batch(),
            linger_ms: default_linger_ms(),
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
        if self.max_batch == 0 || self.max_batch > 10_000 {
            return Err(ConfigError::invalid(
                "consumer.max_batch",
                "must be between 1 and 10000",
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
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    #[serde(default = "default_ops_listen")]
    pub listen: SocketAddr,
}

fn default_ops_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: default_ops_listen(),
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
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info,postback_collector=debug`.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        kafka: KafkaConfig,
        #[serde(default)]
        ops: OpsConfig,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.kafka.validate()
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = write("[kafka]\nbootstrap_servers = \"a:1\"\n");
        let cfg: Sample = load_from(
            Some(f.path()),
            vec![("POSTBACK_KAFKA__BOOTSTRAP_SERVERS".into(), "b:2,c:3".into())],
        )
        .unwrap();
        assert_eq!(cfg.kafka.bootstrap_servers, "b:2,c:3");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let f = write("[ops]\nlisten = 12\n");
        let err = load_from::<Sample>(Some(f.path()), vec![]).unwrap_err();
        assert_eq!(err.key(), Some("ops.listen"), "{err}");
        let ok: Sample = load_from(None, vec![]).unwrap();
        assert_eq!(ok.ops.listen.port(), 9090);
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let f = write("[kafka]\nbootstrap_server = \"a:1\"\n");
        let err = load_from::<Sample>(Some(f.path()), vec![]).unwrap_err();
        assert!(err.to_string().contains("bootstrap_server"), "{err}");
    }

    #[test]
    fn sasl_settings_are_checked_and_the_password_never_shown() {
        let err = load_from::<Sample>(
            None,
            vec![(
                "POSTBACK_KAFKA__SECURITY_PROTOCOL".into(),
                "sasl_ssl".into(),
            )],
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("kafka.sasl"), "{err}");
        let cfg: Sample = load_from(
            None,
            vec![
                (
                    "POSTBACK_KAFKA__SECURITY_PROTOCOL".into(),
                    "sasl_ssl".into(),
                ),
                (
                    "POSTBACK_KAFKA__SASL__MECHANISM".into(),
                    "SCRAM-SHA-512".into(),
                ),
                ("POSTBACK_KAFKA__SASL__USERNAME".into(), "svc".into()),
                (
                    "POSTBACK_KAFKA__SASL__PASSWORD".into(),
                    "hunter2-sasl".into(),
                ),
                ("POSTBACK_KAFKA__COMPRESSION".into(), "zstd".into()),
            ],
        )
        .unwrap();
        let shown = format!("{:?}", cfg.kafka);
        assert!(!shown.contains("hunter2-sasl"), "{shown}");
        assert!(shown.contains("ScramSha512"), "{shown}");
        let client = cfg.kafka.client_config();
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.password"), Some("hunter2-sasl"));
        assert_eq!(cfg.kafka.compression, Compression::Zstd);
        let err = load_from::<Sample>(
            None,
            vec![("POSTBACK_KAFKA__COMPRESSION".into(), "brotli".into())],
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("kafka.compression"), "{err}");
    }

    #[test]
    fn a_property_that_has_its_own_key_is_refused_and_secret_properties_are_hidden() {
        let f = write("[kafka.properties]\n\"compression.type\" = \"gzip\"\n");
        let err = load_from::<Sample>(Some(f.path()), vec![]).unwrap_err();
        assert_eq!(
            err.key(),
            Some("kafka.properties.compression.type"),
            "{err}"
        );
        let f = write("[kafka.properties]\n\"ssl.key.password\" = \"k3y-pass\"\n");
        let cfg: Sample = load_from(Some(f.path()), vec![]).unwrap();
        let shown = format!("{:?}", cfg.kafka);
        assert!(
            !shown.contains("k3y-pass") && shown.contains("ssl.key.password"),
            "{shown}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let err = load_from::<Sample>(
            None,
            vec![("POSTBACK_KAFKA__BOOTSTRAP_SERVERS".into(), "nohost".into())],
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("kafka.bootstrap_servers"), "{err}");
    }
}
