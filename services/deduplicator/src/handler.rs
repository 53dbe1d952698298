//! The deduplicator in the consumer loop: decodes reports, restores a
//! partition's state before its first record, emits closed merge windows
//! on ticks, makes state durable once outputs are committed, and forgets
//! what an aborted transaction staged.

use std::time::{Duration, Instant};

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{
    Delivered, HandlerError, InboundRecord, OutboundRecord, RecordHandler, TopicPartition,
};
use postback_core::model::{now_millis, ConversionEnriched};
use postback_core::{Codec, SchemaKind};

use crate::dedup::{DedupError, Deduplicator, Outcome};
use crate::metrics::DedupMetrics;
use crate::restore::Restorer;

pub struct DedupHandler {
    dedup: Deduplicator,
    restorer: Restorer,
    input_topic: String,
    codec: Codec<ConversionEnriched>,
    dead_letters: DeadLetters,
    metrics: DedupMetrics,
    tick_interval: Duration,
    /// A store failure seen while handling: the loop stops at the next
    /// acknowledgement, before the batch's offsets are committed.
    fatal: Option<DedupError>,
    /// Dead letters a restore produced (unreadable or stale changelog
    /// state), written with the next outputs.
    restore_letters: Vec<OutboundRecord>,
    /// Those of them pushed with outputs not committed yet (an abort puts
    /// them back).
    letters_in_flight: Vec<OutboundRecord>,
    gauges_updated: Option<Instant>,
}

impl DedupHandler {
    pub fn new(
        dedup: Deduplicator,
        restorer: Restorer,
        input_topic: String,
        dead_letters: DeadLetters,
        metrics: DedupMetrics,
        tick_interval: Duration,
    ) -> Self {
        DedupHandler {
            dedup,
            restorer,
            input_topic,
            codec: Codec::new(SchemaKind::ConversionEnriched),
            dead_letters,
            metrics,
            tick_interval,
            fatal: None,
            restore_letters: Vec::new(),
            letters_in_flight: Vec::new(),
            gauges_updated: None,
        }
    }

    fn dead_letter(
        &self,
        record: &InboundRecord,
        reason: &str,
        detail: String,
        out: &mut Vec<OutboundRecord>,
    ) {
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        // The error describes the bytes, never their content.
        tracing::warn!(topic = %record.topic, partition = record.partition,
            offset = record.offset, reason, "record is a dead letter");
        match self
            .dead_letters
            .for_record(record, reason, detail, vec![], None)
        {
            Ok(dl) => out.push(dl),
            Err(e) => tracing::error!(error = %e, "dead letter does not encode"),
        }
    }

    fn push_restore_letters(&mut self, out: &mut Vec<OutboundRecord>) {
        for letter in self.restore_letters.drain(..) {
            out.push(letter.clone());
            self.letters_in_flight.push(letter);
        }
    }

    fn count(&self, outcome: Outcome, source: postback_core::model::Source) {
        self.metrics
            .reports
            .with_label_values(&[outcome.as_str()])
            .inc();
        match outcome {
            Outcome::Merged => self
                .metrics
                .merges
                .with_label_values(&[source.as_str()])
                .inc(),
            Outcome::Duplicate => self
                .metrics
                .duplicates
                .with_label_values(&[source.as_str()])
                .inc(),
            _ => {}
        }
    }

    fn update_gauges(&mut self) {
        if self
            .gauges_updated
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.gauges_updated = Some(Instant::now());
        let store = self.dedup.store();
        self.metrics.state_keys.set(store.approximate_keys() as i64);
        self.metrics.state_disk_bytes.set(store.disk_bytes() as i64);
    }
}

impl RecordHandler for DedupHandler {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        if self.fatal.is_some() {
            return;
        }
        self.push_restore_letters(out);
        let report = match self
            .codec
            .decode(record.payload.as_deref().unwrap_or_default())
        {
            Ok(r) => r,
            Err(e) => return self.dead_letter(record, e.reason(), e.to_string(), out),
        };
        let source = report.source;
        match self
            .dedup
            .report(record.partition, record.offset, report, now_millis(), out)
        {
            Ok(outcome) => self.count(outcome, source),
            Err(e) => match e.reason() {
                Some(reason) => self.dead_letter(record, reason, e.to_string(), out),
                None => self.fatal = Some(e),
            },
        }
    }

    fn on_assigned(&mut self, partitions: &[TopicPartition]) -> Result<(), HandlerError> {
        for tp in partitions.iter().filter(|tp| tp.topic == self.input_topic) {
            let started = Instant::now();
            let mut restored =
                run_blocking(|| self.restorer.restore(self.dedup.store_mut(), tp.partition))?;
            self.restore_letters.append(&mut restored.dead_letters);
            let held = self.dedup.adopt(tp.partition)?;
            let took = started.elapsed();
            self.metrics.restore_seconds.observe(took.as_secs_f64());
            tracing::info!(
                partition = tp.partition,
                records = restored.records,
                rebuilt = restored.rebuilt,
                held,
                took_ms = took.as_millis() as u64,
                "partition state restored"
            );
        }
        self.update_gauges();
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions.iter().filter(|tp| tp.topic == self.input_topic) {
            self.dedup.release(tp.partition);
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.tick_interval)
    }

    fn tick(&mut self, out: &mut Vec<OutboundRecord>) {
        if self.fatal.is_some() {
            return;
        }
        self.push_restore_letters(out);
        match self.dedup.tick(now_millis(), out) {
            Ok(_) => {}
            Err(e @ DedupError::Store(_)) => self.fatal = Some(e),
            Err(e) => tracing::error!(error = %e, "cannot emit a held conversion"),
        }
    }

    fn on_acknowledged(&mut self, deliveries: &[Delivered]) -> Result<(), HandlerError> {
        if let Some(e) = self.fatal.take() {
            return Err(e.into());
        }
        self.letters_in_flight.clear();
        self.dedup.acknowledged(deliveries)?;
        self.update_gauges();
        Ok(())
    }

    fn on_aborted(&mut self) {
        let mut back = std::mem::take(&mut self.letters_in_flight);
        back.append(&mut self.restore_letters);
        self.restore_letters = back;
        if let Err(e) = self.dedup.aborted() {
            self.fatal = Some(e);
        }
    }
}

/// Runs blocking work (a restore) without stalling the runtime's other
/// tasks where the runtime allows it.
fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
