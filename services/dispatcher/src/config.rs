//! The dispatcher's configuration: which platform it serves, the accounts of
//! every tenant on that platform (credentials, ids, quota), and how it
//! batches, paces and retries.
//!
//! Accounts are tables keyed by tenant, so a secret can come from the
//! environment without touching the file:
//! `POSTBACK_META__ACCOUNTS__DEMO__ACCESS_TOKEN=...`.

use std::collections::BTreeMap;
use std::time::Duration;

use postback_core::config::{ConfigError, Stage, StageConfig, Validate};
use postback_core::Platform;
use serde::{Deserialize, Serialize};

/// A dispatcher's file: the sections every stage shares and these.
pub type DispatcherConfig = StageConfig<DispatcherSections>;

/// The dispatcher's own sections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DispatcherSections {
    /// The platform this instance serves (`--platform` sets it too).
    pub platform: Option<Platform>,
    pub dispatch: DispatchConfig,
    pub meta: MetaConfig,
    pub google_ads: GoogleAdsConfig,
    pub tiktok: TiktokConfig,
}

impl Stage for DispatcherSections {
    const OPS_PORT: u16 = 9094;

    /// One group per platform.
    fn default_group_id(&self) -> String {
        format!("postback-dispatcher-{}", self.platform().as_str())
    }
}

/// Batching, pacing and retries; the same for every platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Most events per request; 0 means the platform's own limit (Meta
    /// 1,000, Google Ads 2,000, TikTok 1,000), and more is capped to it.
    pub max_batch_events: usize,
    /// How long a batch that is not full waits for more events.
    pub linger_ms: u64,
    /// Events read and not yet committed with their outcome, over the
    /// whole instance; past it the consumer pauses (lag grows, memory does
    /// not). A last resort: per-account budgets keep it from filling.
    pub max_pending_events: usize,
    /// Events of one account in memory at once (batched or in a request);
    /// past it, its newly read events wait on the retry path, so a slow or
    /// broken account delays only its own conversions.
    pub max_pending_per_account: usize,
    /// Delays of the retry topics (`<dispatch topic>.retry-<delay>s`), in
    /// seconds, ascending: a conversion that has to wait goes to the one
    /// with the longest delay that does not exceed its wait, and onwards
    /// from there, so the main partition never waits for it.
    pub retry_tiers_secs: Vec<u64>,
    /// How often finished outcomes are committed (one transaction: their
    /// status records, retry records, dead letters and input offsets).
    pub commit_interval_ms: u64,
    /// Requests in flight per account at once.
    pub max_concurrent_requests: usize,
    /// One request's timeout (connect, send and answer).
    pub request_timeout_ms: u64,
    /// Failed attempts (5xx, timeouts, auth) after which a conversion is
    /// failed and dead-lettered for replay. Throttles never count.
    pub max_attempts: u32,
    /// First retry delay; doubles per failed attempt, with full jitter.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Pause after a throttle answer that says nothing about when to come back.
    pub throttle_pause_ms: u64,
    /// Share of the account quota actually used, so that the instances'
    /// pacing jitter never adds up to more than the quota.
    pub quota_headroom: f64,
    /// Split a rejected batch around the event the platform's error names
    /// (checked by sending it alone) before falling back to halving.
    pub use_error_index: bool,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_batch_events: 0,
            linger_ms: 250,
            max_pending_events: 50_000,
            max_pending_per_account: 10_000,
            retry_tiers_secs: vec![1, 10, 60, 600, 3600],
            commit_interval_ms: 100,
            max_concurrent_requests: 4,
            request_timeout_ms: 30_000,
            // With the default backoff (0.5 s doubling to 5 min): about an hour.
            max_attempts: 20,
            backoff_initial_ms: 500,
            backoff_max_ms: 300_000,
            throttle_pause_ms: 2_000,
            quota_headroom: 0.95,
            use_error_index: true,
        }
    }
}

impl DispatchConfig {
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn retry_tiers(&self) -> Vec<Duration> {
        self.retry_tiers_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect()
    }

    /// Most events per request on `platform`.
    pub fn batch_limit(&self, platform: Platform) -> usize {
        let max = platform_batch_limit(platform);
        match self.max_batch_events {
            0 => max,
            n => n.min(max),
        }
    }
}

