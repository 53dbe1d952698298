//! The enricher through a real broker: raw in, enriched out, with the right
//! hashes and decisions, no raw personal data, and poison records as dead
//! letters that do not stop the partition.

use std::time::Duration;

use postback_core::config::TopicsConfig;
use postback_core::kafka::InboundRecord;
use postback_core::model::*;
use postback_core::{Codec, Platform, SchemaKind};
use postback_enricher::config::{
    ConsentDefault, EnricherConfig, EnricherSections, TenantConfig, TenantConsent,
};
use postback_testkit::{unique, Broker};
use tokio_util::sync::CancellationToken;

const HOUR_MS: i64 = 3_600_000;

struct Running {
    topics: TopicsConfig,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(broker: &Broker) -> Running {
    postback_core::telemetry::init(&Default::default());
    let topics = TopicsConfig {
        raw: unique("raw"),
        enriched: unique("enriched"),
        rejected: unique("rejected"),
        ..TopicsConfig::default()
    };
    for t in [&topics.raw, &topics.enriched, &topics.rejected] {
        broker.create_topic(t, 2).await.unwrap();
    }
    let config = EnricherConfig {
        kafka: broker.kafka_config(),
        topics: topics.clone(),
        log: Default::default(),
        ops: Default::default(),
        consumer: postback_core::config::ConsumerConfig {
            group_id: Some(unique("enricher")),
            ..Default::default()
        },
        platforms: Default::default(),
        stage: EnricherSections {
            tenants: vec![
                TenantConfig {
                    id: "acme".into(),
                    default_country: Some("US".into()),
                    platforms: Platform::ALL.to_vec(),
                    consent: TenantConsent {
                        default: ConsentDefault::Granted,
                        regions: vec![],
                    },
                },
                TenantConfig {
                    id: "metaonly".into(),
                    default_country: Some("FR".into()),
                    platforms: vec![Platform::Meta],
                    consent: TenantConsent::default(),
                },
            ],
            privacy: Default::default(),
        },
    };
    postback_core::config::Validate::validate(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        postback_enricher::run(config, listener, token)
            .await
            .unwrap();
    });
    Running {
        topics,
        shutdown,
        task,
    }
}

fn raw(tenant: &str, id: &str) -> ConversionRaw {
    let now = now_millis();
    ConversionRaw {
        tenant: tenant.into(),
        event_id: id.into(),
        event_name: "Purchase".into(),
        event_time: now - HOUR_MS,
        received_at: now,
        source: Source::Server,
        action_source: Some("website".into()),
        order: Some(Order {
            order_id: Some(id.into()),
            value: Some("129.90".into()),
            currency: Some("USD".into()),
            items: vec![],
        }),
        user: Some(User {
            email: Some("  Jane.Doe@Example.com ".into()),
            phone: Some("(650) 555-1212".into()),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            city: Some("Menlo Park".into()),
            region: Some("CA".into()),
            postal_code: Some("94025-1234".into()),
            country: Some("US".into()),
            external_id: Some("cust-77".into()),
            ip: Some("203.0.113.7".into()),
            user_agent: Some(
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0".into(),
            ),
            ..User::default()
        }),
        click_ids: Some(ClickIds {
            gclid: Some("Cj0KCQiA-sample-gclid".into()),
            fbclid: Some("IwAR2sample".into()),
            ttclid: Some("E.C.P.sample".into()),
            ..ClickIds::default()
        }),
        page: Some(Page {
            url: Some("https://shop.example/thanks".into()),
            referrer: None,
        }),
        consent: Some(Consent {
            ad_storage: Some("granted".into()),
            ad_user_data: Some("granted".into()),
            ..Consent::default()
        }),
        pixels: Default::default(),
    }
}

async fn send(broker: &Broker, topic: &str, r: &ConversionRaw) {
    let bytes = Codec::<ConversionRaw>::new(SchemaKind::ConversionRaw)
        .encode(r)
        .unwrap();
    broker.produce(topic, &r.key(), &bytes).await.unwrap();
}

fn decode_all(records: &[InboundRecord]) -> Vec<ConversionEnriched> {
    let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
    records
        .iter()
        .map(|r| codec.decode(r.payload.as_deref().unwrap()).unwrap())
        .collect()
}

