//! One tenant's broken or throttled account delays only its own
//! conversions: the other tenants of the platform keep their full rate, the
//! dispatch partitions' committed offsets keep advancing, and a restart
//! sends nothing already delivered.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postback_core::model::{ConversionEnriched, ServerSideStatus};
use postback_core::Platform;
use postback_dispatcher::config::MetaAccount;
use postback_sandbox::config::MetaPixel;
use postback_sandbox::faults::{FaultSpec, InjectedError};
use postback_sandbox::store::Filter;
use support::*;

const OTHER: &str = "other";
const OTHER_PIXEL: &str = "2222222222222222";
const OTHER_TOKEN: &str = "EAAotherTenantToken";

/// A second tenant, with its own Meta pixel.
fn two_tenant_sandbox() -> postback_sandbox::config::SandboxConfig {
    let mut c = sandbox_config();
    c.meta.pixels.push(MetaPixel {
        pixel_id: OTHER_PIXEL.into(),
        access_tokens: vec![OTHER_TOKEN.into()],
    });
    c
}

fn other_conversion(id: &str, now: i64) -> ConversionEnriched {
    let mut c = conversion(id, now - 60_000);
    c.tenant = OTHER.into();
    c
}

fn accepted(rig: &Rig, pixel: &str) -> usize {
    rig.sandbox
        .state
        .store
        .accepted(&Filter {
            platform: Some(Platform::Meta),
            account: Some(pixel.into()),
            limit: Some(1_000_000),
            ..Default::default()
        })
        .total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_account_answers_401_for_minutes_slows_no_other_tenant() {
    const QUOTA: u32 = 20;
    const BATCH: usize = 10;
    const BROKEN_FOR: Duration = Duration::from_secs(120);
    let rig = Rig::with_sandbox(2, two_tenant_sandbox()).await;
    // The other tenant's account is paced at its quota: its full rate is
    // known, and any slowdown shows.
    rig.sandbox.set_fault(
        Platform::Meta,
        OTHER_PIXEL,
        FaultSpec {
            quota_per_sec: Some(QUOTA),
            ..Default::default()
        },
    );
    let mut config = rig.config(Platform::Meta);
    config.stage.dispatch.max_batch_events = BATCH;
    // Retried, never given up, for as long as the token is broken.
    config.stage.dispatch.max_attempts = 1000;
    // The shop's token expired: Meta answers 401, code 190.
    config
        .stage
        .meta
        .accounts
        .get_mut(TENANT)
        .expect("shop account")
        .access_token = "EAAexpiredToken".into();
    config.stage.meta.accounts.insert(
        OTHER.into(),
        MetaAccount {
            pixel_id: OTHER_PIXEL.into(),
            access_token: OTHER_TOKEN.into(),
            test_event_code: None,
            quota_per_sec: Some(f64::from(QUOTA)),
        },
    );
    let ceiling = f64::from(QUOTA) * config.stage.dispatch.quota_headroom * BATCH as f64;
    let now = now_ms();
    let others: Vec<_> = (0..(ceiling as usize * 150))
        .map(|i| other_conversion(&format!("other-{i:06}"), now))
        .collect();
    let shops: Vec<_> = (0..5_000)
        .map(|i| conversion(&format!("shop-{i:05}"), now - 60_000))
        .collect();
    rig.fill(Platform::Meta, &others).await;
    let d = InProcess::start(config).await;

    // The other tenant alone, then with the shop's broken account beside it.
    let rate = |from: usize, since: Instant| {
        (accepted(&rig, OTHER_PIXEL) - from) as f64 / since.elapsed().as_secs_f64()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (alone_from, alone_since) = (accepted(&rig, OTHER_PIXEL), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let alone = rate(alone_from, alone_since);

    rig.fill(Platform::Meta, &shops).await;
    let broken_since = Instant::now();
    let (beside_from, mut paused_ever) = (accepted(&rig, OTHER_PIXEL), 0.0f64);
    while broken_since.elapsed() < BROKEN_FOR {
        tokio::time::sleep(Duration::from_secs(1)).await;
        paused_ever = paused_ever.max(d.metric("postback_dispatcher_consumer_paused", &[]).await);
    }
    let beside = rate(beside_from, broken_since);
    let shop_delivered_while_broken = accepted(&rig, META_PIXEL);
    let probes = rig.sandbox.requests(Platform::Meta, "unauthenticated");

    // The token is renewed: the shop's conversions go out, once each.
    rig.sandbox
        .state
        .credentials
        .add_meta(META_PIXEL.into(), "EAAexpiredToken".into());
    let statuses = rig
        .statuses_until(Duration::from_secs(120), |s| {
            finals(s, Platform::Meta).len() == others.len() + shops.len()
        })
        .await;
    eprintln!(
        "other tenant: {alone:.0} events/s alone, {beside:.0} events/s beside a 401 account for {}s \
         (ceiling {ceiling:.0}); shop: {shop_delivered_while_broken} delivered while broken, \
         {probes} requests refused ({:.2}/s), all {} delivered after the token was renewed",
        BROKEN_FOR.as_secs(),
        probes as f64 / BROKEN_FOR.as_secs_f64(),
        accepted(&rig, META_PIXEL)
    );
    assert!(
        beside >= 0.9 * alone && beside >= 0.85 * ceiling,
        "the other tenant slowed down: {beside:.0}/s beside, {alone:.0}/s alone, ceiling {ceiling:.0}"
    );
    assert_eq!(
        shop_delivered_while_broken, 0,
        "the test needs the shop broken"
    );
    assert!(probes > 0, "the shop's account was tried");
    assert_eq!(
        paused_ever, 0.0,
        "the broken account never paused consumption"
    );
    let finals = finals(&statuses, Platform::Meta);
    assert_eq!(finals.len(), others.len() + shops.len());
    assert!(
        finals
            .values()
            .all(|r| r.len() == 1 && r[0].server_side == ServerSideStatus::Delivered),
        "every conversion delivered, with one final status"
    );
    assert!(statuses.iter().any(|s| s.event_id.starts_with("shop-")
        && s.server_side == ServerSideStatus::Retrying
        && s.reason.as_deref().is_some_and(|r| r.contains("190"))));
    assert_eq!(accepted(&rig, META_PIXEL), shops.len());
    assert_eq!(accepted(&rig, OTHER_PIXEL), others.len());
    assert_eq!(rig.sandbox.duplicates(Platform::Meta), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_account_never_holds_the_commit_and_a_restart_sends_nothing_again() {
    let rig = Rig::with_sandbox(2, two_tenant_sandbox()).await;
    // The shop's account is throttled on every request (Graph code 17).
    rig.sandbox.set_fault(
        Platform::Meta,
        META_PIXEL,
        FaultSpec {
            error_rate: 1.0,
            error: InjectedError::Throttle,
            ..Default::default()
        },
    );
    let mut config = rig.config(Platform::Meta);
    config.stage.meta.accounts.insert(
        OTHER.into(),
        MetaAccount {
            pixel_id: OTHER_PIXEL.into(),
            access_token: OTHER_TOKEN.into(),
            test_event_code: None,
            quota_per_sec: None,
        },
    );
    let group = config.consumer.group_id.clone().expect("test group");
    let topic = rig.topics.dispatch(Platform::Meta);
    let wave = |n: usize, from: usize| -> Vec<ConversionEnriched> {
        let now = now_ms();
        (from..from + n)
            .flat_map(|i| {
                [
                    conversion(&format!("shop-{i:04}"), now - 60_000),
                    other_conversion(&format!("other-{i:04}"), now),
                ]
            })
            .collect()
    };
    let first = Process::start(&config);
    let mut marks = Vec::new();
    for round in 0..3 {
        rig.fill(Platform::Meta, &wave(150, round * 150)).await;
        let written = rig.broker.read_to_end(&topic).await.expect("read").len() as i64;
        // Every record of the dispatch topic gets an outcome it commits
        // with (the shop's: its retry record), so the committed offsets
        // reach the end of the topic while the shop is still throttled.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let committed: i64 = rig
                .broker
                .committed(&group, &topic)
                .await
                .expect("committed offsets")
                .values()
                .map(|o| (*o).max(0))
                .sum();
            if committed >= written {
                marks.push(committed);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: committed {committed} of {written} while the shop is throttled"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let statuses = rig.statuses().await;
    let delivered_before: BTreeMap<String, usize> = finals(&statuses, Platform::Meta)
        .into_iter()
        .map(|(id, r)| (id, r.len()))
        .collect();
    assert_eq!(
        delivered_before.len(),
        450,
        "the other tenant's, all delivered"
    );
    assert!(delivered_before.keys().all(|id| id.starts_with("other-")));
    assert_eq!(accepted(&rig, META_PIXEL), 0, "the shop is throttled");
    assert!(statuses
        .iter()
        .any(|s| s.event_id.starts_with("shop-") && s.server_side == ServerSideStatus::Retrying));

    // A crash and a restart: nothing delivered is sent again, and once the
    // throttling ends the shop's conversions go out, once each.
    let mut first = first;
    first.kill9();
    let second = Process::start(&config);
    rig.sandbox.clear_faults();
    let statuses = rig
        .statuses_until(Duration::from_secs(120), |s| {
            finals(s, Platform::Meta).len() == 900
        })
        .await;
    eprintln!(
        "committed offsets of the dispatch topic while the shop was throttled: {marks:?}; \
         after the restart: {} delivered, {} sent twice",
        finals(&statuses, Platform::Meta).len(),
        rig.sandbox.duplicates(Platform::Meta)
    );
    assert!(marks.windows(2).all(|w| w[0] < w[1]), "{marks:?}");
    assert_eq!(
        rig.sandbox.duplicates(Platform::Meta),
        0,
        "nothing sent twice"
    );
    assert_eq!(accepted(&rig, OTHER_PIXEL), 450);
    assert_eq!(accepted(&rig, META_PIXEL), 450);
    assert!(finals(&statuses, Platform::Meta)
        .values()
        .all(|r| r.len() == 1 && r[0].server_side == ServerSideStatus::Delivered));
    drop(second);
}
