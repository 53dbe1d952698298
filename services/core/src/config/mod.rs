//! Configuration: a TOML file plus `POSTBACK_` environment overrides
//! (`POSTBACK_KAFKA__BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`),
//! validated at start-up. Every error names the key it is about, so a typo in
//! a deployment fails loudly at boot instead of misbehaving at 3 a.m., and no
//! error ever repeats the value it refused (it may be a token put under the
//! wrong key).
//!
//! One loader ([`load_from`]) reads every service's file. A Kafka stage's
//! configuration is a [`StageConfig`]: the sections every stage shares
//! (`[kafka]`, `[topics]`, `[log]`, `[ops]`, `[consumer]`, `[platforms]`)
//! beside the stage's own, a plain struct. A service that is no stage (the
//! collector, the sandbox) is a plain struct that embeds what it shares.

mod kafka;
mod keys;
mod loader;
mod sections;
mod stage;

pub use kafka::{Compression, KafkaConfig, SaslConfig, SaslMechanism, Secret, SecurityProtocol};
pub use keys::{validate_keys, validate_tenant, TenantKey, MIN_KEY_LEN};
#[cfg(test)]
use loader::test_sample;
pub use loader::{
    config_path_from_args, load, load_from, load_toml, Configuration, PlainConfiguration, Sources,
    ENV_PREFIX,
};
pub use sections::{
    validate_topic_name, ConsumerConfig, LogConfig, LogFormat, OpsConfig, TopicsConfig,
};
pub use stage::{Stage, StageConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
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
