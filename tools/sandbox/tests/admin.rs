//! The admin API, ops endpoints, start-up configuration and the real clock.

mod common;

use std::sync::Arc;

use common::*;
use postback_core::Platform;
use postback_sandbox::clock::SandboxClock;
use postback_sandbox::config::{FaultRule, SandboxConfig};
use postback_sandbox::faults::InjectedError;
use postback_sandbox::Sandbox;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn stats_filters_and_reset() {
    let h = start().await;
    let meta = json!({"data": [meta_event(h.now(), "s1")]});
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &meta).await.0, 200);
    assert_eq!(h.meta(META_PIXEL, "bad-token", &meta).await.0, 401);
    let tt = tiktok_body(vec![tiktok_event(h.now(), "s2")]);
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &tt).await.1["code"], 0);

    let stats = h.get("/admin/stats").await;
    assert_eq!(stats["requests"]["meta"]["accepted"], 1);
    assert_eq!(stats["requests"]["meta"]["unauthenticated"], 1);
    assert_eq!(stats["requests"]["tiktok"]["accepted"], 1);
    assert_eq!(stats["events"]["meta"]["accepted"], 1);
    assert_eq!(stats["events"]["meta"]["rejected"], 1);
    assert_eq!(h.get("/admin/events").await["total"], 2);
    assert_eq!(h.get("/admin/events?platform=tiktok").await["total"], 1);
    assert_eq!(
        h.get(&format!("/admin/events?account={META_PIXEL}")).await["total"],
        1
    );
    assert_eq!(
        h.get("/admin/events?limit=1").await["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(h.get("/admin/rejections").await["items"][0]["code"], "190");

    let resp = h
        .http
        .get(h.url("/admin/events?platform=myspace"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 400);

    let resp = h
        .http
        .post(h.url("/admin/reset"))
        .send()
        .await
        .expect("reset");
    assert_eq!(resp.status(), 204);
    assert_eq!(h.get("/admin/events").await["total"], 0);
    assert_eq!(h.get("/admin/rejections").await["total"], 0);
    assert_eq!(h.get("/admin/stats").await["requests"]["meta"], json!({}));
    // Reset forgets dedup memory too.
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &meta).await.0, 200);
    assert_eq!(h.get("/admin/events?event_id=s1").await["total"], 1);
}

