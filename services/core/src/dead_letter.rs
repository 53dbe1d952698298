//! Building dead letters: what a stage writes to conversions.rejected for a
//! record it cannot process, with the stage, a stable reason code, a
//! human-readable detail and where the record is (for replay).
//!
//! Two kinds of builder, by what the stage reads:
//!
//! - [`DeadLetters::new`] copies the original bytes into the letter (up to
//!   [`MAX_ORIGINAL_BYTES`]). Only the collector's ingest uses it: its input
//!   is a retailer's own topic, which the pipeline neither owns nor keeps,
//!   so the letter is the only copy of a record it could not take.
//! - [`DeadLetters::by_reference`] copies no bytes: the letter keeps the
//!   original's key (`tenant/event_id`, no personal data) and its place
//!   (topic, partition, offset), and its detail says so. Every stage past
//!   the collector uses it, so that raw personal data (conversions.raw) and
//!   the dispatch records (IP, user agent, click ids) stay on their own
//!   topics, with their own retention, and are never copied onto
//!   conversions.rejected. `postback-ctl replay` fetches the original from
//!   its place while that topic still holds it.

use crate::kafka::{InboundRecord, OutboundRecord};
use crate::model::{now_millis, DeadLetter, FieldError};
use crate::{Codec, CodecError, SchemaKind};

/// Most original bytes a dead letter carries: a dead letter must always fit
/// in a broker record (1 MiB by default), or it could never be written.
pub const MAX_ORIGINAL_BYTES: usize = 512 * 1024;
const MAX_DETAIL_CHARS: usize = 2048;
const MAX_ERRORS: usize = 100;

/// Whether a builder's letters carry their originals' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Originals {
    /// Copied into the letter (the collector's ingest).
    Copied,
    /// Not copied: the letter points at its record (every later stage).
    ByReference,
}

#[derive(Clone)]
pub struct DeadLetters {
    stage: String,
    topic: String,
    originals: Originals,
    codec: Codec<DeadLetter>,
}

impl DeadLetters {
    /// Letters that copy their originals' bytes: for the collector's ingest
    /// only (see the module docs).
    pub fn new(stage: impl Into<String>, topic: impl Into<String>) -> Self {
        Self::with(stage, topic, Originals::Copied)
    }

    /// Letters that point at their originals and copy no bytes: for every
    /// stage past the collector (see the module docs).
    pub fn by_reference(stage: impl Into<String>, topic: impl Into<String>) -> Self {
        Self::with(stage, topic, Originals::ByReference)
    }

