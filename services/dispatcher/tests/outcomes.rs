//! Dispatchers against the platform sandbox through a real broker: what
//! each kind of platform answer becomes on conversions.status.

mod support;

use std::time::Duration;

use postback_core::model::ServerSideStatus;
use postback_core::Platform;
use postback_sandbox::faults::{FaultSpec, InjectedError};
use postback_sandbox::hostile::HostileAnswer;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_event_is_rejected_alone_and_the_rest_delivered_on_every_platform() {
    let rig = Rig::start(2).await;
    let now = now_ms();
    let events: Vec<_> = ids("batch", 60)
        .iter()
        .map(|id| {
            let mut c = conversion(id, now - 60_000);
            if id.ends_with("-0017") {
                // Not an ISO 4217 code: every platform refuses this event.
                if let Some(o) = c.order.as_mut() {
                    o.currency = Some("ZZZ".into());
                }
            }
            c
        })
        .collect();
    let mut running = Vec::new();
    for p in Platform::ALL {
        rig.send(p, &events).await;
    }
    for p in Platform::ALL {
        running.push(InProcess::start(rig.config(p)).await);
    }
    let statuses = rig
        .statuses_until(WAIT, |s| {
            Platform::ALL
                .iter()
                .all(|p| finals(s, *p).len() == events.len())
        })
        .await;
    for p in Platform::ALL {
        let finals = finals(&statuses, p);
        assert_eq!(
            finals.len(),
            events.len(),
            "{p}: every event has an outcome"
        );
        for (id, records) in &finals {
            assert_eq!(records.len(), 1, "{p} {id}: one final outcome");
            let r = &records[0];
            if id.ends_with("-0017") {
                assert_eq!(r.server_side, ServerSideStatus::Rejected, "{p} {id}");
                let reason = r.reason.clone().unwrap_or_default();
                let expected = match p {
                    Platform::Meta => "100",
                    Platform::GoogleAds => "UNSUPPORTED",
                    Platform::Tiktok => "40002",
                };
                assert!(reason.contains(expected), "{p}: reason {reason}");
                assert!(reason.to_lowercase().contains("currency"), "{p}: {reason}");
            } else {
                assert_eq!(r.server_side, ServerSideStatus::Delivered, "{p} {id}");
                assert!(r.platform_request_id.is_some(), "{p}: request id kept");
            }
        }
        let accepted = rig.sandbox.accepted(p);
        assert_eq!(
            accepted.len(),
            events.len() - 1,
            "{p}: the others accepted once"
        );
        assert_eq!(rig.sandbox.duplicates(p), 0, "{p}: nothing sent twice");
    }
    let meta = &running[0];
    assert!(
        meta.metric("postback_dispatcher_isolation_requests_total", &[])
            .await
            >= 2.0
    );
    assert_eq!(
        meta.metric(
            "postback_dispatcher_events_total",
            &[("outcome", "delivered")]
        )
        .await,
        (events.len() - 1) as f64
    );
    assert_eq!(
        meta.metric(
            "postback_dispatcher_events_total",
            &[("outcome", "rejected")]
        )
        .await,
        1.0
    );
    for r in running {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_error_index_halving_finds_the_bad_events() {
    let rig = Rig::start(1).await;
    let now = now_ms();
    let events: Vec<_> = ids("halve", 64)
        .iter()
        .map(|id| {
            let mut c = conversion(id, now - 60_000);
            if id.ends_with("-0005") || id.ends_with("-0050") {
                if let Some(o) = c.order.as_mut() {
                    o.currency = Some("ZZZ".into());
                }
            }
            c
        })
        .collect();
    rig.send(Platform::Tiktok, &events).await;
    let mut config = rig.config(Platform::Tiktok);
    config.stage.dispatch.use_error_index = false;
    config.stage.dispatch.linger_ms = 500;
    let d = InProcess::start(config).await;
    let statuses = rig
        .statuses_until(WAIT, |s| finals(s, Platform::Tiktok).len() == 64)
        .await;
    let finals = finals(&statuses, Platform::Tiktok);
    let rejected: Vec<&String> = finals
        .iter()
        .filter(|(_, r)| r[0].server_side == ServerSideStatus::Rejected)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(rejected, vec!["halve-0005", "halve-0050"]);
    assert_eq!(rig.sandbox.accepted(Platform::Tiktok).len(), 62);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_storm_is_ridden_out_without_loss_or_failure() {
    let rig = Rig::start(2).await;
    let now = now_ms();
    let events: Vec<_> = ids("storm", 200)
        .iter()
        .map(|id| conversion(id, now - 60_000))
        .collect();
    // Meta: most requests answered with Graph code 17; Google: a quota of
    // one request a second, answered 429 RESOURCE_EXHAUSTED with Retry-After.
    rig.sandbox.set_fault(
        Platform::Meta,
        "*",
        FaultSpec {
            error_rate: 0.8,
            error: InjectedError::Throttle,
            ..Default::default()
        },
    );
    rig.sandbox.set_fault(
        Platform::GoogleAds,
        "*",
        FaultSpec {
            quota_per_sec: Some(1),
            ..Default::default()
        },
    );
    let mut meta_config = rig.config(Platform::Meta);
    meta_config.stage.dispatch.max_batch_events = 10;
    let mut google_config = rig.config(Platform::GoogleAds);
    google_config.stage.dispatch.max_batch_events = 20;
    google_config.stage.dispatch.max_concurrent_requests = 8;
    let meta = InProcess::start(meta_config).await;
    let google = InProcess::start(google_config).await;
    rig.send(Platform::Meta, &events).await;
    rig.send(Platform::GoogleAds, &events).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.sandbox.clear_faults();
    let statuses = rig
        .statuses_until(WAIT, |s| {
            finals(s, Platform::Meta).len() == 200 && finals(s, Platform::GoogleAds).len() == 200
        })
        .await;
    for p in [Platform::Meta, Platform::GoogleAds] {
        let finals = finals(&statuses, p);
        assert_eq!(finals.len(), 200, "{p}");
        assert!(
            finals
                .values()
                .all(|r| r.len() == 1 && r[0].server_side == ServerSideStatus::Delivered),
            "{p}: all delivered once"
        );
        assert!(
            rig.sandbox.requests(p, "throttled") > 0,
            "{p}: the storm happened"
        );
        assert_eq!(rig.sandbox.accepted(p).len(), 200, "{p}");
        let throttled_retries = statuses
            .iter()
            .filter(|s| s.platform == p.as_str() && s.server_side == ServerSideStatus::Retrying)
            .count();
        assert!(throttled_retries > 0, "{p}: retrying statuses recorded");
    }
    assert!(statuses
        .iter()
        .all(|s| s.server_side != ServerSideStatus::Failed));
    assert!(
        meta.metric(
            "postback_dispatcher_requests_total",
            &[("outcome", "throttled")]
        )
        .await
            > 0.0
    );
    assert_eq!(
        meta.metric("postback_dispatcher_events_total", &[("outcome", "failed")])
            .await,
        0.0
    );
    assert!(rig.dead_letters().await.is_empty());
    meta.stop().await;
    google.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_past_the_meta_window_is_expired_and_never_sent() {
    let rig = Rig::start(1).await;
    let now = now_ms();
    let day = 86_400_000;
    let old = conversion("old-8-days", now - 8 * day);
    let fresh = conversion("fresh", now - 60_000);
    let mut store = conversion("store-30-days", now - 30 * day);
    // Meta takes physical_store events for 62 days.
    store.action_source = Some("physical_store".into());
    rig.send(Platform::Meta, &[old, fresh, store]).await;
    let d = InProcess::start(rig.config(Platform::Meta)).await;
    let statuses = rig
        .statuses_until(WAIT, |s| finals(s, Platform::Meta).len() == 3)
        .await;
    let finals = finals(&statuses, Platform::Meta);
    assert_eq!(
        finals["old-8-days"][0].server_side,
        ServerSideStatus::Expired
    );
    assert_eq!(finals["fresh"][0].server_side, ServerSideStatus::Delivered);
    assert_eq!(
        finals["store-30-days"][0].server_side,
        ServerSideStatus::Delivered
    );
    let sent: Vec<String> = rig
        .sandbox
        .accepted(Platform::Meta)
        .into_iter()
        .filter_map(|e| e.event_id)
        .collect();
    assert!(!sent.contains(&"old-8-days".to_string()));
    assert_eq!(
        rig.sandbox.stats()["events"]["meta"]["rejected"],
        0,
        "the expired event was not even tried"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_only_its_platform_and_everything_arrives_after() {
    let rig = Rig::start(2).await;
    let now = now_ms();
    let events: Vec<_> = ids("outage", 40)
        .iter()
        .map(|id| conversion(id, now - 60_000))
        .collect();
    rig.sandbox.set_fault(
        Platform::Meta,
        "*",
        FaultSpec {
            outage_secs: Some(25),
            ..Default::default()
        },
    );
    let mut running = Vec::new();
    for p in Platform::ALL {
        let mut config = rig.config(p);
        // Hold on for the whole outage (the default is about an hour).
        config.stage.dispatch.max_attempts = 1000;
        running.push(InProcess::start(config).await);
        rig.send(p, &events).await;
    }
    let during = rig
        .statuses_until(WAIT, |s| {
            finals(s, Platform::GoogleAds).len() == 40 && finals(s, Platform::Tiktok).len() == 40
        })
        .await;
    assert_eq!(finals(&during, Platform::GoogleAds).len(), 40);
    assert_eq!(finals(&during, Platform::Tiktok).len(), 40);
    assert!(
        rig.sandbox.accepted(Platform::Meta).is_empty(),
        "the test needs Meta still down here"
    );
    assert!(
        finals(&during, Platform::Meta).is_empty(),
        "Meta is down: nothing final for it yet"
    );
    assert!(
        during
            .iter()
            .any(|s| s.platform == "meta" && s.server_side == ServerSideStatus::Retrying),
        "Meta's attempts are recorded as retrying"
    );
    let after = rig
        .statuses_until(WAIT, |s| finals(s, Platform::Meta).len() == 40)
        .await;
    let meta = finals(&after, Platform::Meta);
    assert_eq!(meta.len(), 40);
    assert!(meta
        .values()
        .all(|r| r.len() == 1 && r[0].server_side == ServerSideStatus::Delivered));
    assert!(rig.sandbox.requests(Platform::Meta, "outage") > 0);
    assert_eq!(rig.sandbox.accepted(Platform::Meta).len(), 40);
    for r in running {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_failing_past_the_limit_is_failed_and_dead_lettered() {
    let rig = Rig::start(1).await;
    let now = now_ms();
    rig.sandbox.set_fault(
        Platform::Tiktok,
        "*",
        FaultSpec {
            error_rate: 1.0,
            error: InjectedError::Internal,
            ..Default::default()
        },
    );
    rig.send(
        Platform::Tiktok,
        &[
            conversion("doomed-1", now - 1000),
            conversion("doomed-2", now - 1000),
        ],
    )
    .await;
    let mut config = rig.config(Platform::Tiktok);
    config.stage.dispatch.max_attempts = 3;
    let d = InProcess::start(config).await;
    let statuses = rig
        .statuses_until(WAIT, |s| finals(s, Platform::Tiktok).len() == 2)
        .await;
    let finals = finals(&statuses, Platform::Tiktok);
    for id in ["doomed-1", "doomed-2"] {
        let last = &finals[id][0];
        assert_eq!(last.server_side, ServerSideStatus::Failed);
        assert!(last.reason.as_deref().unwrap_or("").contains("50000"));
        assert_eq!(last.attempt, Some(3));
        let retrying: Vec<i32> = statuses
            .iter()
            .filter(|s| s.event_id == id && s.server_side == ServerSideStatus::Retrying)
            .filter_map(|s| s.attempt)
            .collect();
        assert_eq!(
            retrying,
            vec![1, 2],
            "{id}: one retrying record per failed attempt"
        );
        assert!(statuses
            .iter()
            .filter(|s| s.event_id == id && s.server_side == ServerSideStatus::Retrying)
            .all(|s| s.next_attempt_at.is_some()));
    }
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 2);
    for l in &letters {
        assert_eq!(l.stage, "dispatcher.tiktok");
        assert_eq!(l.reason, "delivery_failed");
        assert!(l.detail.contains("50000"), "{}", l.detail);
        // By reference (replay reads it from there): no bytes of the
        // dispatch record, its key and place only.
        assert_eq!(l.original_value, None, "{l:?}");
        let source = l.source_topic.as_deref().unwrap_or_default();
        assert!(
            source.starts_with(&rig.topics.dispatch(Platform::Tiktok)),
            "{source}"
        );
        assert!(l.source_partition.is_some() && l.source_offset.is_some_and(|o| o >= 0));
        assert!(l.original_key.is_some());
    }
    let dispatched = rig
        .broker
        .read_to_end(&rig.topics.dispatch(Platform::Tiktok))
        .await
        .unwrap();
    assert!(
        dispatched.iter().all(|r| r
            .payload
            .as_deref()
            .is_some_and(|p| p.windows(13).any(|w| w == b"198.51.100.20"))),
        "the originals hold the values looked for below"
    );
    for r in rig.broker.read_to_end(&rig.topics.rejected).await.unwrap() {
        let bytes = r.payload.unwrap_or_default();
        for secret in [
            &b"198.51.100.20"[..],
            b"shop-backend/2.3",
            b"Cj0KCQiA-doomed",
            b"test-ttclid",
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "a dead letter copied {:?}",
                String::from_utf8_lossy(secret)
            );
        }
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsendable_and_undecodable_records_do_not_stop_their_neighbours() {
    let rig = Rig::start(1).await;
    let now = now_ms();
    let mut other_tenant = conversion("other-tenant", now);
    other_tenant.tenant = "unknown-shop".into();
    let mut no_action = conversion("no-action", now);
    no_action.event_name = "AddToCart".into();
    rig.send(Platform::GoogleAds, &[other_tenant, no_action])
        .await;
    rig.broker
        .produce(
            &rig.topics.dispatch(Platform::GoogleAds),
            b"shop/garbage",
            b"not avro at all",
        )
        .await
        .unwrap();
    rig.send(Platform::GoogleAds, &[conversion("fine", now)])
        .await;
    let d = InProcess::start(rig.config(Platform::GoogleAds)).await;
    let statuses = rig
        .statuses_until(WAIT, |s| finals(s, Platform::GoogleAds).len() == 3)
        .await;
    let finals = finals(&statuses, Platform::GoogleAds);
    for id in ["other-tenant", "no-action"] {
        assert_eq!(finals[id][0].server_side, ServerSideStatus::NotEligible);
        assert_eq!(
            finals[id][0].reason.as_deref(),
            Some("platform_not_configured")
        );
    }
    assert_eq!(finals["fine"][0].server_side, ServerSideStatus::Delivered);
    let letters = rig.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].stage, "dispatcher.google_ads");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_access_tokens_are_refreshed_before_they_expire() {
    let mut sandbox = sandbox_config();
    sandbox.google_ads.access_token_lifetime_secs = 2;
    let rig = Rig::with_sandbox(1, sandbox).await;
    let d = InProcess::start(rig.config(Platform::GoogleAds)).await;
    for wave in 0..3 {
        rig.send(
            Platform::GoogleAds,
            &[conversion(&format!("wave-{wave}"), now_ms())],
        )
        .await;
        rig.statuses_until(WAIT, |s| finals(s, Platform::GoogleAds).len() == wave + 1)
            .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let statuses = rig.statuses().await;
    let finals = finals(&statuses, Platform::GoogleAds);
    assert_eq!(finals.len(), 3);
    assert!(finals
        .values()
        .all(|r| r[0].server_side == ServerSideStatus::Delivered));
    assert_eq!(
        rig.sandbox.requests(Platform::GoogleAds, "unauthenticated"),
        0,
        "no request ever carried an expired token"
    );
    let metrics = reqwest::get(format!("{}/metrics", rig.sandbox.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let issued: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("postback_sandbox_oauth_token_requests_total") && l.contains("issued")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(issued >= 3.0, "a fresh token per wave, got {issued}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_google_token_is_refreshed_and_the_upload_sent_again() {
    let rig = Rig::start(1).await;
    let d = InProcess::start(rig.config(Platform::GoogleAds)).await;
    rig.send(
        Platform::GoogleAds,
        &[conversion("before-revoke", now_ms())],
    )
    .await;
    rig.statuses_until(WAIT, |s| finals(s, Platform::GoogleAds).len() == 1)
        .await;
    reqwest::Client::new()
        .post(format!("{}/admin/oauth/expire", rig.sandbox.base))
        .send()
        .await
        .unwrap();
    rig.send(Platform::GoogleAds, &[conversion("after-revoke", now_ms())])
        .await;
    let statuses = rig
        .statuses_until(WAIT, |s| finals(s, Platform::GoogleAds).len() == 2)
        .await;
    let finals = finals(&statuses, Platform::GoogleAds);
    assert!(finals
        .values()
        .all(|r| r.len() == 1 && r[0].server_side == ServerSideStatus::Delivered));
    assert!(
        statuses
            .iter()
            .all(|s| s.server_side != ServerSideStatus::Retrying),
        "a refused token is not a failed attempt"
    );
    assert_eq!(
        rig.sandbox.requests(Platform::GoogleAds, "unauthenticated"),
        1
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_token_may_not_use_fails_for_replay_and_rejects_nothing() {
    let mut sandbox = sandbox_config();
    sandbox
        .meta
        .pixels
        .push(postback_sandbox::config::MetaPixel {
            pixel_id: "999".into(),
            access_tokens: vec!["other-token".into()],
        });
    let rig = Rig::with_sandbox(1, sandbox).await;
    let now = now_ms();
    rig.send(
        Platform::Meta,
        &[conversion("acct-1", now), conversion("acct-2", now)],
    )
    .await;
    let mut config = rig.config(Platform::Meta);
    // Our token is valid, but not for this pixel: Meta's 100/33.
    if let Some(a) = config.stage.meta.accounts.get_mut(TENANT) {
        a.pixel_id = "999".into();
    }
    config.stage.dispatch.max_attempts = 2;
    let d = InProcess::start(config).await;
    let statuses = rig
        .statuses_until(WAIT, |s| finals(s, Platform::Meta).len() == 2)
        .await;
    let finals = finals(&statuses, Platform::Meta);
    for id in ["acct-1", "acct-2"] {
        assert_eq!(finals[id][0].server_side, ServerSideStatus::Failed, "{id}");
        assert!(finals[id][0]
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("100/33")));
    }
    assert_eq!(rig.dead_letters().await.len(), 2, "both kept for replay");
    assert_eq!(
        d.metric("postback_dispatcher_isolation_requests_total", &[])
            .await,
        0.0,
        "an account problem is not bisected"
    );
    d.stop().await;
}

/// A redirect is never followed (the token headers and the events stay with
/// the platform's host) and an answer too large to be a platform's is not
/// read to its end: each is a failed attempt, retried, and the events are
/// delivered once the platform answers as itself again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed_and_an_oversized_answer_never_read_whole() {
    let rig = Rig::start(2).await;
    let now = now_ms();
    let events: Vec<_> = ids("hostile", 10)
        .iter()
        .map(|id| conversion(id, now - 60_000))
        .collect();
    rig.sandbox
        .set_hostile(Platform::GoogleAds, HostileAnswer::Redirect);
    rig.sandbox
        .set_hostile(Platform::Meta, HostileAnswer::Oversized);
    let mut running = Vec::new();
    for p in [Platform::Meta, Platform::GoogleAds] {
        let mut config = rig.config(p);
        config.stage.dispatch.max_attempts = 1000;
        running.push(InProcess::start(config).await);
        rig.send(p, &events).await;
    }
    let retried_for = |s: &[postback_core::model::DeliveryStatus], platform: &str, reason: &str| {
        s.iter().any(|s| {
            s.platform == platform
                && s.server_side == ServerSideStatus::Retrying
                && s.reason.as_deref().is_some_and(|r| r.contains(reason))
        })
    };
    let during = rig
        .statuses_until(WAIT, |s| {
            retried_for(s, "google_ads", "http_307") && retried_for(s, "meta", "answer_too_large")
        })
        .await;
    assert!(retried_for(&during, "google_ads", "http_307"), "{during:?}");
    assert!(
        retried_for(&during, "meta", "answer_too_large"),
        "{during:?}"
    );
    assert_eq!(
        rig.sandbox.redirected().requests,
        0,
        "a redirect was followed"
    );
    rig.sandbox.clear_faults();
    let after = rig
        .statuses_until(WAIT, |s| {
            finals(s, Platform::Meta).len() == 10 && finals(s, Platform::GoogleAds).len() == 10
        })
        .await;
    for p in [Platform::Meta, Platform::GoogleAds] {
        let f = finals(&after, p);
        assert_eq!(f.len(), 10, "{p:?}");
        assert!(f
            .values()
            .all(|r| r.len() == 1 && r[0].server_side == ServerSideStatus::Delivered));
    }
    assert_eq!(rig.sandbox.redirected(), Default::default());
    for r in running {
        r.stop().await;
    }
}
