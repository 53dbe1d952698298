//! Writes the seed corpus (`fuzz/seeds/<target>/`): inputs each target's
//! fuzzing starts from, made with the code's own encoders so that they
//! track the schemas and layouts. Run by hand when one changes:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --features seeds --bin write_seeds
//!
//! (cargo-fuzz never builds it: `required-features` keeps it out of
//! `cargo fuzz build`, whose coverage hooks it would not link with.)

use std::fs;
use std::path::{Path, PathBuf};

use postback_collector::signed_ids::EventSigner;
use postback_collector::validate::{validate_event, Limits};
use postback_core::avro::{fingerprint_of, PUBLISHED};
use postback_core::model::{
    ClickIds, Client, ConversionEnriched, ConversionRaw, ConversionSummary, DeadLetter,
    DeliveryStatus, FieldError, FrontEndStatus, PlatformDecision, PlatformIdentifiers,
    ServerSideStatus, Source,
};
use postback_core::{Codec, SchemaKind};
use postback_deduplicator::key::DedupKey;
use postback_deduplicator::state::{FrontEnd, KeyState, Phase, Sources};
use postback_fuzz::{endpoint_context, NOW_MS, SIGNING_SECRET};
use serde::Serialize;
use serde_json::{json, Value};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let events = events();
    let mut seeds = Seeds::new(&root);
    for (endpoint, event) in &events {
        let mut input = vec![*endpoint];
        input.extend_from_slice(event.to_string().as_bytes());
        seeds.add("collector_validate", &input)?;
    }
    for raw in raw_conversions(&events) {
        seeds.avro(SchemaKind::ConversionRaw, &raw)?;
        seeds.avro(SchemaKind::ConversionEnriched, &enriched(&raw))?;
        seeds.avro(SchemaKind::DeliveryStatus, &status(&raw))?;
    }
    seeds.avro(SchemaKind::DeadLetter, &dead_letter())?;
    for (target, answers) in platform_answers() {
        for answer in answers {
            seeds.add(target, answer.as_bytes())?;
        }
    }
    for key in [
        DedupKey::new("acme", "Purchase", "order-2001"),
        DedupKey::new("", "", ""),
        DedupKey::new("shop-β", "Lead", "lead/7"),
    ] {
        seeds.add("dedup_key", key.as_bytes())?;
    }
    for state in key_states(&events) {
        seeds.add("dedup_state", &state.encode())?;
    }
    println!("wrote {} seeds under {}", seeds.written, root.display());
    Ok(())
}

struct Seeds {
    root: PathBuf,
    written: usize,
}

impl Seeds {
    fn new(root: &Path) -> Self {
        Seeds {
            root: root.to_owned(),
            written: 0,
        }
    }

    fn add(&mut self, target: &str, input: &[u8]) -> std::io::Result<()> {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir)?;
        // Named by content, like libFuzzer's own corpus files.
        let name = format!("{:016x}", fingerprint(input));
        fs::write(dir.join(name), input)?;
        self.written += 1;
        Ok(())
    }

    /// The avro_decode layout: a byte choosing the published schema, then
    /// the datum body (the target puts the header back).
    fn avro<T: Serialize + serde::de::DeserializeOwned>(
        &mut self,
        kind: SchemaKind,
        value: &T,
    ) -> std::io::Result<()> {
        let codec = Codec::<T>::new(kind);
        let record = codec.encode(value).expect("seed values encode");
        let selector = PUBLISHED
            .iter()
            .position(|p| fingerprint_of(p.text).ok() == Some(codec.fingerprint()))
            .expect("the current schema is published") as u8;
        let mut input = vec![selector];
        input.extend_from_slice(&record[10..]);
        self.add("avro_decode", &input)?;
        // And the whole record, for the header-parsing half of the target.
        let mut whole = vec![0x80 | kind_index(kind)];
        whole.extend_from_slice(&record);
        self.add("avro_decode", &whole)
    }
}