    fn with(stage: impl Into<String>, topic: impl Into<String>, originals: Originals) -> Self {
        DeadLetters {
            stage: stage.into(),
            topic: topic.into(),
            originals,
            codec: Codec::new(SchemaKind::DeadLetter),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn originals(&self) -> Originals {
        self.originals
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
    /// to go. A copying builder keeps the output's head for a look; one by
    /// reference keeps nothing of it (the output is on no topic, so such a
    /// letter cannot be replayed; the stage's input record can be read
    /// again from its own topic).
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
        let original_value = match self.originals {
            Originals::Copied => {
                let mut original_value = source.value.map(<[u8]>::to_vec);
                if let Some(v) = &mut original_value {
                    if v.len() > MAX_ORIGINAL_BYTES {
                        // The source record stays on its topic (by topic,
                        // partition and offset) for a replay; the letter
                        // keeps its head.
                        detail.push_str(&format!(
                            " [original value of {} bytes truncated to {MAX_ORIGINAL_BYTES}]",
                            v.len()
                        ));
                        v.truncate(MAX_ORIGINAL_BYTES);
                    }
                }
                original_value
            }
            Originals::ByReference => {
                detail.push_str(&not_copied(&source));
                None
            }
        };
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

/// The detail's note of a letter by reference: where its original is, or
/// why there is none to point at. Topic names, numbers and sizes only.
fn not_copied(source: &Source<'_>) -> String {
    let what = match source.value {
        Some(v) => format!("{} bytes", v.len()),
        None => "no value".to_string(),
    };
    match source.position {
        Some((partition, offset)) if offset >= 0 => format!(
            " (original not copied, it may hold personal data: {} partition {partition} offset {offset}, {what})",
            source.topic
        ),
        Some((partition, _)) => format!(
            " (original not copied, it may hold personal data: a stage's own state, {} partition {partition}, no offset to read it at, {what})",
            source.topic
        ),
        None => format!(
            " (output not copied, it may hold personal data: it was meant for {} and is on no topic, {what})",
            source.topic
        ),
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

    fn decode(letter: &OutboundRecord) -> DeadLetter {
        Codec::new(SchemaKind::DeadLetter)
            .decode(&letter.payload)
            .unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

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
        let letters = DeadLetters::new("collector", "conversions.rejected");
        assert_eq!(letters.originals(), Originals::Copied);
        let letter = letters
            .for_record(&input, "invalid", "é".repeat(100_000), errors, None)
            .unwrap();
        assert!(
            letter.payload.len() < 1024 * 1024,
            "{}",
            letter.payload.len()
        );
        let decoded = decode(&letter);
        assert_eq!(decoded.original_value.unwrap().len(), MAX_ORIGINAL_BYTES);
        assert!(decoded.detail.contains("truncated"));
        assert_eq!(decoded.errors.len(), MAX_ERRORS);
    }

    #[test]
    fn the_collector_copies_an_original_whole() {
        let input = InboundRecord {
            topic: "orders.ingest".into(),
            partition: 2,
            offset: 7,
            key: Some(b"shop/e1".to_vec()),
            payload: Some(b"{\"email\":\"a@example.com\"}".to_vec()),
            ..Default::default()
        };
        let letter = DeadLetters::new("collector", "conversions.rejected")
            .for_record(&input, "invalid", "bad", vec![], None)
            .unwrap();
        let decoded = decode(&letter);
        assert_eq!(decoded.original_value, input.payload);
        assert_eq!(decoded.detail, "bad");
    }

    #[test]
    fn a_letter_by_reference_points_at_its_record_and_copies_no_byte_of_it() {
        let raw = b"\xc3\x01 person@example.com +33612345678 203.0.113.9".to_vec();
        let input = InboundRecord {
            topic: "conversions.raw".into(),
            partition: 4,
            offset: 1234,
            key: Some(b"shop/e1".to_vec()),
            payload: Some(raw.clone()),
            ..Default::default()
        };
        let letters = DeadLetters::by_reference("enricher", "conversions.rejected");
        assert_eq!(letters.originals(), Originals::ByReference);
        let letter = letters
            .for_record(&input, "decode_failed", "cannot decode", vec![], None)
            .unwrap();
        assert_eq!(letter.topic, "conversions.rejected");
        assert_eq!(letter.key.as_deref(), Some(&b"shop/e1"[..]));
        for secret in [&b"person@example.com"[..], b"+33612345678", b"203.0.113.9"] {
            assert!(!contains(&letter.payload, secret), "{secret:?} copied");
        }
        let decoded = decode(&letter);
        assert_eq!(decoded.original_value, None);
        assert_eq!(decoded.original_key.as_deref(), Some(&b"shop/e1"[..]));
        assert_eq!(decoded.source_topic.as_deref(), Some("conversions.raw"));
        assert_eq!(decoded.source_partition, Some(4));
        assert_eq!(decoded.source_offset, Some(1234));
        assert!(decoded.detail.starts_with("cannot decode"));
        assert!(
            decoded.detail.contains(
                "original not copied, it may hold personal data: conversions.raw partition 4 offset 1234"
            ),
            "{}",
            decoded.detail
        );

        // A huge record: nothing to truncate, the note is never cut.
        let huge = InboundRecord {
            payload: Some(vec![b'x'; 3 * 1024 * 1024]),
            ..input.clone()
        };
        let letter = letters
            .for_record(&huge, "decode_failed", "é".repeat(100_000), vec![], None)
            .unwrap();
        assert!(letter.payload.len() < 16 * 1024, "{}", letter.payload.len());
        let decoded = decode(&letter);
        assert_eq!(decoded.original_value, None);
        assert!(!decoded.detail.contains("truncated"));
        assert!(decoded.detail.ends_with(&format!(
            "conversions.raw partition 4 offset 1234, {} bytes)",
            3 * 1024 * 1024
        )));
    }

    #[test]
    fn a_state_letter_and_an_output_letter_by_reference_carry_no_bytes_either() {
        let letters = DeadLetters::by_reference("deduplicator", "conversions.rejected");
        let state = InboundRecord {
            topic: "postback-deduplicator-state-changelog".into(),
            partition: 1,
            offset: -1,
            key: Some(b"shop/Purchase/e1".to_vec()),
            payload: Some(b"held record 203.0.113.9".to_vec()),
            ..Default::default()
        };
        let decoded = decode(
            &letters
                .for_record(&state, "stale_state", "held", vec![], None)
                .unwrap(),
        );
        assert_eq!(decoded.original_value, None);
        assert_eq!(decoded.source_offset, Some(-1));
        assert_eq!(
            decoded.original_key.as_deref(),
            Some(&b"shop/Purchase/e1"[..])
        );
        assert!(
            decoded.detail.contains("original not copied"),
            "{}",
            decoded.detail
        );
        assert!(!decoded.detail.contains("203.0.113.9"));

        let output = OutboundRecord::new(
            "dispatch.meta".to_string(),
            Some(b"shop/e1".to_vec()),
            b"ip 203.0.113.9".repeat(100_000),
        );
        let letter = letters
            .for_output(&output, "output_too_large", "too large")
            .unwrap();
        assert!(!contains(&letter.payload, b"203.0.113.9"));
        let decoded = decode(&letter);
        assert_eq!(decoded.original_value, None);
        assert_eq!(decoded.source_topic.as_deref(), Some("dispatch.meta"));
        assert_eq!(decoded.source_offset, None);
        assert!(
            decoded.detail.contains("output not copied")
                && decoded.detail.contains("dispatch.meta"),
            "{}",
            decoded.detail
        );
    }
}
