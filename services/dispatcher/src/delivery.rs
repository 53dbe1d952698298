//! Taking one batch of one account to a final outcome for every event in it.
//!
//! Per request: drop what this instance no longer owns, expire what the
//! platform would no longer take, wait out a throttle and the account's
//! pace, send, and act on the adapter's classification:
//!
//! - accepted: delivered, with the platform's request id;
//! - per-row answer (Google): each row its own outcome;
//! - whole batch rejected (Meta, TikTok): a lone event is rejected with the
//!   platform's reason; a larger batch is split and each part sent again.
//!   If the error names an event, that one goes alone and the rest together
//!   (two requests for one bad event); otherwise halves, which isolates one
//!   bad event in 1,000 within 2*log2(1000)+1 requests;
//! - throttled: the whole account pauses (Retry-After, or a doubling pause),
//!   and no event counts it as a failure;
//! - transient: retried with exponential backoff and jitter; past
//!   `max_attempts` the event is failed and dead-lettered for replay.

use std::sync::Arc;
use std::time::Duration;

use postback_core::model::now_millis;
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::adapters::{Adapter, Answer, Reason, RowResult};
use crate::config::DispatchConfig;
use crate::metrics::DispatchMetrics;
use crate::outcome::{Final, Outcomes};
use crate::pending::{Ownership, Pending};

/// The longest wait a platform's Retry-After can impose (a bogus huge value
/// must not park events, or overflow a deadline).
pub const MAX_PLATFORM_DELAY: Duration = Duration::from_secs(3600);

pub struct Engine {
    pub adapter: Adapter,
    pub outcomes: Outcomes,
    pub ownership: Arc<Ownership>,
    pub settings: DispatchConfig,
    pub metrics: DispatchMetrics,
    pub shutdown: CancellationToken,
}

/// A part of a batch still to send; `isolating` when it was split off a
/// rejected batch.
struct Part {
    events: Vec<Pending>,
    isolating: bool,
}

/// What to do with a part after an answer.
enum Next {
    Again(Vec<Pending>),
    Finished,
}

impl Engine {
    /// Runs until every event of `batch` has a final outcome, or is no
    /// longer this instance's, or the service stops.
    pub async fn deliver(&self, account: Arc<Account>, group: &'static str, batch: Vec<Pending>) {
        let mut work = vec![Part {
            events: batch,
            isolating: false,
        }];
        while let Some(part) = work.pop() {
            let mut next = Some((part.events, part.isolating));
            while let Some((events, isolating)) = next.take() {
                next = match self
                    .attempt(&account, group, events, isolating, &mut work)
                    .await
                {
                    Next::Again(rest) => Some((rest, false)),
                    Next::Finished => None,
                };
            }
        }
    }

