//! Kafka ingest for retailers who already stream their orders: JSON
//! conversions on their own topics, validated exactly like the HTTP API.
//! Valid ones go to conversions.raw; invalid ones become dead letters with
//! every field error, and the partition keeps moving.

use std::collections::HashMap;

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{InboundRecord, OutboundRecord, RecordHandler};
use postback_core::model::{now_millis, FieldError, Source};
use serde_json::Value;

use crate::metrics::CollectorMetrics;
use crate::publish::Publisher;
use crate::validate::{validate_event, EventContext, Limits};

pub const STAGE: &str = "collector";

pub struct IngestHandler {
    /// topic -> tenant
    tenants: HashMap<String, String>,
    publisher: Publisher,
    dead_letters: DeadLetters,
    limits: Limits,
    metrics: CollectorMetrics,
}

impl IngestHandler {
    pub fn new(
        tenants: HashMap<String, String>,
        publisher: Publisher,
        dead_letters: DeadLetters,
        limits: Limits,
        metrics: CollectorMetrics,
    ) -> Self {
        IngestHandler {
            tenants,
            publisher,
            dead_letters,
            limits,
            metrics,
        }
    }

    fn convert(&self, record: &InboundRecord) -> Result<OutboundRecord, Rejection> {
        let tenant = self.tenants.get(&record.topic).ok_or_else(|| Rejection {
            reason: "unknown_topic",
            detail: format!("no tenant is configured for topic {}", record.topic),
            errors: vec![],
            tenant: None,
        })?;
        let payload = record.payload.as_deref().unwrap_or_default();
        let value: Value = serde_json::from_slice(payload).map_err(|e| Rejection {
            reason: "invalid_json",
            detail: format!("value is not valid JSON: {e}"),
            errors: vec![],
            tenant: Some(tenant.clone()),
        })?;
        let ctx = EventContext {
            tenant,
            default_source: Source::Server,
            required_source: None,
            now_ms: now_millis(),
            signer: None,
        };
        let event = validate_event(&value, "", &ctx, &self.limits).map_err(|errors| Rejection {
            reason: "validation_failed",
            detail: summary(&errors),
            errors,
            tenant: Some(tenant.clone()),
        })?;
        self.publisher.record(&event).map_err(|e| Rejection {
            reason: e.reason(),
            detail: e.to_string(),
            errors: vec![],
            tenant: Some(tenant.clone()),
        })
    }
}

struct Rejection {
    reason: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    tenant: Option<String>,
}

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RecordHandler for IngestHandler {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        match self.convert(record) {
            Ok(r) => {
                self.metrics
                    .events
                    .with_label_values(&["ingest", "accepted"])
                    .inc();
                out.push(r);
            }
            Err(rejection) => {
                self.metrics
                    .events
                    .with_label_values(&["ingest", "rejected"])
                    .inc();
                tracing::info!(topic = %record.topic, partition = record.partition, offset = record.offset,
                    reason = rejection.reason, "ingested record rejected");
                match self.dead_letters.for_record(
                    record,
                    rejection.reason,
                    rejection.detail,
                    rejection.errors,
                    rejection.tenant,
                ) {
                    Ok(dl) => out.push(dl),
                    // Encoding our own dead-letter schema cannot fail for
                    // input reasons; if it does, it is a build defect.
                    Err(e) => tracing::error!(error = %e, "dead letter does not encode"),
                }
            }
        }
    }
}
