//! Exactly-once from the collector to conversions.status, under fire: a
//! steady stream of conversions through the collector, while the enricher,
//! the deduplicator and each dispatcher are killed (-9) in turn and
//! restarted, and the broker itself is killed and restarted once.
//!
//! Afterwards every conversion is accepted by every platform once (the
//! sandbox's dedup counts each resend apart, so a resend shows), and only
//! conversions whose final status was not committed when their dispatcher
//! died were sent again; conversions.status (read committed) holds exactly
//! one final outcome per conversion and platform; conversions.rejected
//! holds nothing but the bad records the test wrote.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use postback_core::config::TopicsConfig;
use postback_core::model::{DeadLetter, ServerSideStatus};
use postback_core::{Codec, Platform, SchemaKind};
use postback_testkit::{kafka_toml, unique, Broker};
use serde_json::json;
use support::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const API_KEY: &str = "sk_test_shop_0123456789abcdef";
const CONVERSIONS: usize = 2_000;
const PARTITIONS: i32 = 3;

fn topics_toml(t: &TopicsConfig) -> String {
    format!(
        "[topics]\nraw = \"{}\"\nenriched = \"{}\"\nstatus = \"{}\"\nrejected = \"{}\"\ndispatch_prefix = \"{}\"\n",
        t.raw, t.enriched, t.status, t.rejected, t.dispatch_prefix
    )
}

