//! kill -9 a dispatcher mid-batch: after a restart every conversion has
//! exactly one final status record (read committed), the platform counted
//! none twice, and nothing whose final status was committed before the kill
//! was sent again.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use postback_core::model::ServerSideStatus;
use postback_core::Platform;
use postback_sandbox::faults::FaultSpec;
use support::*;

const EVENTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dispatcher_resumes_without_losing_or_double_counting() {
    let rig = Rig::start(2).await;
    // Slow answers, so that requests are in flight when the process dies.
    rig.sandbox.set_fault(
        Platform::Meta,
        "*",
        FaultSpec {
            latency_ms: 500,
            ..Default::default()
        },
    );
    let now = now_ms();
    let events: Vec<_> = (0..EVENTS)
        .map(|i| conversion(&format!("crash-{i:04}"), now - 60_000))
        .collect();
    rig.fill(Platform::Meta, &events).await;
    let mut config = rig.config(Platform::Meta);
    config.stage.dispatch.max_batch_events = 10;
    config.stage.dispatch.max_concurrent_requests = 2;

    let mut first = Process::start(&config);
    let partial = rig
        .statuses_until(Duration::from_secs(60), |s| {
            finals(s, Platform::Meta).len() >= EVENTS / 4
        })
        .await;
    first.kill9();
    let killed_at = now_ms();
    let before_kill = finals(&partial, Platform::Meta).len();
    assert!(before_kill < EVENTS, "killed before the end");

    let second = Process::start(&config);
    let statuses = rig
        .statuses_until(Duration::from_secs(120), |s| {
            finals(s, Platform::Meta).len() == EVENTS
        })
        .await;
    let finals = finals(&statuses, Platform::Meta);
    assert_eq!(finals.len(), EVENTS, "every conversion has a final outcome");
    for (id, records) in &finals {
        assert_eq!(records.len(), 1, "{id}: exactly one final status record");
        assert_eq!(records[0].server_side, ServerSideStatus::Delivered, "{id}");
    }
    // Only what the killed instance had not committed (requests in flight,
    // outcomes in its open transaction) may be sent again.
    let committed = rig.finals_committed_before(Platform::Meta, killed_at).await;
    let resent = rig.sandbox.resent_ids(Platform::Meta);
    for id in &resent {
        assert!(
            !committed.contains(id),
            "{id} was sent again though its final status was committed before the kill"
        );
    }
    assert!(
        resent.len() <= EVENTS - committed.len(),
        "{} resends, more than the {} conversions not committed at the kill",
        resent.len(),
        EVENTS - committed.len()
    );
    let accepted = rig.sandbox.accepted(Platform::Meta);
    let distinct: BTreeSet<_> = accepted.iter().filter_map(|e| e.event_id.clone()).collect();
    assert_eq!(
        accepted.len(),
        EVENTS,
        "the platform counted each conversion once"
    );
    assert_eq!(distinct.len(), EVENTS);
    // Neither credentials nor personal data in what the processes logged.
    for log in [&first.log, &second.log] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(text.contains("partitions assigned"), "the log was captured");
        for secret in [
            META_TOKEN,
            "198.51.100.20",
            "5e5e5e5e",
            "5050505050",
            "IwAR-test",
        ] {
            assert!(!text.contains(secret), "{} logs {secret}", log.display());
        }
    }
    eprintln!(
        "killed with {} final outcomes committed ({before_kill} seen before the kill); resends absorbed by the platform's dedup: {} (requests in flight at most {})",
        committed.len(),
        resent.len(),
        config.stage.dispatch.max_batch_events * config.stage.dispatch.max_concurrent_requests
    );
}