#[tokio::test]
async fn faults_can_be_listed_set_and_cleared() {
    let h = start().await;
    h.put_fault(
        "tiktok",
        TIKTOK_PIXEL,
        json!({"quota_per_sec": 3, "latency_ms": 1}),
    )
    .await;
    h.put_fault("meta", "*", json!({"outage_secs": 60})).await;
    let list = h.get("/admin/faults").await;
    let faults = list["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[0]["platform"], "meta");
    assert!(faults[0]["outage_until"].as_str().is_some());
    assert_eq!(faults[1]["quota_per_sec"], 3);

    let resp = h
        .http
        .put(h.url("/admin/faults/meta/*"))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 400);
    let resp = h
        .http
        .put(h.url("/admin/faults/meta/*"))
        .json(&json!({"errror_rate": 0.5}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 400);
    let resp = h
        .http
        .delete(h.url("/admin/faults/tiktok/nope"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 404);
    let resp = h
        .http
        .delete(h.url("/admin/faults"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 204);
    assert_eq!(h.get("/admin/faults").await["faults"], json!([]));
}

#[tokio::test]
async fn credentials_can_be_registered_at_run_time() {
    let h = start().await;
    let body = json!({"data": [meta_event(h.now(), "c1")]});
    assert_eq!(h.meta("777", "new-token", &body).await.0, 401);
    let resp = h
        .http
        .post(h.url("/admin/credentials/meta"))
        .json(&json!({"pixel_id": "777", "access_token": "new-token"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let accounts: Value = resp.json().await.expect("json");
    assert!(accounts["meta_pixels"]
        .as_array()
        .is_some_and(|p| p.contains(&json!("777"))));
    assert!(
        !accounts.to_string().contains("new-token"),
        "tokens are never shown"
    );
    assert_eq!(h.meta("777", "new-token", &body).await.0, 200);

    let resp = h
        .http
        .post(h.url("/admin/credentials/google_ads"))
        .json(&json!({"customer_id": "4444444444", "conversion_actions": ["9"], "access_token": "static-token"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let mut row = google_row(h.now(), "Cj0KCQjwnewcust01", "n-1");
    row["conversionAction"] = json!("customers/4444444444/conversionActions/9");
    let (status, _, v) = h
        .google_with(
            "4444444444",
            "static-token",
            DEV_TOKEN,
            &google_body(vec![row]),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("partialFailureError").is_none(), "{v}");

    let resp = h
        .http
        .post(h.url("/admin/credentials/tiktok"))
        .json(&json!({"pixel_code": "CNEW", "access_token": "tt-new"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let mut tt = tiktok_body(vec![tiktok_event(h.now(), "c3")]);
    tt["event_source_id"] = json!("CNEW");
    assert_eq!(h.tiktok("tt-new", &tt).await.1["code"], 0);
}

#[tokio::test]
async fn the_clock_can_be_advanced_through_the_admin_api() {
    let h = start().await;
    let body = json!({"data": [meta_event(h.now(), "w1")]});
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &body).await.0, 200);
    let resp = h
        .http
        .post(h.url("/admin/clock/advance"))
        .json(&json!({"secs": 48 * 3600}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let clock: Value = resp.json().await.expect("json");
    assert_eq!(clock["offset_secs"], 48 * 3600);
    // The old event is now outside the window (and still young enough to send).
    let mut ev = meta_event(h.now(), "w1");
    ev["event_time"] = json!(h.now() + 47 * 3600);
    assert_eq!(
        h.meta(META_PIXEL, META_TOKEN, &json!({"data": [ev]}))
            .await
            .0,
        200
    );
    assert_eq!(h.get("/admin/events?event_id=w1").await["total"], 2);
    assert_eq!(h.get("/admin/duplicates").await["total"], 0);
    let resp = h
        .http
        .post(h.url("/admin/clock/advance"))
        .json(&json!({"secs": -5}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn ops_endpoints_and_metrics_are_served() {
    let h = start().await;
    let body = json!({"data": [meta_event(h.now(), "m1")]});
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &body).await.0, 200);
    let resp = h.http.get(h.url("/healthz")).send().await.expect("healthz");
    assert_eq!(resp.status(), 200);
    let resp = h.http.get(h.url("/readyz")).send().await.expect("readyz");
    assert_eq!(resp.status(), 200);
    let text = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("postback_sandbox_requests_total{outcome=\"accepted\",platform=\"meta\"} 1"),
        "{text}"
    );
    assert!(text.contains("postback_sandbox_events_total"), "{text}");
    assert!(!text.contains("m1"), "no event ids in metrics");
    assert!(!text.contains(META_TOKEN), "no tokens in metrics");
    let resp = h.http.get(h.url("/nowhere")).send().await.expect("GET");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn faults_from_the_config_file_apply_at_start() {
    let mut config = config();
    config.faults = vec![FaultRule {
        platform: Platform::Tiktok,
        account: "*".into(),
        quota_per_sec: None,
        latency_ms: 0,
        error_rate: 1.0,
        error: InjectedError::Unavailable,
        outage_secs: None,
        outage_until: None,
    }];
    let h = start_with(config).await;
    let (status, _) = h
        .tiktok(TIKTOK_TOKEN, &tiktok_body(vec![tiktok_event(h.now(), "x")]))
        .await;
    assert_eq!(status, 503);
    let (status, _) = h
        .meta(
            META_PIXEL,
            META_TOKEN,
            &json!({"data": [meta_event(h.now(), "x")]}),
        )
        .await;
    assert_eq!(status, 200);
}

/// On the machine's clock, a quota of 5/s lets at most two windows' worth
/// through however the requests straddle a second boundary.
#[tokio::test]
async fn a_quota_on_the_real_clock() {
    let config = config();
    let sandbox = Sandbox::with_clock(&config, SandboxClock::system());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(sandbox.serve(listener, shutdown.clone()));
    let _guard = shutdown.clone().drop_guard();
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{base}/admin/faults/tiktok/*"))
        .json(&json!({"quota_per_sec": 5}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 200);
    let now = chrono::Utc::now().timestamp();
    let body = Arc::new(tiktok_body(vec![tiktok_event(now, "rq")]));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url, body) = (
            http.clone(),
            format!("{base}/open_api/v1.3/event/track/"),
            body.clone(),
        );
        set.spawn(async move {
            let r = http
                .post(url)
                .header("Access-Token", TIKTOK_TOKEN)
                .json(&*body)
                .send()
                .await
                .expect("POST");
            let v: Value = r.json().await.expect("json");
            v["code"].as_i64().unwrap_or(-1)
        });
    }
    let (mut ok, mut throttled) = (0, 0);
    while let Some(code) = set.join_next().await {
        match code.expect("task") {
            0 => ok += 1,
            40100 => throttled += 1,
            other => panic!("unexpected code {other}"),
        }
    }
    assert!((1..=10).contains(&ok), "ok = {ok}");
    assert!(throttled >= 10, "throttled = {throttled}");
}

#[test]
fn the_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox.example.toml");
    let config: SandboxConfig =
        postback_core::config::load_from(Some(&path), vec![]).expect("valid");
    assert_eq!(config.http.listen.port(), 8090);
}
