//! Per-account quotas, added latency, injected errors and outages: the
//! conditions a dispatcher has to survive in production, on demand.
//!
//! The quota is a sliding one-second window of admitted requests: with a
//! quota of N, no span of 1,000 ms ever admits more than N, and the N+1th
//! request inside it gets the platform's throttle answer. Throttled requests
//! do not count against the window (the platforms meter work done, and a
//! client hammering a throttled account must still get back in once it slows).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postback_core::Platform;
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, SandboxClock};
use crate::ids::Ids;

pub const ANY_ACCOUNT: &str = "*";

/// What an injected failure looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum InjectedError {
    /// HTTP 500 in the platform's error shape.
    #[serde(rename = "500", alias = "internal")]
    Internal,
    /// HTTP 503 in the platform's error shape.
    #[default]
    #[serde(rename = "503", alias = "unavailable")]
    Unavailable,
    /// The platform's own throttle answer (as if the quota were exceeded).
    #[serde(rename = "throttle")]
    Throttle,
}

/// The faults of one platform account (or of every account, under "*").
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Requests per second admitted; the rest get the platform's throttle error.
    pub quota_per_sec: Option<u32>,
    /// Added to every request before it is answered.
    pub latency_ms: u64,
    /// Share of requests (0.0-1.0) answered with `error`.
    pub error_rate: f64,
    pub error: InjectedError,
    /// Every request answers 503 for this long from when the rule is set.
    pub outage_secs: Option<u64>,
    /// Every request answers 503 until this Unix time (seconds).
    pub outage_until: Option<i64>,
}

impl FaultSpec {
    /// The first bad field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(q) = self.quota_per_sec {
            if q == 0 || q > 1_000_000 {
                return Err(("quota_per_sec", "must be between 1 and 1000000".into()));
            }
        }
        if self.latency_ms > 600_000 {
            return Err(("latency_ms", "must be at most 600000 (10 minutes)".into()));
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(("error_rate", "must be between 0.0 and 1.0".into()));
        }
        if self.outage_secs.is_some() && self.outage_until.is_some() {
            return Err((
                "outage_until",
                "set either outage_secs or outage_until, not both".into(),
            ));
        }
        if let Some(s) = self.outage_secs {
            if s > 366 * 86_400 {
                return Err(("outage_secs", "must be at most a year".into()));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Active {
    spec: FaultSpec,
    outage_until_ms: Option<i64>,
}

/// A rule as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultView {
    pub platform: Platform,
    pub account: String,
    pub quota_per_sec: Option<u32>,
    pub latency_ms: u64,
    pub error_rate: f64,
    pub error: InjectedError,
    /// RFC 3339; absent when there is no outage (or it is over).
    pub outage_until: Option<String>,
}

/// What to do with a request before looking at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Outage,
    Throttled { retry_after_secs: u64 },
    Injected(InjectedError),
}

type Key = (Platform, String);

pub struct Faults {
    rules: Mutex<HashMap<Key, Active>>,
    windows: Mutex<HashMap<Key, VecDeque<i64>>>,
    ids: Arc<Ids>,
}

const WINDOW_MS: i64 = 1000;

impl Faults {
    pub fn new(ids: Arc<Ids>) -> Self {
        Faults {
            rules: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            ids,
        }
    }

