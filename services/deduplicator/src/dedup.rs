//! The deduplicator's decisions, apart from Kafka: what a report of a
//! conversion becomes (held, merged, emitted, duplicate, or a replay of one
//! already applied), what a closing merge window emits, and when state
//! changes reach the store.
//!
//! Every state change is staged twice: as a changelog record pushed with
//! the outputs that caused it, and in `staged.rs`. Only once the loop reports
//! the outputs committed (one transaction with the changelog records and
//! the input offsets) do the staged changes go to the store, with the
//! changelog offset they now reflect; an aborted transaction drops them and
//! the timers go back to what the store says. So the store never holds a
//! change the changelog lacks, and a crash at any point leaves a store that
//! a restore from its checkpoint brings up to date.
//!
//! What cannot be processed ends in a dead letter with a reason, never in a
//! crash loop or a second upload: a report whose state would be larger than
//! a changelog record may be (`state_too_large`), a key whose stored state
//! is unreadable (`undecodable_state`: its history is unknown, so the
//! report is not taken for a new conversion).

use std::collections::BTreeSet;

use postback_core::dead_letter::DeadLetters;
use postback_core::eligibility::{PlatformWindows, PLATFORM_NOT_CONFIGURED};
use postback_core::kafka::{Delivered, InboundRecord, OutboundRecord, MAX_RECORD_BYTES};
use postback_core::minimise;
use postback_core::model::{
    ConversionEnriched, DeliveryStatus, FrontEndStatus, ServerSideStatus, Source,
};
use postback_core::{Codec, CodecError, Platform, SchemaKind};

use crate::key::DedupKey;
use crate::merge::merge;
use crate::metrics::DedupMetrics;
use crate::staged::Staged;
use crate::state::{FrontEnd, KeyState, Phase, Sources};
use crate::store::{StateStore, StoreError};

pub const STAGE: &str = "deduplicator";

/// The largest state a key may have: a changelog record holds it, with the
/// key and the record's own framing.
pub const MAX_STATE_BYTES: usize = MAX_RECORD_BYTES - 16 * 1024;

#[derive(Debug, Clone)]
pub struct Settings {
    pub window_ms: i64,
    /// 0: every first report is emitted at once.
    pub merge_window_ms: i64,
    /// How long a conversion reported by the browser only is held for the
    /// server's report (at least `merge_window_ms`): a beacon is public, so
    /// it must not be what decides the upload while the shop's own report
    /// may still come.
    pub browser_wait_ms: i64,
    pub platforms: PlatformWindows,
    /// Most conversions one tick emits, so a backlog of closed windows
    /// (after a long restore) goes out in bounded batches.
    pub max_emits_per_tick: usize,
}

#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub status: String,
    pub changelog: String,
    /// dispatch.<platform>, in `Platform::ALL` order.
    pub dispatch: [String; 3],
    /// Dead letters (conversions.rejected).
    pub rejected: String,
}

impl OutputTopics {
    fn dispatch(&self, platform: Platform) -> &str {
        let i = Platform::ALL
            .iter()
            .position(|p| *p == platform)
            .unwrap_or_default();
        &self.dispatch[i]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be encoded for an output: it becomes a dead letter.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The report would make its key's state larger than a changelog record
    /// may be: it becomes a dead letter and the state stays as it was.
    #[error("the conversion's state would be {bytes} bytes, more than a changelog record may be")]
    StateTooLarge { bytes: usize },
    /// The key's stored state cannot be read.
    #[error("{0}")]
    Unreadable(String),
}

impl DedupError {
    /// The dead-letter reason of an error that is about one report.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            DedupError::StateTooLarge { .. } => Some("state_too_large"),
            DedupError::Unreadable(_) => Some("undecodable_state"),
            DedupError::Codec(e) => Some(e.reason()),
            DedupError::Store(_) => None,
        }
    }
}

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First report of its key; waits for the merge window.
    Held,
    /// Merged into the held conversion of its key.
    Merged,
    /// First report, sent on at once (merge window 0).
    Emitted,
    /// Its key was already emitted within the dedup window.
    Duplicate,
    /// Applied before (a re-read after a crash or a partition move).
    Replayed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Held => "held",
            Outcome::Merged => "merged",
            Outcome::Emitted => "emitted",
            Outcome::Duplicate => "duplicate",
            Outcome::Replayed => "replayed",
        }
    }
}

