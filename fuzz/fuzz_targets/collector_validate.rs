//! The collector's event validation, on whatever JSON a stranger sends:
//! it must answer without a panic; an error names fields under the event's
//! own path; an accepted event is what the endpoint allows (the browser
//! endpoint's source, a signature the shop made) and goes through the Avro
//! codec unchanged.
//!
//! The first input byte picks the endpoint (`postback_fuzz::endpoint_context`:
//! server API, beacon, or signed site key's beacon); the rest is the event's
//! JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_collector::validate::{validate_event, EventContext, Limits};
use postback_core::model::ConversionRaw;
use postback_core::{Codec, SchemaKind};
use postback_fuzz::endpoint_context;
use serde_json::Value;

const PREFIX: &str = "events[7]";

fuzz_target!(|data: &[u8]| {
    let Some((&endpoint, json)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let Some(ctx) = endpoint_context(endpoint) else {
        return;
    };
    match validate_event(&value, PREFIX, &ctx, &Limits::default()) {
        Ok(event) => check_accepted(&event, &value, &ctx),
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without saying why");
            for e in &errors {
                assert!(
                    e.path.starts_with(PREFIX),
                    "an error outside the event's path: {e:?}"
                );
            }
        }
    }
});

fn check_accepted(event: &ConversionRaw, value: &Value, ctx: &EventContext<'_>) {
    assert_eq!(event.tenant, ctx.tenant);
    if let Some(source) = ctx.required_source {
        assert_eq!(event.source, source, "the beacon took another source");
    }
    if let Some(signer) = ctx.signer {
        // Hex of either case spells the same MAC.
        let signature = value.get("event_signature").and_then(Value::as_str);
        let expected = signer.sign(&event.event_name, &event.event_id);
        assert!(
            signature.is_some_and(|s| s.eq_ignore_ascii_case(&expected)),
            "accepted an event id its shop did not sign: {signature:?}"
        );
    }
    let codec = Codec::<ConversionRaw>::new(SchemaKind::ConversionRaw);
    let bytes = codec
        .encode(event)
        .unwrap_or_else(|e| panic!("an accepted event does not encode: {e}"));
    let decoded = codec
        .decode(&bytes)
        .unwrap_or_else(|e| panic!("an accepted event does not decode: {e}"));
    assert_eq!(&decoded, event, "the codec changed an accepted event");
}
