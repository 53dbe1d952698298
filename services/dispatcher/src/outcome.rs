//! What happened to a conversion, as the records that say so: its status on
//! conversions.status, its retry record when it waits, its dead letter on
//! conversions.rejected when it failed for good. They are committed with
//! the conversion's input offset, in one transaction (`commit`).

use postback_core::avro::{Codec, SchemaKind};
use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::OutboundRecord;
use postback_core::model::{now_millis, DeliveryStatus, ServerSideStatus};
use postback_core::Platform;

use crate::adapters::Reason;
use crate::metrics::DispatchMetrics;
use crate::pending::Pending;
use crate::retry::Tiers;
use crate::scrub::scrub;

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

/// What became of a conversion: its last word on this platform, or the time
/// it may be tried again.
#[derive(Debug, Clone)]
pub enum Resolution {
    Final(Final),
    Retry {
        not_before_ms: i64,
        reason: Reason,
        /// Whether a `retrying` status says so (an attempt was made, or
        /// the account is paused); a conversion only moving along the retry
        /// path, or waiting for its account's budget, changes nothing a
        /// person needs to see.
        status: bool,
    },
    /// Its partition moved to another instance, which reads it again:
    /// nothing to write here.
    Abandoned,
}

/// A conversion and what became of it, from a delivery task to the driver.
pub struct Resolved {
    pub pending: Pending,
    pub resolution: Resolution,
}

/// The records an outcome writes: status records, retry records, dead
/// letters. They commit with the conversion's input offset.
pub struct Outcomes {
    platform: Platform,
    status_topic: String,
    codec: Codec<DeliveryStatus>,
    dead_letters: DeadLetters,
    tiers: Tiers,
    metrics: DispatchMetrics,
}

impl Outcomes {
    pub fn new(
        platform: Platform,
        status_topic: String,
        rejected_topic: String,
        tiers: Tiers,
        metrics: DispatchMetrics,
    ) -> Self {
        Outcomes {
            platform,
            status_topic,
            codec: Codec::new(SchemaKind::DeliveryStatus),
            dead_letters: DeadLetters::by_reference(
                format!("{STAGE}.{}", platform.as_str()),
                rejected_topic,
            ),
            tiers,
            metrics,
        }
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
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
            conversion: None,
        }
    }

    fn encode(&self, p: &Pending, status: &DeliveryStatus, out: &mut Vec<OutboundRecord>) {
        match self.codec.encode(status) {
            Ok(bytes) => out.push(OutboundRecord::new(
                &self.status_topic,
                p.key.clone(),
                bytes,
            )),
            // Our own schema: a bug, not input. Logged, never fatal.
            Err(e) => tracing::error!(error = %e, "cannot encode a status record"),
        }
    }

    /// The records of `resolution` for `p`.
    pub fn records(&self, p: &Pending, resolution: &Resolution) -> Vec<OutboundRecord> {
        let mut out = Vec::with_capacity(2);
        match resolution {
            Resolution::Abandoned => {}
            Resolution::Final(outcome) => self.final_records(p, outcome, &mut out),
            Resolution::Retry {
                not_before_ms,
                reason,
                status,
            } => {
                out.push(self.tiers.record(p, *not_before_ms, now_millis()));
                if *status {
                    let mut s = self.status(p, ServerSideStatus::Retrying);
                    s.reason = Some(scrub(&reason.describe(), &p.row));
                    s.next_attempt_at = Some(*not_before_ms);
                    self.encode(p, &s, &mut out);
                    self.metrics.events("retrying", &reason.code, 1);
                }
            }
        }
        out
    }

    fn final_records(&self, p: &Pending, outcome: &Final, out: &mut Vec<OutboundRecord>) {
        let mut status = self.status(p, outcome.status());
        match outcome {
            Final::Delivered { request_id } => {
                status.platform_request_id = request_id.clone();
            }
            Final::Rejected { reason, request_id } => {
                status.reason = Some(scrub(&reason.describe(), &p.row));
                status.platform_request_id = request_id.clone();
            }
            Final::Expired { reason } => status.reason = Some(scrub(reason, &p.row)),
            Final::Failed { reason } => {
                let explained = scrub(&reason.describe(), &p.row);
                status.reason = Some(explained.clone());
                match self.dead_letters.for_record(
                    &p.as_inbound(),
                    "delivery_failed",
                    format!("{} attempts; last error: {explained}", p.failures),
                    Vec::new(),
                    Some(p.tenant.clone()),
                ) {
                    Ok(letter) => out.push(letter),
                    Err(e) => tracing::error!(error = %e, "cannot encode a dead letter"),
                }
            }
            Final::NotEligible { reason } => status.reason = Some(reason.clone()),
        }
        self.encode(p, &status, out);
        self.metrics
            .events(outcome.outcome_label(), &outcome.reason_label(), 1);
    }
}
