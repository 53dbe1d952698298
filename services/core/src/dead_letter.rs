//! Building dead letters: what a stage writes to conversions.rejected for a
//! record it cannot process, with the stage, a stable reason code, a
//! human-readable detail and the original bytes (for replay).

use crate::kafka::{InboundRecord, OutboundRecord};
use crate::model::{now_millis, DeadLetter, FieldError};
use crate::{Codec, CodecError, SchemaKind};

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
        let letter = DeadLetter {
            stage: self.stage.clone(),
            reason: reason.to_string(),
            detail: detail.into(),
            errors,
            tenant,
            source_topic: Some(input.topic.clone()),
            source_partition: Some(input.partition),
            source_offset: Some(input.offset),
            original_key: input.key.clone(),
            original_value: input.payload.clone(),
            time: now_millis(),
        };
        Ok(OutboundRecord::new(
            self.topic.clone(),
            input.key.clone(),
            self.codec.encode(&letter)?,
        ))
    }
}
