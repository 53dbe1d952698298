//! Meta Conversions API behaviour over real HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

fn body(events: Vec<Value>) -> Value {
    json!({ "data": events })
}

/// Sends one event changed by `edit` next to a valid one, and returns the error.
async fn rejected(h: &Harness, edit: impl FnOnce(&mut Value)) -> (u16, Value) {
    let mut bad = meta_event(h.now(), "bad");
    edit(&mut bad);
    let (status, v) = h
        .meta(
            META_PIXEL,
            META_TOKEN,
            &body(vec![meta_event(h.now(), "good"), bad]),
        )
        .await;
    (status, v["error"].clone())
}

#[tokio::test]
async fn a_valid_batch_is_accepted_and_visible() {
    let h = start().await;
    let events = vec![meta_event(h.now(), "e1"), meta_event(h.now(), "e2")];
    let mut b = body(events);
    b["test_event_code"] = json!("TEST123");
    let (status, v) = h.meta(META_PIXEL, META_TOKEN, &b).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["events_received"], 2);
    assert_eq!(v["messages"], json!([]));
    assert!(v["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()));

    let listed = h.get("/admin/events?platform=meta&event_id=e2").await;
    assert_eq!(listed["total"], 1);
    let ev = &listed["items"][0];
    assert_eq!(ev["account"], META_PIXEL);
    assert_eq!(ev["event_name"], "Purchase");
    assert_eq!(ev["test_event_code"], "TEST123");
    assert_eq!(ev["payload"]["custom_data"]["currency"], "EUR");
}

#[tokio::test]
async fn form_encoded_requests_with_the_token_in_the_body_are_accepted() {
    let h = start().await;
    let data = serde_json::to_string(&vec![meta_event(h.now(), "f1")]).expect("json");
    let resp = h
        .http
        .post(h.url(&format!("/v25.0/{META_PIXEL}/events")))
        .form(&[("access_token", META_TOKEN), ("data", data.as_str())])
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    assert_eq!(h.get("/admin/events?event_id=f1").await["total"], 1);
}

#[tokio::test]
async fn bad_tokens_get_code_190_and_foreign_pixels_code_100() {
    let h = start().await;
    let b = body(vec![meta_event(h.now(), "t1")]);
    let (status, v) = h.meta(META_PIXEL, "not-a-token", &b).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], 190);
    assert_eq!(v["error"]["type"], "OAuthException");
    // A token that exists, but for another pixel.
    let (status, v) = h.meta(META_PIXEL, OTHER_META_TOKEN, &b).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], 100);
    assert_eq!(v["error"]["error_subcode"], 33);
    let (status, _) = h.meta("4242", META_TOKEN, &b).await;
    assert_eq!(status, 400);
    assert_eq!(h.get("/admin/events").await["total"], 0);
}

#[tokio::test]
async fn one_invalid_event_rejects_the_whole_request() {
    let h = start().await;
    let (status, e) = rejected(&h, |ev| {
        ev["user_data"]["em"] = json!(["someone@example.com"])
    })
    .await;
    assert_eq!(status, 400);
    for key in [
        "message",
        "type",
        "code",
        "error_subcode",
        "error_user_title",
        "error_user_msg",
        "fbtrace_id",
        "is_transient",
    ] {
        assert!(e.get(key).is_some(), "error lacks {key}: {e}");
    }
    assert_eq!(e["code"], 100);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("data[1].user_data.em[0]"),
        "{e}"
    );
    assert_eq!(h.get("/admin/events").await["total"], 0);
    let rej = h.get("/admin/rejections?platform=meta").await;
    assert_eq!(rej["items"][0]["field"], "data[1].user_data.em[0]");
    assert_eq!(rej["items"][0]["event_id"], "bad");
}