    pub fn set(&self, platform: Platform, account: &str, spec: FaultSpec, now_ms: i64) {
        let outage_until_ms = match (spec.outage_secs, spec.outage_until) {
            (Some(secs), _) => {
                Some(now_ms.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX / 1000) * 1000))
            }
            (None, Some(until)) => Some(until.saturating_mul(1000)),
            (None, None) => None,
        };
        let key = (platform, account.to_owned());
        if let Ok(mut windows) = self.windows.lock() {
            // A new quota starts with a fresh window, so a test that lowers
            // the quota is not throttled by what an earlier rule admitted.
            windows
                .retain(|(p, a), _| !(*p == platform && (account == ANY_ACCOUNT || a == account)));
        }
        if let Ok(mut rules) = self.rules.lock() {
            rules.insert(
                key,
                Active {
                    spec,
                    outage_until_ms,
                },
            );
        }
    }

    /// Removes one rule; true if there was one.
    pub fn clear(&self, platform: Platform, account: &str) -> bool {
        self.rules
            .lock()
            .map(|mut r| r.remove(&(platform, account.to_owned())).is_some())
            .unwrap_or(false)
    }

    pub fn clear_all(&self) {
        if let Ok(mut r) = self.rules.lock() {
            r.clear();
        }
        self.reset_windows();
    }

    pub fn reset_windows(&self) {
        if let Ok(mut w) = self.windows.lock() {
            w.clear();
        }
    }

    pub fn list(&self, now_ms: i64) -> Vec<FaultView> {
        let rules = match self.rules.lock() {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        let mut views: Vec<FaultView> = rules
            .iter()
            .map(|((platform, account), a)| FaultView {
                platform: *platform,
                account: account.clone(),
                quota_per_sec: a.spec.quota_per_sec,
                latency_ms: a.spec.latency_ms,
                error_rate: a.spec.error_rate,
                error: a.spec.error,
                outage_until: a.outage_until_ms.filter(|u| *u > now_ms).map(rfc3339),
            })
            .collect();
        views.sort_by(|a, b| (a.platform, &a.account).cmp(&(b.platform, &b.account)));
        views
    }

    fn rule_for(&self, platform: Platform, account: &str) -> Option<Active> {
        let rules = self.rules.lock().ok()?;
        rules
            .get(&(platform, account.to_owned()))
            .or_else(|| rules.get(&(platform, ANY_ACCOUNT.to_owned())))
            .cloned()
    }

    /// Applies the account's rule: waits out the added latency, then decides
    /// whether the request is in an outage, over quota, or picked to fail.
    pub async fn apply(&self, clock: &SandboxClock, platform: Platform, account: &str) -> Verdict {
        let Some(rule) = self.rule_for(platform, account) else {
            return Verdict::Pass;
        };
        if rule.spec.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rule.spec.latency_ms)).await;
        }
        let now = clock.now_ms();
        if rule.outage_until_ms.is_some_and(|until| until > now) {
            return Verdict::Outage;
        }
        if let Some(quota) = rule.spec.quota_per_sec {
            if let Some(retry_after_secs) = self.over_quota(platform, account, quota, now) {
                return Verdict::Throttled { retry_after_secs };
            }
        }
        if rule.spec.error_rate > 0.0 && self.ids.unit() < rule.spec.error_rate {
            return Verdict::Injected(rule.spec.error);
        }
        Verdict::Pass
    }

    /// Admits the request into the account's window, or says how many whole
    /// seconds until the window has room again.
    fn over_quota(&self, platform: Platform, account: &str, quota: u32, now: i64) -> Option<u64> {
        let mut windows = self.windows.lock().ok()?;
        let window = windows.entry((platform, account.to_owned())).or_default();
        while window.front().is_some_and(|t| *t <= now - WINDOW_MS) {
            window.pop_front();
        }
        if window.len() < quota as usize {
            window.push_back(now);
            return None;
        }
        let oldest = window.front().copied().unwrap_or(now);
        let wait_ms = (oldest + WINDOW_MS - now).max(1);
        Some(((wait_ms + 999) / 1000) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn setup() -> (Faults, SandboxClock, Arc<ManualClock>) {
        let manual = Arc::new(ManualClock::new(1_700_000_000_000));
        let clock = SandboxClock::new(manual.clone());
        (Faults::new(Arc::new(Ids::new(3))), clock, manual)
    }

    #[tokio::test]
    async fn a_quota_admits_exactly_n_per_second() {
        let (faults, clock, manual) = setup();
        let spec = FaultSpec {
            quota_per_sec: Some(5),
            ..FaultSpec::default()
        };
        faults.set(Platform::Meta, ANY_ACCOUNT, spec, clock.now_ms());
        let mut passed = 0;
        for _ in 0..20 {
            if faults.apply(&clock, Platform::Meta, "1").await == Verdict::Pass {
                passed += 1;
            }
        }
        assert_eq!(passed, 5);
        // Another account has its own window under the "*" rule.
        assert_eq!(
            faults.apply(&clock, Platform::Meta, "2").await,
            Verdict::Pass
        );
        manual.advance_ms(999);
        assert!(matches!(
            faults.apply(&clock, Platform::Meta, "1").await,
            Verdict::Throttled {
                retry_after_secs: 1
            }
        ));
        manual.advance_ms(1);
        assert_eq!(
            faults.apply(&clock, Platform::Meta, "1").await,
            Verdict::Pass
        );
    }

    #[tokio::test]
    async fn an_account_rule_overrides_the_default() {
        let (faults, clock, manual) = setup();
        let outage = FaultSpec {
            outage_secs: Some(10),
            ..FaultSpec::default()
        };
        faults.set(Platform::Tiktok, ANY_ACCOUNT, outage, clock.now_ms());
        faults.set(
            Platform::Tiktok,
            "OK1",
            FaultSpec::default(),
            clock.now_ms(),
        );
        assert_eq!(
            faults.apply(&clock, Platform::Tiktok, "X").await,
            Verdict::Outage
        );
        assert_eq!(
            faults.apply(&clock, Platform::Tiktok, "OK1").await,
            Verdict::Pass
        );
        assert_eq!(
            faults.apply(&clock, Platform::Meta, "X").await,
            Verdict::Pass
        );
        manual.advance_ms(10_000);
        assert_eq!(
            faults.apply(&clock, Platform::Tiktok, "X").await,
            Verdict::Pass
        );
    }

    #[tokio::test]
    async fn error_rates_of_zero_and_one_are_exact() {
        let (faults, clock, _) = setup();
        let always = FaultSpec {
            error_rate: 1.0,
            error: InjectedError::Internal,
            ..FaultSpec::default()
        };
        faults.set(Platform::GoogleAds, ANY_ACCOUNT, always, clock.now_ms());
        for _ in 0..100 {
            assert_eq!(
                faults.apply(&clock, Platform::GoogleAds, "1").await,
                Verdict::Injected(InjectedError::Internal)
            );
        }
        faults.set(
            Platform::GoogleAds,
            ANY_ACCOUNT,
            FaultSpec::default(),
            clock.now_ms(),
        );
        for _ in 0..100 {
            assert_eq!(
                faults.apply(&clock, Platform::GoogleAds, "1").await,
                Verdict::Pass
            );
        }
    }

    #[test]
    fn specs_are_checked() {
        let bad = FaultSpec {
            quota_per_sec: Some(0),
            ..FaultSpec::default()
        };
        assert_eq!(bad.check().map_err(|e| e.0), Err("quota_per_sec"));
        let bad = FaultSpec {
            outage_secs: Some(1),
            outage_until: Some(1),
            ..FaultSpec::default()
        };
        assert_eq!(bad.check().map_err(|e| e.0), Err("outage_until"));
    }
}