/// The platform's documented maximum events per request.
pub fn platform_batch_limit(platform: Platform) -> usize {
    match platform {
        Platform::Meta => 1000,
        Platform::GoogleAds => 2000,
        Platform::Tiktok => 1000,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    pub base_url: String,
    pub api_version: String,
    /// Per tenant.
    pub accounts: BTreeMap<String, MetaAccount>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            base_url: "https://graph.facebook.com".into(),
            api_version: "v25.0".into(),
            accounts: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaAccount {
    pub pixel_id: String,
    pub access_token: String,
    /// Sends every event as a test event (Events Manager's Test Events tab).
    #[serde(default)]
    pub test_event_code: Option<String>,
    /// Requests per second for this pixel across all instances; none = unpaced.
    #[serde(default)]
    pub quota_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleAdsConfig {
    pub base_url: String,
    pub api_version: String,
    /// OAuth 2.0 token endpoint for the refresh-token grant.
    pub token_url: String,
    /// Refresh an access token this long before it expires.
    pub token_refresh_margin_secs: u64,
    pub accounts: BTreeMap<String, GoogleAdsAccount>,
}

impl Default for GoogleAdsConfig {
    fn default() -> Self {
        GoogleAdsConfig {
            base_url: "https://googleads.googleapis.com".into(),
            api_version: "v23".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            token_refresh_margin_secs: 300,
            accounts: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleAdsAccount {
    /// Digits only, no dashes.
    pub customer_id: String,
    /// The manager account, when the customer is reached through one.
    #[serde(default)]
    pub login_customer_id: Option<String>,
    pub developer_token: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// Conversion action id per event name (`Purchase = "111111111"`);
    /// events with no action are not sent (not_eligible, platform_not_configured).
    #[serde(default)]
    pub conversion_actions: BTreeMap<String, String>,
    #[serde(default)]
    pub quota_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TiktokConfig {
    pub base_url: String,
    pub accounts: BTreeMap<String, TiktokAccount>,
}

impl Default for TiktokConfig {
    fn default() -> Self {
        TiktokConfig {
            base_url: "https://business-api.tiktok.com".into(),
            accounts: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiktokAccount {
    pub pixel_code: String,
    pub access_token: String,
    #[serde(default)]
    pub test_event_code: Option<String>,
    #[serde(default)]
    pub quota_per_sec: Option<f64>,
}

// Credentials never reach a log line, not even a Debug one.
macro_rules! redacted_debug {
    ($t:ty, $id:ident) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field(stringify!($id), &self.$id)
                    .finish_non_exhaustive()
            }
        }
    };
}
redacted_debug!(MetaAccount, pixel_id);
redacted_debug!(GoogleAdsAccount, customer_id);
redacted_debug!(TiktokAccount, pixel_code);

impl DispatcherSections {
    /// The platform, once validated.
    pub fn platform(&self) -> Platform {
        self.platform.unwrap_or(Platform::Meta)
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.ends_with('/') {
        return Err(ConfigError::invalid(
            key,
            "must be an http(s) URL without a trailing slash",
        ));
    }
    Ok(())
}

fn check_quota(key: String, quota: Option<f64>) -> Result<(), ConfigError> {
    if let Some(q) = quota {
        if !(q > 0.0 && q <= 1_000_000.0) {
            return Err(ConfigError::invalid(key, "must be between 0 and 1000000"));
        }
    }
    Ok(())
}

fn check_present(key: String, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must be set"));
    }
    Ok(())
}

fn check_digits(key: String, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::invalid(key, "must be digits only"));
    }
    Ok(())
}

impl Validate for DispatcherSections {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.platform.is_none() {
            return Err(ConfigError::invalid(
                "platform",
                "must be set (meta, google_ads or tiktok), in the file, POSTBACK_PLATFORM or --platform",
            ));
        }
        let d = &self.dispatch;
        if d.max_batch_events > 2000 {
            return Err(ConfigError::invalid(
                "dispatch.max_batch_events",
                "must be at most 2000 (0 = the platform's limit)",
            ));
        }
        if d.linger_ms > 60_000 {
            return Err(ConfigError::invalid(
                "dispatch.linger_ms",
                "must be at most 60000",
            ));
        }
        if !(1..=10_000_000).contains(&d.max_pending_events) {
            return Err(ConfigError::invalid(
                "dispatch.max_pending_events",
                "must be between 1 and 10000000",
            ));
        }
        if !(1..=10_000_000).contains(&d.max_pending_per_account) {
            return Err(ConfigError::invalid(
                "dispatch.max_pending_per_account",
                "must be between 1 and 10000000",
            ));
        }
        if d.retry_tiers_secs.is_empty()
            || d.retry_tiers_secs.len() > 8
            || d.retry_tiers_secs.windows(2).any(|w| w[0] >= w[1])
            || d.retry_tiers_secs.iter().any(|s| !(1..=86_400).contains(s))
        {
            return Err(ConfigError::invalid(
                "dispatch.retry_tiers_secs",
                "must be 1 to 8 ascending delays between 1 and 86400 seconds",
            ));
        }
        if !(10..=10_000).contains(&d.commit_interval_ms) {
            return Err(ConfigError::invalid(
                "dispatch.commit_interval_ms",
                "must be between 10 and 10000",
            ));
        }
        if !(1..=256).contains(&d.max_concurrent_requests) {
            return Err(ConfigError::invalid(
                "dispatch.max_concurrent_requests",
                "must be between 1 and 256",
            ));
        }
        if !(100..=600_000).contains(&d.request_timeout_ms) {
            return Err(ConfigError::invalid(
                "dispatch.request_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1..=1000).contains(&d.max_attempts) {
            return Err(ConfigError::invalid(
                "dispatch.max_attempts",
                "must be between 1 and 1000",
            ));
        }
        if d.backoff_initial_ms == 0 || d.backoff_initial_ms > d.backoff_max_ms {
            return Err(ConfigError::invalid(
                "dispatch.backoff_initial_ms",
                "must be at least 1 and at most dispatch.backoff_max_ms",
            ));
        }
        if d.backoff_max_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "dispatch.backoff_max_ms",
                "must be at most 3600000 (one hour)",
            ));
        }
        if d.throttle_pause_ms == 0 || d.throttle_pause_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "dispatch.throttle_pause_ms",
                "must be between 1 and 3600000",
            ));
        }
        if !(d.quota_headroom > 0.0 && d.quota_headroom <= 1.0) {
            return Err(ConfigError::invalid(
                "dispatch.quota_headroom",
                "must be in (0, 1]",
            ));
        }
        check_url("meta.base_url", &self.meta.base_url)?;
        check_url("google_ads.base_url", &self.google_ads.base_url)?;
        check_url("google_ads.token_url", &self.google_ads.token_url)?;
        check_url("tiktok.base_url", &self.tiktok.base_url)?;
        for (tenant, a) in &self.meta.accounts {
            let k = |f: &str| format!("meta.accounts.{tenant}.{f}");
            check_digits(k("pixel_id"), &a.pixel_id)?;
            check_present(k("access_token"), &a.access_token)?;
            check_quota(k("quota_per_sec"), a.quota_per_sec)?;
        }
        for (tenant, a) in &self.google_ads.accounts {
            let k = |f: &str| format!("google_ads.accounts.{tenant}.{f}");
            check_digits(k("customer_id"), &a.customer_id)?;
            if let Some(login) = &a.login_customer_id {
                check_digits(k("login_customer_id"), login)?;
            }
            check_present(k("developer_token"), &a.developer_token)?;
            check_present(k("client_id"), &a.client_id)?;
            check_present(k("client_secret"), &a.client_secret)?;
            check_present(k("refresh_token"), &a.refresh_token)?;
            for (event, action) in &a.conversion_actions {
                check_digits(k(&format!("conversion_actions.{event}")), action)?;
            }
            check_quota(k("quota_per_sec"), a.quota_per_sec)?;
        }
        for (tenant, a) in &self.tiktok.accounts {
            let k = |f: &str| format!("tiktok.accounts.{tenant}.{f}");
            check_present(k("pixel_code"), &a.pixel_code)?;
            check_present(k("access_token"), &a.access_token)?;
            check_quota(k("quota_per_sec"), a.quota_per_sec)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<DispatcherConfig, ConfigError> {
        load_env(toml, vec![])
    }

    fn load_env(toml: &str, env: Vec<(String, String)>) -> Result<DispatcherConfig, ConfigError> {
        postback_core::config::load_toml(toml, env)
    }

    #[test]
    fn the_platform_is_required_and_picks_the_group() {
        assert_eq!(load("").unwrap_err().key(), Some("platform"));
        let c = load("platform = \"google_ads\"").unwrap();
        assert_eq!(c.group_id(), "postback-dispatcher-google_ads");
        assert_eq!(c.stage.dispatch.batch_limit(Platform::GoogleAds), 2000);
        assert_eq!(c.stage.dispatch.batch_limit(Platform::Meta), 1000);
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        let c = load_env(
            "platform = \"meta\"\n[meta.accounts.demo]\npixel_id = \"123\"\naccess_token = \"from-file\"\n",
            vec![(
                "POSTBACK_META__ACCOUNTS__DEMO__ACCESS_TOKEN".into(),
                "EAAsecret".into(),
            )],
        )
        .unwrap();
        let account = &c.stage.meta.accounts["demo"];
        assert_eq!(account.access_token, "EAAsecret");
        let printed = format!("{c:?}");
        assert!(!printed.contains("EAAsecret") && printed.contains("123"));
    }

    #[test]
    fn errors_name_the_bad_key() {
        for (toml, key) in [
            ("[dispatch]\nmax_batch_events = 5000", "dispatch.max_batch_events"),
            ("[dispatch]\nquota_headroom = 1.5", "dispatch.quota_headroom"),
            ("[dispatch]\nmax_attempts = 0", "dispatch.max_attempts"),
            ("[meta]\nbase_url = \"graph\"", "meta.base_url"),
            (
                "[meta.accounts.shop]\npixel_id = \"12a\"\naccess_token = \"t\"",
                "meta.accounts.shop.pixel_id",
            ),
            (
                "[tiktok.accounts.shop]\npixel_code = \"P\"\naccess_token = \"t\"\nquota_per_sec = 0",
                "tiktok.accounts.shop.quota_per_sec",
            ),
            (
                "[google_ads.accounts.shop]\ncustomer_id = \"1\"\ndeveloper_token = \"d\"\nclient_id = \"c\"\nclient_secret = \"s\"\nrefresh_token = \"r\"\nconversion_actions = { Purchase = \"x\" }",
                "google_ads.accounts.shop.conversion_actions.Purchase",
            ),
        ] {
            let e = load(&format!("platform = \"meta\"\n{toml}")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{toml}: {e}");
        }
    }
}
