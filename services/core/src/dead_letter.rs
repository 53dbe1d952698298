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
        self.letter(
            Source {
                topic: &input.topic,
                position: Some((input.partition, input.offset)),
                key: input.key.as_deref(),
                value: input.payload.as_deref(),
            },
            reason,
            detail.into(),
            errors,
            tenant,
        )
    }

    /// The dead letter for an output the stage made but the broker cannot
    /// take (larger than it accepts): `source_topic` is where it was meant
    /// to go, and the letter keeps its head for a look and a replay.
    pub fn for_output(
        &self,
        output: &OutboundRecord,
        reason: &str,
        detail: impl Into<String>,
    ) -> Result<OutboundRecord, CodecError> {
        self.letter(
            Source {
                topic: &output.topic,
                position: None,
                key: output.key.as_deref(),
                value: Some(&output.payload),
            },
            reason,
            detail.into(),
            Vec::new(),
            None,
        )
    }

    fn letter(
        &self,
        source: Source<'_>,
        reason: &str,
        detail: String,
        errors: Vec<FieldError>,
        tenant: Option<String>,
    ) -> Result<OutboundRecord, CodecError> {
        let mut detail = detail;
        if detail.len() > MAX_DETAIL_CHARS {
            let cut = (0..=MAX_DETAIL_CHARS)
                .rev()
                .find(|i| detail.is_char_boundary(*i))
                .unwrap_or(0);
            detail.truncate(cut);
        }
        let mut errors = errors;
        errors.truncate(MAX_ERRORS);
        let mut original_value = source.value.map(<[u8]>::to_vec);
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
            source_topic: Some(source.topic.to_string()),
            source_partition: source.position.map(|(p, _)| p),
            source_offset: source.position.map(|(_, o)| o),
            original_key: source.key.map(<[u8]>::to_vec),
            original_value,
            time: now_millis(),
        };
        Ok(OutboundRecord::new(
            self.topic.clone(),
            source.key.map(<[u8]>::to_vec),
            self.codec.encode(&letter)?,
        ))
    }
}

/// Where a dead letter's original came from.
struct Source<'a> {
    topic: &'a str,
    position: Option<(i32, i64)>,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
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
            ..Default::default()
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
