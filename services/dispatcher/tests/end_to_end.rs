//! The whole pipeline through a real broker: a conversion posted to the
//! collector is enriched, deduplicated and uploaded once to each platform's
//! sandbox, with each platform's own hashes, and three delivered statuses
//! appear on conversions.status.

mod support;

use std::path::Path;
use std::time::Duration;

use postback_core::config::{Compression, KafkaConfig, SaslMechanism, TopicsConfig};
use postback_core::model::ServerSideStatus;
use postback_core::Platform;
use postback_testkit::unique;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const API_KEY: &str = "sk_test_shop_0123456789abcdef";

fn sha(s: &str) -> String {
    hex_lower(&Sha256::digest(s.as_bytes()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn load<T: postback_core::config::Configuration>(dir: &Path, name: &str, toml: &str) -> T {
    let path = dir.join(name);
    std::fs::write(&path, toml).expect("write config");
    postback_core::config::load_from(Some(&path), vec![]).expect("valid config")
}

fn topics_toml(t: &TopicsConfig) -> String {
    format!(
        "[topics]\nraw = \"{}\"\nenriched = \"{}\"\nstatus = \"{}\"\nrejected = \"{}\"\ndispatch_prefix = \"{}\"\n",
        t.raw, t.enriched, t.status, t.rejected, t.dispatch_prefix
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_posted_to_the_collector_reaches_all_three_platforms_once() {
    let rig = Rig::start(2).await;
    let kafka = rig.broker.kafka_config();
    deliver_once_to_every_platform(rig, kafka.clone(), kafka).await;
}

/// Managed Kafka takes TLS and SASL: the same path with every service on
/// the broker's SASL_SSL listener (a CA of its own; SCRAM-SHA-512 for the
/// collector, enricher and deduplicator, PLAIN for the dispatchers) and
/// zstd-compressed batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_path_runs_over_sasl_ssl_with_scram_and_plain() {
    let rig = Rig::start(2).await;
    let (Some(mut scram), Some(plain)) = (
        rig.broker.sasl_ssl(SaslMechanism::ScramSha512),
        rig.broker.sasl_ssl(SaslMechanism::Plain),
    ) else {
        eprintln!("skipped: KAFKA_BOOTSTRAP_SERVERS names a broker without SASL_SSL");
        return;
    };
    assert_ne!(scram.bootstrap_servers, rig.broker.bootstrap());
    scram.compression = Compression::Zstd;
    deliver_once_to_every_platform(rig, scram, plain).await;
}

async fn deliver_once_to_every_platform(
    mut rig: Rig,
    kafka: KafkaConfig,
    dispatchers_kafka: KafkaConfig,
) {
    rig.topics.raw = unique("raw");
    rig.topics.enriched = unique("enriched");
    for t in [&rig.topics.raw, &rig.topics.enriched] {
        rig.broker.create_topic(t, 2).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kafka = postback_testkit::kafka_toml(&kafka);
    let topics = topics_toml(&rig.topics);
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    let collector: postback_collector::config::CollectorConfig = load(
        dir.path(),
        "collector.toml",
        &format!("{kafka}{topics}[[api_keys]]\ntenant = \"{TENANT}\"\nkey = \"{API_KEY}\"\n"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", listener.local_addr().unwrap());
    let token = shutdown.clone();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tasks.push(tokio::spawn(async move {
        postback_collector::run_with_listeners(collector, listener, ops, token)
            .await
            .expect("collector");
    }));

    let enricher: postback_enricher::config::EnricherConfig = load(
        dir.path(),
        "enricher.toml",
        &format!(
            "{kafka}{topics}[consumer]\ngroup_id = \"{}\"\n[[tenants]]\nid = \"{TENANT}\"\ndefault_country = \"US\"\nplatforms = [\"meta\", \"google_ads\", \"tiktok\"]\n[tenants.consent]\ndefault = \"granted\"\n",
            unique("enricher")
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        postback_enricher::run(enricher, listener, token)
            .await
            .expect("enricher");
    }));

    let dedup: postback_deduplicator::config::DeduplicatorConfig = load(
        dir.path(),
        "deduplicator.toml",
        &format!(
            "{kafka}{topics}[consumer]\ngroup_id = \"{}\"\n[dedup]\nmerge_window_ms = 200\n[state]\ndir = \"{}\"\nchangelog_topic = \"{}\"\n",
            unique("dedup"),
            dir.path().join("state").display(),
            unique("changelog")
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        postback_deduplicator::run(dedup, listener, token)
            .await
            .expect("deduplicator");
    }));

    let mut dispatchers = Vec::new();
    for p in Platform::ALL {
        let mut config = rig.config(p);
        config.kafka = dispatchers_kafka.clone();
        dispatchers.push(InProcess::start(config).await);
    }

    let event_time = chrono::Utc::now().timestamp() - 120;
    let event = json!({
        "event_id": "order-e2e-1",
        "event_name": "Purchase",
        "event_time": event_time,
        "action_source": "website",
        "order": {"order_id": "order-e2e-1", "value": "129.90", "currency": "EUR",
                  "items": [{"id": "sku-1", "quantity": 2, "price": "64.95"}]},
        "user": {"email": "  Jane.Doe@Example.com ", "phone": "+1 (650) 555-1212",
                 "country": "US", "ip": "203.0.113.7",
                 "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"},
        "click_ids": {"gclid": "Cj0KCQiA-e2e-gclid", "fbclid": "IwAR-e2e", "ttclid": "E.C.P.e2e"},
        "page": {"url": "https://shop.example/checkout/thank-you"},
        "consent": {"ad_storage": "granted", "ad_user_data": "granted", "ad_personalization": "granted"}
    });
    let http = reqwest::Client::new();
    // The collector is ready once the broker answers; retry until it takes it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .post(format!("{collector_url}/v1/events"))
            .bearer_auth(API_KEY)
            .json(&event)
            .send()
            .await;
        if r.as_ref().is_ok_and(|r| r.status().as_u16() == 202) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "collector refused: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let statuses = rig
        .statuses_until(Duration::from_secs(90), |s| {
            Platform::ALL.iter().all(|p| {
                s.iter().any(|x| {
                    x.platform == p.as_str()
                        && x.stage == "dispatcher"
                        && x.server_side == ServerSideStatus::Delivered
                })
            })
        })
        .await;
    for p in Platform::ALL {
        let delivered: Vec<_> = statuses
            .iter()
            .filter(|s| s.platform == p.as_str() && s.server_side == ServerSideStatus::Delivered)
            .collect();
        assert_eq!(delivered.len(), 1, "{p}: one delivered status");
        assert_eq!(delivered[0].event_id, "order-e2e-1");
        assert!(delivered[0].platform_request_id.is_some(), "{p}");
        assert_eq!(rig.sandbox.accepted(p).len(), 1, "{p}: accepted once");
        assert_eq!(rig.sandbox.duplicates(p), 0, "{p}: sent once");
    }

    let email = sha("jane.doe@example.com");
    let meta = &rig.sandbox.accepted(Platform::Meta)[0].payload;
    assert_eq!(meta["event_id"], "order-e2e-1");
    assert_eq!(meta["event_time"], json!(event_time));
    assert_eq!(meta["user_data"]["em"], json!([email]));
    // Meta: digits with the country code, no '+'.
    assert_eq!(meta["user_data"]["ph"], json!([sha("16505551212")]));
    assert_eq!(meta["user_data"]["country"], json!([sha("us")]));
    assert_eq!(meta["user_data"]["client_ip_address"], "203.0.113.7");
    assert!(meta["user_data"]["fbc"]
        .as_str()
        .is_some_and(|f| f.starts_with("fb.1.") && f.ends_with(".IwAR-e2e")));
    assert_eq!(meta["custom_data"]["value"], json!(129.9));
    assert_eq!(meta["custom_data"]["currency"], "EUR");

    let google = &rig.sandbox.accepted(Platform::GoogleAds)[0].payload;
    assert_eq!(google["gclid"], "Cj0KCQiA-e2e-gclid");
    assert_eq!(
        google["conversionAction"],
        format!("customers/{CUSTOMER}/conversionActions/{PURCHASE_ACTION}")
    );
    let identifiers = google["userIdentifiers"].as_array().unwrap();
    let hashed = |key: &str| -> Vec<Value> {
        identifiers
            .iter()
            .filter_map(|i| i.get(key).cloned())
            .collect()
    };
    assert_eq!(hashed("hashedEmail"), vec![json!(email)]);
    // Google: E.164 with the '+'.
    assert_eq!(
        hashed("hashedPhoneNumber"),
        vec![json!(sha("+16505551212"))]
    );
    assert_eq!(google["consent"]["adUserData"], "GRANTED");
    assert_eq!(google["orderId"], "order-e2e-1");
    assert!(google["conversionDateTime"]
        .as_str()
        .is_some_and(|d| d.ends_with("+00:00") && d.len() == 25));

    let tiktok = &rig.sandbox.accepted(Platform::Tiktok)[0].payload;
    assert_eq!(tiktok["event"], "Purchase");
    assert_eq!(tiktok["user"]["email"], json!(email));
    assert_eq!(tiktok["user"]["phone"], json!(sha("+16505551212")));
    assert_eq!(tiktok["user"]["ttclid"], "E.C.P.e2e");
    assert_eq!(tiktok["properties"]["value"], json!(129.9));

    // No token, no raw personal data on the status topic.
    let raw_status = rig.broker.read_to_end(&rig.topics.status).await.unwrap();
    for r in &raw_status {
        let bytes = r.payload.clone().unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [
            META_TOKEN,
            TIKTOK_TOKEN,
            REFRESH_TOKEN,
            "jane",
            "Jane",
            // The phone as sent and as normalised; its area code alone
            // turns up by chance in request ids and timestamps.
            "555-1212",
            "6505551212",
        ] {
            assert!(!text.contains(secret), "status record carries {secret}");
        }
    }

    for d in dispatchers {
        d.stop().await;
    }
    shutdown.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
}
