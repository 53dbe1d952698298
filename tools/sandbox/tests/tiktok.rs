//! TikTok Events API behaviour over real HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

async fn rejected(h: &Harness, edit: impl FnOnce(&mut Value)) -> Value {
    let mut bad = tiktok_event(h.now(), "bad");
    edit(&mut bad);
    let events = vec![
        tiktok_event(h.now(), "g0"),
        tiktok_event(h.now(), "g1"),
        tiktok_event(h.now(), "g2"),
        bad,
    ];
    let (status, v) = h.tiktok(TIKTOK_TOKEN, &tiktok_body(events)).await;
    assert_eq!(status, 200, "TikTok answers errors with HTTP 200: {v}");
    v
}

#[tokio::test]
async fn a_valid_batch_is_accepted_and_visible() {
    let h = start().await;
    let mut body = tiktok_body(vec![
        tiktok_event(h.now(), "t1"),
        tiktok_event(h.now(), "t2"),
    ]);
    body["test_event_code"] = json!("TEST42");
    let (status, v) = h.tiktok(TIKTOK_TOKEN, &body).await;
    assert_eq!(status, 200);
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["message"], "OK");
    assert!(v["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let listed = h
        .get(&format!(
            "/admin/events?platform=tiktok&account={TIKTOK_PIXEL}"
        ))
        .await;
    assert_eq!(listed["total"], 2);
    assert_eq!(listed["items"][1]["event_id"], "t2");
    assert_eq!(listed["items"][1]["test_event_code"], "TEST42");
}

#[tokio::test]
async fn bad_tokens_and_foreign_pixels_get_40001() {
    let h = start().await;
    let body = tiktok_body(vec![tiktok_event(h.now(), "p1")]);
    let (status, v) = h.tiktok("wrong", &body).await;
    assert_eq!((status, v["code"].clone()), (200, json!(40001)));
    let (_, v) = h.tiktok(OTHER_TIKTOK_TOKEN, &body).await;
    assert_eq!(v["code"], 40001);
    assert!(v["message"].as_str().unwrap_or("").contains(TIKTOK_PIXEL));
    let mut unknown = body.clone();
    unknown["event_source_id"] = json!("CUNKNOWN");
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &unknown).await.1["code"], 40001);
    assert_eq!(h.get("/admin/events").await["total"], 0);
    assert_eq!(
        h.get("/admin/stats").await["requests"]["tiktok"]["unauthenticated"],
        3
    );
}

#[tokio::test]
async fn each_documented_rejection_names_the_field() {
    let h = start().await;
    let now = h.now();
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "data.3.user.email",
            Box::new(|e| e["user"]["email"] = json!("jane@example.com")),
        ),
        (
            "data.3.user.phone.0",
            Box::new(|e| e["user"]["phone"] = json!(["+4915112345678"])),
        ),
        (
            "data.3.user.external_id",
            Box::new(|e| e["user"]["external_id"] = json!(sha('A'))),
        ),
        (
            "data.3.user.ip",
            Box::new(|e| e["user"]["ip"] = json!(sha('a'))),
        ),
        (
            "data.3.user.user_agent",
            Box::new(|e| e["user"]["user_agent"] = json!(sha('b'))),
        ),
        (
            "data.3.user.ttclid",
            Box::new(|e| e["user"]["ttclid"] = json!(sha('c'))),
        ),
        (
            "data.3.user.ttp",
            Box::new(|e| e["user"]["ttp"] = json!(sha('d'))),
        ),
        (
            "data.3.event",
            Box::new(|e| {
                remove(e, "event");
            }),
        ),
        (
            "data.3.event_time",
            Box::new(|e| e["event_time"] = json!("yesterday")),
        ),
        (
            "data.3.event_time",
            Box::new(move |e| e["event_time"] = json!(now * 1000)),
        ),
        ("data.3.event_id", Box::new(|e| e["event_id"] = json!(17))),
        (
            "data.3.properties.currency",
            Box::new(|e| e["properties"]["currency"] = json!("EURO")),
        ),
        (
            "data.3.properties.value",
            Box::new(|e| e["properties"]["value"] = json!("12.00")),
        ),
        (
            "data.3.properties.contents.0.content_id",
            Box::new(|e| e["properties"]["contents"][0]["content_id"] = json!(5)),
        ),
        (
            "data.3.limited_data_use",
            Box::new(|e| e["limited_data_use"] = json!("yes")),
        ),
    ];
    for (field, edit) in cases {
        let v = rejected(&h, edit).await;
        assert_eq!(v["code"], 40002, "{field}: {v}");
        let message = v["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(&format!("{field}:")),
            "{field}: {message}"
        );
    }
    assert_eq!(h.get("/admin/events").await["total"], 0);
    let rej = h.get("/admin/rejections?platform=tiktok&limit=1").await;
    assert_eq!(rej["items"][0]["field"], "data.3.limited_data_use");
    assert_eq!(rej["items"][0]["event_id"], "bad");
}

