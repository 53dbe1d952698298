//! A tenant's account on the platform: its credentials, the pace its quota
//! allows this instance, how many requests may be in flight, how many of
//! its events this instance holds (its budget), and whether the platform
//! told it to back off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postback_core::Platform;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::adapters::Reason;
use crate::config::{DispatcherSections, GoogleAdsAccount, MetaAccount, TiktokAccount};
use crate::pacing::Pacer;

pub enum Credentials {
    Meta(MetaAccount),
    GoogleAds(GoogleAdsAccount),
    Tiktok(TiktokAccount),
}

pub struct Account {
    pub tenant: String,
    /// The platform's id of the account (pixel, customer); logs only.
    pub id: String,
    pub credentials: Credentials,
    pub pacer: Pacer,
    pub requests: Semaphore,
    /// Until when the platform wants this account left alone, and why.
    pause: Mutex<Option<(Instant, Reason)>>,
    throttle_streak: AtomicU32,
    /// Its events this instance holds (batched or in a request).
    held: AtomicUsize,
    budget: usize,
}

impl Account {
    fn new(
        tenant: &str,
        id: &str,
        credentials: Credentials,
        quota: Option<f64>,
        config: &DispatcherSections,
    ) -> Self {
        Account {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            credentials,
            pacer: Pacer::new(quota, config.dispatch.quota_headroom),
            requests: Semaphore::new(config.dispatch.max_concurrent_requests),
            pause: Mutex::new(None),
            throttle_streak: AtomicU32::new(0),
            held: AtomicUsize::new(0),
            budget: config.dispatch.max_pending_per_account,
        }
    }

    /// Until when, and why, the platform wants this account left alone, if
    /// later than now.
    pub fn paused(&self) -> Option<(Instant, Reason)> {
        let guard = match self.pause.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.clone().filter(|(t, _)| *t > Instant::now())
    }

    fn pause_until(&self, until: Instant, reason: &Reason) -> Instant {
        let mut guard = match self.pause.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let until = guard.as_ref().map_or(until, |(t, _)| (*t).max(until));
        *guard = Some((until, reason.clone()));
        until
    }

    /// The platform throttled a request: every request of the account waits
    /// `retry_after` if it said, else a pause that doubles while throttles
    /// keep coming. Returns when requests may go again.
    pub fn throttled(
        &self,
        retry_after: Option<Duration>,
        pause: Duration,
        reason: &Reason,
    ) -> Instant {
        let streak = self.throttle_streak.fetch_add(1, Ordering::Relaxed).min(6);
        let wait = retry_after.unwrap_or_else(|| pause.saturating_mul(2u32.pow(streak)));
        let until = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        self.pause_until(until, reason)
    }

    /// The platform failed a request (5xx, timeout, credentials): the other
    /// requests of the account hold back until `until` too, rather than each
    /// finding out on its own (one probe, not a stampede, while a platform
    /// is down).
    pub fn hold_until(&self, until: Instant, reason: &Reason) {
        self.pause_until(until, reason);
    }

    /// Takes one event into this instance's budget for the account; false
    /// when the budget is full (the event waits on the retry path).
    pub fn hold_event(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.budget).then_some(n + 1)
            })
            .is_ok()
    }

    /// Events of this account leave the instance's hands (an outcome, or
    /// their partition moved).
    pub fn release_events(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            });
    }

    pub fn held_events(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// A request went through: throttling is over.
    pub fn answered(&self) {
        self.throttle_streak.store(0, Ordering::Relaxed);
    }
}

/// Every configured account of the platform, by tenant.
pub struct Accounts {
    by_tenant: HashMap<String, Arc<Account>>,
}

impl Accounts {
    pub fn from_config(config: &DispatcherSections) -> Self {
        let accounts: Vec<(&String, &str, Credentials, Option<f64>)> = match config.platform() {
            Platform::Meta => config
                .meta
                .accounts
                .iter()
                .map(|(t, a)| {
                    (
                        t,
                        a.pixel_id.as_str(),
                        Credentials::Meta(a.clone()),
                        a.quota_per_sec,
                    )
                })
                .collect(),
            Platform::GoogleAds => config
                .google_ads
                .accounts
                .iter()
                .map(|(t, a)| {
                    let c = Credentials::GoogleAds(a.clone());
                    (t, a.customer_id.as_str(), c, a.quota_per_sec)
                })
                .collect(),
            Platform::Tiktok => config
                .tiktok
                .accounts
                .iter()
                .map(|(t, a)| {
                    (
                        t,
                        a.pixel_code.as_str(),
                        Credentials::Tiktok(a.clone()),
                        a.quota_per_sec,
                    )
                })
                .collect(),
        };
        let by_tenant = accounts
            .into_iter()
            .map(|(tenant, id, credentials, quota)| {
                let account = Account::new(tenant, id, credentials, quota, config);
                (tenant.clone(), Arc::new(account))
            })
            .collect();
        Accounts { by_tenant }
    }

    pub fn get(&self, tenant: &str) -> Option<&Arc<Account>> {
        self.by_tenant.get(tenant)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.by_tenant.values()
    }

    pub fn len(&self) -> usize {
        self.by_tenant.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tenant.is_empty()
    }

    /// This instance now owns `share` of the input partitions.
    pub fn set_share(&self, share: f64) {
        for a in self.by_tenant.values() {
            a.pacer.set_share(share);
        }
    }
}
