//! State that survives a kill -9 and follows partitions between instances.

mod support;

use std::time::{Duration, Instant};

use postback_core::model::{ConversionEnriched, Source};
use postback_deduplicator::config::DedupConfig;
use support::{counts, report, InProcess, Pipeline, Process};

const WAIT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(4);

fn reports(ids: std::ops::Range<usize>, source: Source) -> Vec<ConversionEnriched> {
    ids.map(|i| report(&format!("c-{i}"), "Purchase", source))
        .collect()
}

fn assert_each_once(sent: &[ConversionEnriched], n: usize, platform: &str) {
    let c = counts(sent);
    let twice: Vec<_> = c.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{platform}: emitted more than once: {twice:?}"
    );
    let missing: Vec<String> = (0..n)
        .map(|i| format!("Purchase/c-{i}"))
        .filter(|k| !c.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "{platform}: never emitted: {missing:?}");
    assert_eq!(c.len(), n, "{platform}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_held_conversions_loses_nothing_and_emits_nothing_twice() -> anyhow::Result<()>
{
    let p = Pipeline::start(3).await?;
    let dir = tempfile::tempdir()?;
    let config = p.config(
        &dir.path().join("state"),
        DedupConfig {
            window_secs: 3600,
            merge_window_ms: 3_000,
            browser_wait_ms: 3_000,
        },
    );
    let mut first = Process::start(&config, dir.path(), "first")?;

    // Emitted before the crash: c-0..c-99 (half of them merged).
    p.send(&reports(0..100, Source::Browser)).await?;
    p.send(&reports(0..50, Source::Server)).await?;
    let before = p.dispatched("meta", 100, WAIT, Duration::ZERO).await?;
    assert_eq!(
        before.len(),
        100,
        "log: {}",
        std::fs::read_to_string(&first.log)?
    );
    // Held at the crash: c-100..c-149, inside their merge window (kill as
    // soon as the deduplicator holds some, whatever the machine's load).
    p.send(&reports(100..150, Source::Browser)).await?;
    let started = Instant::now();
    while first
        .metric("postback_deduplicator_held_conversions")
        .await
        .unwrap_or(0.0)
        == 0.0
    {
        anyhow::ensure!(started.elapsed() < WAIT, "nothing held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_9();

    // While it is down: the other side of the held ones, new conversions,
    // and late duplicates of emitted ones.
    p.send(&reports(100..150, Source::Server)).await?;
    p.send(&reports(150..200, Source::Server)).await?;
    p.send(&reports(0..20, Source::Server)).await?;
    let second = Process::start(&config, dir.path(), "second")?;

    for platform in ["meta", "tiktok"] {
        let sent = p.dispatched(platform, 200, WAIT, SETTLE).await?;
        if sent.len() != 200 {
            eprintln!("{}", std::fs::read_to_string(&second.log)?);
        }
        assert_each_once(&sent, 200, platform);
    }
    // The restart found the held conversions in its state, not by luck.
    let log = std::fs::read_to_string(&second.log)?;
    let held: usize = log
        .lines()
        .filter(|l| l.contains("partition state restored"))
        .filter_map(|l| {
            let rest = l.split("\"held\":").nth(1)?;
            rest[..rest.find(|c: char| !c.is_ascii_digit())?]
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(held > 0, "no held conversion restored:\n{log}");
    eprintln!("restart restored {held} held conversions");
    Ok(())
}

async fn wait_for(
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !check().await? {
        anyhow::ensure!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_with_its_state() -> anyhow::Result<()> {
    let p = Pipeline::start(4).await?;
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let dedup = DedupConfig {
        window_secs: 3600,
        merge_window_ms: 1_500,
        browser_wait_ms: 1_500,
    };
    let a = InProcess::start(p.config(a_dir.path(), dedup.clone())).await?;
    let b = InProcess::start(p.config(b_dir.path(), dedup)).await?;
    let assigned = "postback_deduplicator_consumer_assigned_partitions";
    wait_for(
        async || Ok(a.metric(assigned).await? > 0.0 && b.metric(assigned).await? > 0.0),
        "both instances to own partitions",
    )
    .await?;

    p.send(&reports(0..100, Source::Server)).await?;
    assert_eq!(
        p.dispatched("meta", 100, WAIT, Duration::ZERO).await?.len(),
        100
    );
    let b_emitted = b.metric("postback_deduplicator_emitted_total").await?;
    assert!(b_emitted > 0.0, "b owned some of the traffic");
    // Held by both when b leaves.
    p.send(&reports(100..140, Source::Browser)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.stop().await?;

    // Late reports of keys b decided on, the other side of the held ones,
    // and new conversions: all land on a now.
    p.send(&reports(0..100, Source::Browser)).await?;
    p.send(&reports(100..140, Source::Server)).await?;
    p.send(&reports(140..160, Source::Server)).await?;

    let sent = p.dispatched("meta", 160, WAIT, SETTLE).await?;
    assert_each_once(&sent, 160, "meta");
    assert!(
        a.metric("postback_deduplicator_restored_records_total")
            .await?
            > 0.0
    );
    assert!(a.metric("postback_deduplicator_duplicates_total").await? >= 100.0);
    a.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_deduplicator_is_fenced_and_writes_nothing_after_the_takeover(
) -> anyhow::Result<()> {
    const N: usize = 60;
    let p = Pipeline::start(2).await?;
    let dir = tempfile::tempdir()?;
    let mut config = p.config(
        &dir.path().join("zombie"),
        DedupConfig {
            window_secs: 3600,
            merge_window_ms: 15_000,
            browser_wait_ms: 15_000,
        },
    );
    // A short session, so the takeover comes soon after the freeze.
    config
        .kafka
        .consumer_properties
        .insert("session.timeout.ms".into(), "6000".into());
    let zombie = Process::start(&config, dir.path(), "zombie")?;
    // Frozen while it holds conversions inside their merge window.
    p.send_bulk(&reports(0..N, Source::Browser)).await?;
    let started = Instant::now();
    while zombie
        .metric("postback_deduplicator_held_conversions")
        .await
        .unwrap_or(0.0)
        < N as f64
    {
        anyhow::ensure!(
            started.elapsed() < WAIT,
            "not all held: {}",
            std::fs::read_to_string(&zombie.log)?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    zombie.freeze();

    // Another instance takes the partitions over once the session expires,
    // restores the held conversions from the changelog and emits them.
    let mut takeover_config = config.clone();
    takeover_config.stage.state.dir = dir.path().join("takeover");
    let takeover = Process::start(&takeover_config, dir.path(), "takeover")?;
    for platform in ["meta", "tiktok"] {
        let sent = p.dispatched(platform, N, WAIT, Duration::ZERO).await?;
        assert_each_once(&sent, N, platform);
    }

    // The zombie wakes with the same conversions held and their windows
    // closed: it emits them, and the group refuses its transaction.
    zombie.thaw();
    let woke = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&zombie.log)?;
        if log.contains("refused this instance") || log.contains("\"lost\":true") {
            break log;
        }
        anyhow::ensure!(
            woke.elapsed() < WAIT,
            "the zombie never noticed it was fenced:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(SETTLE).await;
    for platform in ["meta", "tiktok"] {
        let sent = p.dispatched(platform, N, WAIT, SETTLE).await?;
        assert_each_once(&sent, N, platform);
    }
    let statuses = p.statuses(N * 3 + 1, SETTLE).await?;
    assert_eq!(
        statuses.len(),
        N * 3,
        "one status per conversion and platform"
    );
    eprintln!(
        "zombie fenced: {}; takeover emitted each of {N} conversions once; the zombie's log: {} lines",
        log.contains("refused this instance"),
        log.lines().count()
    );
    drop(takeover);
    Ok(())
}
