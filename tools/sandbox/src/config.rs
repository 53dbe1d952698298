//! The sandbox's configuration: a TOML file (see sandbox.example.toml) plus
//! `POSTBACK_` environment overrides, validated at start-up with errors that
//! name the bad key.

use std::collections::HashSet;
use std::net::SocketAddr;

use postback_core::config::{ConfigError, LogConfig, Validate};
use postback_core::Platform;
use serde::{Deserialize, Serialize};

use crate::faults::{FaultSpec, InjectedError};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub http: HttpConfig,
    pub log: LogConfig,
    pub rules: RulesConfig,
    pub meta: MetaConfig,
    pub google_ads: GoogleAdsConfig,
    pub tiktok: TiktokConfig,
    /// Quotas, latency, error rates and outages per platform account.
    pub faults: Vec<FaultRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The platform endpoints, the admin API and /healthz /readyz /metrics share it.
    pub listen: SocketAddr,
    /// Larger bodies get HTTP 413; a full Google batch of 2,000 rows is ~2 MB.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// How long Meta and TikTok remember an event id for dedup (48 h on both).
    pub dedup_window_secs: u64,
    /// How far ahead of the sandbox clock an event time may be.
    pub max_future_secs: u64,
    /// Accepted events, duplicates and rejections kept for the admin API
    /// (each list separately); the oldest go first.
    pub max_records: usize,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dedup_window_secs: 48 * 3600,
            max_future_secs: 300,
            max_records: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    pub pixels: Vec<MetaPixel>,
    /// The Graph API error code of a throttled request. The reference lists
    /// 4, 17 and 341 (32 and 613 seen in the wild); 17 is the per-account one.
    pub throttle_code: i64,
    /// The reference leaves the HTTP status of a Meta throttle open ([?]);
    /// dispatchers must key on the code. 429 unless configured.
    pub throttle_http_status: u16,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            pixels: Vec::new(),
            throttle_code: 17,
            throttle_http_status: 429,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaPixel {
    pub pixel_id: String,
    pub access_tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleAdsConfig {
    /// Accepted `developer-token` header values.
    pub developer_tokens: Vec<String>,
    /// Lifetime of access tokens issued by POST /token.
    pub access_token_lifetime_secs: u64,
    pub oauth_clients: Vec<OAuthClient>,
    /// Bearer tokens that never expire, for curl sessions; dispatchers
    /// should go through /token so refresh is exercised.
    pub static_access_tokens: Vec<String>,
    pub customers: Vec<GoogleCustomer>,
}

impl Default for GoogleAdsConfig {
    fn default() -> Self {
        GoogleAdsConfig {
            developer_tokens: Vec::new(),
            access_token_lifetime_secs: 3600,
            oauth_clients: Vec::new(),
            static_access_tokens: Vec::new(),
            customers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleCustomer {
    /// Ten digits, no dashes, as in the request path.
    pub customer_id: String,
    /// Conversion action ids (the last path segment of
    /// `customers/{cid}/conversionActions/{id}`).
    pub conversion_actions: Vec<String>,
    /// When false, uploads with user identifiers fail with
    /// CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS.
    #[serde(default = "yes")]
    pub customer_data_terms_accepted: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TiktokConfig {
    pub pixels: Vec<TiktokPixel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiktokPixel {
    /// The `event_source_id` of requests.
    pub pixel_code: String,
    pub access_tokens: Vec<String>,
}

/// One `[[faults]]` entry. An account's own rule replaces the platform's "*"
/// rule as a whole (fields are not merged).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub platform: Platform,
    /// Meta pixel id, Google customer id, TikTok pixel code, or "*".
    #[serde(default = "default_account")]
    pub account: String,
    #[serde(default)]
    pub quota_per_sec: Option<u32>,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub error: InjectedError,
    /// An outage starting when the sandbox starts, lasting this long.
    #[serde(default)]
    pub outage_secs: Option<u64>,
    /// An outage until this Unix time (seconds).
    #[serde(default)]
    pub outage_until: Option<i64>,
}

fn default_account() -> String {
    "*".into()
}

impl FaultRule {
    pub fn spec(&self) -> FaultSpec {
        FaultSpec {
            quota_per_sec: self.quota_per_sec,
            latency_ms: self.latency_ms,
            error_rate: self.error_rate,
            error: self.error,
            outage_secs: self.outage_secs,
            outage_until: self.outage_until,
        }
    }
}

fn non_empty_unique(key: &str, values: &[String], what: &str) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, v) in values.iter().enumerate() {
        if v.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("{what} must not be empty"),
            ));
        }
        if !seen.insert(v) {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("{what} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl Validate for SandboxConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "http.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.rules.dedup_window_secs == 0 {
            return Err(ConfigError::invalid(
                "rules.dedup_window_secs",
                "must be at least 1",
            ));
        }
        if self.rules.max_records == 0 {
            return Err(ConfigError::invalid(
                "rules.max_records",
                "must be at least 1",
            ));
        }
        if !(400..=599).contains(&self.meta.throttle_http_status) {
            return Err(ConfigError::invalid(
                "meta.throttle_http_status",
                "must be an HTTP error status (400-599)",
            ));
        }
        let mut pixels = HashSet::new();
        for (i, p) in self.meta.pixels.iter().enumerate() {
            if !digits(&p.pixel_id) {
                return Err(ConfigError::invalid(
                    format!("meta.pixels[{i}].pixel_id"),
                    "must be the pixel's numeric id",
                ));
            }
            if !pixels.insert(&p.pixel_id) {
                return Err(ConfigError::invalid(
                    format!("meta.pixels[{i}].pixel_id"),
                    "is listed twice",
                ));
            }
            non_empty_unique(
                &format!("meta.pixels[{i}].access_tokens"),
                &p.access_tokens,
                "an access token",
            )?;
        }
        let g = &self.google_ads;
        non_empty_unique(
            "google_ads.developer_tokens",
            &g.developer_tokens,
            "a developer token",
        )?;
        non_empty_unique(
            "google_ads.static_access_tokens",
            &g.static_access_tokens,
            "an access token",
        )?;
        if g.access_token_lifetime_secs == 0 {
            return Err(ConfigError::invalid(
                "google_ads.access_token_lifetime_secs",
                "must be at least 1",
            ));
        }
        let mut clients = HashSet::new();
        for (i, c) in g.oauth_clients.iter().enumerate() {
            if c.client_id.trim().is_empty() || !clients.insert(&c.client_id) {
                return Err(ConfigError::invalid(
                    format!("google_ads.oauth_clients[{i}].client_id"),
                    "must be non-empty and unique",
                ));
            }
            if c.client_secret.is_empty() {
                return Err(ConfigError::invalid(
                    format!("google_ads.oauth_clients[{i}].client_secret"),
                    "must not be empty",
                ));
            }
            non_empty_unique(
                &format!("google_ads.oauth_clients[{i}].refresh_tokens"),
                &c.refresh_tokens,
                "a refresh token",
            )?;
        }
        let mut customers = HashSet::new();
        for (i, c) in g.customers.iter().enumerate() {
            if !digits(&c.customer_id) || !customers.insert(&c.customer_id) {
                return Err(ConfigError::invalid(
                    format!("google_ads.customers[{i}].customer_id"),
                    "must be digits only (no dashes) and unique",
                ));
            }
            for (j, a) in c.conversion_actions.iter().enumerate() {
                if !digits(a) {
                    return Err(ConfigError::invalid(
                        format!("google_ads.customers[{i}].conversion_actions[{j}]"),
                        "must be a numeric conversion action id",
                    ));
                }
            }
        }
        let mut codes = HashSet::new();
        for (i, p) in self.tiktok.pixels.iter().enumerate() {
            let ok =
                !p.pixel_code.is_empty() && p.pixel_code.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok || !codes.insert(&p.pixel_code) {
                return Err(ConfigError::invalid(
                    format!("tiktok.pixels[{i}].pixel_code"),
                    "must be a non-empty alphanumeric code, listed once",
                ));
            }
            non_empty_unique(
                &format!("tiktok.pixels[{i}].access_tokens"),
                &p.access_tokens,
                "an access token",
            )?;
        }
        let mut rules = HashSet::new();
        for (i, f) in self.faults.iter().enumerate() {
            if f.account.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("faults[{i}].account"),
                    "must be an account id or \"*\"",
                ));
            }
            if !rules.insert((f.platform, &f.account)) {
                return Err(ConfigError::invalid(
                    format!("faults[{i}].account"),
                    "this platform and account already have a rule",
                ));
            }
            f.spec().check().map_err(|(field, why)| {
                ConfigError::invalid(format!("faults[{i}].{field}"), why)
            })?;
        }
        Ok(())
    }
}

