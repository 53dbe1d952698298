//! The Avro codec every consumer decodes its input with: any record bytes
//! either refuse with a typed error or decode to a model value that
//! encodes, and decodes back to the same encoding.
//!
//! The first input byte picks a published schema version (its fingerprint
//! header is put in front of the rest, so the fuzzer works on datum bodies
//! rather than guessing 64-bit fingerprints) or, when its high bit is set,
//! passes the rest through as a whole record (header parsing, unknown and
//! mismatched fingerprints).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_core::avro::{fingerprint_of, PUBLISHED, SINGLE_OBJECT_MARKER};
use postback_core::model::{ConversionEnriched, ConversionRaw, DeadLetter, DeliveryStatus};
use postback_core::{Codec, SchemaKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (kind, record) = if selector & 0x80 != 0 {
        let kinds = [
            SchemaKind::ConversionRaw,
            SchemaKind::ConversionEnriched,
            SchemaKind::DeliveryStatus,
            SchemaKind::DeadLetter,
        ];
        (kinds[usize::from(selector) % kinds.len()], rest.to_vec())
    } else {
        let index = usize::from(selector) % PUBLISHED.len();
        let (published, fingerprint) = (&PUBLISHED[index], fingerprints()[index]);
        let mut record = SINGLE_OBJECT_MARKER.to_vec();
        record.extend_from_slice(&fingerprint.to_le_bytes());
        record.extend_from_slice(rest);
        (published.kind, record)
    };
    match kind {
        SchemaKind::ConversionRaw => round_trip::<ConversionRaw>(kind, &record),
        SchemaKind::ConversionEnriched => round_trip::<ConversionEnriched>(kind, &record),
        SchemaKind::DeliveryStatus => round_trip::<DeliveryStatus>(kind, &record),
        SchemaKind::DeadLetter => round_trip::<DeadLetter>(kind, &record),
    }
});

/// The published schemas' fingerprints, computed once rather than per input.
fn fingerprints() -> &'static [u64] {
    static FINGERPRINTS: OnceLock<Vec<u64>> = OnceLock::new();
    FINGERPRINTS.get_or_init(|| {
        PUBLISHED
            .iter()
            .map(|p| fingerprint_of(p.text).expect("published schemas parse"))
            .collect()
    })
}

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(kind: SchemaKind, record: &[u8]) {
    let codec = Codec::<T>::new(kind);
    let Ok(value) = codec.decode(record) else {
        return;
    };
    let encoded = codec
        .encode(&value)
        .unwrap_or_else(|e| panic!("a decoded {kind:?} does not encode: {e}; {value:?}"));
    let again = codec
        .decode(&encoded)
        .unwrap_or_else(|e| panic!("a re-encoded {kind:?} does not decode: {e}; {value:?}"));
    assert_eq!(
        codec.encode(&again).ok().as_deref(),
        Some(&encoded[..]),
        "{kind:?} changes on a second round trip"
    );
}