fn kind_index(kind: SchemaKind) -> u8 {
    match kind {
        SchemaKind::ConversionRaw => 0,
        SchemaKind::ConversionEnriched => 1,
        SchemaKind::DeliveryStatus => 2,
        SchemaKind::DeadLetter => 3,
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    // FNV-1a: a stable name for a file, not a security property.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Events as the API and the tag send them, each with its endpoint byte.
fn events() -> Vec<(u8, Value)> {
    let signer = EventSigner::new(SIGNING_SECRET);
    vec![
        (
            b's',
            json!({
                "event_id": "order-2001", "event_name": "Purchase",
                "event_time": "2026-11-21T10:15:00Z", "action_source": "website",
                "order": {"order_id": "2001", "value": "49.90", "currency": "EUR",
                          "items": [{"id": "sku-1", "quantity": 2, "price": "24.95"}]},
                "user": {"email": "jane@example.com", "phone": "+33 6 12 34 56 78",
                         "first_name": "Jane", "last_name": "Doe", "city": "Lyon",
                         "country": "FR", "postal_code": "69001", "external_id": "c-9",
                         "ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
                "click_ids": {"gclid": "Cj0KCQiA-example", "fbclid": "IwAR2", "ttclid": "E.C.P"},
                "page": {"url": "https://shop.example/thanks?utm_source=x", "referrer": "https://a.example/"},
                "consent": {"ad_storage": "granted", "ad_user_data": "granted",
                            "ad_personalization": "denied"}
            }),
        ),
        (
            b's',
            json!({"event_id": "lead-7", "event_name": "Lead", "source": "offline",
                   "event_time": 1796032800, "user": {"email": "a".repeat(64), "date_of_birth": "1990-02-03", "gender": "f"}}),
        ),
        (
            b'b',
            json!({"event_id": "order-2001", "event_name": "Purchase",
                   "pixels": {"meta": "fired", "google_ads": "not_fired"},
                   "click_ids": {"fbclid": "IwAR2"}, "page": {"url": "https://shop.example/thanks"},
                   "consent": {"ad_storage": "granted", "ad_user_data": "denied"}}),
        ),
        (
            b'k',
            json!({"event_id": "order-2002", "event_name": "Purchase",
                   "event_signature": signer.sign("Purchase", "order-2002"),
                   "pixels": {"tiktok": "fired"}}),
        ),
    ]
}

fn raw_conversions(events: &[(u8, Value)]) -> Vec<ConversionRaw> {
    events
        .iter()
        .map(|(endpoint, event)| {
            let ctx = endpoint_context(*endpoint).expect("seed endpoints are s, b or k");
            validate_event(event, "events[0]", &ctx, &Limits::default())
                .unwrap_or_else(|e| panic!("seed event {event} is refused: {e:?}"))
        })
        .collect()
}

fn enriched(raw: &ConversionRaw) -> ConversionEnriched {
    ConversionEnriched {
        tenant: raw.tenant.clone(),
        event_id: raw.event_id.clone(),
        event_name: raw.event_name.clone(),
        event_time: raw.event_time,
        received_at: raw.received_at,
        source: raw.source,
        action_source: raw.action_source.clone(),
        order: raw.order.clone(),
        click_ids: raw.click_ids.clone().or(Some(ClickIds::default())),
        page: raw.page.clone(),
        client: Some(Client {
            ip: Some("203.0.113.7".into()),
            user_agent: Some("Mozilla/5.0".into()),
            device_type: Some("desktop".into()),
            os: Some("Linux".into()),
            browser: Some("Firefox".into()),
        }),
        consent: raw.consent.clone(),
        identifiers: vec![PlatformIdentifiers {
            platform: "meta".into(),
            email: Some(vec![0xab; 32]),
            country: Some(vec![0x01; 32]),
            ..Default::default()
        }],
        decisions: ["meta", "google_ads", "tiktok"]
            .iter()
            .map(|p| PlatformDecision {
                platform: (*p).into(),
                eligible: *p != "tiktok",
                reason: (*p == "tiktok").then(|| "no_account".into()),
                send_user_data: true,
                send_click_ids: true,
                limited_data_use: false,
            })
            .collect(),
        pixels: raw.pixels.clone(),
    }
}

fn status(raw: &ConversionRaw) -> DeliveryStatus {
    DeliveryStatus {
        tenant: raw.tenant.clone(),
        event_id: raw.event_id.clone(),
        event_name: raw.event_name.clone(),
        platform: "google_ads".into(),
        stage: "dispatcher".into(),
        front_end: Some(FrontEndStatus::NotFired),
        server_side: ServerSideStatus::Retrying,
        reason: Some("RESOURCE_EXHAUSTED: retry in 30s".into()),
        attempt: Some(2),
        next_attempt_at: Some(raw.received_at + 30_000),
        duplicate_of: None,
        reported_by: Some("dispatcher-google-ads-0".into()),
        platform_request_id: Some("req-1".into()),
        time: raw.received_at,
        conversion: Some(ConversionSummary {
            event_time: raw.event_time,
            value: Some("49.90".into()),
            currency: Some("EUR".into()),
            order_id: Some("2001".into()),
            sources: vec!["browser".into(), "server".into()],
            match_keys: vec!["email".into(), "gclid".into()],
            click_id_hashes: vec!["c".repeat(64)],
        }),
    }
}

fn dead_letter() -> DeadLetter {
    DeadLetter {
        stage: "enricher".into(),
        reason: "invalid_record".into(),
        detail: "order.currency must be an ISO 4217 code".into(),
        errors: vec![FieldError::new("order.currency", "unknown currency")],
        tenant: Some("acme".into()),
        source_topic: Some("conversions.raw".into()),
        source_partition: Some(3),
        source_offset: Some(1234),
        original_key: Some(b"acme/order-2001".to_vec()),
        original_value: None,
        time: NOW_MS,
    }
}

fn key_states(events: &[(u8, Value)]) -> Vec<KeyState> {
    let raw = &raw_conversions(events)[0];
    let record = Codec::<ConversionRaw>::new(SchemaKind::ConversionRaw)
        .encode(raw)
        .expect("seed values encode");
    let mut front_end = FrontEnd::default();
    front_end.observe(postback_core::Platform::Meta, FrontEndStatus::Fired);
    let mut sources = Sources::of(Source::Browser);
    sources.add(Source::Server);
    let held = KeyState {
        first_seen: NOW_MS,
        expires_at: NOW_MS + 7 * 86_400_000,
        last_offset: 41,
        first_source: Source::Browser,
        sources,
        reports: 2,
        front_end,
        phase: Phase::Held {
            emit_at: NOW_MS + 300_000,
            record,
        },
    };
    let emitted = KeyState {
        phase: Phase::Emitted {
            at: NOW_MS + 300_000,
        },
        ..held.clone()
    };
    vec![held, emitted]
}

/// Answers the platforms document (../shared/reference/platform-apis.md),
/// in the classify targets' `STATUS RETRY` + body layout.
fn platform_answers() -> Vec<(&'static str, Vec<String>)> {
    let meta = vec![
        r#"200 -
{"events_received":2,"messages":[],"fbtrace_id":"AbC"}"#,
        r#"400 -
{"error":{"message":"(#100) param data[7].user_data.em must be a SHA-256 hash","type":"OAuthException","code":100,"error_subcode":2804003,"error_user_title":"Invalid parameter","fbtrace_id":"T"}}"#,
        r#"429 30
{"error":{"message":"(#17) User request limit reached","code":17,"is_transient":true}}"#,
        r#"400 -
{"error":{"message":"Invalid OAuth access token.","code":190,"error_subcode":463}}"#,
        r#"503 -
<html>Service Unavailable</html>"#,
    ];
    let google_ads = vec![
        // The first byte is the number of rows sent, less one.
        "\u{1}200 -\n{\"results\":[{\"gclid\":\"a\",\"conversionAction\":\"customers/1/conversionActions/2\"},{}],\"partialFailureError\":{\"code\":3,\"message\":\"The gclid could not be decoded.\",\"details\":[{\"@type\":\"type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure\",\"errors\":[{\"errorCode\":{\"conversionUploadError\":\"UNPARSEABLE_GCLID\"},\"message\":\"The gclid could not be decoded.\",\"location\":{\"fieldPathElements\":[{\"fieldName\":\"conversions\",\"index\":1},{\"fieldName\":\"gclid\"}]}}]}]}}",
        "\u{0}200 -\n{\"results\":[{\"gclid\":\"a\"}]}",
        "\u{0}429 -\n{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted. Retry in 17 seconds.\",\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure\",\"errors\":[{\"errorCode\":{\"quotaError\":\"RESOURCE_EXHAUSTED\"},\"message\":\"Too many requests. Retry in 17 seconds.\"}]}]}}",
        "\u{2}400 -\n{\"error\":{\"code\":400,\"message\":\"Request contains an invalid argument.\",\"status\":\"INVALID_ARGUMENT\",\"details\":[{\"@type\":\"type.googleapis.com/google.ads.googleads.v21.errors.GoogleAdsFailure\",\"errors\":[{\"errorCode\":{\"conversionUploadError\":\"CONVERSION_PRECEDES_GCLID\"},\"message\":\"precedes\",\"location\":{\"fieldPathElements\":[{\"fieldName\":\"conversions\",\"index\":2}]}}]}]}}",
        "\u{0}401 -\n{\"error\":{\"code\":401,\"message\":\"Request had invalid authentication credentials.\",\"status\":\"UNAUTHENTICATED\"}}",
    ];
    let tiktok = vec![
        "200 -\n{\"code\":0,\"message\":\"OK\",\"request_id\":\"r1\",\"data\":{}}",
        "200 -\n{\"code\":40002,\"message\":\"Invalid value for data.3.user.email\",\"request_id\":\"r2\"}",
        "200 -\n{\"code\":40100,\"message\":\"Too many requests\",\"request_id\":\"r3\"}",
        "200 -\n{\"code\":40001,\"message\":\"No permission to operate pixel code\"}",
        "500 5\n{\"code\":50000,\"message\":\"System error\"}",
    ];
    vec![
        (
            "classify_meta",
            meta.into_iter().map(String::from).collect(),
        ),
        (
            "classify_google_ads",
            google_ads.into_iter().map(String::from).collect(),
        ),
        (
            "classify_tiktok",
            tiktok.into_iter().map(String::from).collect(),
        ),
    ]
}
