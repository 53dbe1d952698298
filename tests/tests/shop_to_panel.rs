//! From a shop's page to the panel, in headless Chromium: the sample shop
//! (tools/shop) with the browser tag the collector serves and the sandbox's
//! stand-in pixels, in front of the whole pipeline in this process.
//!
//! tests/browser/shop.mjs plays five visitors: consent granted with every
//! pixel, granted with Meta's pixel blocked (as an ad blocker does), denied,
//! an IAB TCF CMP, and a plain CMP whose first send fails (kept, sent by the
//! next page). It checks the tag's cookies and what it sent. Then this test
//! waits for each purchase's outcome per platform in the status API and
//! checks what reached the sandbox (the pixels' hits; the server-side
//! uploads with their click ids), and the script's second phase opens the
//! panel: each purchase's detail shows the legend's combination it is (fired
//! or not, delivered or not eligible), a filter narrows the table, another
//! tenant's key sees nothing. Screenshots: target/test-output/shop/.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use postback_testkit::{browser_tools, repo_root, Broker};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod support;
use support::pipeline::{listener, start_pipeline, wait_for, Names, Options, Running};

const API_KEY: &str = "sk_local_demo_0123456789abcdef";
const SITE_KEY: &str = "pk_local_demo";
const READ_KEY: &str = "rk_local_demo_0123456789abcdef";
const OTHER_TENANT_KEY: &str = "rk_test_acme_0123456789abcdef";