    async fn attempt(
        &self,
        account: &Account,
        group: &'static str,
        mut events: Vec<Pending>,
        isolating: bool,
        work: &mut Vec<Part>,
    ) -> Next {
        if self.shutdown.is_cancelled() {
            // Not final: replayed from the last commit after the restart.
            return Next::Finished;
        }
        self.keep_owned(&mut events);
        let now = now_millis();
        let (expired, mut events): (Vec<_>, Vec<_>) =
            events.into_iter().partition(|p| p.deadline_ms <= now);
        self.finish_all(
            expired,
            Final::Expired {
                reason: "too_old: past the platform's window for this event".into(),
            },
        )
        .await;
        if events.is_empty() {
            return Next::Finished;
        }

        let waited = Instant::now();
        if !self.wait_out_throttle(account).await {
            return Next::Finished;
        }
        let Ok(permit) = account.requests.acquire().await else {
            return Next::Finished;
        };
        // Requests queue here behind each other; a rebalance meanwhile must
        // not spend the account's pace on events that are no longer ours.
        if !self.keep_owned(&mut events) {
            return Next::Finished;
        }
        tokio::select! {
            _ = self.shutdown.cancelled() => return Next::Finished,
            _ = account.pacer.wait() => {}
        }
        // A throttle answered while this request queued for its slot holds it too.
        if !self.wait_out_throttle(account).await {
            return Next::Finished;
        }
        // A rebalance while it queued: what is no longer ours is not sent.
        if !self.keep_owned(&mut events) {
            return Next::Finished;
        }
        self.metrics.quota_wait(waited.elapsed().as_secs_f64());

        let rows: Vec<&Value> = events.iter().map(|p| &p.row).collect();
        self.metrics.in_flight.inc();
        let started = Instant::now();
        let answer = self.adapter.send(account, group, &rows).await;
        self.metrics.in_flight.dec();
        drop(permit);
        self.metrics.request(
            answer.label(),
            events.len(),
            started.elapsed().as_secs_f64(),
        );
        if isolating {
            self.metrics.isolation_requests.inc();
        }
        for p in &mut events {
            p.sends += 1;
        }

        match answer {
            Answer::Accepted { request_id } => {
                account.answered();
                self.finish_all(events, Final::Delivered { request_id })
                    .await;
                Next::Finished
            }
            Answer::Rows { request_id, rows } => {
                account.answered();
                self.rows(events, rows, request_id).await
            }
            Answer::Rejected {
                request_id,
                reason,
                index,
                expired,
            } => {
                account.answered();
                if events.len() == 1 {
                    let last = if expired {
                        Final::Expired {
                            reason: reason.describe(),
                        }
                    } else {
                        Final::Rejected { reason, request_id }
                    };
                    self.finish_all(events, last).await;
                    return Next::Finished;
                }
                // Processed last-in first-out: the suspect (or first half) next.
                match index.filter(|i| self.settings.use_error_index && *i < events.len()) {
                    Some(i) => {
                        let suspect = events.remove(i);
                        work.push(Part {
                            events,
                            isolating: true,
                        });
                        work.push(Part {
                            events: vec![suspect],
                            isolating: true,
                        });
                    }
                    None => {
                        let second = events.split_off(events.len() / 2);
                        work.push(Part {
                            events: second,
                            isolating: true,
                        });
                        work.push(Part {
                            events,
                            isolating: true,
                        });
                    }
                }
                Next::Finished
            }
            Answer::Throttled {
                reason,
                retry_after,
            } => {
                // Honour Retry-After, but never a tight loop on "0".
                let pause = Duration::from_millis(self.settings.throttle_pause_ms);
                let retry_after = retry_after
                    .map(|d| d.clamp(pause.min(Duration::from_secs(1)), MAX_PLATFORM_DELAY));
                let until = account.throttled(retry_after, pause);
                self.metrics.retries("throttled", events.len());
                let next_at = at_millis_from_now(until.saturating_duration_since(Instant::now()));
                self.retrying(&events, &reason, next_at).await;
                Next::Again(events)
            }
            Answer::Transient {
                reason,
                retry_after,
            } => {
                tracing::warn!(account = %account.id, reason = %reason.code, events = events.len(), "platform request failed; will retry");
                self.failed_attempt(account, events, reason, retry_after, "transient")
                    .await
            }
        }
    }

    async fn rows(
        &self,
        events: Vec<Pending>,
        rows: Vec<RowResult>,
        request_id: Option<String>,
    ) -> Next {
        let mut finals = Vec::new();
        let mut again = Vec::new();
        let mut again_reason = None;
        let mut rows = rows.into_iter();
        for p in events {
            // A short answer leaves the rest unaccounted for: try them again.
            let row = rows.next().unwrap_or(RowResult::Retry(Reason::new(
                "missing_result",
                "the platform answered fewer rows than were sent",
            )));
            match row {
                RowResult::Delivered | RowResult::AlreadyDelivered => finals.push((
                    p,
                    Final::Delivered {
                        request_id: request_id.clone(),
                    },
                )),
                RowResult::Rejected(reason) => finals.push((
                    p,
                    Final::Rejected {
                        reason,
                        request_id: request_id.clone(),
                    },
                )),
                RowResult::Expired(reason) => finals.push((
                    p,
                    Final::Expired {
                        reason: reason.describe(),
                    },
                )),
                RowResult::Retry(reason) => {
                    again.push(p);
                    again_reason = Some(reason);
                }
            }
        }
        self.finish(finals).await;
        match again_reason {
            Some(reason) if !again.is_empty() => self.later(again, reason).await,
            _ => Next::Finished,
        }
    }

