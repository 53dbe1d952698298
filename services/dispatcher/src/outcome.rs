//! Writing what happened to conversions.status (and failed conversions to
//! conversions.rejected), and telling the consumer which offsets are done.
//!
//! A conversion's offset is released only after its final status (and dead
//! letter, if any) is acknowledged by the broker: a crash before that
//! replays the conversion, and the platform's own dedup (event_id, order_id)
//! absorbs the resend.

use std::time::Duration;

use postback_core::avro::{Codec, SchemaKind};
use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{OutboundRecord, Producer};
use postback_core::model::{now_millis, DeliveryStatus, ServerSideStatus};
use postback_core::Platform;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::adapters::Reason;
use crate::metrics::DispatchMetrics;
use crate::pending::{Origin, Pending};

pub const STAGE: &str = "dispatcher";

/// A conversion's last word on this platform.
#[derive(Debug, Clone)]
pub enum Final {
    Delivered {
        request_id: Option<String>,
    },
    Rejected {
        reason: Reason,
        request_id: Option<String>,
    },
    Expired {
        reason: String,
    },
    Failed {
        reason: Reason,
    },
    NotEligible {
        reason: String,
    },
}

impl Final {
    fn status(&self) -> ServerSideStatus {
        match self {
            Final::Delivered { .. } => ServerSideStatus::Delivered,
            Final::Rejected { .. } => ServerSideStatus::Rejected,
            Final::Expired { .. } => ServerSideStatus::Expired,
            Final::Failed { .. } => ServerSideStatus::Failed,
            Final::NotEligible { .. } => ServerSideStatus::NotEligible,
        }
    }

    fn outcome_label(&self) -> &'static str {
        match self {
            Final::Delivered { .. } => "delivered",
            Final::Rejected { .. } => "rejected",
            Final::Expired { .. } => "expired",
            Final::Failed { .. } => "failed",
            Final::NotEligible { .. } => "not_eligible",
        }
    }

    fn reason_label(&self) -> String {
        match self {
            Final::Delivered { .. } => String::new(),
            Final::Rejected { reason, .. } | Final::Failed { reason } => reason.code.clone(),
            Final::Expired { .. } => "too_old".into(),
            Final::NotEligible { reason } => reason.clone(),
        }
    }
}

/// A message to the consumer: this record has its final outcome.
#[derive(Debug, Clone, Copy)]
pub struct Done(pub Origin);

pub struct Outcomes {
    producer: Producer,
    platform: Platform,
    status_topic: String,
    codec: Codec<DeliveryStatus>,
    dead_letters: DeadLetters,
    done: UnboundedSender<Done>,
    metrics: DispatchMetrics,
    shutdown: CancellationToken,
}

impl Outcomes {
    pub fn new(
        producer: Producer,
        platform: Platform,
        status_topic: String,
        rejected_topic: String,
        done: UnboundedSender<Done>,
        metrics: DispatchMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Outcomes {
            producer,
            platform,
            status_topic,
            codec: Codec::new(SchemaKind::DeliveryStatus),
            dead_letters: DeadLetters::new(
                format!("{STAGE}.{}", platform.as_str()),
                rejected_topic,
            ),
            done,
            metrics,
            shutdown,
        }
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    fn status(&self, p: &Pending, server_side: ServerSideStatus) -> DeliveryStatus {
        DeliveryStatus {
            tenant: p.tenant.clone(),
            event_id: p.event_id.clone(),
            event_name: p.event_name.clone(),
            platform: self.platform.as_str().into(),
            stage: STAGE.into(),
            front_end: None,
            server_side,
            reason: None,
            attempt: (p.sends > 0).then(|| i32::try_from(p.sends).unwrap_or(i32::MAX)),
            next_attempt_at: None,
            duplicate_of: None,
            reported_by: None,
            platform_request_id: None,
            time: now_millis(),
        }
    }

    fn encode(&self, p: &Pending, status: &DeliveryStatus) -> Option<OutboundRecord> {
        match self.codec.encode(status) {
            Ok(bytes) => Some(OutboundRecord::new(
                &self.status_topic,
                p.key.clone(),
                bytes,
            )),
            Err(e) => {
                // Our own schema: a bug, not input. Logged, never fatal.
                tracing::error!(error = %e, "cannot encode a status record");
                None
            }
        }
    }

    /// Writes the final outcome of each conversion, then releases its
    /// offset. Returns false if shutdown interrupted it (nothing released:
    /// the conversions are replayed).
    pub async fn finish(&self, items: Vec<(Pending, Final)>) -> bool {
        if items.is_empty() {
            return true;
        }
        let mut records = Vec::with_capacity(items.len());
        for (p, outcome) in &items {
            let mut status = self.status(p, outcome.status());
            match outcome {
                Final::Delivered { request_id } => {
                    status.platform_request_id = request_id.clone();
                }
                Final::Rejected { reason, request_id } => {
                    status.reason = Some(reason.describe());
                    status.platform_request_id = request_id.clone();
                }
                Final::Expired { reason } => status.reason = Some(reason.clone()),
                Final::Failed { reason } => {
                    status.reason = Some(reason.describe());
                    match self.dead_letters.for_record(
                        &p.as_inbound(),
                        "delivery_failed",
                        format!("{} attempts; last error: {}", p.failures, reason.describe()),
                        Vec::new(),
                        Some(p.tenant.clone()),
                    ) {
                        Ok(letter) => records.push(letter),
                        Err(e) => tracing::error!(error = %e, "cannot encode a dead letter"),
                    }
                }
                Final::NotEligible { reason } => status.reason = Some(reason.clone()),
            }
            records.extend(self.encode(p, &status));
        }
        if !self.write(records).await {
            return false;
        }
        for (p, outcome) in &items {
            self.metrics
                .events(outcome.outcome_label(), &outcome.reason_label(), 1);
            // The receiver only goes away when the service stops.
            self.release(p.origin);
        }
        true
    }

    /// Records that the conversions will be tried again at `next_at_ms`.
    pub async fn retrying(&self, items: &[&Pending], reason: &Reason, next_at_ms: i64) {
        let records: Vec<OutboundRecord> = items
            .iter()
            .filter_map(|p| {
                let mut status = self.status(p, ServerSideStatus::Retrying);
                status.reason = Some(reason.describe());
                status.next_attempt_at = Some(next_at_ms);
                self.encode(p, &status)
            })
            .collect();
        self.metrics.events("retrying", &reason.code, items.len());
        self.write(records).await;
    }

    /// Releases a record that needs no status (its dead letter is written).
    pub fn release(&self, origin: Origin) {
        let _ = self.done.send(Done(origin));
    }

    /// Writes every record, retrying until the broker acknowledged all of
    /// them; false if shutdown came first.
    pub async fn write(&self, records: Vec<OutboundRecord>) -> bool {
        let mut pending = records;
        let mut backoff = Duration::from_millis(100);
        while !pending.is_empty() {
            let results = self.producer.send_all(&pending).await;
            let mut again = Vec::new();
            for (record, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(_) => {}
                    Err(e) if e.is_retriable() => again.push(record),
                    Err(e) => {
                        tracing::error!(error = %e, topic = %record.topic, "record can never be written; dropped");
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            tracing::warn!(
                pending = again.len(),
                "status records not acknowledged; retrying"
            );
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            pending = again;
        }
        true
    }
}