fn event(i: usize) -> serde_json::Value {
    json!({
        "event_id": format!("chaos-{i:05}"),
        "event_name": "Purchase",
        "event_time": chrono::Utc::now().timestamp() - 60,
        "action_source": "website",
        "order": {"order_id": format!("chaos-{i:05}"), "value": "49.90", "currency": "EUR"},
        "user": {"email": format!("buyer{i}@example.com"), "country": "US",
                 "ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"},
        "click_ids": {"gclid": format!("Cj0KCQiA-chaos-{i}"), "fbclid": format!("IwAR-chaos-{i}"),
                      "ttclid": format!("E.C.P.chaos-{i}")},
        "page": {"url": "https://shop.example/checkout/thank-you"},
        "consent": {"ad_storage": "granted", "ad_user_data": "granted", "ad_personalization": "granted"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_a_broker_restart_leave_every_conversion_delivered_once_with_one_final_status() {
    let Some(broker) = Broker::private().await.expect("broker") else {
        eprintln!("skipped: the chaos test restarts its broker (KAFKA_BOOTSTRAP_SERVERS is set)");
        return;
    };
    let mut rig = Rig::on(broker, PARTITIONS, sandbox_config()).await;
    rig.topics.raw = unique("raw");
    rig.topics.enriched = unique("enriched");
    for t in [&rig.topics.raw, &rig.topics.enriched] {
        rig.broker.create_topic(t, PARTITIONS).await.expect("topic");
    }
    // CHAOS_KEEP=1 keeps the services' logs and configurations to read.
    let dir = tempfile::Builder::new()
        .prefix("postback-chaos")
        .disable_cleanup(std::env::var_os("CHAOS_KEEP").is_some())
        .tempdir()
        .expect("tempdir");
    let mut kafka = rig.broker.kafka_config();
    kafka.transaction_timeout_ms = 15_000;
    let kafka_text = kafka_toml(&kafka);
    let topics = topics_toml(&rig.topics);

    // The collector stays up (it answers 503 while the broker is down).
    let collector: postback_collector::config::CollectorConfig = postback_core::config::load_from(
        Some(&{
            let path = dir.path().join("collector.toml");
            std::fs::write(
                &path,
                format!("{kafka_text}{topics}[[api_keys]]\ntenant = \"{TENANT}\"\nkey = \"{API_KEY}\"\n"),
            )
            .expect("write");
            path
        }),
        vec![],
    )
    .expect("collector config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector_url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let ops = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector_task = tokio::spawn({
        let token = shutdown.clone();
        async move { postback_collector::run_with_listeners(collector, listener, ops, token).await }
    });

    // The stages as processes, each with a stable instance id (so a
    // restart fences what its previous life left open at once).
    let ops = || {
        format!(
            "[ops]\nlisten = \"127.0.0.1:{}\"\n",
            postback_testkit::free_port()
        )
    };
    let mut enricher = Service::start(
        "postback-enricher",
        "enricher",
        dir.path(),
        &format!(
            "{kafka_text}{topics}{}[consumer]\ngroup_id = \"{}\"\ninstance_id = \"enricher-1\"\n\
             [[tenants]]\nid = \"{TENANT}\"\ndefault_country = \"US\"\nplatforms = [\"meta\", \"google_ads\", \"tiktok\"]\n\
             [tenants.consent]\ndefault = \"granted\"\n",
            ops(),
            unique("enricher")
        ),
        &[],
    );
    let mut dedup = Service::start(
        "postback-deduplicator",
        "deduplicator",
        dir.path(),
        &format!(
            "{kafka_text}{topics}{}[consumer]\ngroup_id = \"{}\"\ninstance_id = \"dedup-1\"\n\
             [dedup]\nmerge_window_ms = 500\n[state]\ndir = \"{}\"\nchangelog_topic = \"{}\"\n",
            ops(),
            unique("dedup"),
            dir.path().join("state").display(),
            unique("changelog")
        ),
        &[],
    );
    let mut dispatchers: BTreeMap<Platform, Service> = BTreeMap::new();
    for p in Platform::ALL {
        let mut config = rig.config(p);
        config.kafka = kafka.clone();
        config.consumer.instance_id = Some(format!("{}-1", p.as_str()));
        dispatchers.insert(
            p,
            Service::start(
                "postback-dispatcher",
                &format!("dispatcher-{}", p.as_str()),
                dir.path(),
                &Process::config_text(&config),
                &[],
            ),
        );
    }

    // Bad input the test sends on purpose: the only dead letters expected.
    for i in 0..2 {
        rig.broker
            .produce(
                &rig.topics.raw,
                format!("{TENANT}/poison-{i}").as_bytes(),
                b"\x00 not avro",
            )
            .await
            .expect("poison");
    }
    rig.broker
        .produce(
            &rig.topics.dispatch(Platform::Meta),
            b"shop/poison-meta",
            b"not avro",
        )
        .await
        .expect("poison");

    // A steady stream: 10 conversions every 250 ms, each batch sent until
    // the collector takes it (503 while the broker is down).
    let sender = tokio::spawn({
        let url = format!("{collector_url}/v1/events");
        async move {
            let http = reqwest::Client::new();
            let mut refused = 0;
            for start in (0..CONVERSIONS).step_by(10) {
                let batch = json!({"events": (start..start + 10).map(event).collect::<Vec<_>>()});
                loop {
                    let answer = http
                        .post(&url)
                        .bearer_auth(API_KEY)
                        .json(&batch)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().as_u16() == 202 => break,
                        _ => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            refused
        }
    });

    let started = Instant::now();
    let at = |secs: u64| started + Duration::from_secs(secs);
    let mut killed_at: BTreeMap<Platform, i64> = BTreeMap::new();
    let log = |what: &str| eprintln!("chaos: {:>5.1}s {what}", started.elapsed().as_secs_f64());
    tokio::time::sleep_until(at(8).into()).await;
    log("kill -9 the enricher");
    enricher.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    enricher.restart();
    tokio::time::sleep_until(at(16).into()).await;
    log("kill -9 the deduplicator");
    dedup.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    dedup.restart();
    for (i, p) in Platform::ALL.into_iter().enumerate() {
        tokio::time::sleep_until(at(24 + 6 * i as u64).into()).await;
        let d = dispatchers.get_mut(&p).expect("dispatcher");
        log(&format!("kill -9 the {p} dispatcher"));
        d.kill9();
        killed_at.insert(p, now_ms());
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.restart();
    }
    tokio::time::sleep_until(at(44).into()).await;
    log("kill -9 the broker");
    rig.broker.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.broker.restart().await.expect("broker restart");
    log("broker restarted");
    let refused = sender.await.expect("sender");
    eprintln!(
        "chaos: stream sent after {:?} ({refused} refusals); sandbox so far: {}",
        started.elapsed(),
        rig.sandbox.stats()["events"]
    );

    let deadline = Instant::now()
        + Duration::from_secs(
            std::env::var("CHAOS_WAIT_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(240),
        );
    let accepted = |p: Platform| -> BTreeMap<String, usize> {
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for e in rig.sandbox.accepted(p) {
            *by_id.entry(e.event_id.unwrap_or_default()).or_default() += 1;
        }
        by_id
    };
    let statuses = loop {
        let statuses = rig.statuses().await;
        let done = Platform::ALL.iter().all(|p| {
            accepted(*p).len() >= CONVERSIONS && finals(&statuses, *p).len() >= CONVERSIONS
        });
        if done {
            break statuses;
        }
        if Instant::now() > deadline {
            for (name, log) in std::iter::once(("enricher", enricher.log_text()))
                .chain(std::iter::once(("deduplicator", dedup.log_text())))
                .chain(
                    dispatchers
                        .values()
                        .map(|d| (d.name.as_str(), d.log_text())),
                )
            {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- {name} (last lines)\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            break statuses;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    let mut final_before_kill: BTreeMap<Platform, BTreeSet<String>> = BTreeMap::new();
    for (p, at) in &killed_at {
        final_before_kill.insert(*p, rig.finals_committed_before(*p, *at).await);
    }
    let mut report = Vec::new();
    for p in Platform::ALL {
        let by_id = accepted(p);
        let finals = finals(&statuses, p);
        let resent = rig.sandbox.resent_ids(p);
        report.push(format!(
            "{p}: accepted {} conversions, {} resends absorbed, {} final statuses ({} before its kill)",
            by_id.len(),
            resent.len(),
            finals.values().map(Vec::len).sum::<usize>(),
            final_before_kill.get(&p).map_or(0, BTreeSet::len)
        ));
        assert_eq!(by_id.len(), CONVERSIONS, "{p}: every conversion accepted");
        assert!(by_id.values().all(|n| *n == 1), "{p}: accepted once each");
        assert_eq!(
            finals.len(),
            CONVERSIONS,
            "{p}: every conversion has a final status"
        );
        for (id, records) in &finals {
            assert_eq!(records.len(), 1, "{p} {id}: exactly one final status");
            assert_eq!(
                records[0].server_side,
                ServerSideStatus::Delivered,
                "{p} {id}"
            );
        }
        let before = &final_before_kill[&p];
        for id in &resent {
            assert!(
                !before.contains(id),
                "{p}: {id} was sent again though its final status was committed before the kill"
            );
        }
    }
    let letters = rig
        .broker
        .read_to_end(&rig.topics.rejected)
        .await
        .expect("rejected");
    let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
    let letters: Vec<DeadLetter> = letters
        .iter()
        .filter_map(|r| codec.decode(r.payload.as_deref()?).ok())
        .collect();
    let stages: Vec<String> = letters
        .iter()
        .map(|l| format!("{}:{}", l.stage, l.reason))
        .collect();
    report.push(format!(
        "dead letters: {stages:?}; the collector answered 503 (or nothing) {refused} times while the broker was down"
    ));
    eprintln!("chaos: {}", report.join("\n       "));
    assert_eq!(letters.len(), 3, "only the bad records sent: {stages:?}");
    assert_eq!(
        letters.iter().filter(|l| l.stage == "enricher").count(),
        2,
        "{stages:?}"
    );
    assert_eq!(
        letters
            .iter()
            .filter(|l| l.stage == "dispatcher.meta")
            .count(),
        1,
        "{stages:?}"
    );
    for (name, log) in std::iter::once(("enricher", enricher.log_text()))
        .chain(std::iter::once(("deduplicator", dedup.log_text())))
        .chain(
            dispatchers
                .values()
                .map(|d| (d.name.as_str(), d.log_text())),
        )
    {
        assert!(!log.contains("panicked"), "{name} panicked:\n{log}");
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), collector_task).await;
}
