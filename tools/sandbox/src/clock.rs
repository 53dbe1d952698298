//! The sandbox's notion of "now". Event age limits, dedup windows, token
//! expiry, outages and quotas all read this clock, so a test can step over a
//! 48-hour dedup window or a one-hour token lifetime instead of waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to; for tests that want exact times.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock {
            now_ms: AtomicI64::new(start_ms),
        }
    }

    pub fn set_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// The clock the sandbox runs on: a base clock plus an offset the admin API
/// can move forward, so even an out-of-process sandbox (the local demo) can be
/// made to "wait" 48 hours.
#[derive(Clone)]
pub struct SandboxClock {
    base: Arc<dyn Clock>,
    offset_ms: Arc<AtomicI64>,
}

impl SandboxClock {
    pub fn new(base: Arc<dyn Clock>) -> Self {
        SandboxClock {
            base,
            offset_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    pub fn system() -> Self {
        Self::new(Arc::new(SystemClock))
    }

    pub fn now_ms(&self) -> i64 {
        self.base
            .now_ms()
            .saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }

    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    pub fn now(&self) -> DateTime<Utc> {
        to_datetime(self.now_ms())
    }

    pub fn advance_ms(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    pub fn reset_offset(&self) {
        self.offset_ms.store(0, Ordering::SeqCst);
    }
}

/// Milliseconds since the epoch as a UTC time; out-of-range values clamp to
/// the epoch rather than panic.
pub fn to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// RFC 3339 with millisecond precision, the format of every time the admin API shows.
pub fn rfc3339(ms: i64) -> String {
    to_datetime(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
