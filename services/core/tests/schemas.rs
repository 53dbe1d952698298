//! The schemas are a contract: every model type round-trips through its
//! schema, versions of a schema read each other's records, and an
//! independent Avro implementation (fastavro) decodes what we write.

use std::collections::BTreeMap;
use std::process::Command;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use postback_core::avro::{fingerprint_of, PublishedSchema, PUBLISHED};
use postback_core::model::*;
use postback_core::{Codec, SchemaKind, SchemaRegistry};

fn raw_sample() -> ConversionRaw {
    ConversionRaw {
        tenant: "acme".into(),
        event_id: "ord-42".into(),
        event_name: "Purchase".into(),
        event_time: 1_790_000_000_000,
        received_at: 1_790_000_000_500,
        source: Source::Browser,
        action_source: Some("website".into()),
        order: Some(Order {
            order_id: Some("42".into()),
            value: Some("129.90".into()),
            currency: Some("EUR".into()),
            items: vec![Item {
                id: Some("sku".into()),
                name: None,
                category: Some("shoes".into()),
                quantity: Some(2),
                price: Some("64.95".into()),
            }],
        }),
        user: Some(User {
            email: Some("jane@example.com".into()),
            phone: Some("+16505551212".into()),
            country: Some("US".into()),
            ..User::default()
        }),
        click_ids: Some(ClickIds {
            gclid: Some("Cj0".into()),
            ..ClickIds::default()
        }),
        page: Some(Page {
            url: Some("https://shop.example/thanks".into()),
            referrer: None,
        }),
        consent: Some(Consent {
            ad_storage: Some("granted".into()),
            limited_data_use: Some(true),
            ..Consent::default()
        }),
        pixels: BTreeMap::from([("meta".to_string(), "fired".to_string())]),
    }
}

fn enriched_sample() -> ConversionEnriched {
    let raw = raw_sample();
    ConversionEnriched {
        tenant: raw.tenant,
        event_id: raw.event_id,
        event_name: raw.event_name,
        event_time: raw.event_time,
        received_at: raw.received_at,
        source: raw.source,
        action_source: raw.action_source,
        order: raw.order,
        click_ids: raw.click_ids,
        page: raw.page,
        client: Some(Client {
            ip: Some("203.0.113.7".into()),
            user_agent: Some("Mozilla/5.0".into()),
            device_type: Some("desktop".into()),
            os: Some("Linux".into()),
            browser: Some("Firefox".into()),
        }),
        consent: raw.consent,
        identifiers: vec![PlatformIdentifiers {
            platform: "meta".into(),
            email: Some(vec![0xab; 32]),
            ..PlatformIdentifiers::default()
        }],
        decisions: vec![PlatformDecision {
            platform: "google_ads".into(),
            eligible: false,
            reason: Some("no_consent".into()),
            send_user_data: false,
            send_click_ids: true,
            limited_data_use: false,
        }],
        pixels: raw.pixels,
    }
}

fn status_sample() -> DeliveryStatus {
    DeliveryStatus {
        tenant: "acme".into(),
        event_id: "ord-42".into(),
        event_name: "Purchase".into(),
        platform: "meta".into(),
        stage: "dispatcher".into(),
        front_end: Some(FrontEndStatus::Fired),
        server_side: ServerSideStatus::Retrying,
        reason: Some("throttled".into()),
        attempt: Some(2),
        next_attempt_at: Some(1_790_000_060_000),
        duplicate_of: None,
        reported_by: Some("server".into()),
        platform_request_id: Some("AbC".into()),
        time: 1_790_000_001_000,
        conversion: None,
    }
}

fn dead_letter_sample() -> DeadLetter {
    DeadLetter {
        stage: "enricher".into(),
        reason: "decode_failed".into(),
        detail: "bad bytes".into(),
        errors: vec![FieldError::new("order.value", "not a decimal")],
        tenant: Some("acme".into()),
        source_topic: Some("conversions.raw".into()),
        source_partition: Some(3),
        source_offset: Some(1234),
        original_key: Some(b"acme/ord-42".to_vec()),
        original_value: Some(vec![0, 1, 2, 255]),
        time: 1_790_000_002_000,
    }
}

fn round_trip<T>(kind: SchemaKind, value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let codec: Codec<T> = Codec::new(kind);
    let bytes = codec.encode(value).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(codec.decode(&bytes).unwrap(), *value);
}

#[test]
fn every_model_type_round_trips_through_its_schema() {
    round_trip(SchemaKind::ConversionRaw, &raw_sample());
    round_trip(SchemaKind::ConversionEnriched, &enriched_sample());
    round_trip(SchemaKind::DeliveryStatus, &status_sample());
    round_trip(SchemaKind::DeadLetter, &dead_letter_sample());
}

