//! An account's quota, shared by every instance of the group without a
//! coordinator: an instance owning k of n input partitions paces itself at
//! k/n of the quota (times a headroom), and recomputes on every rebalance.
//! Partitions spread conversions evenly, so shares follow the work, and
//! since the group never assigns a partition twice the shares never add up
//! to more than one.
//!
//! The pace is a GCRA (governor) with a burst of one: in any second an
//! instance sends at most its rate plus one request, so N instances stay
//! under `headroom * quota + N`; the headroom absorbs the N.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Pacer {
    quota_per_sec: Option<f64>,
    headroom: f64,
    limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    /// Wakes the requests waiting on the previous pace when the share changes.
    changed: tokio::sync::Notify,
}

impl Pacer {
    pub fn new(quota_per_sec: Option<f64>, headroom: f64) -> Self {
        let pacer = Pacer {
            quota_per_sec,
            headroom,
            limiter: RwLock::new(None),
            changed: tokio::sync::Notify::new(),
        };
        pacer.set_share(1.0);
        pacer
    }

    /// Requests per second this instance allows itself at `share`.
    pub fn rate_at(&self, share: f64) -> Option<f64> {
        self.quota_per_sec
            .map(|q| q * share.clamp(0.0, 1.0) * self.headroom)
    }

    pub fn set_share(&self, share: f64) {
        let limiter = self.rate_at(share).map(|rate| {
            // Owning nothing, send (almost) nothing: one request a minute
            // for work already in hand when the partitions went away.
            let rate = rate.max(1.0 / 60.0);
            let period = Duration::from_secs_f64(1.0 / rate);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(quota))
        });
        match self.limiter.write() {
            Ok(mut l) => *l = limiter,
            Err(p) => *p.into_inner() = limiter,
        }
        self.changed.notify_waiters();
    }

    /// Waits for this instance's turn; returns how long it waited. A
    /// change of share wakes the wait and it goes on at the new pace (a
    /// request queued behind an instance's near-zero pace while it owned
    /// nothing must not sleep out that pace after partitions arrive).
    pub async fn wait(&self) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let limiter = match self.limiter.read() {
                Ok(l) => l.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let Some(limiter) = limiter else {
                return started.elapsed();
            };
            tokio::select! {
                _ = limiter.until_ready() => return started.elapsed(),
                _ = &mut changed => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_scale_the_rate() {
        let p = Pacer::new(Some(90.0), 0.9);
        assert_eq!(p.rate_at(1.0 / 3.0).map(|r| r.round()), Some(27.0));
        assert_eq!(Pacer::new(None, 0.9).rate_at(0.5), None);
    }

    #[tokio::test]
    async fn a_waiting_request_follows_a_new_share_at_once() {
        let p = Arc::new(Pacer::new(Some(1000.0), 1.0));
        p.set_share(0.0); // one request a minute
        p.wait().await; // the one
        let waiting = {
            let p = p.clone();
            tokio::spawn(async move { p.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.set_share(1.0);
        let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken by the new share")
            .expect("task");
        assert!(waited < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_pace_holds_after_a_change_of_share() {
        let p = Pacer::new(Some(1000.0), 1.0);
        p.set_share(0.05); // 50/s: 20 ms apart
        let started = tokio::time::Instant::now();
        for _ in 0..6 {
            p.wait().await;
        }
        // Five gaps of 20 ms after the first; generous bound for noisy hosts.
        assert!(started.elapsed() >= Duration::from_millis(90));
    }
}