#[tokio::test]
async fn each_documented_rejection_is_produced() {
    let h = start().await;
    let now = h.now();
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Option<i64>, &str, Edit)> = vec![
        (
            "too old",
            Some(2_804_003),
            "data[1].event_time",
            Box::new(move |ev| ev["event_time"] = json!(now - 8 * 86_400)),
        ),
        (
            "no value",
            Some(2_804_009),
            "data[1].custom_data.value",
            Box::new(|ev| {
                remove(&mut ev["custom_data"], "value");
            }),
        ),
        (
            "no currency",
            Some(2_804_009),
            "data[1].custom_data.value",
            Box::new(|ev| {
                remove(&mut ev["custom_data"], "currency");
            }),
        ),
        (
            "future",
            None,
            "data[1].event_time",
            Box::new(move |ev| ev["event_time"] = json!(now + 3600)),
        ),
        (
            "milliseconds",
            None,
            "data[1].event_time",
            Box::new(move |ev| ev["event_time"] = json!(now * 1000)),
        ),
        (
            "float time",
            None,
            "data[1].event_time",
            Box::new(move |ev| ev["event_time"] = json!(now as f64 + 0.5)),
        ),
        (
            "no event_name",
            None,
            "data[1].event_name",
            Box::new(|ev| {
                remove(ev, "event_name");
            }),
        ),
        (
            "bad action_source",
            None,
            "data[1].action_source",
            Box::new(|ev| ev["action_source"] = json!("web")),
        ),
        (
            "website without url",
            None,
            "data[1].event_source_url",
            Box::new(|ev| {
                remove(ev, "event_source_url");
            }),
        ),
        (
            "website without user agent",
            None,
            "data[1].user_data.client_user_agent",
            Box::new(|ev| {
                remove(&mut ev["user_data"], "client_user_agent");
            }),
        ),
        (
            "no user_data",
            None,
            "data[1].user_data",
            Box::new(|ev| {
                remove(ev, "user_data");
            }),
        ),
        (
            "uppercase hash",
            None,
            "data[1].user_data.fn",
            Box::new(|ev| ev["user_data"]["fn"] = json!(sha('A'))),
        ),
        (
            "hashed ip",
            None,
            "data[1].user_data.client_ip_address",
            Box::new(|ev| ev["user_data"]["client_ip_address"] = json!(sha('a'))),
        ),
        (
            "hashed fbp",
            None,
            "data[1].user_data.fbp",
            Box::new(|ev| ev["user_data"]["fbp"] = json!(sha('a'))),
        ),
        (
            "bad fbc",
            None,
            "data[1].user_data.fbc",
            Box::new(|ev| ev["user_data"]["fbc"] = json!("IwAR2F4-dbP0l7")),
        ),
        (
            "bad currency",
            None,
            "data[1].custom_data.currency",
            Box::new(|ev| ev["custom_data"]["currency"] = json!("EURO")),
        ),
        (
            "unknown currency",
            None,
            "data[1].custom_data.currency",
            Box::new(|ev| ev["custom_data"]["currency"] = json!("ABC")),
        ),
        (
            "string value",
            None,
            "data[1].custom_data.value",
            Box::new(|ev| ev["custom_data"]["value"] = json!("12.00")),
        ),
        (
            "bad processing options",
            None,
            "data[1].data_processing_options",
            Box::new(|ev| ev["data_processing_options"] = json!(["GDPR"])),
        ),
        (
            "phone as number",
            None,
            "data[1].user_data.ph[0]",
            Box::new(|ev| ev["user_data"]["ph"] = json!([4912345])),
        ),
    ];
    for (name, subcode, field, edit) in cases {
        let (status, e) = rejected(&h, edit).await;
        assert_eq!(status, 400, "{name}: {e}");
        assert_eq!(e["code"], 100, "{name}: {e}");
        assert_eq!(e["error_subcode"], json!(subcode), "{name}: {e}");
        let rej = h.get("/admin/rejections?platform=meta&limit=1").await;
        assert_eq!(rej["items"][0]["field"], field, "{name}: {rej}");
        if subcode.is_none() {
            assert!(
                e["message"].as_str().unwrap_or("").contains(field),
                "{name}: {e}"
            );
        }
    }
    assert_eq!(h.get("/admin/events").await["total"], 0);
}

#[tokio::test]
async fn physical_store_events_may_be_62_days_old() {
    let h = start().await;
    let mut ev = meta_event(h.now(), "store-1");
    ev["action_source"] = json!("physical_store");
    ev["event_time"] = json!(h.now() - 30 * 86_400);
    let (status, v) = h
        .meta(META_PIXEL, META_TOKEN, &body(vec![ev.clone()]))
        .await;
    assert_eq!(status, 200, "{v}");
    ev["event_time"] = json!(h.now() - 63 * 86_400);
    let (status, v) = h.meta(META_PIXEL, META_TOKEN, &body(vec![ev])).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["error_subcode"], 2_804_003);
}

#[tokio::test]
async fn batches_are_limited_to_1000_events() {
    let h = start().await;
    let events: Vec<Value> = (0..1001)
        .map(|i| meta_event(h.now(), &format!("b{i}")))
        .collect();
    let (status, v) = h.meta(META_PIXEL, META_TOKEN, &body(events)).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], 100);
    let events: Vec<Value> = (0..1000)
        .map(|i| meta_event(h.now(), &format!("b{i}")))
        .collect();
    let (status, v) = h.meta(META_PIXEL, META_TOKEN, &body(events)).await;
    assert_eq!(status, 200);
    assert_eq!(v["events_received"], 1000);
}