pub struct Deduplicator {
    store: StateStore,
    settings: Settings,
    topics: OutputTopics,
    enriched: Codec<ConversionEnriched>,
    status: Codec<DeliveryStatus>,
    dead_letters: DeadLetters,
    metrics: DedupMetrics,
    owned: BTreeSet<i32>,
    /// State changes whose outputs are not acknowledged yet.
    staged: Staged,
    /// Held conversions by when their merge window closes.
    timers: BTreeSet<(i64, i32, DedupKey)>,
}

impl Deduplicator {
    pub fn new(
        store: StateStore,
        settings: Settings,
        topics: OutputTopics,
        metrics: DedupMetrics,
    ) -> Self {
        Deduplicator {
            store,
            settings,
            dead_letters: DeadLetters::by_reference(STAGE, topics.rejected.clone()),
            topics,
            enriched: Codec::new(SchemaKind::ConversionEnriched),
            status: Codec::new(SchemaKind::DeliveryStatus),
            metrics,
            owned: BTreeSet::new(),
            staged: Staged::default(),
            timers: BTreeSet::new(),
        }
    }

    pub fn store_mut(&mut self) -> &mut StateStore {
        &mut self.store
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Starts serving `partition`, whose store is up to date (restored):
    /// its held conversions get their timers back. Returns how many.
    pub fn adopt(&mut self, partition: i32) -> Result<usize, StoreError> {
        self.store.open_partition(partition)?;
        let held = self.store.held(partition)?;
        let n = held.len();
        for (key, emit_at) in held {
            self.timers.insert((emit_at, partition, key));
        }
        self.owned.insert(partition);
        self.metrics.held.set(self.timers.len() as i64);
        Ok(n)
    }

    /// Stops serving `partition`; its new owner emits what it held.
    pub fn release(&mut self, partition: i32) {
        self.owned.remove(&partition);
        self.timers.retain(|(_, p, _)| *p != partition);
        self.staged.forget_partition(partition);
        self.store.close_partition(partition);
        self.metrics.held.set(self.timers.len() as i64);
    }

    pub fn owned(&self) -> &BTreeSet<i32> {
        &self.owned
    }

    pub fn held_count(&self) -> usize {
        self.timers.len()
    }

    fn current(
        &self,
        partition: i32,
        key: &DedupKey,
        now: i64,
    ) -> Result<Option<KeyState>, DedupError> {
        let state = match self.staged.get(partition, key) {
            Some(s) => Some(s.clone()),
            None => match self.store.get(partition, key) {
                Ok(s) => s,
                Err(StoreError::Unreadable { reason, .. }) => {
                    return Err(DedupError::Unreadable(reason))
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(state.filter(|s| !s.is_expired(now)))
    }

    /// Applies one report read from `partition` at `offset`.
    pub fn report(
        &mut self,
        partition: i32,
        offset: i64,
        record: ConversionEnriched,
        now: i64,
        out: &mut Vec<OutboundRecord>,
    ) -> Result<Outcome, DedupError> {
        let key = DedupKey::new(&record.tenant, &record.event_name, &record.event_id);
        let (state, outcome) = match self.current(partition, &key, now)? {
            Some(s) if offset <= s.last_offset => return Ok(Outcome::Replayed),
            None => self.first_report(partition, &key, offset, record, now, out)?,
            Some(mut s) => {
                s.last_offset = offset;
                s.sources.add(record.source);
                s.reports = s.reports.saturating_add(1);
                observe_pixels(&mut s.front_end, &record);
                let outcome = match &s.phase {
                    Phase::Held {
                        emit_at,
                        record: held,
                    } => {
                        let merged = match self.enriched.decode(held) {
                            Ok(held) => merge(held, record, &self.settings.platforms, now),
                            Err(e) => {
                                // Only this stage writes these bytes; if they
                                // are unreadable the newer report stands
                                // alone, and the old one is kept for a look.
                                tracing::error!(error = %e, "held conversion unreadable; keeping the new report");
                                self.held_dead_letter(partition, &key, held, &e.to_string(), out);
                                record
                            }
                        };
                        let emit_at = self.merged_emit_at(partition, &key, &s, *emit_at, now);
                        s.phase = Phase::Held {
                            emit_at,
                            record: self.enriched.encode(&merged)?,
                        };
                        Outcome::Merged
                    }
                    Phase::Emitted { .. } => {
                        self.duplicate_statuses(&s, &record, now, out)?;
                        Outcome::Duplicate
                    }
                };
                (s, outcome)
            }
        };
        let bytes = state.encoded_len();
        if bytes > MAX_STATE_BYTES {
            if outcome == Outcome::Held {
                if let Phase::Held { emit_at, .. } = &state.phase {
                    self.timers.remove(&(*emit_at, partition, key.clone()));
                }
            }
            return Err(DedupError::StateTooLarge { bytes });
        }
        self.stage(partition, key, state, out);
        Ok(outcome)
    }

    /// When a held conversion that just took another report goes out. The
    /// browser's longer wait is for the server's report: once one is in,
    /// the conversion waits only the merge window from its first report
    /// (at once if that has passed), and its timer moves. The tick skips
    /// the old timer (its deadline no longer matches the state's).
    fn merged_emit_at(
        &mut self,
        partition: i32,
        key: &DedupKey,
        state: &KeyState,
        emit_at: i64,
        now: i64,
    ) -> i64 {
        let shop_reported = [Source::Server, Source::Offline]
            .into_iter()
            .any(|s| state.sources.contains(s));
        if !shop_reported {
            return emit_at;
        }
        let merge_close = state
            .first_seen
            .saturating_add(self.settings.merge_window_ms)
            .max(now);
        if merge_close >= emit_at {
            return emit_at;
        }
        self.timers.insert((merge_close, partition, key.clone()));
        merge_close
    }

    /// A dead letter for a held conversion whose bytes cannot be read.
    fn held_dead_letter(
        &self,
        partition: i32,
        key: &DedupKey,
        record: &[u8],
        detail: &str,
        out: &mut Vec<OutboundRecord>,
    ) {
        self.metrics
            .dead_letters
            .with_label_values(&["undecodable_state"])
            .inc();
        let held = InboundRecord {
            topic: self.topics.changelog.clone(),
            partition,
            offset: -1,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(record.to_vec()),
            ..Default::default()
        };
        match self.dead_letters.for_record(
            &held,
            "undecodable_state",
            format!("a held conversion's record cannot be read: {detail}"),
            Vec::new(),
            None,
        ) {
            Ok(letter) => out.push(letter),
            Err(e) => tracing::error!(error = %e, "dead letter does not encode"),
        }
    }

    fn first_report(
        &mut self,
        partition: i32,
        key: &DedupKey,
        offset: i64,
        record: ConversionEnriched,
        now: i64,
        out: &mut Vec<OutboundRecord>,
    ) -> Result<(KeyState, Outcome), DedupError> {
        let mut state = KeyState {
            first_seen: now,
            expires_at: now.saturating_add(self.settings.window_ms),
            last_offset: offset,
            first_source: record.source,
            sources: Sources::of(record.source),
            reports: 1,
            front_end: FrontEnd::default(),
            phase: Phase::Emitted { at: now },
        };
        observe_pixels(&mut state.front_end, &record);
        let wait = if record.source == Source::Browser {
            self.settings.browser_wait_ms
        } else {
            self.settings.merge_window_ms
        };
        if wait == 0 {
            self.emit(&mut state, &record, now, out)?;
            return Ok((state, Outcome::Emitted));
        }
        let emit_at = now.saturating_add(wait);
        state.phase = Phase::Held {
            emit_at,
            record: self.enriched.encode(&record)?,
        };
        self.timers.insert((emit_at, partition, key.clone()));
        Ok((state, Outcome::Held))
    }

    /// Emits the held conversions whose merge window closed by `now`.
    /// Returns how many.
    pub fn tick(&mut self, now: i64, out: &mut Vec<OutboundRecord>) -> Result<usize, DedupError> {
        let mut emitted = 0;
        while emitted < self.settings.max_emits_per_tick {
            match self.timers.first() {
                Some((at, _, _)) if *at <= now => {}
                _ => break,
            }
            let Some((emit_at, partition, key)) = self.timers.pop_first() else {
                break;
            };
            if !self.owned.contains(&partition) {
                continue;
            }
            let mut state = match self.current(partition, &key, now) {
                Ok(Some(state)) => state,
                Ok(None) => continue,
                Err(DedupError::Unreadable(reason)) => {
                    self.held_dead_letter(partition, &key, &[], &reason, out);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let record = match &state.phase {
                // A stale timer (the key was re-held with another deadline).
                Phase::Held { emit_at: due, .. } if *due != emit_at => continue,
                Phase::Emitted { .. } => continue,
                Phase::Held { record, .. } => match self.enriched.decode(record) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "held conversion unreadable; it cannot be emitted");
                        let bytes = record.clone();
                        self.held_dead_letter(partition, &key, &bytes, &e.to_string(), out);
                        state.phase = Phase::Emitted { at: now };
                        self.stage(partition, key, state, out);
                        continue;
                    }
                },
            };
            self.emit(&mut state, &record, now, out)?;
            self.stage(partition, key, state, out);
            emitted += 1;
        }
        self.metrics.held.set(self.timers.len() as i64);
        Ok(emitted)
    }

    /// Pushes the conversion to the dispatch topic of every platform it is
    /// eligible for, and a status record per configured platform.
    fn emit(
        &self,
        state: &mut KeyState,
        record: &ConversionEnriched,
        now: i64,
        out: &mut Vec<OutboundRecord>,
    ) -> Result<(), CodecError> {
        let key = record.key();
        let reported_by = state.sources.describe();
        for decision in &record.decisions {
            let Some(platform) = Platform::parse(&decision.platform) else {
                continue;
            };
            if decision.reason.as_deref() == Some(PLATFORM_NOT_CONFIGURED) {
                continue;
            }
            let server_side = if decision.eligible {
                let payload = self
                    .enriched
                    .encode(&minimise::for_platform(record, decision))?;
                out.push(OutboundRecord::new(
                    self.topics.dispatch(platform),
                    Some(key.clone()),
                    payload,
                ));
                self.metrics
                    .emitted
                    .with_label_values(&[platform.as_str()])
                    .inc();
                ServerSideStatus::Eligible
            } else {
                self.metrics
                    .not_eligible
                    .with_label_values(&[
                        platform.as_str(),
                        decision.reason.as_deref().unwrap_or("unknown"),
                    ])
                    .inc();
                ServerSideStatus::NotEligible
            };
            let status = DeliveryStatus {
                reason: decision.reason.clone(),
                reported_by: Some(reported_by.clone()),
                ..self.status_base(record, platform, state, server_side, now)
            };
            out.push(OutboundRecord::new(
                &self.topics.status,
                Some(key.clone()),
                self.status.encode(&status)?,
            ));
        }
        self.metrics
            .hold_seconds
            .observe(((now - state.first_seen).max(0) as f64) / 1000.0);
        state.phase = Phase::Emitted { at: now };
        Ok(())
    }

    fn duplicate_statuses(
        &self,
        state: &KeyState,
        record: &ConversionEnriched,
        now: i64,
        out: &mut Vec<OutboundRecord>,
    ) -> Result<(), CodecError> {
        let key = record.key();
        let first = format!(
            "{} report first seen at {}",
            state.first_source.as_str(),
            state.first_seen
        );
        for decision in &record.decisions {
            let Some(platform) = Platform::parse(&decision.platform) else {
                continue;
            };
            if decision.reason.as_deref() == Some(PLATFORM_NOT_CONFIGURED) {
                continue;
            }
            let status = DeliveryStatus {
                duplicate_of: Some(first.clone()),
                reported_by: Some(record.source.as_str().to_string()),
                ..self.status_base(record, platform, state, ServerSideStatus::Duplicate, now)
            };
            out.push(OutboundRecord::new(
                &self.topics.status,
                Some(key.clone()),
                self.status.encode(&status)?,
            ));
        }
        Ok(())
    }

    fn status_base(
        &self,
        record: &ConversionEnriched,
        platform: Platform,
        state: &KeyState,
        server_side: ServerSideStatus,
        now: i64,
    ) -> DeliveryStatus {
        DeliveryStatus {
            tenant: record.tenant.clone(),
            event_id: record.event_id.clone(),
            event_name: record.event_name.clone(),
            platform: platform.as_str().to_string(),
            stage: STAGE.to_string(),
            front_end: Some(state.front_end.get(platform)),
            server_side,
            reason: None,
            attempt: None,
            next_attempt_at: None,
            duplicate_of: None,
            reported_by: None,
            platform_request_id: None,
            time: now,
            conversion: Some(crate::summary::summary(record, platform, state.sources)),
        }
    }

    /// Records `state` as `key`'s new state: a changelog record now, the
    /// store once the outputs are acknowledged.
    fn stage(
        &mut self,
        partition: i32,
        key: DedupKey,
        state: KeyState,
        out: &mut Vec<OutboundRecord>,
    ) {
        let slot = out.len();
        out.push(
            OutboundRecord::new(
                &self.topics.changelog,
                Some(key.as_bytes().to_vec()),
                state.encode(),
            )
            .to_partition(partition)
            // The changelog claims the emission happened: written only once
            // the dispatch and status records are acknowledged, so a crash
            // between them re-emits (absorbed by the platforms' dedup)
            // rather than losing the conversion.
            .deferred(),
        );
        self.staged.stage(partition, key, state, slot);
    }

    /// The outputs pushed since the last acknowledgement were thrown away
    /// (an aborted transaction) and their reports are read again: the
    /// staged changes go, and the timers are what the store says.
    pub fn aborted(&mut self) -> Result<(), DedupError> {
        self.staged.discard();
        self.timers.clear();
        for partition in self.owned.clone() {
            for (key, emit_at) in self.store.held(partition)? {
                self.timers.insert((emit_at, partition, key));
            }
        }
        self.metrics.held.set(self.timers.len() as i64);
        Ok(())
    }

    /// The outputs pushed since the last call are acknowledged
    /// (`deliveries[i]` for the i-th): the staged state goes to the store,
    /// with the changelog offsets it now reflects.
    pub fn acknowledged(&mut self, deliveries: &[Delivered]) -> Result<(), DedupError> {
        let checkpoints = self.staged.checkpoints(deliveries, &self.metrics);
        self.store.write(self.staged.changes(), &checkpoints)?;
        self.staged.clear();
        Ok(())
    }
}

/// The browser report's pixels: which platform tags fired on the page.
fn observe_pixels(front_end: &mut FrontEnd, record: &ConversionEnriched) {
    if record.source != Source::Browser {
        return;
    }
    for (platform, status) in &record.pixels {
        let Some(platform) = Platform::parse(platform) else {
            continue;
        };
        let status = match status.as_str() {
            "fired" => FrontEndStatus::Fired,
            "not_fired" => FrontEndStatus::NotFired,
            _ => continue,
        };
        front_end.observe(platform, status);
    }
}
