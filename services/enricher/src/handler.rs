//! The enricher's stage in the consumer loop: decode, enrich, encode; what
//! cannot be decoded becomes a dead letter and the partition moves on.

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{InboundRecord, OutboundRecord, RecordHandler};
use postback_core::model::{now_millis, ConversionEnriched, ConversionRaw};
use postback_core::{Codec, CodecError, SchemaKind};

use prometheus::IntCounter;

use crate::enrich::Enricher;
use crate::metrics::EnricherMetrics;

pub const STAGE: &str = "enricher";

pub struct EnrichHandler {
    enricher: Enricher,
    raw: Codec<ConversionRaw>,
    enriched: Codec<ConversionEnriched>,
    output_topic: String,
    dead_letters: DeadLetters,
    metrics: EnricherMetrics,
    eligibility: Vec<(String, &'static str, String, IntCounter)>,
    enriched_count: IntCounter,
}

impl EnrichHandler {
    pub fn new(
        enricher: Enricher,
        output_topic: String,
        dead_letters: DeadLetters,
        metrics: EnricherMetrics,
    ) -> Self {
        EnrichHandler {
            enricher,
            raw: Codec::new(SchemaKind::ConversionRaw),
            enriched: Codec::new(SchemaKind::ConversionEnriched),
            output_topic,
            dead_letters,
            enriched_count: metrics.records.with_label_values(&["enriched"]),
            metrics,
            eligibility: Vec::new(),
        }
    }

    fn process(&mut self, record: &InboundRecord) -> Result<OutboundRecord, CodecError> {
        let raw = self
            .raw
            .decode(record.payload.as_deref().unwrap_or_default())?;
        let e = self.enricher.enrich(raw, now_millis());
        let m = &self.metrics;
        if e.unknown_tenant {
            m.unknown_tenant.inc();
        }
        for (platform, field, error) in &e.dropped_identifiers {
            m.identifiers_dropped
                .with_label_values(&[platform.as_str(), field.as_str(), error.reason()])
                .inc();
        }
        for d in &e.dropped_click_ids {
            m.click_ids_dropped
                .with_label_values(&[d.kind, d.reason])
                .inc();
        }
        for d in &e.record.decisions {
            let (outcome, reason) = if d.eligible {
                ("eligible", "none")
            } else {
                ("not_eligible", d.reason.as_deref().unwrap_or("unknown"))
            };
            // Label lookups hash three strings per call; only a handful of
            // combinations exist, so their counters are found once and kept.
            let known = self
                .eligibility
                .iter()
                .find(|(p, o, r, _)| p == &d.platform && *o == outcome && r == reason);
            match known {
                Some((_, _, _, c)) => c.inc(),
                None => {
                    let c =
                        m.eligibility
                            .with_label_values(&[d.platform.as_str(), outcome, reason]);
                    c.inc();
                    self.eligibility
                        .push((d.platform.clone(), outcome, reason.to_string(), c));
                }
            }
        }
        let payload = self.enriched.encode(&e.record)?;
        Ok(OutboundRecord::new(
            self.output_topic.clone(),
            Some(e.record.key()),
            payload,
        ))
    }
}

impl RecordHandler for EnrichHandler {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        match self.process(record) {
            Ok(r) => {
                self.enriched_count.inc();
                out.push(r);
            }
            Err(e) => {
                self.metrics
                    .records
                    .with_label_values(&["dead_letter"])
                    .inc();
                self.metrics
                    .dead_letters
                    .with_label_values(&[e.reason()])
                    .inc();
                // The error text describes the bytes, never their content.
                tracing::warn!(topic = %record.topic, partition = record.partition,
                    offset = record.offset, reason = e.reason(), "raw record is a dead letter");
                match self
                    .dead_letters
                    .for_record(record, e.reason(), e.to_string(), vec![], None)
                {
                    Ok(dl) => out.push(dl),
                    Err(e) => tracing::error!(error = %e, "dead letter does not encode"),
                }
            }
        }
    }
}
