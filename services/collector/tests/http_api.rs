//! The collector's HTTP API against a real broker.

mod harness;

use std::time::Duration;

use harness::{Collector, API_KEY, ORIGIN, SIGNED_SITE_KEY, SIGNING_SECRET, SITE_KEY};
use postback_collector::api::SubmitResponse;
use postback_collector::signed_ids::EventSigner;
use postback_core::model::{ConversionRaw, Source};
use postback_core::{Codec, SchemaKind};
use postback_testkit::Broker;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn event(id: &str) -> Value {
    json!({
        "event_id": id,
        "event_name": "Purchase",
        "event_time": chrono::Utc::now().timestamp() - 60,
        "action_source": "website",
        "order": {"order_id": id, "value": "129.90", "currency": "EUR",
                  "items": [{"id": "sku-1", "quantity": 1, "price": "129.90"}]},
        "user": {"email": "jane@example.com", "phone": "+33 6 12 34 56 78", "country": "FR",
                 "ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
        "click_ids": {"gclid": "Cj0KCQ", "fbclid": "IwAR1", "ttclid": "E.C.P.abc"},
        "page": {"url": "https://shop.example/thanks"},
        "consent": {"ad_storage": "granted", "ad_user_data": "granted", "ad_personalization": "denied"}
    })
}

async fn post(c: &Collector, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/events", c.base))
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn decode(records: &[postback_core::kafka::InboundRecord]) -> Vec<ConversionRaw> {
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    records
        .iter()
        .map(|r| codec.decode(r.payload.as_deref().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_single_event_lands_on_raw_with_its_key_and_decodes_to_what_was_sent() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let r = post(&c, &event("ord-1")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: SubmitResponse = r.json().await.unwrap();
    assert_eq!(body.accepted, 1);
    assert!(body.rejected.is_empty());

    let records = broker
        .consume(&c.topics.raw, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some(&b"acme/ord-1"[..]));
    let raw = &decode(&records)[0];
    assert_eq!(raw.tenant, "acme");
    assert_eq!(raw.event_id, "ord-1");
    assert_eq!(raw.event_name, "Purchase");
    assert_eq!(raw.source, Source::Server);
    let order = raw.order.as_ref().unwrap();
    assert_eq!(order.value.as_deref(), Some("129.90"));
    assert_eq!(order.currency.as_deref(), Some("EUR"));
    let user = raw.user.as_ref().unwrap();
    assert_eq!(user.email.as_deref(), Some("jane@example.com"));
    assert_eq!(user.ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(
        raw.consent.as_ref().unwrap().ad_personalization.as_deref(),
        Some("denied")
    );
    assert_eq!(
        raw.click_ids.as_ref().unwrap().ttclid.as_deref(),
        Some("E.C.P.abc")
    );
    c.stop().await;
}

#[tokio::test]
async fn a_batch_lands_whole() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let events: Vec<Value> = (0..50).map(|i| event(&format!("b-{i}"))).collect();
    let r = post(&c, &json!({ "events": events })).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: SubmitResponse = r.json().await.unwrap();
    assert_eq!(body.accepted, 50);
    let records = broker
        .consume(&c.topics.raw, 50, Duration::from_secs(20))
        .await
        .unwrap();
    let mut ids: Vec<String> = decode(&records).into_iter().map(|e| e.event_id).collect();
    ids.sort();
    let mut want: Vec<String> = (0..50).map(|i| format!("b-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    for r in &records {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        assert!(key.starts_with("acme/b-"), "{key}");
    }
    c.stop().await;
}

#[tokio::test]
async fn each_validation_rule_rejects_with_its_field_path() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let now = chrono::Utc::now().timestamp();
    let mut missing_id = event("x");
    missing_id.as_object_mut().unwrap().remove("event_id");
    let cases: Vec<(Value, &str)> = vec![
        (missing_id, "event_id"),
        (
            json!({"event_id": "a", "event_name": "Purchase", "order": {"value": "1", "currency": "EURO"}}),
            "order.currency",
        ),
        (
            json!({"event_id": "a", "event_name": "Purchase", "order": {"value": "-5", "currency": "EUR"}}),
            "order.value",
        ),
        (
            json!({"event_id": "a", "event_name": "Purchase", "order": {"value": "12,50", "currency": "EUR"}}),
            "order.value",
        ),
        (
            json!({"event_id": "a", "event_name": "Lead", "event_time": now + 3600}),
            "event_time",
        ),
        (
            json!({"event_id": "a".repeat(300), "event_name": "Lead"}),
            "event_id",
        ),
        (
            json!({"event_id": "a", "event_name": "Lead", "user": {"email": 42}}),
            "user.email",
        ),
        (
            json!({"event_id": "a", "event_name": "Lead", "order": "big"}),
            "order",
        ),
    ];
    for (body, path) in cases {
        let r = post(&c, &body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let resp: SubmitResponse = r.json().await.unwrap();
        let paths: Vec<&str> = resp.rejected[0]
            .errors
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(paths, vec![path], "{:?}", resp.rejected[0].errors);
    }
    // In a batch the path carries the index.
    let r = post(
        &c,
        &json!({"events": [event("ok"), {"event_id": "b", "event_name": "Purchase",
                 "order": {"value": "1", "currency": "XYZ"}}]}),
    )
    .await;
    let resp: SubmitResponse = r.json().await.unwrap();
    assert_eq!(resp.rejected[0].errors[0].path, "events[1].order.currency");
    c.stop().await;
}

#[tokio::test]
async fn a_mixed_batch_accepts_exactly_the_valid_events() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let mut events = Vec::new();
    for i in 0..10 {
        if i % 3 == 0 {
            events.push(
                json!({"event_id": format!("bad-{i}"), "event_name": "Purchase",
                               "order": {"value": "abc", "currency": "EUR"}}),
            );
        } else {
            events.push(event(&format!("good-{i}")));
        }
    }
    let r = post(&c, &json!({ "events": events })).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let resp: SubmitResponse = r.json().await.unwrap();
    assert_eq!(resp.accepted, 6);
    let rejected: Vec<usize> = resp.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, vec![0, 3, 6, 9]);
    assert_eq!(resp.rejected[1].errors[0].path, "events[3].order.value");

    let records = broker
        .consume(&c.topics.raw, 100, Duration::from_secs(8))
        .await
        .unwrap();
    let mut ids: Vec<String> = decode(&records).into_iter().map(|e| e.event_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["good-1", "good-2", "good-4", "good-5", "good-7", "good-8"]
    );
    c.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_batches_get_413() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let events: Vec<Value> = (0..101).map(|i| event(&format!("e{i}"))).collect();
    let r = post(&c, &json!({ "events": events })).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let huge = json!({"event_id": "a", "event_name": "Lead", "page": {"url": format!("https://x.example/{}", "a".repeat(300 * 1024))}});
    let r = post(&c, &huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let r = client()
        .post(format!("{}/v1/events", c.base))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");
    c.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_api_keys_get_401() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let r = client()
        .post(format!("{}/v1/events", c.base))
        .json(&event("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = client()
        .post(format!("{}/v1/events", c.base))
        .bearer_auth("sk_wrong_wrong_wrong_wrong")
        .json(&event("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A site key is not an API key.
    let r = client()
        .post(format!("{}/v1/events", c.base))
        .bearer_auth(SITE_KEY)
        .json(&event("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    c.stop().await;
}

#[tokio::test]
async fn a_browser_beacon_is_accepted_and_cors_is_enforced() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let mut beacon = event("web-1");
    beacon["pixels"] = json!({"meta": "fired", "google_ads": "not_fired"});
    // navigator.sendBeacon: text/plain, key in the query string.
    beacon["user"].as_object_mut().unwrap().remove("user_agent");
    let r = client()
        .post(format!("{}/v1/collect?site_key={SITE_KEY}", c.base))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", ORIGIN)
        .header("user-agent", "Mozilla/5.0 (beacon test)")
        .body(beacon.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    // Key in the body instead: refused, as the body is read only once the
    // caller is known.
    let mut with_key = event("web-2");
    with_key["site_key"] = json!(SITE_KEY);
    let r = client()
        .post(format!("{}/v1/collect", c.base))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(with_key.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Another origin: refused, and no CORS header to let the page read it.
    let r = client()
        .post(format!("{}/v1/collect?site_key={SITE_KEY}", c.base))
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(event("web-3").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // Unknown site key.
    let r = client()
        .post(format!("{}/v1/collect?site_key=pk_nope_nope", c.base))
        .header("origin", ORIGIN)
        .body(event("web-4").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Preflight: allowed origin yes, other origin no.
    let r = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/collect?site_key={SITE_KEY}", c.base),
        )
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    let r = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/collect?site_key={SITE_KEY}", c.base),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let records = broker
        .consume(&c.topics.raw, 1, Duration::from_secs(20))
        .await
        .unwrap();
    let events = decode(&records);
    assert_eq!(events.len(), 1);
    assert!(events.iter().all(|e| e.source == Source::Browser));
    let first = events.iter().find(|e| e.event_id == "web-1").unwrap();
    assert_eq!(first.pixels["meta"], "fired");
    assert_eq!(first.pixels["google_ads"], "not_fired");
    // The beacon's User-Agent header stands in for a missing user.user_agent.
    assert_eq!(
        first.user.as_ref().unwrap().user_agent.as_deref(),
        Some("Mozilla/5.0 (beacon test)")
    );
    c.stop().await;
}

async fn beacon(c: &Collector, site_key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/collect?site_key={site_key}", c.base))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// A site key with a signing secret takes only beacons whose event ids the
/// shop's server signed: a forged one is refused with the field's path,
/// beside a signed one in the same beacon that is taken.
#[tokio::test]
async fn a_signed_site_key_takes_only_event_ids_its_shop_signed() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let signer = EventSigner::new(SIGNING_SECRET.as_bytes());
    let mut signed = event("order-7001");
    signed["event_signature"] = json!(signer.sign("Purchase", "order-7001"));
    let unsigned = event("order-7002");
    let mut forged = event("order-7003");
    forged["event_signature"] = json!(signer.sign("Purchase", "order-7004"));
    let mut renamed = event("order-7005");
    renamed["event_name"] = json!("Lead");
    renamed["event_signature"] = json!(signer.sign("Purchase", "order-7005"));
    let mut garbage = event("order-7006");
    garbage["event_signature"] = json!(42);
    let r = beacon(
        &c,
        SIGNED_SITE_KEY,
        &json!({"events": [signed, unsigned, forged, renamed, garbage]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: SubmitResponse = r.json().await.unwrap();
    assert_eq!(body.accepted, 1);
    let refused: Vec<(usize, String, String)> = body
        .rejected
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| (r.index, e.path.clone(), e.message.clone()))
        })
        .collect();
    let paths: Vec<&str> = refused.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "events[1].event_signature",
            "events[2].event_signature",
            "events[3].event_signature",
            "events[4].event_signature"
        ],
        "{refused:?}"
    );
    assert!(refused[0].2.contains("required"), "{refused:?}");
    assert!(refused[1].2.contains("does not match"), "{refused:?}");
    assert!(refused[3].2.contains("expected a string"), "{refused:?}");

    // The same forged event through the unsigned site key is taken: the
    // requirement is the key's, and servers cannot send a signature.
    let r = beacon(&c, SITE_KEY, &event("order-7007")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut server = event("order-7008");
    server["event_signature"] = json!(signer.sign("Purchase", "order-7008"));
    let r = post(&c, &server).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let text = r.text().await.unwrap();
    assert!(text.contains("event_signature"), "{text}");

    let records = broker
        .consume(&c.topics.raw, 2, Duration::from_secs(20))
        .await
        .unwrap();
    let mut ids: Vec<String> = decode(&records).into_iter().map(|e| e.event_id).collect();
    ids.sort();
    assert_eq!(ids, ["order-7001", "order-7007"]);
    c.stop().await;
}

/// A beacon is a page's own conversion, not a batch: more than
/// `http.max_beacon_events` events is 413, though servers may send more.
#[tokio::test]
async fn a_beacon_carries_a_few_events_at_most() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start_with(&broker, |c| c.http.max_beacon_events = 3).await;
    let events: Vec<Value> = (0..4).map(|i| event(&format!("b-{i}"))).collect();
    let r = beacon(&c, SITE_KEY, &json!({ "events": events })).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("too_many_events") && text.contains("at most 3"),
        "{text}"
    );
    let r = beacon(&c, SITE_KEY, &json!({ "events": events[..3] })).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = post(&c, &json!({ "events": events })).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    c.stop().await;
}

#[tokio::test]
async fn ops_endpoints_answer_on_their_own_listener_and_not_on_the_api() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    assert_eq!(post(&c, &event("m-1")).await.status(), StatusCode::ACCEPTED);
    let health = client()
        .get(format!("{}/healthz", c.ops_base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let mut ready = false;
    for _ in 0..50 {
        let r = client()
            .get(format!("{}/readyz", c.ops_base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "collector never became ready");
    let metrics = client()
        .get(format!("{}/metrics", c.ops_base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"postback_collector_events_total{endpoint="events",outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("postback_collector_http_request_duration_seconds"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = client()
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public port"
        );
    }
    c.stop().await;
}

#[tokio::test]
async fn the_browser_tag_is_served_gzipped_cached_and_revalidated() {
    use std::io::Read;
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let url = format!("{}/v1/tag.js", c.base);
    let gz = client()
        .get(&url)
        .header("Accept-Encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.status(), StatusCode::OK);
    let h = gz.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["vary"], "Accept-Encoding");
    assert!(h["cache-control"].to_str().unwrap().contains("max-age="));
    let etag = h["etag"].to_str().unwrap().to_string();
    let compressed = gz.bytes().await.unwrap();
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut unzipped)
        .unwrap();

    let plain = client().get(&url).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.text().await.unwrap();
    assert_eq!(unzipped, plain, "the gzipped tag is the plain one");
    assert!(plain.contains("sendBeacon") && plain.contains("__tcfapi"));
    assert!(
        !plain.lines().any(|l| l.trim_start().starts_with("//")),
        "comment lines are not served"
    );
    println!(
        "tag: {} bytes plain, {} bytes gzipped",
        plain.len(),
        compressed.len()
    );

    let again = client()
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());
}