#[tokio::test]
async fn request_level_rejections() {
    let h = start().await;
    let mut body = tiktok_body(vec![tiktok_event(h.now(), "r1")]);
    body["event_source"] = json!("website");
    let (_, v) = h.tiktok(TIKTOK_TOKEN, &body).await;
    assert_eq!(v["code"], 40002);
    assert!(v["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("event_source:"));
    let events: Vec<Value> = (0..1001)
        .map(|i| tiktok_event(h.now(), &format!("m{i}")))
        .collect();
    let (_, v) = h.tiktok(TIKTOK_TOKEN, &tiktok_body(events)).await;
    assert_eq!(v["code"], 40002);
    assert!(v["message"].as_str().unwrap_or("").starts_with("data:"));
    let events: Vec<Value> = (0..1000)
        .map(|i| tiktok_event(h.now(), &format!("m{i}")))
        .collect();
    assert_eq!(
        h.tiktok(TIKTOK_TOKEN, &tiktok_body(events)).await.1["code"],
        0
    );
    let resp = h
        .http
        .post(h.url("/open_api/v1.3/event/track/"))
        .header("Access-Token", TIKTOK_TOKEN)
        .body("{not json")
        .send()
        .await
        .expect("POST");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["code"], 40002);
}

#[tokio::test]
async fn a_duplicate_is_recognised_within_its_window_and_not_after() {
    let h = start().await;
    // A tiny window set at run time instead of waiting 48 hours.
    let resp = h
        .http
        .put(h.url("/admin/settings"))
        .json(&json!({"dedup_window_secs": 10}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 200);
    let body = tiktok_body(vec![tiktok_event(h.now(), "dd")]);
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.1["code"], 0);
    h.clock.advance_ms(9_000);
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.1["code"], 0);
    assert_eq!(h.get("/admin/events?event_id=dd").await["total"], 1);
    assert_eq!(h.get("/admin/duplicates?event_id=dd").await["total"], 1);
    h.clock.advance_ms(1_000);
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.1["code"], 0);
    assert_eq!(h.get("/admin/events?event_id=dd").await["total"], 2);
    assert_eq!(h.get("/admin/duplicates?event_id=dd").await["total"], 1);
    // The same id on another pixel is its own event.
    let mut other = body.clone();
    other["event_source_id"] = json!(OTHER_TIKTOK_PIXEL);
    assert_eq!(h.tiktok(OTHER_TIKTOK_TOKEN, &other).await.1["code"], 0);
    assert_eq!(h.get("/admin/duplicates").await["total"], 1);
}

#[tokio::test]
async fn a_quota_answers_40100_past_n_per_second() {
    let h = start().await;
    h.put_fault("tiktok", TIKTOK_PIXEL, json!({"quota_per_sec": 5}))
        .await;
    let body = tiktok_body(vec![tiktok_event(h.now(), "q")]);
    let mut codes = Vec::new();
    for _ in 0..20 {
        let (status, v) = h.tiktok(TIKTOK_TOKEN, &body).await;
        assert_eq!(status, 200);
        codes.push(v["code"].as_i64().unwrap_or(-1));
    }
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 5);
    assert_eq!(codes.iter().filter(|c| **c == 40100).count(), 15);
    h.clock.advance_ms(1000);
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.1["code"], 0);
}

#[tokio::test]
async fn outages_and_error_rates_happen_when_configured() {
    let h = start().await;
    let body = tiktok_body(vec![tiktok_event(h.now(), "o")]);
    h.put_fault("tiktok", "*", json!({"outage_secs": 60})).await;
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.0, 503);
    h.clear_fault("tiktok", "*").await;
    let (status, v) = h.tiktok(TIKTOK_TOKEN, &body).await;
    assert_eq!((status, v["code"].clone()), (200, json!(0)));
    h.put_fault("tiktok", "*", json!({"error_rate": 1.0, "error": "500"}))
        .await;
    for _ in 0..5 {
        assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.0, 500);
    }
    h.put_fault(
        "tiktok",
        "*",
        json!({"error_rate": 1.0, "error": "throttle"}),
    )
    .await;
    assert_eq!(h.tiktok(TIKTOK_TOKEN, &body).await.1["code"], 40100);
}
