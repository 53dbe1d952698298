//! The enricher's configuration: which platforms each tenant uses, what
//! missing consent means for it, and each platform's acceptance window.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use postback_core::config::{
    ConfigError, KafkaConfig, LogConfig, OpsConfig, TopicsConfig, Validate,
};
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    #[serde(default = "default_group")]
    pub group_id: String,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

fn default_group() -> String {
    "postback-enricher".into()
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
            group_id: default_group(),
            max_batch: default_max_batch(),
            linger_ms: default_linger_ms(),
        }
    }
}

/// How old an event a platform still accepts (reference/platform-apis.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformWindows {
    /// Meta rejects events older than 7 days...
    #[serde(default = "meta_days")]
    pub meta_days: u32,
    /// ...except physical_store events, up to 62 days.
    #[serde(default = "meta_store_days")]
    pub meta_physical_store_days: u32,
    /// Google Ads click conversions: 90 days (EXPIRED_EVENT past it).
    #[serde(default = "google_days")]
    pub google_ads_days: u32,
    /// TikTok does not document a limit; ttclid is valid 7 days, so 7 by default.
    #[serde(default = "tiktok_days")]
    pub tiktok_days: u32,
}

fn meta_days() -> u32 {
    7
}
fn meta_store_days() -> u32 {
    62
}
fn google_days() -> u32 {
    90
}
fn tiktok_days() -> u32 {
    7
}

impl Default for PlatformWindows {
    fn default() -> Self {
        PlatformWindows {
            meta_days: meta_days(),
            meta_physical_store_days: meta_store_days(),
            google_ads_days: google_days(),
            tiktok_days: tiktok_days(),
        }
    }
}

impl PlatformWindows {
    /// How long after its event_time `platform` still accepts an event.
    pub fn window(&self, platform: Platform, action_source: Option<&str>) -> Duration {
        let days = match platform {
            Platform::Meta if action_source == Some("physical_store") => {
                self.meta_physical_store_days
            }
            Platform::Meta => self.meta_days,
            Platform::GoogleAds => self.google_ads_days,
            Platform::Tiktok => self.tiktok_days,
        };
        Duration::from_secs(u64::from(days) * 86_400)
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
        if self.consumer.max_batch == 0 || self.consumer.max_batch > 10_000 {
            return Err(ConfigError::invalid(
                "consumer.max_batch",
                "must be between 1 and 10000",
            ));
        }
        for (key, days) in [
            ("platforms.meta_days", self.platforms.meta_days),
            (
                "platforms.meta_physical_store_days",
                self.platforms.meta_physical_store_days,
            ),
            ("platforms.google_ads_days", self.platforms.google_ads_days),
            ("platforms.tiktok_days", self.platforms.tiktok_days),
        ] {
            if days == 0 || days > 400 {
                return Err(ConfigError::invalid(key, "must be between 1 and 400 days"));
            }
        }
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
