//! Building dead letters: what a stage writes to conversions.rejected for a
//! record it cannot process, with the stage, a stable reason code, a
//! human-readable detail and the original bytes (for replay).

use crate::kafka::{InboundRecord, OutboundRecord};
use crate::model::{now_millis, DeadLetter, FieldError};
use crate::{Codec, CodecError, SchemaKind};

/// Most original bytes a dead letter carries: a dead letter must always fit
/// in a broker record (1 MiB by default), or it could never be written.
pub const MAX_ORIGINAL_BYTES: usize = 512 * 1024;
const MAX_DETAIL_CHARS: usize = 2048;
const MAX_ERRORS: usize = 100;

#[derive(Clone)]
pub struct DeadLetters {
    stage: String,
    topic: String,
    codec: Codec<DeadLetter>,
}

impl DeadLetters {
    pub fn new(stage: impl Into<String>, topic: impl Into<String>) -> Self {
        DeadLetters {
            stage: stage.into(),
            topic: topic.into(),
            codec: Codec::new(SchemaKind::DeadLetter),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The dead letter for `input`, keyed like the input so it lands next to
    /// the conversion's other records.
    pub fn for_record(
        &self,
        input: &InboundRecord,
        reason: &str,
        detail: impl Into<String>,
        errors: Vec<FieldError>,
        tenant: Option<String>,
    ) -> Result<OutboundRecord, CodecError> {
        let mut detail: String = detail.into();
        if detail.len() > MAX_DETAIL_CHARS {
            let cut = (0..=MAX_DETAIL_CHARS)
                .rev()
                .find(|i| detail.is_char_boundary(*i))
                .unwrap_or(0);
            detail.truncate(cut);
        }
        let mut errors = errors;
        errors.truncate(MAX_ERRORS);
        let mut original_value = input.payload.clone();
        if let Some(v) = &mut original_value {
            if v.len() > MAX_ORIGINAL_BYTES {
                // The source record stays on its topic (by topic, partition
                // and offset) for a replay; the letter keeps its head.
                detail.push_str(&format!(
                    " [original value of {} bytes truncated to {MAX_ORIGINAL_BYTES}]",
                    v.len()
                ));
                v.truncate(MAX_ORIGINAL_BYTES);
            }
        }
        let letter = DeadLetter {
            stage: self.stage.clone(),
            reason: reason.to_string(),
            detail,
            errors,
            tenant,
            source_topic: Some(input.topic.clone()),
            source_partition: Some(input.partition),
            source_offset: Some(input.offset),
            original_key: input.key.clone(),
            original_value,
            time: now_millis(),
        };
        Ok(OutboundRecord::new(
            self.topic.clone(),
            input.key.clone(),
            self.codec.encode(&letter)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_of_a_huge_record_still_fits_a_broker_record() {
        let input = InboundRecord {
            topic: "orders.ingest".into(),
            partition: 0,
            offset: 9,
            key: Some(b"k".to_vec()),
            payload: Some(vec![b'x'; 3 * 1024 * 1024]),
            timestamp: None,
        };
        let errors = (0..10_000)
            .map(|i| FieldError::new(format!("events[{i}]"), "bad"))
            .collect();
        let letter = DeadLetters::new("collector", "conversions.rejected")
            .for_record(&input, "invalid", "é".repeat(100_000), errors, None)
            .unwrap();
        assert!(
            letter.payload.len() < 1024 * 1024,
            "{}",
            letter.payload.len()
        );
        let decoded: DeadLetter = Codec::new(SchemaKind::DeadLetter)
            .decode(&letter.payload)
            .unwrap();
        assert_eq!(decoded.original_value.unwrap().len(), MAX_ORIGINAL_BYTES);
        assert!(decoded.detail.contains("truncated"));
        assert_eq!(decoded.errors.len(), MAX_ERRORS);
    }
}
