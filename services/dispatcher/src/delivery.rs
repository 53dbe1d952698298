//! Taking one batch of one account to an outcome for every event in it,
//! without ever waiting on the platform beyond one request at a time:
//! what has to wait goes to the retry path (`retry.rs`) with the time it
//! may be tried again.
//!
//! Per request: drop what this instance no longer owns, expire what the
//! platform would no longer take, send nothing while the account is paused
//! (its events wait for the pause on the retry path), wait for the
//! account's pace, send, and act on the adapter's classification:
//!
//! - accepted: delivered, with the platform's request id;
//! - per-row answer (Google): each row its own outcome; a row the platform
//!   wants later (TOO_RECENT_EVENT) waits `backoff_max_ms` on the retry path;
//! - whole batch rejected (Meta, TikTok): a lone event is rejected with the
//!   platform's reason; a larger batch is split and each part sent again at
//!   once. If the error names an event, that one goes alone and the rest
//!   together (two requests for one bad event); otherwise halves, which
//!   isolates one bad event in 1,000 within 2*log2(1000)+1 requests;
//! - throttled: the whole account pauses (Retry-After, or a doubling pause)
//!   and its events wait for the end of the pause; not a failure;
//! - transient: a failed attempt. Past `max_attempts` the event is failed
//!   and dead-lettered for replay; otherwise it waits an exponential
//!   backoff with jitter, and the account holds back for as long (one probe
//!   at a time while a platform is down, not a stampede).

use std::sync::Arc;
use std::time::Duration;

use postback_core::model::now_millis;
use rand::Rng;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::SemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::adapters::{Adapter, Answer, Reason, RowResult};
use crate::config::DispatchConfig;
use crate::metrics::DispatchMetrics;
use crate::outcome::{Final, Resolution, Resolved};
use crate::pending::{Ownership, Pending};

/// The longest wait a platform's Retry-After can impose (a bogus huge value
/// must not park events for days, or overflow a deadline).
pub const MAX_PLATFORM_DELAY: Duration = Duration::from_secs(3600);

pub struct Engine {
    pub adapter: Adapter,
    pub ownership: Arc<Ownership>,
    pub settings: DispatchConfig,
    pub metrics: DispatchMetrics,
    pub shutdown: CancellationToken,
    /// Where outcomes go (the driver commits them).
    pub resolved: UnboundedSender<Vec<Resolved>>,
}

/// A part of a batch still to send; `isolating` when it was split off a
/// rejected batch.
struct Part {
    events: Vec<Pending>,
    isolating: bool,
}

impl Engine {
    /// Sends `batch` and splits of it until every event has an outcome, is
    /// no longer this instance's, or the service stops (then it is read
    /// again after the restart).
    pub async fn deliver(&self, account: Arc<Account>, group: &'static str, batch: Vec<Pending>) {
        let mut work = vec![Part {
            events: batch,
            isolating: false,
        }];
        while let Some(part) = work.pop() {
            self.attempt(&account, group, part, &mut work).await;
        }
    }

    /// One request for `part`: wait for the account's turn, send, and act
    /// on the answer (which may push splits of it onto `work`).
    async fn attempt(
        &self,
        account: &Account,
        group: &'static str,
        part: Part,
        work: &mut Vec<Part>,
    ) {
        let Some(events) = self.sendable(account, part.events) else {
            return;
        };
        let Some((permit, mut events)) = self.wait_for_turn(account, events).await else {
            return;
        };
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
        if part.isolating {
            self.metrics.isolation_requests.inc();
        }
        for p in &mut events {
            p.sends += 1;
        }
        self.answered(account, events, answer, work);
    }

