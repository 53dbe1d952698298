//! A forged or early browser report cannot take over a conversion
//! (docs/collector.md#forged-and-early-beacons): the site key is public, so
//! anyone can post a "browser" report with a guessed event id (the next
//! order number) before the shop's server reports the order. Through the
//! whole pipeline: the forged beacon comes first with a wrong value and the
//! attacker's e-mail; the shop's report comes after the merge window, inside
//! the browser's wait. Each platform receives one upload, with the server's
//! value and the customer's hashed e-mail.

use std::time::Duration;

use postback_core::model::{DeliveryStatus, ServerSideStatus};
use postback_testkit::{unique, Broker};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod support;
use support::pipeline::{
    now_secs, on_every_platform, start_pipeline, statuses_once, Names, Options,
};

const API_KEY: &str = "sk_local_demo_0123456789abcdef";
const SITE_KEY: &str = "pk_local_demo";
const ORIGIN: &str = "http://localhost:3000";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn purchase(id: &str, value: &str, email: &str) -> Value {
    json!({
        "event_id": id,
        "event_name": "Purchase",
        "event_time": now_secs() - 30,
        "action_source": "website",
        "order": {"order_id": id, "value": value, "currency": "EUR"},
        "user": {"email": email, "ip": "203.0.113.50", "user_agent": "Mozilla/5.0 (forged-beacon test)"},
        "click_ids": {"gclid": format!("Cj0KCQ-{id}")},
        "page": {"url": "https://shop.example/thanks"},
        "consent": {"ad_storage": "granted", "ad_user_data": "granted", "ad_personalization": "granted"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_beacon_first_does_not_stop_the_servers_report_from_being_uploaded() {
    let broker = Broker::shared().await.expect("broker");
    let names = Names::new("forged");
    names.create(&broker).await;
    let http = reqwest::Client::new();
    let (pipeline, addrs) = start_pipeline(
        &broker,
        &names,
        &http,
        Options {
            merge_window_ms: Some(1_000),
            // Long enough for the server's report sent 3 s after the beacon.
            browser_wait_ms: Some(20_000),
            ..Options::default()
        },
    )
    .await;
    let collector = addrs["collector.api"];
    let sandbox = addrs["sandbox"];
    let id = unique("order");
    let customer = format!("jane.{}@example.com", id.replace(['.', '_'], "-"));

    // The attacker: the public site key, an allowed Origin (a script sets
    // any header), a guessed id, a value of their choosing.
    let forged = purchase(&id, "0.01", "attacker@example.net");
    let r = http
        .post(format!("http://{collector}/v1/collect?site_key={SITE_KEY}"))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(forged.to_string())
        .send()
        .await
        .expect("beacon");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());

    // The shop's own report, well after the merge window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let real = purchase(&id, "129.90", &customer);
    let r = http
        .post(format!("http://{collector}/v1/events"))
        .bearer_auth(API_KEY)
        .json(&real)
        .send()
        .await
        .expect("server report");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());

    let statuses: Vec<DeliveryStatus> = statuses_once(&broker, &names.status, |s| {
        on_every_platform(s, &id, ServerSideStatus::Delivered)
    })
    .await
    .into_iter()
    .filter(|s| s.event_id == id)
    .collect();
    assert!(
        !statuses
            .iter()
            .any(|s| s.server_side == ServerSideStatus::Duplicate),
        "the server's report was taken for a duplicate: {statuses:?}"
    );
    let summary = statuses
        .iter()
        .find_map(|s| s.conversion.as_ref())
        .expect("the deduplicator's summary");
    assert_eq!(summary.value.as_deref(), Some("129.90"));
    assert_eq!(summary.sources, ["browser", "server"]);

    let events: Value = http
        .get(format!("http://{sandbox}/admin/events?event_id={id}"))
        .send()
        .await
        .expect("sandbox")
        .json()
        .await
        .expect("json");
    let uploads = events["items"].as_array().cloned().unwrap_or_default();
    let per = |p: &str| -> Vec<Value> {
        uploads
            .iter()
            .filter(|u| u["platform"] == p)
            .map(|u| u["payload"].clone())
            .collect()
    };
    let (meta, google, tiktok) = (per("meta"), per("google_ads"), per("tiktok"));
    assert_eq!(
        (meta.len(), google.len(), tiktok.len()),
        (1, 1, 1),
        "{uploads:?}"
    );
    let email = sha256_hex(&customer);
    let attacker = sha256_hex("attacker@example.net");
    assert_eq!(meta[0]["custom_data"]["value"], json!(129.9));
    assert_eq!(meta[0]["user_data"]["em"], json!([email]));
    assert_eq!(tiktok[0]["properties"]["value"], json!(129.9));
    assert_eq!(tiktok[0]["user"]["email"], json!(email));
    assert_eq!(google[0]["conversionValue"], json!(129.9));
    let google_ids = google[0]["userIdentifiers"].to_string();
    assert!(google_ids.contains(&email), "{google_ids}");
    let all = Value::Array(uploads).to_string();
    assert!(
        !all.contains(&attacker),
        "the attacker's e-mail was uploaded"
    );
    assert!(!all.contains("0.01"), "the forged value was uploaded");
    pipeline.stop().await;
}
