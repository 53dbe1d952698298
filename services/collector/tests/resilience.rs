//! What the collector does when the broker goes away, and the Kafka ingest path.

mod harness;

use std::collections::HashSet;
use std::time::Duration;

use harness::{Collector, API_KEY};
use postback_core::model::{ConversionRaw, DeadLetter};
use postback_core::{Codec, SchemaKind};
use postback_testkit::Broker;
use reqwest::StatusCode;
use serde_json::json;

fn event(id: &str) -> serde_json::Value {
    json!({"event_id": id, "event_name": "Lead", "user": {"email": "a@b.example"}})
}

#[tokio::test]
async fn a_stopped_broker_yields_503_never_a_2xx_for_unstored_events_and_the_collector_recovers() {
    let Some(mut broker) = Broker::private().await.unwrap() else {
        eprintln!("skipped: cannot stop a broker named by KAFKA_BOOTSTRAP_SERVERS");
        return;
    };
    let c = Collector::start(&broker).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let send = |id: String| {
        let client = client.clone();
        let url = format!("{}/v1/events", c.base);
        async move {
            let r = client
                .post(url)
                .bearer_auth(API_KEY)
                .json(&event(&id))
                .send()
                .await
                .unwrap();
            (id, r.status(), r.headers().get("retry-after").cloned())
        }
    };

    let mut acknowledged: HashSet<String> = HashSet::new();
    for i in 0..5 {
        let (id, status, _) = send(format!("before-{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        acknowledged.insert(id);
    }

    broker.kill();
    let mut unavailable = 0;
    for i in 0..5 {
        let (id, status, retry_after) = send(format!("during-{i}")).await;
        match status {
            StatusCode::ACCEPTED => {
                acknowledged.insert(id);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                assert!(retry_after.is_some(), "503 without Retry-After");
            }
            other => panic!("unexpected {other} while the broker is down"),
        }
    }
    assert_eq!(
        unavailable, 5,
        "every request while the broker is down gets 503, none a 2xx"
    );

    broker.restart().await.unwrap();
    let mut recovered = false;
    for i in 0..60 {
        let (id, status, _) = send(format!("after-{i}")).await;
        if status == StatusCode::ACCEPTED {
            acknowledged.insert(id);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        recovered,
        "collector did not recover after the broker came back"
    );

    // Every event that got a 2xx is on the topic.
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    let records = broker
        .consume(&c.topics.raw, acknowledged.len(), Duration::from_secs(30))
        .await
        .unwrap();
    let stored: HashSet<String> = records
        .iter()
        .map(|r| {
            codec
                .decode(r.payload.as_deref().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    let missing: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn the_ingest_topic_feeds_raw_and_sends_invalid_records_to_rejected() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    broker
        .produce(
            &c.ingest_topic,
            b"o-1",
            event("ingest-1").to_string().as_bytes(),
        )
        .await
        .unwrap();
    broker
        .produce(
            &c.ingest_topic,
            b"o-2",
            json!({"event_id": "ingest-2", "event_name": "Purchase",
                   "order": {"value": "-3", "currency": "EURO"}})
            .to_string()
            .as_bytes(),
        )
        .await
        .unwrap();
    broker
        .produce(&c.ingest_topic, b"o-3", b"\x00\x01 not json")
        .await
        .unwrap();
    broker
        .produce(
            &c.ingest_topic,
            b"o-4",
            event("ingest-4").to_string().as_bytes(),
        )
        .await
        .unwrap();

    let raw = broker
        .consume(&c.topics.raw, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    let mut ids: Vec<String> = raw
        .iter()
        .map(|r| {
            codec
                .decode(r.payload.as_deref().unwrap())
                .unwrap()
                .event_id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["ingest-1", "ingest-4"]);
    assert!(raw
        .iter()
        .all(|r| r.key.as_deref().unwrap().starts_with(b"acme/")));

    let rejected = broker
        .consume(&c.topics.rejected, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let dl: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
    let mut letters: Vec<DeadLetter> = rejected
        .iter()
        .map(|r| dl.decode(r.payload.as_deref().unwrap()).unwrap())
        .collect();
    letters.sort_by(|a, b| b.reason.cmp(&a.reason));
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].stage, "collector");
    assert_eq!(letters[0].reason, "validation_failed");
    let paths: Vec<&str> = letters[0].errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["order.value", "order.currency"]);
    assert_eq!(letters[0].tenant.as_deref(), Some("acme"));
    assert_eq!(letters[1].reason, "invalid_json");
    assert_eq!(
        letters[1].original_value.as_deref(),
        Some(&b"\x00\x01 not json"[..])
    );
    assert_eq!(letters[1].original_key.as_deref(), Some(&b"o-3"[..]));
    c.stop().await;
}
