//! The deduplicator through a real broker: merging, duplicates, event
//! names, reloads, expiry.

mod support;

use std::time::Duration;

use postback_core::model::{FrontEndStatus, ServerSideStatus, Source};
use postback_deduplicator::config::DedupConfig;
use support::{counts, report, InProcess, Pipeline, PLATFORMS};

const WAIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_and_server_reports_merge_in_either_order() -> anyhow::Result<()> {
    let p = Pipeline::start(2).await?;
    let state = tempfile::tempdir()?;
    let dedup = InProcess::start(p.config(
        state.path(),
        DedupConfig {
            window_secs: 3600,
            merge_window_ms: 2_000,
            browser_wait_ms: 2_000,
        },
    ))
    .await?;
    p.send(&[
        report("bs", "Purchase", Source::Browser),
        report("sb", "Purchase", Source::Server),
    ])
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.send(&[
        report("bs", "Purchase", Source::Server),
        report("sb", "Purchase", Source::Browser),
    ])
    .await?;

    for platform in PLATFORMS {
        let sent = p.dispatched(platform, 2, WAIT, SETTLE).await?;
        assert_eq!(
            counts(&sent).values().copied().collect::<Vec<_>>(),
            [1, 1],
            "{platform}"
        );
        for m in &sent {
            let ids = &m.identifiers;
            assert_eq!(ids.len(), 1, "only {platform}'s hashes travel");
            assert!(
                ids[0].email.is_some() && ids[0].external_id.is_some(),
                "union of identifiers"
            );
            // The union of click ids, each platform getting its own: the
            // server's gclid for Google, the browser's fbp for Meta
            // (core::minimise); the browser's ip where it is sent.
            let clicks = m.click_ids.as_ref().unwrap();
            let (own_click, ip) = match platform {
                "google_ads" => (clicks.gclid.is_some(), None),
                "meta" => (clicks.fbp.is_some(), Some("203.0.113.7")),
                _ => (clicks.ttclid.is_some(), Some("203.0.113.7")),
            };
            assert!(own_click, "{platform}: union of click ids");
            assert_eq!(
                m.order.as_ref().unwrap().value.as_deref(),
                Some("129.90"),
                "server's order"
            );
            assert_eq!(
                m.client.as_ref().unwrap().ip.as_deref(),
                ip,
                "{platform}: the browser's ip"
            );
        }
    }
    let statuses = p.statuses(6, WAIT).await?;
    assert_eq!(statuses.len(), 6);
    for s in &statuses {
        assert_eq!(s.server_side, ServerSideStatus::Eligible);
        assert_eq!(s.stage, "deduplicator");
        assert_eq!(s.reported_by.as_deref(), Some("browser+server"));
        let expected = match s.platform.as_str() {
            "meta" => FrontEndStatus::Fired,
            "google_ads" => FrontEndStatus::NotFired,
            _ => FrontEndStatus::Unknown,
        };
        assert_eq!(s.front_end, Some(expected), "{}", s.platform);
    }
    assert_eq!(
        dedup.metric("postback_deduplicator_merges_total").await?,
        2.0
    );
    dedup.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_reloads_and_event_names() -> anyhow::Result<()> {
    let p = Pipeline::start(2).await?;
    let state = tempfile::tempdir()?;
    let dedup = InProcess::start(p.config(
        state.path(),
        DedupConfig {
            window_secs: 3600,
            merge_window_ms: 1_500,
            browser_wait_ms: 1_500,
        },
    ))
    .await?;
    // A thank-you page loaded five times: twice within the merge window,
    // three times after the conversion went out. One event id under two
    // event names: two conversions.
    p.send(&[
        report("reload", "Purchase", Source::Browser),
        report("reload", "Purchase", Source::Browser),
        report("twice", "Lead", Source::Server),
        report("twice", "Purchase", Source::Server),
    ])
    .await?;
    let first = p.dispatched("meta", 3, WAIT, Duration::ZERO).await?;
    assert_eq!(first.len(), 3);
    p.send(&[
        report("reload", "Purchase", Source::Browser),
        report("reload", "Purchase", Source::Browser),
        report("reload", "Purchase", Source::Browser),
        report("twice", "Purchase", Source::Server),
    ])
    .await?;
    let sent = p.dispatched("meta", 3, WAIT, SETTLE).await?;
    let c = counts(&sent);
    assert_eq!(c.get("Purchase/reload"), Some(&1), "{c:?}");
    assert_eq!(c.get("Lead/twice"), Some(&1), "{c:?}");
    assert_eq!(c.get("Purchase/twice"), Some(&1), "{c:?}");
    assert_eq!(sent.len(), 3);

    // Each late report is a duplicate status per configured platform, with
    // the source that sent it.
    let statuses = p.statuses(3 * 3 + 4 * 3, WAIT).await?;
    let dups: Vec<_> = statuses
        .iter()
        .filter(|s| s.server_side == ServerSideStatus::Duplicate)
        .collect();
    assert_eq!(dups.len(), 4 * 3);
    assert!(dups
        .iter()
        .filter(|d| d.event_id == "reload")
        .all(|d| d.reported_by.as_deref() == Some("browser")));
    assert_eq!(
        dedup
            .metric("postback_deduplicator_duplicates_total")
            .await?,
        4.0
    );
    dedup.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_the_window() -> anyhow::Result<()> {
    let p = Pipeline::start(1).await?;
    let state = tempfile::tempdir()?;
    let dedup = InProcess::start(p.config(
        state.path(),
        DedupConfig {
            window_secs: 6,
            merge_window_ms: 0,
            browser_wait_ms: 0,
        },
    ))
    .await?;
    p.send(&[report("exp", "Purchase", Source::Server)]).await?;
    assert_eq!(
        p.dispatched("tiktok", 1, WAIT, Duration::ZERO).await?.len(),
        1
    );
    p.send(&[report("exp", "Purchase", Source::Server)]).await?;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    p.send(&[report("exp", "Purchase", Source::Server)]).await?;
    let sent = p.dispatched("tiktok", 2, WAIT, SETTLE).await?;
    assert_eq!(
        sent.len(),
        2,
        "a duplicate inside the window, a new conversion after it"
    );
    dedup.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_report_is_a_dead_letter_and_its_neighbours_go_on() -> anyhow::Result<()> {
    let p = Pipeline::start(1).await?;
    let state = tempfile::tempdir()?;
    let dedup = InProcess::start(p.config(
        state.path(),
        DedupConfig {
            window_secs: 3600,
            merge_window_ms: 0,
            browser_wait_ms: 0,
        },
    ))
    .await?;
    p.send(&[report("before", "Purchase", Source::Server)])
        .await?;
    p.broker
        .produce(&p.topics.enriched, b"acme/poison", b"\x00\x01 not avro")
        .await?;
    p.send(&[report("after", "Purchase", Source::Server)])
        .await?;
    let sent = p.dispatched("meta", 2, WAIT, Duration::ZERO).await?;
    assert_eq!(sent.len(), 2);
    let dead = p.broker.consume(&p.topics.rejected, 1, WAIT).await?;
    assert_eq!(dead.len(), 1);
    dedup.stop().await
}
