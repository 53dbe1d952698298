//! The retry path: where a conversion waits when it cannot be sent now (a
//! throttled or failing account, a backoff, Google's TOO_RECENT_EVENT), so
//! that the partition it was read from moves on without it.
//!
//! The established Kafka pattern: delay topics with fixed delays
//! (`<dispatch topic>.retry-<n>s`). A conversion that has to wait `d` is
//! written, in the transaction that commits its input offset and its
//! `retrying` status, to the topic with the longest delay `t <= d` (the
//! shortest if none), with headers saying when it may be tried
//! (`not-before`) and when its topic lets it be looked at again
//! (`ripe-at`: written + t, or + d in the shortest topic). Within a topic,
//! records ripen in the order they were written, so a reader pauses a
//! partition until its head is ripe and never skips ahead; the longest
//! anyone waits behind a head is the shortest topic's delay. A ripe record
//! whose `not-before` is more than that away goes on to the next topic;
//! one that is due is tried again. The conversion's value is unchanged;
//! its attempt and failure counts ride in headers, so a restart or a
//! rebalance keeps them.

use std::time::Duration;

use postback_core::kafka::{InboundRecord, OutboundRecord};

use crate::pending::{Pending, Source};

pub const NOT_BEFORE: &str = "postback-not-before";
pub const RIPE_AT: &str = "postback-ripe-at";
pub const FAILURES: &str = "postback-failures";
pub const SENDS: &str = "postback-sends";

#[derive(Debug, Clone)]
struct Tier {
    delay: Duration,
    topic: String,
}

/// The retry topics of one platform's dispatch topic.
#[derive(Debug, Clone)]
pub struct Tiers {
    main: String,
    tiers: Vec<Tier>,
}

/// What a record of the retry path says about its conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryState {
    pub not_before_ms: i64,
    pub ripe_at_ms: i64,
    pub failures: u32,
    pub sends: u32,
}

impl Tiers {
    /// `delays` ascending (validated by the configuration).
    pub fn new(main_topic: &str, delays: &[Duration]) -> Self {
        Tiers {
            main: main_topic.to_string(),
            tiers: delays
                .iter()
                .map(|d| Tier {
                    delay: *d,
                    topic: format!("{main_topic}.retry-{}s", d.as_secs()),
                })
                .collect(),
        }
    }

    /// Every input topic: the dispatch topic first, then the retry topics.
    pub fn topics(&self) -> Vec<String> {
        std::iter::once(self.main.clone())
            .chain(self.tiers.iter().map(|t| t.topic.clone()))
            .collect()
    }

    pub fn retry_topics(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|t| t.topic.as_str())
    }

    pub fn source_of(&self, topic: &str) -> Option<Source> {
        if topic == self.main {
            return Some(0);
        }
        self.tiers
            .iter()
            .position(|t| t.topic == topic)
            .and_then(|i| Source::try_from(i + 1).ok())
    }

    pub fn topic_of(&self, source: Source) -> &str {
        match source {
            0 => &self.main,
            n => self
                .tiers
                .get(usize::from(n) - 1)
                .map_or(self.main.as_str(), |t| t.topic.as_str()),
        }
    }

    /// The shortest delay: how long a head may hold back its followers.
    pub fn shortest(&self) -> Duration {
        self.tiers.first().map_or(Duration::ZERO, |t| t.delay)
    }

    /// The retry record of `p`, to be tried at `not_before_ms` or later.
    pub fn record(&self, p: &Pending, not_before_ms: i64, now_ms: i64) -> OutboundRecord {
        let wait = Duration::from_millis(u64::try_from(not_before_ms - now_ms).unwrap_or(0));
        let tier = self
            .tiers
            .iter()
            .rev()
            .find(|t| t.delay <= wait)
            .or(self.tiers.first());
        let (topic, delay) = match tier {
            Some(t) => (t.topic.as_str(), t.delay.min(wait)),
            None => (self.main.as_str(), wait),
        };
        let ripe_at =
            now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2));
        OutboundRecord::new(topic, p.key.clone(), p.payload.clone().unwrap_or_default())
            .with_header(NOT_BEFORE, not_before_ms.to_string())
            .with_header(RIPE_AT, ripe_at.to_string())
            .with_header(FAILURES, p.failures.to_string())
            .with_header(SENDS, p.sends.to_string())
    }
}