async fn node(args: Vec<String>) -> String {
    let run = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/shop.mjs"))
        .args(&args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser script did not end in 300 s")
        .expect("node runs (Debian: apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "shop.mjs {}:\n{stdout}\n{}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// What each visitor's purchase must show per platform: front end, server
/// side, and a fragment of the panel's sentence for the two.
fn expected(scenario: &str) -> BTreeMap<&'static str, [&'static str; 3]> {
    const BEST: [&str; 3] = ["fired", "delivered", "best case"];
    match scenario {
        "granted" | "tcf" | "retry" => {
            [("meta", BEST), ("google_ads", BEST), ("tiktok", BEST)].into()
        }
        "blocked" => [
            ("meta", ["not_fired", "delivered", "covered a blocked"]),
            ("google_ads", BEST),
            ("tiktok", BEST),
        ]
        .into(),
        "denied" => [
            (
                "meta",
                ["not_fired", "not_eligible", "consent and the click id"],
            ),
            (
                "google_ads",
                ["fired", "not_eligible", "only the browser's event"],
            ),
            (
                "tiktok",
                ["not_fired", "not_eligible", "consent and the click id"],
            ),
        ]
        .into(),
        other => panic!("no expectation for scenario {other}"),
    }
}

/// Polls the status API until the conversion's platforms have their final
/// server-side status, and returns its detail.
async fn settled(
    http: &reqwest::Client,
    api: &str,
    event_id: &str,
    want: &BTreeMap<&str, [&str; 3]>,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let url = format!("{api}/v1/conversions/Purchase/{event_id}");
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http.get(&url).bearer_auth(READ_KEY).send().await {
            if r.status().is_success() {
                last = r.json().await.unwrap_or(Value::Null);
                let done = want.iter().all(|(p, [_, server, _])| {
                    last["conversion"]["platforms"][p]["server_side"] == *server
                });
                if done {
                    return last;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{event_id} did not reach {want:?} within 180 s; last: {last:#}");
}

async fn sandbox_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url)
        .send()
        .await
        .expect("sandbox answers")
        .json()
        .await
        .expect("sandbox JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_goes_from_the_shop_page_to_the_panel() {
    let (modules, chromium) = browser_tools();
    let broker = Broker::shared().await.unwrap();
    let http = reqwest::Client::new();
    let names = Names::new("shop");
    names.create(&broker).await;
    // The shop's address first: the collector must allow its origin.
    let (shop_listener, shop_addr) = listener().await;
    let shop_origin = format!("http://{shop_addr}");
    let (pipeline, addrs) = start_pipeline(
        &broker,
        &names,
        &http,
        Options {
            extra_origins: vec![shop_origin.clone()],
            extra_read_keys: vec![("acme".into(), OTHER_TENANT_KEY.into())],
            // The production default: the shop's server report and the
            // tag's beacon (sent after the page's load) merge even on a
            // busy machine.
            merge_window_ms: Some(10_000),
            ..Options::default()
        },
    )
    .await;
    let sandbox = format!("http://{}", addrs["sandbox"]);
    let stop = CancellationToken::new();
    let shop = Running::spawn(
        "shop",
        shop_addr,
        stop.clone(),
        postback_shop::run(
            postback_shop::ShopConfig {
                collector_url: format!("http://{}", addrs["collector.api"]),
                site_key: SITE_KEY.into(),
                api_key: Some(API_KEY.into()),
                pixels_url: sandbox.clone(),
            },
            shop_listener,
            stop,
        ),
    );
    wait_for(&http, &shop, "/healthz").await;

    let out = repo_root().join("target/test-output/shop");
    let dir = tempfile::tempdir().unwrap();
    let result_path = dir.path().join("result.json");
    let common = |phase: &str| {
        vec![
            phase.to_string(),
            "--modules".into(),
            modules.display().to_string(),
            "--chromium".into(),
            chromium.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let mut args = common("shop");
    args.extend([
        "--shop".into(),
        shop_origin.clone(),
        "--result".into(),
        result_path.display().to_string(),
    ]);
    node(args).await;
    let result: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&result_path).unwrap()).unwrap();
    assert_eq!(
        result.keys().map(String::as_str).collect::<Vec<_>>(),
        ["blocked", "denied", "granted", "retry", "tcf"]
    );

    // Each purchase's outcome per platform, from the status API.
    let api = format!("http://{}", pipeline.status_api);
    let mut states = serde_json::Map::new();
    let mut scenario_of = serde_json::Map::new();
    let mut meta_not_fired = Vec::new();
    for (scenario, r) in &result {
        let event_id = r["event_id"].as_str().expect("event id");
        let want = expected(scenario);
        let detail = settled(&http, &api, event_id, &want).await;
        let conversion = &detail["conversion"];
        let sources: Vec<&str> = conversion["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want_sources: &[&str] = if scenario == "retry" {
            &["browser"]
        } else {
            &["browser", "server"]
        };
        assert_eq!(sources, want_sources, "{scenario}: sources");
        let mut line = Vec::new();
        for (platform, [front, server, _]) in &want {
            let p = &conversion["platforms"][platform];
            assert_eq!(p["front_end"], *front, "{scenario} {platform}: {p}");
            assert_eq!(p["server_side"], *server, "{scenario} {platform}: {p}");
            line.push(format!("{platform} {front}/{server}"));
        }
        if scenario == "denied" {
            for platform in ["meta", "google_ads", "tiktok"] {
                let p = &conversion["platforms"][platform];
                assert_eq!(p["reason"], "no_consent", "denied {platform}: {p}");
            }
        }
        if want["meta"][0] == "not_fired" {
            meta_not_fired.push(json!(event_id));
        }
        println!("{scenario} ({event_id}): {}", line.join(", "));
        states.insert(event_id.to_string(), json!(want));
        scenario_of.insert(event_id.to_string(), json!(scenario));
    }

    // What reached the sandbox: the pixels that fired, and the uploads.
    for (scenario, r) in &result {
        let event_id = r["event_id"].as_str().unwrap();
        let hits = sandbox_json(
            &http,
            format!("{sandbox}/admin/pixel_hits?event_id={event_id}"),
        )
        .await;
        let fired: BTreeSet<&str> = hits["hits"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["event_name"] != "PageView")
            .filter_map(|h| h["platform"].as_str())
            .collect();
        let want: BTreeSet<&str> = expected(scenario)
            .into_iter()
            .filter(|(_, [front, _, _])| *front == "fired")
            .map(|(p, _)| p)
            .collect();
        assert_eq!(fired, want, "{scenario}: the pixels the sandbox saw fire");
    }
    let google = sandbox_json(&http, format!("{sandbox}/admin/events?platform=google_ads")).await;
    let uploads = google.to_string();
    for scenario in ["granted", "tcf", "retry", "blocked"] {
        let order = result[scenario]["beacon"]["order"]["order_id"]
            .as_str()
            .unwrap();
        assert!(
            uploads.contains(order),
            "{scenario}: Google upload of order {order} missing"
        );
    }
    assert!(
        uploads.contains("Cj0KCQ-test-gclid"),
        "the gclid kept by the tag reached Google's upload"
    );
    let denied_order = result["denied"]["beacon"]["order"]["order_id"]
        .as_str()
        .unwrap();
    assert!(
        !uploads.contains(denied_order),
        "a denied purchase was uploaded"
    );

    // The panel.
    let expect = json!({
        "states": states,
        "names": scenario_of,
        "meta_not_fired": meta_not_fired,
    });
    let expect_path = dir.path().join("expect.json");
    std::fs::write(&expect_path, expect.to_string()).unwrap();
    let mut args = common("panel");
    args.extend([
        "--panel".into(),
        api.clone(),
        "--key".into(),
        READ_KEY.into(),
        "--other-key".into(),
        OTHER_TENANT_KEY.into(),
        "--expect".into(),
        expect_path.display().to_string(),
    ]);
    node(args).await;

    shop.stop().await;
    pipeline.stop().await;
}
