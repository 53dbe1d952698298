//! The enricher's configuration: which platforms each tenant uses, what
//! missing consent means for it, and each platform's acceptance window.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use postback_core::config::{
    ConfigError, ConsumerConfig, KafkaConfig, LogConfig, OpsConfig, TopicsConfig, Validate,
};
use postback_core::eligibility::PlatformWindows;
use postback_core::Platform;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnricherConfig {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default = "default_ops")]
    pub ops: OpsConfig,
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub platforms: PlatformWindows,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

fn default_ops() -> OpsConfig {
    OpsConfig {
        listen: SocketAddr::from(([0, 0, 0, 0], 9091)),
    }
}

/// What a consent flag that the event does not carry is taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentDefault {
    Granted,
    Denied,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConsent {
    /// ISO alpha-2 countries this rule covers (e.g. the EEA).
    pub countries: Vec<String>,
    pub default: ConsentDefault,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConsent {
    /// Missing consent outside the listed regions. Denied by default: a
    /// conversion is only uploaded with a positive signal unless the tenant
    /// says otherwise.
    #[serde(default = "denied")]
    pub default: ConsentDefault,
    #[serde(default)]
    pub regions: Vec<RegionConsent>,
}

fn denied() -> ConsentDefault {
    ConsentDefault::Denied
}

impl Default for TenantConsent {
    fn default() -> Self {
        TenantConsent {
            default: ConsentDefault::Denied,
            regions: Vec::new(),
        }
    }
}

impl TenantConsent {
    /// The default that applies to an event from `country` (any case).
    pub fn default_for(&self, country: Option<&str>) -> ConsentDefault {
        if let Some(c) = country {
            for r in &self.regions {
                if r.countries.iter().any(|rc| rc.eq_ignore_ascii_case(c)) {
                    return r.default;
                }
            }
        }
        self.default
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Completes phone numbers without a country code and picks the consent
    /// region when the event has no user.country.
    #[serde(default)]
    pub default_country: Option<String>,
    /// The platforms this tenant uploads to.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    #[serde(default)]
    pub consent: TenantConsent,
}

impl EnricherConfig {
    pub fn tenants(&self) -> BTreeMap<String, TenantConfig> {
        self.tenants
            .iter()
            .map(|t| (t.id.clone(), t.clone()))
            .collect()
    }
}

fn is_alpha2(s: &str) -> bool {
    s.len() == 2 && s.chars().all(|c| c.is_ascii_alphabetic())
}

impl Validate for EnricherConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        self.consumer.validate()?;
        self.platforms.validate()?;
        let mut seen = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.id.is_empty() || !seen.insert(t.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("tenants[{i}].id"),
                    "must be set and unique",
                ));
            }
            if let Some(c) = &t.default_country {
                if !is_alpha2(c) {
                    return Err(ConfigError::invalid(
                        format!("tenants[{i}].default_country"),
                        format!("`{c}` is not an ISO 3166-1 alpha-2 code"),
                    ));
                }
            }
            for (j, r) in t.consent.regions.iter().enumerate() {
                for (k, c) in r.countries.iter().enumerate() {
                    if !is_alpha2(c) {
                        return Err(ConfigError::invalid(
                            format!("tenants[{i}].consent.regions[{j}].countries[{k}]"),
                            format!("`{c}` is not an ISO 3166-1 alpha-2 code"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl postback_core::service::ServiceConfig for EnricherConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> SocketAddr {
        self.ops.listen
    }
}