impl postback_core::config::PlainConfiguration for SandboxConfig {}

impl postback_core::service::ServiceConfig for SandboxConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> SocketAddr {
        self.http.listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<SandboxConfig, ConfigError> {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        postback_core::config::load_from(Some(f.path()), vec![])
    }

    #[test]
    fn the_example_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox.example.toml");
        let cfg: SandboxConfig =
            postback_core::config::load_from(Some(&path), vec![]).expect("example config");
        assert!(!cfg.meta.pixels.is_empty());
        assert!(!cfg.google_ads.customers.is_empty());
        assert!(!cfg.tiktok.pixels.is_empty());
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let cfg = load("").expect("defaults");
        assert_eq!(cfg.rules.dedup_window_secs, 172_800);
        assert_eq!(cfg.google_ads.access_token_lifetime_secs, 3600);
    }

    #[test]
    fn errors_name_the_key() {
        let err = load("[[faults]]\nplatform = \"meta\"\nerror_rate = 1.5\n").unwrap_err();
        assert_eq!(err.key(), Some("faults[0].error_rate"), "{err}");
        let err =
            load("[[meta.pixels]]\npixel_id = \"12a\"\naccess_tokens = [\"t\"]\n").unwrap_err();
        assert_eq!(err.key(), Some("meta.pixels[0].pixel_id"), "{err}");
        let err = load("[rules]\ndedup_window = 5\n").unwrap_err();
        assert!(err.to_string().contains("dedup_window"), "{err}");
    }

    #[test]
    fn environment_overrides_apply() {
        let cfg: SandboxConfig = postback_core::config::load_from(
            None,
            vec![("POSTBACK_RULES__DEDUP_WINDOW_SECS".into(), "60".into())],
        )
        .expect("env");
        assert_eq!(cfg.rules.dedup_window_secs, 60);
    }
}