    /// The platform wants these rows later (Google's TOO_RECENT_EVENT: the
    /// click is under 6 h old). Not a failure: tried again every
    /// `backoff_max_ms` until accepted or past the platform's window.
    async fn later(&self, events: Vec<Pending>, reason: Reason) -> Next {
        let delay = Duration::from_millis(self.settings.backoff_max_ms);
        self.metrics.retries("row", events.len());
        self.again_after(events, &reason, delay).await
    }

    /// One more failed attempt for `events`: the ones past the limit fail,
    /// the others wait their backoff.
    async fn failed_attempt(
        &self,
        account: &Account,
        events: Vec<Pending>,
        reason: Reason,
        retry_after: Option<Duration>,
        why: &str,
    ) -> Next {
        let max = self.settings.max_attempts;
        let (failed, mut again): (Vec<_>, Vec<_>) =
            events.into_iter().partition(|p| p.failures + 1 >= max);
        self.finish_all(
            failed,
            Final::Failed {
                reason: reason.clone(),
            },
        )
        .await;
        if again.is_empty() {
            return Next::Finished;
        }
        let mut attempts = 0;
        for p in &mut again {
            p.failures += 1;
            attempts = attempts.max(p.failures);
        }
        let delay = retry_after
            .map(|d| d.min(MAX_PLATFORM_DELAY))
            .unwrap_or_else(|| self.backoff(attempts));
        if why == "transient" {
            account.hold_until(Instant::now() + delay);
        }
        self.metrics.retries(why, again.len());
        self.again_after(again, &reason, delay).await
    }

    /// Exponential backoff with jitter: between half and all of
    /// initial * 2^(attempt-1), capped; never zero, never in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.settings.backoff_initial_ms as f64;
        let max = self.settings.backoff_max_ms as f64;
        let ceiling = (initial * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(max);
        let ms = rand::rng().random_range(ceiling / 2.0..=ceiling);
        Duration::from_millis(ms as u64)
    }

    /// Drops the events of partitions this instance lost (their new owner
    /// redoes them); false when none is left.
    fn keep_owned(&self, events: &mut Vec<Pending>) -> bool {
        events.retain(|p| self.ownership.owns(&p.origin));
        !events.is_empty()
    }

    /// Final statuses, for the events this instance still owns: a lost
    /// partition's events are the new owner's to report (it redoes them).
    async fn finish(&self, mut items: Vec<(Pending, Final)>) {
        items.retain(|(p, _)| self.ownership.owns(&p.origin));
        self.outcomes.finish(items).await;
    }

    async fn retrying(&self, events: &[Pending], reason: &Reason, next_at_ms: i64) {
        let owned: Vec<&Pending> = events
            .iter()
            .filter(|p| self.ownership.owns(&p.origin))
            .collect();
        self.outcomes.retrying(&owned, reason, next_at_ms).await;
    }

    /// The same final outcome for every event.
    async fn finish_all(&self, events: Vec<Pending>, outcome: Final) {
        if events.is_empty() {
            return;
        }
        let items = events.into_iter().map(|p| (p, outcome.clone())).collect();
        self.finish(items).await;
    }

    /// Waits until the platform's pause of the account is over; false if
    /// the service stops first.
    async fn wait_out_throttle(&self, account: &Account) -> bool {
        let Some(until) = account.throttled_until() else {
            return true;
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep_until(until) => true,
        }
    }

    /// Records the next attempt `delay` from now, waits it out, and hands
    /// the events back for it.
    async fn again_after(&self, events: Vec<Pending>, reason: &Reason, delay: Duration) -> Next {
        self.retrying(&events, reason, at_millis_from_now(delay))
            .await;
        tokio::select! {
            _ = self.shutdown.cancelled() => Next::Finished,
            _ = tokio::time::sleep(delay) => Next::Again(events),
        }
    }
}

/// Unix ms, `delay` from now (for a status record's next attempt).
fn at_millis_from_now(delay: Duration) -> i64 {
    now_millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2))
}