#[tokio::test]
async fn a_duplicate_is_recognised_within_48_hours_and_not_after() {
    let h = start().await;
    let b = body(vec![meta_event(h.now(), "d1")]);
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 200);
    h.clock.advance_ms(47 * 3600 * 1000);
    // Same id and name: received (Meta does not tell the sender) but not recorded twice.
    let b = body(vec![meta_event(h.now(), "d1")]);
    let (status, v) = h.meta(META_PIXEL, META_TOKEN, &b).await;
    assert_eq!((status, v["events_received"].clone()), (200, json!(1)));
    assert_eq!(h.get("/admin/events?event_id=d1").await["total"], 1);
    let dups = h.get("/admin/duplicates?event_id=d1").await;
    assert_eq!(dups["total"], 1);
    assert_eq!(dups["items"][0]["matched_on"], "event_id");
    // Same id, other event name: not a duplicate.
    let mut lead = meta_event(h.now(), "d1");
    lead["event_name"] = json!("Lead");
    assert_eq!(
        h.meta(META_PIXEL, META_TOKEN, &body(vec![lead])).await.0,
        200
    );
    assert_eq!(h.get("/admin/events?event_id=d1").await["total"], 2);
    // Past the window it counts again.
    h.clock.advance_ms(2 * 3600 * 1000);
    let b = body(vec![meta_event(h.now(), "d1")]);
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 200);
    assert_eq!(
        h.get("/admin/events?event_id=d1&event_name=Purchase").await["total"],
        2
    );
    assert_eq!(h.get("/admin/duplicates").await["total"], 1);
}

#[tokio::test]
async fn a_quota_answers_meta_throttle_errors_past_n_per_second() {
    let h = start().await;
    h.put_fault("meta", META_PIXEL, json!({"quota_per_sec": 5}))
        .await;
    let b = body(vec![meta_event(h.now(), "q")]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url, b) = (
            h.http.clone(),
            h.url(&format!(
                "/v25.0/{META_PIXEL}/events?access_token={META_TOKEN}"
            )),
            b.clone(),
        );
        set.spawn(async move {
            let r = http.post(url).json(&b).send().await.expect("POST");
            let status = r.status().as_u16();
            let v: Value = r.json().await.expect("json");
            (status, v)
        });
    }
    let (mut ok, mut throttled) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (status, v) = r.expect("task");
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(v["error"]["code"], 17, "{v}");
                assert_eq!(v["error"]["is_transient"], true);
                throttled += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    // The manual clock stands still, so exactly one window's worth gets through.
    assert_eq!((ok, throttled), (5, 15));
    // Another pixel is not affected by this pixel's rule.
    let other = body(vec![meta_event(h.now(), "q2")]);
    assert_eq!(
        h.meta(OTHER_META_PIXEL, OTHER_META_TOKEN, &other).await.0,
        200
    );
    h.clock.advance_ms(1000);
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 200);
    let stats = h.get("/admin/stats").await;
    assert_eq!(stats["requests"]["meta"]["throttled"], 15);
}

#[tokio::test]
async fn outages_and_error_rates_happen_when_configured() {
    let h = start().await;
    let b = body(vec![meta_event(h.now(), "o1")]);
    h.put_fault("meta", "*", json!({"outage_secs": 600})).await;
    for _ in 0..3 {
        let (status, v) = h.meta(META_PIXEL, META_TOKEN, &b).await;
        assert_eq!(status, 503);
        assert_eq!(v["error"]["is_transient"], true);
    }
    h.clear_fault("meta", "*").await;
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 200);

    h.put_fault("meta", "*", json!({"error_rate": 1.0, "error": "500"}))
        .await;
    for _ in 0..5 {
        assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 500);
    }
    h.put_fault("meta", "*", json!({"error_rate": 1.0, "error": "throttle"}))
        .await;
    let (status, v) = h.meta(META_PIXEL, META_TOKEN, &b).await;
    assert_eq!((status, v["error"]["code"].clone()), (429, json!(17)));
    h.put_fault("meta", "*", json!({"error_rate": 0.0})).await;
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 200);
    // An outage also ends by itself once its time has passed.
    h.put_fault("meta", "*", json!({"outage_secs": 30})).await;
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 503);
    h.clock.advance_ms(30_000);
    assert_eq!(h.meta(META_PIXEL, META_TOKEN, &b).await.0, 200);
}
