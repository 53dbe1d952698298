//! The consumer side: status records become rows, written to the store as
//! one transaction per batch before the batch's offsets move (the loop's
//! `persist`), at least once; the store's writes are idempotent, so a
//! batch read again changes nothing. A record that does not decode is a
//! dead letter (stage `status`) and its neighbours go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{HandlerError, InboundRecord, OutboundRecord, RecordHandler};
use postback_core::model::DeliveryStatus;
use postback_core::{Codec, SchemaKind};

use crate::metrics::StatusMetrics;
use crate::store::{StatusRow, Store};

pub const STAGE: &str = "status";

pub struct StatusHandler {
    store: Store,
    codec: Codec<DeliveryStatus>,
    dead_letters: DeadLetters,
    pending: Vec<StatusRow>,
    retry_for: Duration,
    metrics: StatusMetrics,
}

impl StatusHandler {
    pub fn new(
        store: Store,
        dead_letters: DeadLetters,
        retry_for: Duration,
        metrics: StatusMetrics,
    ) -> Self {
        StatusHandler {
            store,
            codec: Codec::new(SchemaKind::DeliveryStatus),
            dead_letters,
            pending: Vec::new(),
            retry_for,
            metrics,
        }
    }
}

impl RecordHandler for StatusHandler {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        let decoded = match record.payload.as_deref() {
            None => Err(("no_value", "the record has no value".to_string())),
            Some(bytes) => self
                .codec
                .decode(bytes)
                .map_err(|e| (e.reason(), e.to_string())),
        };
        match decoded {
            Ok(status) => self.pending.push(StatusRow {
                partition: record.partition,
                offset: record.offset,
                status,
            }),
            Err((reason, detail)) => {
                self.metrics
                    .records
                    .with_label_values(&["dead_lettered"])
                    .inc();
                tracing::warn!(topic = %record.topic, partition = record.partition,
                    offset = record.offset, reason, "status record is a dead letter");
                match self
                    .dead_letters
                    .for_record(record, reason, detail, vec![], None)
                {
                    Ok(letter) => out.push(letter),
                    Err(e) => tracing::error!(error = %e, "dead letter does not encode"),
                }
            }
        }
    }

    async fn persist(&mut self) -> Result<(), HandlerError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // Taken, not copied: an error stops the loop, and the batch is
        // read again.
        let rows = Arc::new(std::mem::take(&mut self.pending));
        let records = rows.len() as u64;
        self.store
            .apply_with_retry(rows.clone(), self.retry_for)
            .await?;
        // The next batch reuses the buffer: grown afresh, its pages were
        // zeroed and copied again at every doubling, a quarter of the
        // loop's own time at batches of 100,000.
        if let Ok(mut buffer) = Arc::try_unwrap(rows) {
            buffer.clear();
            self.pending = buffer;
        }
        self.metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_writes.inc();
        self.metrics
            .records
            .with_label_values(&["stored"])
            .inc_by(records);
        Ok(())
    }

    fn on_aborted(&mut self) {
        // Written or not, these are read again.
        self.pending.clear();
    }
}
