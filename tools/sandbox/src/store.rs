//! What the sandbox accepted, what it recognised as a duplicate and what it
//! rejected and why, plus the dedup memory the platforms keep.
//!
//! Dedup keys are either windowed (Meta and TikTok forget an event id after
//! 48 hours) or permanent (a Google order id stays used). A windowed key is
//! judged against the window in force when the duplicate arrives, so changing
//! the window at run time applies to what is already remembered.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use postback_core::Platform;
use serde::Serialize;
use serde_json::Value;

use crate::clock::rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct AcceptedEvent {
    pub seq: u64,
    pub platform: Platform,
    pub account: String,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub test_event_code: Option<String>,
    pub received_at: String,
    /// The event as the platform received it.
    pub payload: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct DuplicateEvent {
    pub seq: u64,
    pub platform: Platform,
    pub account: String,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    /// Which rule matched: event_id, order_id, click.
    pub matched_on: &'static str,
    /// The seq of the accepted event it duplicates, while that is still kept.
    pub original_seq: Option<u64>,
    pub first_seen_at: String,
    pub received_at: String,
    pub payload: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub seq: u64,
    pub platform: Platform,
    pub account: String,
    /// The HTTP status the request was answered with.
    pub http_status: u16,
    /// The platform's error code (e.g. "100/2804003", "EXPIRED_EVENT", "40002").
    pub code: String,
    pub message: String,
    /// The offending field, in the platform's notation, when there is one.
    pub field: Option<String>,
    pub event_id: Option<String>,
    pub received_at: String,
}

/// One dedup rule an incoming event is checked against.
#[derive(Debug, Clone)]
pub struct DedupRule {
    pub matched_on: &'static str,
    pub key: String,
    /// Windowed keys expire after the dedup window; others never do.
    pub windowed: bool,
}

/// An event that passed validation, ready to be recorded.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub platform: Platform,
    pub account: String,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub test_event_code: Option<String>,
    pub dedup: Vec<DedupRule>,
    pub payload: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate {
        matched_on: &'static str,
        /// The original came earlier in the same request.
        in_request: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first_seen_ms: i64,
    seq: u64,
    windowed: bool,
}

type DedupKey = (Platform, String, String);

#[derive(Default)]
struct Inner {
    seq: u64,
    accepted: VecDeque<AcceptedEvent>,
    duplicates: VecDeque<DuplicateEvent>,
    rejections: VecDeque<Rejection>,
    dedup: HashMap<DedupKey, Seen>,
    commits: u64,
    totals: BTreeMap<(Platform, &'static str), u64>,
    requests: BTreeMap<(Platform, &'static str), u64>,
}

/// Filters of the admin listings; every one optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub platform: Option<Platform>,
    pub account: Option<String>,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    /// Only the most recent `limit` matches (default 1000).
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(
        &self,
        platform: Platform,
        account: &str,
        event_id: Option<&str>,
        event_name: Option<&str>,
    ) -> bool {
        self.platform.is_none_or(|p| p == platform)
            && self.account.as_deref().is_none_or(|a| a == account)
            && self.event_id.as_deref().is_none_or(|e| Some(e) == event_id)
            && self
                .event_name
                .as_deref()
                .is_none_or(|n| Some(n) == event_name)
    }

    fn limit(&self) -> usize {
        self.limit.unwrap_or(1000)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing<T> {
    /// Matches among what is kept (the listing may be cut to `limit`).
    pub total: usize,
    pub items: Vec<T>,
}

fn listing<'a, T: Clone + 'a>(
    items: impl DoubleEndedIterator<Item = &'a T>,
    filter: &Filter,
    key: impl Fn(&T) -> (Platform, &str, Option<&str>, Option<&str>),
) -> Listing<T> {
    let matching: Vec<&T> = items
        .filter(|i| {
            let (p, a, id, name) = key(i);
            filter.matches(p, a, id, name)
        })
        .collect();
    let total = matching.len();
    let skip = total.saturating_sub(filter.limit());
    Listing {
        total,
        items: matching.into_iter().skip(skip).cloned().collect(),
    }
}

pub struct Store {
    inner: Mutex<Inner>,
    max_records: usize,
    dedup_window_ms: AtomicI64,
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T, max: usize) {
    list.push_back(item);
    while list.len() > max {
        list.pop_front();
    }
}

impl Store {
    pub fn new(max_records: usize, dedup_window_secs: u64) -> Self {
        Store {
            inner: Mutex::new(Inner::default()),
            max_records: max_records.max(1),
            dedup_window_ms: AtomicI64::new(secs_to_ms(dedup_window_secs)),
        }
    }

    pub fn dedup_window_secs(&self) -> u64 {
        (self.dedup_window_ms.load(Ordering::SeqCst) / 1000) as u64
    }

    pub fn set_dedup_window_secs(&self, secs: u64) {
        self.dedup_window_ms
            .store(secs_to_ms(secs), Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the records half-written
        // in a way that matters to a sandbox; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request's events in one step, so a concurrent reader never
    /// sees half a batch. With `dry_run` (Google's validateOnly) nothing is
    /// recorded, but duplicates are still reported.
    pub fn commit(&self, now_ms: i64, events: Vec<Incoming>, dry_run: bool) -> Vec<Outcome> {
        let window_ms = self.dedup_window_ms.load(Ordering::SeqCst);
        let mut inner = self.lock();
        let mut in_request: HashSet<DedupKey> = HashSet::new();
        let mut outcomes = Vec::with_capacity(events.len());
        for ev in events {
            let mut hit: Option<(&'static str, bool, Option<Seen>)> = None;
            for rule in &ev.dedup {
                let key = (ev.platform, ev.account.clone(), rule.key.clone());
                if in_request.contains(&key) {
                    hit = Some((rule.matched_on, true, inner.dedup.get(&key).copied()));
                    break;
                }
                if let Some(seen) = inner.dedup.get(&key) {
                    if !seen.windowed || now_ms - seen.first_seen_ms < window_ms {
                        hit = Some((rule.matched_on, false, Some(*seen)));
                        break;
                    }
                }
            }
            if let Some((matched_on, in_req, seen)) = hit {
                outcomes.push(Outcome::Duplicate {
                    matched_on,
                    in_request: in_req,
                });
                if dry_run {
                    continue;
                }
                inner.seq += 1;
                let seq = inner.seq;
                let original_seq = seen
                    .map(|s| s.seq)
                    .filter(|s| inner.accepted.front().is_some_and(|first| first.seq <= *s));
                *inner.totals.entry((ev.platform, "duplicate")).or_default() += 1;
                let dup = DuplicateEvent {
                    seq,
                    platform: ev.platform,
                    account: ev.account,
                    event_id: ev.event_id,
                    event_name: ev.event_name,
                    matched_on,
                    original_seq,
                    first_seen_at: rfc3339(seen.map(|s| s.first_seen_ms).unwrap_or(now_ms)),
                    received_at: rfc3339(now_ms),
                    payload: ev.payload,
                };
                push_bounded(&mut inner.duplicates, dup, self.max_records);
                continue;
            }
            outcomes.push(Outcome::Accepted);
            let seq = inner.seq + 1;
            for rule in &ev.dedup {
                let key = (ev.platform, ev.account.clone(), rule.key.clone());
                in_request.insert(key.clone());
                if !dry_run {
                    inner.dedup.insert(
                        key,
                        Seen {
                            first_seen_ms: now_ms,
                            seq,
                            windowed: rule.windowed,
                        },
                    );
                }
            }
            if dry_run {
                continue;
            }
            inner.seq = seq;
            *inner.totals.entry((ev.platform, "accepted")).or_default() += 1;
            let accepted = AcceptedEvent {
                seq,
                platform: ev.platform,
                account: ev.account,
                event_id: ev.event_id,
                event_name: ev.event_name,
                test_event_code: ev.test_event_code,
                received_at: rfc3339(now_ms),
                payload: ev.payload,
            };
            push_bounded(&mut inner.accepted, accepted, self.max_records);
        }
        inner.commits += 1;
        if inner.commits % 1024 == 0 {
            inner
                .dedup
                .retain(|_, s| !s.windowed || now_ms - s.first_seen_ms < window_ms);
        }
        outcomes
    }

    #[allow(clippy::too_many_arguments)]
    pub fn reject(
        &self,
        now_ms: i64,
        platform: Platform,
        account: &str,
        http_status: u16,
        code: String,
        message: String,
        field: Option<String>,
        event_id: Option<String>,
    ) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        *inner.totals.entry((platform, "rejected")).or_default() += 1;
        let r = Rejection {
            seq,
            platform,
            account: account.to_owned(),
            http_status,
            code,
            message,
            field,
            event_id,
            received_at: rfc3339(now_ms),
        };
        push_bounded(&mut inner.rejections, r, self.max_records);
    }

    pub fn count_request(&self, platform: Platform, outcome: &'static str) {
        *self.lock().requests.entry((platform, outcome)).or_default() += 1;
    }

    pub fn accepted(&self, filter: &Filter) -> Listing<AcceptedEvent> {
        let inner = self.lock();
        listing(inner.accepted.iter(), filter, |e| {
            (
                e.platform,
                &e.account,
                e.event_id.as_deref(),
                e.event_name.as_deref(),
            )
        })
    }

    pub fn duplicates(&self, filter: &Filter) -> Listing<DuplicateEvent> {
        let inner = self.lock();
        listing(inner.duplicates.iter(), filter, |e| {
            (
                e.platform,
                &e.account,
                e.event_id.as_deref(),
                e.event_name.as_deref(),
            )
        })
    }

    pub fn rejections(&self, filter: &Filter) -> Listing<Rejection> {
        let inner = self.lock();
        listing(inner.rejections.iter(), filter, |e| {
            (e.platform, &e.account, e.event_id.as_deref(), None)
        })
    }

    /// Request counts by platform and outcome, and event totals by platform
    /// (totals survive the trimming of the listings).
    pub fn stats(&self) -> Value {
        let inner = self.lock();
        let mut requests = serde_json::Map::new();
        let mut events = serde_json::Map::new();
        for p in Platform::ALL {
            let mut r = serde_json::Map::new();
            for ((platform, outcome), n) in &inner.requests {
                if *platform == p {
                    r.insert((*outcome).to_owned(), Value::from(*n));
                }
            }
            requests.insert(p.as_str().to_owned(), Value::Object(r));
            let total = |what: &'static str| inner.totals.get(&(p, what)).copied().unwrap_or(0);
            events.insert(
                p.as_str().to_owned(),
                serde_json::json!({
                    "accepted": total("accepted"),
                    "duplicates": total("duplicate"),
                    "rejected": total("rejected"),
                }),
            );
        }
        serde_json::json!({ "requests": requests, "events": events })
    }

    /// Forgets everything: records, counts and dedup memory.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Incoming {
        Incoming {
            platform: Platform::Meta,
            account: "1".into(),
            event_id: Some(id.into()),
            event_name: Some("Purchase".into()),
            test_event_code: None,
            dedup: vec![DedupRule {
                matched_on: "event_id",
                key: format!("Purchase/{id}"),
                windowed: true,
            }],
            payload: Value::Null,
        }
    }

    #[test]
    fn a_repeat_is_a_duplicate_within_the_window_only() {
        let store = Store::new(10, 60);
        assert_eq!(
            store.commit(0, vec![event("a")], false),
            vec![Outcome::Accepted]
        );
        assert!(matches!(
            store.commit(59_999, vec![event("a")], false)[0],
            Outcome::Duplicate {
                in_request: false,
                ..
            }
        ));
        assert_eq!(
            store.commit(60_000, vec![event("a")], false),
            vec![Outcome::Accepted]
        );
        let all = store.accepted(&Filter::default());
        assert_eq!(all.total, 2);
        assert_eq!(
            store.duplicates(&Filter::default()).items[0].original_seq,
            Some(1)
        );
    }

    #[test]
    fn dry_runs_record_nothing() {
        let store = Store::new(10, 60);
        let out = store.commit(0, vec![event("a"), event("a")], true);
        assert_eq!(out[0], Outcome::Accepted);
        assert!(matches!(
            out[1],
            Outcome::Duplicate {
                in_request: true,
                ..
            }
        ));
        assert_eq!(store.accepted(&Filter::default()).total, 0);
        assert_eq!(
            store.commit(1, vec![event("a")], false),
            vec![Outcome::Accepted]
        );
    }

    #[test]
    fn listings_are_bounded_and_filtered() {
        let store = Store::new(3, 60);
        for i in 0..5 {
            store.commit(0, vec![event(&i.to_string())], false);
        }
        let all = store.accepted(&Filter::default());
        assert_eq!(all.total, 3);
        let one = store.accepted(&Filter {
            event_id: Some("4".into()),
            ..Filter::default()
        });
        assert_eq!(one.items.len(), 1);
        let none = store.accepted(&Filter {
            platform: Some(Platform::Tiktok),
            ..Filter::default()
        });
        assert_eq!(none.total, 0);
    }
}
