//! The enricher's own metrics (the consumer loop adds lag, batches, produce).

use postback_core::metrics::ServiceMetrics;
use prometheus::IntCounterVec;

#[derive(Clone)]
pub struct EnricherMetrics {
    /// Records by outcome: enriched | dead_letter.
    pub records: IntCounterVec,
    /// Dead letters by reason (decode_failed, unknown_schema, ...).
    pub dead_letters: IntCounterVec,
    /// Decisions by platform, outcome (eligible | not_eligible) and reason.
    pub eligibility: IntCounterVec,
    /// Identifiers left out because they could not be normalised.
    pub identifiers_dropped: IntCounterVec,
    /// Click ids left out as unusable.
    pub click_ids_dropped: IntCounterVec,
    /// Conversions of a tenant the enricher has no configuration for.
    pub unknown_tenant: prometheus::IntCounter,
}

impl EnricherMetrics {
    pub fn new(m: &ServiceMetrics) -> Self {
        EnricherMetrics {
            records: m.counter_vec(
                "records_total",
                "Raw conversions handled, by outcome (enriched, dead_letter).",
                &["outcome"],
            ),
            dead_letters: m.counter_vec(
                "dead_letters_total",
                "Raw records sent to conversions.rejected, by reason.",
                &["reason"],
            ),
            eligibility: m.counter_vec(
                "eligibility_total",
                "Per-platform decisions, by platform, outcome and reason.",
                &["platform", "outcome", "reason"],
            ),
            identifiers_dropped: m.counter_vec(
                "identifiers_dropped_total",
                "User identifiers that could not be normalised, by platform, field and reason.",
                &["platform", "field", "reason"],
            ),
            click_ids_dropped: m.counter_vec(
                "click_ids_dropped_total",
                "Click ids left out as unusable, by kind and reason.",
                &["kind", "reason"],
            ),
            unknown_tenant: m.counter(
                "unknown_tenant_total",
                "Conversions of tenants missing from the enricher's configuration.",
            ),
        }
    }
}
