//! The panel in headless Chromium (Debian's chromium, driven by
//! playwright-core: tests/browser/panel.mjs), against the status service
//! fed from the broker: a wrong key shows nothing; the summary and the
//! first page load; each of the legend's four combinations (front end fired
//! or not, server side delivered or not eligible) shows its statuses, its
//! meaning, its match keys and its timeline when its row is clicked; a
//! filter narrows the table; pages follow each other; another tenant's key
//! sees only its own. Screenshots go to target/test-output/panel/.

use std::time::Duration;

use postback_core::model::{conversion_key, now_millis, FrontEndStatus, ServerSideStatus};
use postback_core::{Codec, SchemaKind};
use postback_testkit::{browser_tools, repo_root, unique, Broker};

mod support;
use support::{emitted, history, start, until_listed, ACME_KEY, OTHER_KEY, T0};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_every_combination_of_the_legend_in_the_panel() {
    let (modules, chromium) = browser_tools();
    let broker = Broker::shared().await.unwrap();
    let topics = (unique("panel.status"), unique("panel.rejected"));
    broker.create_topic(&topics.0, 3).await.unwrap();
    broker.create_topic(&topics.1, 1).await.unwrap();
    // The fixture's history, moved to the last hour so the panel's default
    // range holds it, and the one combination it lacks: a pixel that fired
    // for a conversion not eligible server-side.
    let shift = now_millis() - 3_600_000 - T0;
    let mut combo = emitted("acme", 100, "tiktok", ServerSideStatus::NotEligible, true);
    combo.event_id = "combo-1".into();
    assert_eq!(combo.front_end, Some(FrontEndStatus::Fired));
    let codec = Codec::new(SchemaKind::DeliveryStatus);
    let records = history().into_iter().map(|r| r.status).chain([combo]);
    for mut s in records {
        s.time += shift;
        if let Some(c) = &mut s.conversion {
            c.event_time += shift;
        }
        let key = conversion_key(&s.tenant, &s.event_id);
        broker
            .produce(&topics.0, &key, &codec.encode(&s).unwrap())
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let service = start(
        &broker,
        &topics,
        &unique("panel.group"),
        format!("sqlite://{}", dir.path().join("status.db").display()),
    )
    .await;
    let http = reqwest::Client::new();
    until_listed(&http, &service.base, 41).await;

    let expect = serde_json::json!({
        "states": {
            "ord-0": {"meta": ["fired", "delivered", "best case"]},
            "ord-1": {
                "meta": ["not_fired", "delivered", "covered a blocked"],
                "google_ads": ["not_fired", "not_eligible", "consent and the click id"]
            },
            "combo-1": {"tiktok": ["fired", "not_eligible", "only the browser's event"]}
        },
        "rejected_meta": 10,
        "acme_total": 41,
        "other_ids": ["ord-0", "ord-1", "ord-2"]
    });
    let expect_path = dir.path().join("expect.json");
    std::fs::write(&expect_path, expect.to_string()).unwrap();
    let out = repo_root().join("target/test-output/panel");
    let run = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/panel.mjs"))
        .arg("--modules")
        .arg(&modules)
        .arg("--chromium")
        .arg(&chromium)
        .args([
            "--base",
            &service.base,
            "--key",
            ACME_KEY,
            "--other-key",
            OTHER_KEY,
        ])
        .arg("--expect")
        .arg(&expect_path)
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test did not end in 240 s")
        .expect("node runs (Debian: apt-get install nodejs)");
    service.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the panel in Chromium:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