impl RetryState {
    /// The retry headers of `record`; None for a record of the dispatch
    /// topic (or one without them).
    pub fn of(record: &InboundRecord) -> Option<RetryState> {
        let number = |name: &str| -> Option<i64> {
            std::str::from_utf8(record.header(name)?).ok()?.parse().ok()
        };
        Some(RetryState {
            not_before_ms: number(NOT_BEFORE)?,
            ripe_at_ms: number(RIPE_AT)?,
            failures: number(FAILURES)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            sends: number(SENDS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
        })
    }

    /// When a reader looks at this record again: once ripe, and if it is
    /// due soon after, once due (a short wait holds its followers less than
    /// writing it onwards would).
    pub fn wake_at_ms(&self, shortest: Duration) -> i64 {
        let soon = self
            .ripe_at_ms
            .saturating_add(i64::try_from(shortest.as_millis()).unwrap_or(0));
        if self.not_before_ms <= soon {
            self.ripe_at_ms.max(self.not_before_ms)
        } else {
            self.ripe_at_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pending::Origin;

    fn pending() -> Pending {
        Pending {
            origin: Origin {
                source: 0,
                partition: 0,
                offset: 7,
                generation: 1,
            },
            topic: "dispatch.meta".into(),
            key: Some(b"shop/e-1".to_vec()),
            payload: Some(b"avro".to_vec()),
            tenant: "shop".into(),
            event_id: "e-1".into(),
            event_name: "Purchase".into(),
            deadline_ms: i64::MAX,
            row: serde_json::Value::Null,
            sends: 2,
            failures: 1,
        }
    }

    fn tiers() -> Tiers {
        Tiers::new("dispatch.meta", &[1, 10, 60].map(Duration::from_secs))
    }

    fn inbound(r: &OutboundRecord) -> InboundRecord {
        InboundRecord {
            topic: r.topic.clone(),
            headers: r.headers.clone(),
            payload: Some(r.payload.clone()),
            ..Default::default()
        }
    }

    #[test]
    fn a_wait_goes_to_the_longest_delay_that_fits_and_keeps_its_counts() {
        let t = tiers();
        let now = 1_000_000;
        for (wait_ms, topic, ripe) in [
            (200, "dispatch.meta.retry-1s", 200),
            (1_000, "dispatch.meta.retry-1s", 1_000),
            (45_000, "dispatch.meta.retry-10s", 10_000),
            (6 * 3_600_000, "dispatch.meta.retry-60s", 60_000),
        ] {
            let r = t.record(&pending(), now + wait_ms, now);
            assert_eq!(r.topic, topic, "{wait_ms}");
            let state = RetryState::of(&inbound(&r)).unwrap();
            assert_eq!(state.not_before_ms, now + wait_ms);
            assert_eq!(state.ripe_at_ms, now + ripe, "{wait_ms}");
            assert_eq!((state.failures, state.sends), (1, 2));
            assert_eq!(r.payload, b"avro", "the conversion travels unchanged");
        }
        assert_eq!(t.source_of("dispatch.meta"), Some(0));
        assert_eq!(t.source_of("dispatch.meta.retry-10s"), Some(2));
        assert_eq!(t.topic_of(3), "dispatch.meta.retry-60s");
        assert_eq!(t.topics().len(), 4);
    }

    #[test]
    fn a_ripe_head_waits_for_its_time_only_when_it_is_near() {
        let shortest = Duration::from_secs(1);
        let near = RetryState {
            not_before_ms: 10_500,
            ripe_at_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(near.wake_at_ms(shortest), 10_500);
        let far = RetryState {
            not_before_ms: 50_000,
            ripe_at_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(far.wake_at_ms(shortest), 10_000, "moved on at ripeness");
        assert!(RetryState::of(&InboundRecord::default()).is_none());
    }
}
