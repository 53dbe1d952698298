//! The status service against the broker and over HTTP: status records on
//! a topic become the API's answers for each tenant's read key; a record
//! that does not decode is a dead letter and its neighbours are stored;
//! every bad request is a 4xx that says what is wrong; and a projection
//! rebuilt from the topic (a new database, PostgreSQL this time, and the
//! same configured group)
//! gives the same answers.

use std::time::Duration;

use postback_core::model::{conversion_key, DeadLetter};
use postback_core::{Codec, SchemaKind};
use postback_testkit::{unique, Broker, TestDatabase};
use serde_json::Value;

mod support;
use support::{get, history, start, until_listed, ACME_KEY, OTHER_KEY};

/// Everything acme can see, for comparing two projections.
async fn answers(http: &reqwest::Client, base: &str) -> Value {
    let (_, list) = get(
        http,
        &format!("{base}/v1/conversions?limit=500"),
        Some(ACME_KEY),
    )
    .await;
    let mut details = Vec::new();
    for c in list["conversions"].as_array().unwrap() {
        let url = format!(
            "{base}/v1/conversions/{}/{}",
            c["event_name"].as_str().unwrap(),
            c["event_id"].as_str().unwrap()
        );
        details.push(get(http, &url, Some(ACME_KEY)).await.1);
    }
    let (_, summary) = get(
        http,
        &format!("{base}/v1/summary?from=1789000000000&to=1791000000000"),
        Some(ACME_KEY),
    )
    .await;
    serde_json::json!({"list": list, "details": details, "summary": summary})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_records_become_answers_per_tenant_and_a_rebuild_gives_the_same() {
    let broker = Broker::shared().await.unwrap();
    let topics = (unique("status.in"), unique("status.rejected"));
    broker.create_topic(&topics.0, 3).await.unwrap();
    broker.create_topic(&topics.1, 1).await.unwrap();
    let codec = Codec::new(SchemaKind::DeliveryStatus);
    let rows = history();
    for (i, row) in rows.iter().enumerate() {
        let s = &row.status;
        broker
            .produce(
                &topics.0,
                &conversion_key(&s.tenant, &s.event_id),
                &codec.encode(s).unwrap(),
            )
            .await
            .unwrap();
        if i == rows.len() / 2 {
            broker
                .produce(&topics.0, b"acme/ord-garbage", b"not avro")
                .await
                .unwrap();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let group = unique("status.group");
    let first = start(
        &broker,
        &topics,
        &group,
        format!("sqlite://{}", dir.path().join("status.db").display()),
    )
    .await;
    let http = reqwest::Client::new();
    until_listed(&http, &first.base, 40).await;
    let base = first.base.clone();

    // The undecodable record is a dead letter of stage `status`.
    let letters = broker
        .consume(&topics.1, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let letter = Codec::<DeadLetter>::new(SchemaKind::DeadLetter)
        .decode(letters[0].payload.as_deref().unwrap())
        .unwrap();
    assert_eq!(
        (letter.stage.as_str(), letter.reason.as_str()),
        ("status", "not_single_object"),
        "{letter:?}"
    );

    // Each key sees its tenant, and only it.
    let (status, other) = get(&http, &format!("{base}/v1/conversions"), Some(OTHER_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(other["conversions"].as_array().unwrap().len(), 3);
    let (status, _) = get(
        &http,
        &format!("{base}/v1/conversions/Purchase/ord-7"),
        Some(OTHER_KEY),
    )
    .await;
    assert_eq!(status, 404, "acme's ord-7 is not other's");
    let (status, d) = get(
        &http,
        &format!("{base}/v1/conversions/Purchase/ord-7"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        d["conversion"]["platforms"]["meta"]["server_side"],
        "failed"
    );
    assert!(d["conversion"]["platforms"]["meta"]["meaning"]
        .as_str()
        .unwrap()
        .contains("replay"));
    let (status, filtered) = get(
        &http,
        &format!("{base}/v1/conversions?platform=meta&server_side=rejected"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(filtered["conversions"].as_array().unwrap().len(), 10);
    let (status, found) = get(
        &http,
        &format!("{base}/v1/conversions?click_id=gclid-21"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(found["conversions"][0]["event_id"], "ord-21");

    // No key, a wrong key, and every kind of bad parameter.
    for key in [None, Some("rk_nobody_0123456789abcdef")] {
        let response = http
            .get(format!("{base}/v1/conversions"))
            .bearer_auth(key.unwrap_or(""))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    for (query, field) in [
        ("limit=0", "query.limit"),
        ("limit=ten", "query.limit"),
        ("platform=myspace", "query.platform"),
        ("server_side=sent", "query.server_side"),
        ("front_end=maybe", "query.front_end"),
        ("from=yesterday", "query.from"),
        ("from=2000&to=1000", "query.to"),
        ("cursor=zz", "query.cursor"),
        ("colour=red", "query.colour"),
        ("event_id=a&event_id=b", "query.event_id"),
    ] {
        let (status, body) = get(
            &http,
            &format!("{base}/v1/conversions?{query}"),
            Some(ACME_KEY),
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some(field)),
            "{query}: {body}"
        );
        assert_eq!(body["error"], "invalid_query");
    }
    let (status, body) = get(
        &http,
        &format!("{base}/v1/summary?from=1&to=1"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("query.to")));
    let (status, body) = get(
        &http,
        &format!("{base}/v1/conversions/Purchase/ord-1?x=1"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("query.x")));

    // The panel ships inside the binary, locked to its own origin.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("panel.js"));
    let script = http.get(format!("{base}/panel.js")).send().await.unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );

    let before = answers(&http, &base).await;
    assert_eq!(before["summary"]["summary"]["conversions"], 40);
    first.stop().await;

    // Rebuilt from the topic: a new database (the other backend), the same
    // configured group, whose offsets belong to the first database's rows.
    let db = TestDatabase::create().await.unwrap();
    let second = start(&broker, &topics, &group, db.url.clone()).await;
    until_listed(&http, &second.base, 40).await;
    let after = answers(&http, &second.base).await;
    assert_eq!(before, after, "the rebuilt projection answers the same");
    second.stop().await;
    println!("rebuild: 40 conversions, {} status records, the same answers from SQLite and from PostgreSQL rebuilt from the topic", rows.len());
}