#[test]
fn a_record_of_another_kind_is_a_typed_error() {
    let status: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
    let raw: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    let bytes = status.encode(&status_sample()).unwrap();
    let err = raw.decode(&bytes).unwrap_err();
    assert_eq!(err.reason(), "wrong_schema");
}

/// Consecutive published versions of a kind must read each other's records.
#[test]
fn published_versions_are_mutually_compatible() {
    let mut by_kind: BTreeMap<&str, Vec<&PublishedSchema>> = BTreeMap::new();
    for p in PUBLISHED {
        by_kind.entry(p.kind.as_str()).or_default().push(p);
    }
    for (kind, versions) in by_kind {
        for w in versions.windows(2) {
            let a = Schema::parse_str(w[0].text).unwrap();
            let b = Schema::parse_str(w[1].text).unwrap();
            SchemaCompatibility::mutual_read(&a, &b).unwrap_or_else(|e| {
                panic!(
                    "{kind}: {} and {} are not compatible: {e}",
                    w[0].file, w[1].file
                )
            });
        }
    }
}

/// The next version of conversion_raw as the evolution rules allow it: a
/// new optional field with a default, and an optional field dropped.
fn raw_v2_text() -> String {
    let mut v: serde_json::Value = serde_json::from_str(
        PUBLISHED
            .iter()
            .find(|p| p.kind == SchemaKind::ConversionRaw)
            .unwrap()
            .text,
    )
    .unwrap();
    let fields = v["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "action_source");
    fields.push(serde_json::json!({
        "name": "loyalty_tier", "type": ["null", "string"], "default": null
    }));
    v.to_string()
}

#[test]
fn an_older_and_a_newer_version_read_each_others_records() {
    let v1_text = PUBLISHED
        .iter()
        .find(|p| p.kind == SchemaKind::ConversionRaw)
        .unwrap()
        .text;
    let v2_text = raw_v2_text();
    let v1 = Schema::parse_str(v1_text).unwrap();
    let v2 = Schema::parse_str(&v2_text).unwrap();
    SchemaCompatibility::mutual_read(&v1, &v2).unwrap();

    // An old service (writes v1) that was told about v2 reads v2 records.
    let mut old = SchemaRegistry::from_published(PUBLISHED).unwrap();
    old.add_readable(SchemaKind::ConversionRaw, &v2_text)
        .unwrap();
    let old: &'static SchemaRegistry = Box::leak(Box::new(old));
    let old_codec: Codec<ConversionRaw> = Codec::with_registry(old, SchemaKind::ConversionRaw);

    // A new service writes v2: encode with the v2 schema directly.
    let mut record = apache_avro::to_value(raw_sample())
        .unwrap()
        .resolve(&v1)
        .unwrap();
    if let AvroValue::Record(fields) = &mut record {
        fields.retain(|(n, _)| n != "action_source");
        fields.push((
            "loyalty_tier".into(),
            AvroValue::Union(1, Box::new(AvroValue::String("gold".into()))),
        ));
    }
    let mut v2_bytes = vec![0xC3, 0x01];
    v2_bytes.extend_from_slice(&fingerprint_of(&v2_text).unwrap().to_le_bytes());
    v2_bytes.extend(apache_avro::to_avro_datum(&v2, record).unwrap());
    let read_by_old = old_codec.decode(&v2_bytes).unwrap();
    assert_eq!(read_by_old.event_id, "ord-42");
    assert_eq!(
        read_by_old.action_source, None,
        "dropped field takes its default"
    );

    // The new service reads what the old one wrote: the new field defaults.
    let v1_bytes = old_codec.encode(&raw_sample()).unwrap();
    let decoded = apache_avro::from_avro_datum(&v1, &mut &v1_bytes[10..], Some(&v2)).unwrap();
    let AvroValue::Record(fields) = decoded else {
        panic!("not a record")
    };
    let tier = fields.iter().find(|(n, _)| n == "loyalty_tier").unwrap();
    assert_eq!(tier.1, AvroValue::Union(0, Box::new(AvroValue::Null)));
    let id = fields.iter().find(|(n, _)| n == "event_id").unwrap();
    assert_eq!(id.1, AvroValue::String("ord-42".into()));
}

#[test]
fn a_reader_that_does_not_know_the_writer_schema_reports_unknown_schema() {
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fingerprint_of(&raw_v2_text()).unwrap().to_le_bytes());
    bytes.extend_from_slice(&[0; 16]);
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    assert_eq!(codec.decode(&bytes).unwrap_err().reason(), "unknown_schema");
}

