//! The broker connection every service shares, TLS and SASL included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validate};

/// Broker connection shared by every service.
///
/// Managed Kafka (MSK, Confluent Cloud, Aiven) takes TLS and SASL: set
/// `security_protocol` and the `[kafka.sasl]` table, e.g.
/// `POSTBACK_KAFKA__SASL__PASSWORD` from a secret. Anything else librdkafka
/// knows goes in `properties`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// How long the producer keeps retrying one record before reporting it
    /// failed (librdkafka `message.timeout.ms`).
    pub delivery_timeout_ms: u64,
    /// How long a transaction may stay open before the broker aborts it:
    /// also how long what a crashed instance left open holds up its
    /// readers (read committed), unless it restarts with the same
    /// `consumer.instance_id`.
    pub transaction_timeout_ms: u64,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials; required by the sasl_* protocols.
    pub sasl: Option<SaslConfig>,
    /// PEM file of the CA(s) that signed the brokers' certificates; the
    /// system's trust store when unset.
    pub ssl_ca_location: Option<PathBuf>,
    /// How producers compress record batches.
    pub compression: Compression,
    /// Extra librdkafka properties for every client.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers only (linger.ms, ...).
    pub producer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (fetch.max.bytes, ...).
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

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            delivery_timeout_ms: 30_000,
            transaction_timeout_ms: 30_000,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_toml;

    use crate::config::test_sample::Sample;

    #[test]
    fn sasl_settings_are_checked_and_the_password_never_shown() {
        let err = load_toml::<Sample>(
            "",
            vec![(
                "POSTBACK_KAFKA__SECURITY_PROTOCOL".into(),
                "sasl_ssl".into(),
            )],
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("kafka.sasl"), "{err}");
        let cfg: Sample = load_toml(
            "",
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
        let err = load_toml::<Sample>(
            "",
            vec![("POSTBACK_KAFKA__COMPRESSION".into(), "brotli".into())],
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("kafka.compression"), "{err}");
    }

    #[test]
    fn a_property_that_has_its_own_key_is_refused_and_secret_properties_are_hidden() {
        let err = load_toml::<Sample>(
            "[kafka.properties]\n\"compression.type\" = \"gzip\"\n",
            vec![],
        )
        .unwrap_err();
        assert_eq!(
            err.key(),
            Some("kafka.properties.compression.type"),
            "{err}"
        );
        let cfg: Sample = load_toml(
            "[kafka.properties]\n\"ssl.key.password\" = \"k3y-pass\"\n",
            vec![],
        )
        .unwrap();
        let shown = format!("{:?}", cfg.kafka);
        assert!(
            !shown.contains("k3y-pass") && shown.contains("ssl.key.password"),
            "{shown}"
        );
    }
}