    /// Waits for one of the account's request slots and its pace, then
    /// checks `events` again: a rebalance, a pause or a deadline may have
    /// come while they queued. The permit holds the slot until the answer.
    async fn wait_for_turn<'a>(
        &self,
        account: &'a Account,
        events: Vec<Pending>,
    ) -> Option<(SemaphorePermit<'a>, Vec<Pending>)> {
        let waited = Instant::now();
        let permit = account.requests.acquire().await.ok()?;
        tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            _ = account.pacer.wait() => {}
        }
        let events = self.sendable(account, events)?;
        self.metrics.quota_wait(waited.elapsed().as_secs_f64());
        Some((permit, events))
    }

    /// What of `events` may be sent now: the others get their outcome
    /// (expired, or waiting out the account's pause) or are dropped (no
    /// longer ours). None when nothing is left to send.
    fn sendable(&self, account: &Account, events: Vec<Pending>) -> Option<Vec<Pending>> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        let now = now_millis();
        let (events, lost): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|p| self.ownership.owns(&p.origin));
        self.resolve_all(lost, |_| Resolution::Abandoned);
        let (expired, events): (Vec<_>, Vec<_>) =
            events.into_iter().partition(|p| p.deadline_ms <= now);
        self.finish_all(
            expired,
            Final::Expired {
                reason: "too_old: past the platform's window for this event".into(),
            },
        );
        if events.is_empty() {
            return None;
        }
        if let Some((until, reason)) = account.paused() {
            let not_before_ms = at_millis_from_now(until.saturating_duration_since(Instant::now()));
            self.resolve_all(events, |_| Resolution::Retry {
                not_before_ms,
                reason: reason.clone(),
                status: true,
            });
            return None;
        }
        Some(events)
    }

    /// Acts on the adapter's reading of the answer (the module docs say
    /// what each kind leads to).
    fn answered(
        &self,
        account: &Account,
        events: Vec<Pending>,
        answer: Answer,
        work: &mut Vec<Part>,
    ) {
        match answer {
            Answer::Accepted { request_id } => {
                account.answered();
                self.finish_all(events, Final::Delivered { request_id });
            }
            Answer::Rows { request_id, rows } => {
                account.answered();
                self.rows(events, rows, request_id);
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
                    self.finish_all(events, last);
                } else {
                    self.isolate(events, index, work);
                }
            }
            Answer::Throttled {
                reason,
                retry_after,
            } => self.throttled(account, events, reason, retry_after),
            Answer::Transient {
                reason,
                retry_after,
            } => {
                tracing::warn!(account = %account.id, reason = %reason.code, events = events.len(), "platform request failed; will retry");
                self.failed_attempt(account, events, reason, retry_after);
            }
        }
    }

    /// A batch the platform refused as a whole is split and each part sent
    /// again at once, so the bad event ends alone and every other one is
    /// delivered. The suspect the platform named (when trusted) goes alone
    /// and the rest together; otherwise halves. Parts are taken last-in
    /// first-out: the suspect (or first half) next.
    fn isolate(&self, mut events: Vec<Pending>, index: Option<usize>, work: &mut Vec<Part>) {
        let (rest, next) =
            match index.filter(|i| self.settings.use_error_index && *i < events.len()) {
                Some(i) => {
                    let suspect = events.remove(i);
                    (events, vec![suspect])
                }
                None => {
                    let second = events.split_off(events.len() / 2);
                    (second, events)
                }
            };
        for events in [rest, next] {
            work.push(Part {
                events,
                isolating: true,
            });
        }
    }

    /// The whole account pauses (Retry-After, never a tight loop on "0",
    /// or a doubling pause) and the events wait for its end; not a failure.
    fn throttled(
        &self,
        account: &Account,
        events: Vec<Pending>,
        reason: Reason,
        retry_after: Option<Duration>,
    ) {
        let pause = Duration::from_millis(self.settings.throttle_pause_ms);
        let retry_after =
            retry_after.map(|d| d.clamp(pause.min(Duration::from_secs(1)), MAX_PLATFORM_DELAY));
        let until = account.throttled(retry_after, pause, &reason);
        self.metrics.retries("throttled", events.len());
        let not_before_ms = at_millis_from_now(until.saturating_duration_since(Instant::now()));
        self.resolve_all(events, |_| Resolution::Retry {
            not_before_ms,
            reason: reason.clone(),
            status: true,
        });
    }

    fn rows(&self, events: Vec<Pending>, rows: Vec<RowResult>, request_id: Option<String>) {
        let mut rows = rows.into_iter();
        let mut later = 0;
        let resolved: Vec<Resolved> = events
            .into_iter()
            .map(|p| {
                // A short answer leaves the rest unaccounted for: try them again.
                let row = rows.next().unwrap_or(RowResult::Retry(Reason::new(
                    "missing_result",
                    "the platform answered fewer rows than were sent",
                )));
                let resolution = match row {
                    RowResult::Delivered | RowResult::AlreadyDelivered => {
                        Resolution::Final(Final::Delivered {
                            request_id: request_id.clone(),
                        })
                    }
                    RowResult::Rejected(reason) => Resolution::Final(Final::Rejected {
                        reason,
                        request_id: request_id.clone(),
                    }),
                    RowResult::Expired(reason) => Resolution::Final(Final::Expired {
                        reason: reason.describe(),
                    }),
                    // The platform wants these rows later (Google's
                    // TOO_RECENT_EVENT: the click is under 6 h old). Not a
                    // failure: tried again every `backoff_max_ms` until
                    // accepted or past the platform's window.
                    RowResult::Retry(reason) => {
                        later += 1;
                        Resolution::Retry {
                            not_before_ms: at_millis_from_now(Duration::from_millis(
                                self.settings.backoff_max_ms,
                            )),
                            reason,
                            status: true,
                        }
                    }
                };
                Resolved {
                    pending: p,
                    resolution,
                }
            })
            .collect();
        if later > 0 {
            self.metrics.retries("row", later);
        }
        self.send(resolved);
    }

    /// One more failed attempt for `events`: the ones past the limit fail,
    /// the others wait their backoff on the retry path, and the account
    /// holds back as long.
    fn failed_attempt(
        &self,
        account: &Account,
        events: Vec<Pending>,
        reason: Reason,
        retry_after: Option<Duration>,
    ) {
        let max = self.settings.max_attempts;
        let mut attempts = 0;
        let (failed, again): (Vec<_>, Vec<_>) = events
            .into_iter()
            .map(|mut p| {
                p.failures += 1;
                attempts = attempts.max(p.failures);
                p
            })
            .partition(|p| p.failures >= max);
        self.finish_all(
            failed,
            Final::Failed {
                reason: reason.clone(),
            },
        );
        if again.is_empty() {
            return;
        }
        let delay = retry_after
            .map(|d| d.min(MAX_PLATFORM_DELAY))
            .unwrap_or_else(|| self.backoff(attempts));
        account.hold_until(Instant::now() + delay, &reason);
        self.metrics.retries("transient", again.len());
        let not_before_ms = at_millis_from_now(delay);
        self.resolve_all(again, |_| Resolution::Retry {
            not_before_ms,
            reason: reason.clone(),
            status: true,
        });
    }

    /// Exponential backoff with jitter: between half and all of
    /// initial * 2^(attempt-1), capped; never zero, never in lockstep.
    /// Not a retry crate's: the attempt count travels with the event on the
    /// retry topics (across restarts and instances), so the delay is a
    /// function of that count, not of an in-process retry loop's state.
    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.settings.backoff_initial_ms as f64;
        let max = self.settings.backoff_max_ms as f64;
        let ceiling = (initial * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(max);
        let ms = rand::rng().random_range(ceiling / 2.0..=ceiling);
        Duration::from_millis(ms as u64)
    }

    /// The same final outcome for every event.
    fn finish_all(&self, events: Vec<Pending>, outcome: Final) {
        self.resolve_all(events, |_| Resolution::Final(outcome.clone()));
    }

    fn resolve_all(&self, events: Vec<Pending>, resolution: impl Fn(&Pending) -> Resolution) {
        let resolved = events
            .into_iter()
            .map(|pending| Resolved {
                resolution: resolution(&pending),
                pending,
            })
            .collect();
        self.send(resolved);
    }

    /// Hands outcomes to the driver (which drops those of partitions this
    /// instance lost since: the new owner reads them again).
    fn send(&self, resolved: Vec<Resolved>) {
        if !resolved.is_empty() {
            // The receiver only goes away when the service stops.
            let _ = self.resolved.send(resolved);
        }
    }
}

/// Unix ms, `delay` from now.
pub fn at_millis_from_now(delay: Duration) -> i64 {
    now_millis().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2))
}