/// fastavro, an independent implementation, decodes our bytes and agrees on
/// the fingerprint. scripts/test installs it; set AVRO_CROSSCHECK_PYTHON to choose
/// the interpreter.
#[test]
fn fastavro_decodes_what_the_services_write() {
    let dir = tempfile::tempdir().unwrap();
    let samples: Vec<(SchemaKind, Vec<u8>)> = vec![
        (
            SchemaKind::ConversionRaw,
            Codec::new(SchemaKind::ConversionRaw)
                .encode(&raw_sample())
                .unwrap(),
        ),
        (
            SchemaKind::ConversionEnriched,
            Codec::new(SchemaKind::ConversionEnriched)
                .encode(&enriched_sample())
                .unwrap(),
        ),
        (
            SchemaKind::DeliveryStatus,
            Codec::new(SchemaKind::DeliveryStatus)
                .encode(&status_sample())
                .unwrap(),
        ),
        (
            SchemaKind::DeadLetter,
            Codec::new(SchemaKind::DeadLetter)
                .encode(&dead_letter_sample())
                .unwrap(),
        ),
    ];
    let mut manifest = Vec::new();
    for (kind, bytes) in &samples {
        let path = dir.path().join(format!("{}.bin", kind.as_str()));
        std::fs::write(&path, bytes).unwrap();
        let schema = PUBLISHED.iter().rev().find(|p| p.kind == *kind).unwrap();
        let schema_path = format!(
            "{}/../../schemas/{}",
            env!("CARGO_MANIFEST_DIR"),
            schema.file
        );
        manifest.push(serde_json::json!({"record": path, "schema": schema_path}));
    }
    let manifest_path = dir.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let python = std::env::var("AVRO_CROSSCHECK_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "{}/../../scripts/avro_crosscheck.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(&python)
        .arg(&script)
        .arg(&manifest_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fastavro cross-check failed (install it with scripts/setup.sh):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(decoded["conversion_raw"]["event_id"], "ord-42");
    assert_eq!(decoded["conversion_raw"]["order"]["value"], "129.90");
    assert_eq!(decoded["conversion_raw"]["source"], "browser");
    assert_eq!(
        decoded["conversion_enriched"]["decisions"][0]["reason"],
        "no_consent"
    );
    assert_eq!(decoded["delivery_status"]["server_side"], "retrying");
    assert_eq!(decoded["dead_letter"]["original_value"], "000102ff");
}

/// delivery_status v2 adds the conversion summary: the status service (v2)
/// reads the v1 records already on conversions.status, and a reader that
/// knows only v1 reads what v2 writers write.
#[test]
fn delivery_status_v1_and_v2_read_each_others_records() {
    let text = |version: u32| {
        PUBLISHED
            .iter()
            .find(|p| p.kind == SchemaKind::DeliveryStatus && p.version == version)
            .unwrap()
            .text
    };
    let v1 = Schema::parse_str(text(1)).unwrap();
    let v2 = Schema::parse_str(text(2)).unwrap();
    let codec: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
    assert_eq!(
        codec.fingerprint(),
        fingerprint_of(text(2)).unwrap(),
        "services write v2"
    );

    // A v1 record (what the pipeline wrote before v2) decodes with the
    // conversion absent.
    let old = status_sample();
    let mut record = apache_avro::to_value(&old).unwrap();
    if let AvroValue::Record(fields) = &mut record {
        fields.retain(|(n, _)| n != "conversion");
    }
    let record = record.resolve(&v1).unwrap();
    let mut v1_bytes = vec![0xC3, 0x01];
    v1_bytes.extend_from_slice(&fingerprint_of(text(1)).unwrap().to_le_bytes());
    v1_bytes.extend(apache_avro::to_avro_datum(&v1, record).unwrap());
    assert_eq!(codec.decode(&v1_bytes).unwrap(), old);

    // A v2 record with a summary reads as v1 for a reader that knows only v1.
    let new = DeliveryStatus {
        conversion: Some(ConversionSummary {
            event_time: 1_790_000_000_000,
            value: Some("129.90".into()),
            currency: Some("EUR".into()),
            order_id: Some("A-42".into()),
            sources: vec!["browser".into(), "server".into()],
            match_keys: vec!["email".into(), "fbp".into()],
            click_id_hashes: vec!["ab".repeat(32)],
        }),
        ..status_sample()
    };
    let v2_bytes = codec.encode(&new).unwrap();
    assert_eq!(codec.decode(&v2_bytes).unwrap(), new);
    let read_by_v1 = apache_avro::from_avro_datum(&v2, &mut &v2_bytes[10..], Some(&v1)).unwrap();
    let AvroValue::Record(fields) = read_by_v1 else {
        panic!("not a record")
    };
    assert!(fields.iter().all(|(n, _)| n != "conversion"));
    let id = fields.iter().find(|(n, _)| n == "event_id").unwrap();
    assert_eq!(id.1, AvroValue::String("ord-42".into()));
}