fn decision(e: &ConversionEnriched, p: Platform) -> &PlatformDecision {
    e.decisions
        .iter()
        .find(|d| d.platform == p.as_str())
        .unwrap()
}

fn ids(e: &ConversionEnriched, p: Platform) -> &PlatformIdentifiers {
    e.identifiers
        .iter()
        .find(|i| i.platform == p.as_str())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_conversion_comes_out_enriched_with_the_right_hashes_and_no_raw_pii() {
    let broker = Broker::shared().await.unwrap();
    let run = start(&broker).await;
    send(&broker, &run.topics.raw, &raw("acme", "o-1")).await;
    let out = broker
        .consume(&run.topics.enriched, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key.as_deref(), Some(&b"acme/o-1"[..]));

    // No raw personal data in the bytes, in any spelling that was sent or
    // that a normaliser would produce.
    let bytes = out[0].payload.as_deref().unwrap();
    for plain in [
        "Jane.Doe@Example.com",
        "jane.doe@example.com",
        "(650) 555-1212",
        "6505551212",
        "16505551212",
        "Jane",
        "jane",
        "Doe",
        "Menlo Park",
        "menlopark",
        "94025",
        "cust-77",
    ] {
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "`{plain}` survives in the enriched record"
        );
    }

    let e = &decode_all(&out)[0];
    // Expected hashes computed independently: printf '%s' VALUE | sha256sum
    let meta = ids(e, Platform::Meta);
    assert_eq!(meta.email.as_deref().map(hex).as_deref(), Some(EMAIL_SHA));
    assert_eq!(
        meta.phone.as_deref().map(hex).as_deref(),
        Some(META_PHONE_SHA)
    );
    let google = ids(e, Platform::GoogleAds);
    assert_eq!(google.email.as_deref().map(hex).as_deref(), Some(EMAIL_SHA));
    assert_eq!(
        google.phone.as_deref().map(hex).as_deref(),
        Some(E164_PHONE_SHA)
    );
    assert_eq!(
        ids(e, Platform::Tiktok)
            .phone
            .as_deref()
            .map(hex)
            .as_deref(),
        Some(E164_PHONE_SHA)
    );
    for p in Platform::ALL {
        let d = decision(e, p);
        assert!(d.eligible, "{p}: {:?}", d.reason);
    }
    let clicks = e.click_ids.as_ref().unwrap();
    assert_eq!(clicks.gclid.as_deref(), Some("Cj0KCQiA-sample-gclid"));
    assert_eq!(
        clicks.fbc.as_deref(),
        Some(format!("fb.1.{}.IwAR2sample", e.event_time).as_str())
    );
    let client = e.client.as_ref().unwrap();
    assert_eq!(client.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(client.device_type.as_deref(), Some("desktop"));
    assert_eq!(client.browser.as_deref(), Some("Firefox"));
    assert!(client
        .user_agent
        .as_deref()
        .unwrap()
        .starts_with("Mozilla/5.0"));
    run.shutdown.cancel();
    run.task.await.unwrap();
}

/// printf '%s' 'jane.doe@example.com' | sha256sum
const EMAIL_SHA: &str = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d";
/// printf '%s' '16505551212' | sha256sum
const META_PHONE_SHA: &str = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176";
/// printf '%s' '+16505551212' | sha256sum
const E164_PHONE_SHA: &str = "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_not_eligible_reason_comes_from_the_input_that_should_produce_it() {
    let broker = Broker::shared().await.unwrap();
    let run = start(&broker).await;

    // platform_not_configured: metaonly has no Google Ads / TikTok.
    let mut not_configured = raw("metaonly", "r-config");
    not_configured.consent = Some(Consent {
        ad_storage: Some("granted".into()),
        ad_user_data: Some("granted".into()),
        ..Consent::default()
    });
    // no_consent: both Consent Mode flags denied.
    let mut no_consent = raw("acme", "r-consent");
    no_consent.consent = Some(Consent {
        ad_storage: Some("denied".into()),
        ad_user_data: Some("denied".into()),
        ..Consent::default()
    });
    // no_click_id (Google): no click ids, no email or phone.
    let mut no_click = raw("acme", "r-click");
    no_click.click_ids = None;
    if let Some(u) = no_click.user.as_mut() {
        u.email = None;
        u.phone = None;
    }
    // no_identifiers (Meta): a website event without a user agent.
    let mut no_ids = raw("acme", "r-ids");
    if let Some(u) = no_ids.user.as_mut() {
        u.user_agent = None;
    }
    // too_old: 8 days old: past Meta's 7 days, inside Google's 90.
    let mut too_old = raw("acme", "r-old");
    too_old.event_time = now_millis() - 8 * 24 * HOUR_MS;
    // Missing consent under a "denied" default is no consent either.
    let mut defaulted = raw("metaonly", "r-default");
    defaulted.consent = None;

    for r in [
        &not_configured,
        &no_consent,
        &no_click,
        &no_ids,
        &too_old,
        &defaulted,
    ] {
        send(&broker, &run.topics.raw, r).await;
    }
    let out = broker
        .consume(&run.topics.enriched, 6, Duration::from_secs(30))
        .await
        .unwrap();
    let events = decode_all(&out);
    let get = |id: &str| events.iter().find(|e| e.event_id == id).unwrap();
    let reason = |id: &str, p: Platform| decision(get(id), p).reason.clone();

    assert_eq!(reason("r-config", Platform::Meta), None);
    assert_eq!(
        reason("r-config", Platform::GoogleAds).as_deref(),
        Some("platform_not_configured")
    );
    assert_eq!(
        reason("r-config", Platform::Tiktok).as_deref(),
        Some("platform_not_configured")
    );
    for p in Platform::ALL {
        assert_eq!(reason("r-consent", p).as_deref(), Some("no_consent"));
    }
    // With consent denied, no hashes are computed at all.
    assert!(get("r-consent").identifiers.is_empty());
    assert_eq!(
        reason("r-click", Platform::GoogleAds).as_deref(),
        Some("no_click_id")
    );
    assert_eq!(
        reason("r-ids", Platform::Meta).as_deref(),
        Some("no_identifiers")
    );
    assert_eq!(reason("r-old", Platform::Meta).as_deref(), Some("too_old"));
    assert_eq!(reason("r-old", Platform::GoogleAds), None);
    assert_eq!(
        reason("r-default", Platform::Meta).as_deref(),
        Some("no_consent")
    );
    run.shutdown.cancel();
    run.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_becomes_a_dead_letter_and_the_next_record_is_processed() {
    let broker = Broker::shared().await.unwrap();
    let run = start(&broker).await;
    // Same key, so both land in one partition, poison first.
    let good = raw("acme", "after-poison");
    // An unknown fingerprint, and personal data in the bytes after it.
    let poison = b"\xc3\x01garbage! Jane.Doe@Example.com 203.0.113.7";
    broker
        .produce(&run.topics.raw, &good.key(), poison)
        .await
        .unwrap();
    send(&broker, &run.topics.raw, &good).await;
    let out = broker
        .consume(&run.topics.enriched, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(decode_all(&out)[0].event_id, "after-poison");
    let dead = broker
        .consume(&run.topics.rejected, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let letter = Codec::<DeadLetter>::new(SchemaKind::DeadLetter)
        .decode(dead[0].payload.as_deref().unwrap())
        .unwrap();
    assert_eq!(letter.stage, "enricher");
    assert_eq!(letter.reason, "unknown_schema");
    // By reference: the letter points at the record on conversions.raw
    // and copies none of its bytes (replay reads them from there).
    assert_eq!(letter.original_value, None);
    assert_eq!(letter.original_key, Some(good.key()));
    let source = broker
        .read_to_end(&run.topics.raw)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.payload.as_deref() == Some(&poison[..]))
        .unwrap();
    assert_eq!(
        letter.source_topic.as_deref(),
        Some(run.topics.raw.as_str())
    );
    assert_eq!(letter.source_partition, Some(source.partition));
    assert_eq!(letter.source_offset, Some(source.offset));
    let bytes = dead[0].payload.as_deref().unwrap();
    for secret in [&b"Jane.Doe@Example.com"[..], b"203.0.113.7"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the letter copied {:?}",
            String::from_utf8_lossy(secret)
        );
    }
    run.shutdown.cancel();
    run.task.await.unwrap();
}
