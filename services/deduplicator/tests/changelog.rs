//! The changelog on a real broker: created compacted with the dedup
//! window's retention, compacted for real by the broker's log cleaner, and
//! a new instance restored from the compacted log still knows every
//! conversion it must not send again. A store older than what the
//! changelog keeps, and a changelog record nobody can read, end in dead
//! letters, never in a crash loop or a second upload.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use postback_core::model::{ServerSideStatus, Source};
use postback_deduplicator::config::DedupConfig;
use support::{report, InProcess, Pipeline};

const WAIT: Duration = Duration::from_secs(30);
const CONVERSIONS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changelog_is_compacted_on_the_broker_and_a_restore_from_it_keeps_duplicates_out(
) -> anyhow::Result<()> {
    let p = Pipeline::start(1).await?;
    let dedup = DedupConfig {
        window_secs: 3600,
        merge_window_ms: 300,
        browser_wait_ms: 300,
    };
    let first_state = tempfile::tempdir()?;
    let mut config = p.config(first_state.path(), dedup.clone());
    // Small segments and an eager cleaner, so compaction happens within
    // the test rather than after a 7-day segment roll.
    config.stage.state.changelog_topic_configs = BTreeMap::from([
        ("segment.ms".to_string(), "300".to_string()),
        ("min.cleanable.dirty.ratio".to_string(), "0.01".to_string()),
        ("min.compaction.lag.ms".to_string(), "0".to_string()),
    ]);
    let first = InProcess::start(config.clone()).await?;
    p.send(
        &(0..CONVERSIONS)
            .map(|i| report(&format!("c-{i}"), "Purchase", Source::Server))
            .collect::<Vec<_>>(),
    )
    .await?;
    assert_eq!(
        p.dispatched("meta", CONVERSIONS, WAIT, Duration::ZERO)
            .await?
            .len(),
        CONVERSIONS
    );

    let applied = p.broker.topic_configs(&p.changelog).await?;
    assert_eq!(
        applied.get("cleanup.policy").map(String::as_str),
        Some("compact,delete")
    );
    assert_eq!(
        applied.get("retention.ms").map(String::as_str),
        Some(&*(3600 * 1000 + 3_600_000).to_string()),
        "kept an hour past the dedup window"
    );
    assert_eq!(applied.get("segment.ms").map(String::as_str), Some("300"));

    // Each conversion changed state twice (held, then emitted): two
    // records per key until the cleaner keeps only the last one. The
    // active segment is never cleaned, so keep a little traffic going to
    // roll it.
    let metrics = first.metrics().await?;
    let written: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("postback_deduplicator_produced_records_total")
                && l.contains(&format!("topic=\"{}\"", p.changelog))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let written = written as usize;
    assert!(
        written >= 2 * CONVERSIONS,
        "{written} changelog records written"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut filler = 0;
    let remaining = loop {
        let records = p.broker.read_to_end(&p.changelog).await?;
        let mut per_key: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for r in &records {
            *per_key
                .entry(r.key.clone().unwrap_or_default())
                .or_default() += 1;
        }
        let first_wave_compacted = per_key
            .iter()
            .filter(|(k, _)| String::from_utf8_lossy(k).contains("c-"))
            .all(|(_, n)| *n == 1);
        if first_wave_compacted && per_key.len() >= CONVERSIONS {
            break records.len();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log cleaner did not compact the changelog ({} records, {} keys)",
            records.len(),
            per_key.len()
        );
        p.send(&[report(&format!("filler-{filler}"), "Lead", Source::Server)])
            .await?;
        filler += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    eprintln!("changelog: {written} records written for {CONVERSIONS} conversions, {remaining} after compaction (with {filler} filler conversions)");
    first.stop().await?;

    // A new instance with an empty store restores from the compacted log:
    // the browser's late reports of the same conversions are duplicates,
    // never a second upload.
    let second_state = tempfile::tempdir()?;
    let mut second_config = config.clone();
    second_config.stage.state.dir = second_state.path().to_path_buf();
    let second = InProcess::start(second_config).await?;
    p.send(
        &(0..CONVERSIONS)
            .map(|i| report(&format!("c-{i}"), "Purchase", Source::Browser))
            .collect::<Vec<_>>(),
    )
    .await?;
    let before = CONVERSIONS * 3 + filler * 3;
    let statuses = p.statuses(before + CONVERSIONS * 3, WAIT).await?;
    let duplicates = statuses
        .iter()
        .filter(|s| s.server_side == ServerSideStatus::Duplicate && s.event_id.starts_with("c-"))
        .count();
    assert_eq!(
        duplicates,
        CONVERSIONS * 3,
        "one duplicate status per platform"
    );
    let sent = p
        .dispatched("meta", CONVERSIONS + filler, WAIT, Duration::from_secs(3))
        .await?;
    assert_eq!(sent.len(), CONVERSIONS + filler, "nothing sent twice");
    assert!(
        second
            .metric("postback_deduplicator_restored_records_total")
            .await?
            > 0.0
    );
    second.stop().await
}

async fn wait_for_held(instance: &InProcess, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while instance
        .metric("postback_deduplicator_held_conversions")
        .await?
        < n as f64
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "not all held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_store_and_an_unreadable_changelog_record_end_in_dead_letters_not_uploads(
) -> anyhow::Result<()> {
    const HELD: usize = 5;
    let p = Pipeline::start(1).await?;
    let dedup = DedupConfig {
        window_secs: 3600,
        merge_window_ms: 10_000,
        browser_wait_ms: 10_000,
    };
    // An instance holds conversions inside their merge window and stops:
    // its store keeps them, with the changelog position it reflects.
    let stale_dir = tempfile::tempdir()?;
    let first = InProcess::start(p.config(stale_dir.path(), dedup.clone())).await?;
    p.send(
        &(0..HELD)
            .map(|i| report(&format!("held-{i}"), "Purchase", Source::Server))
            .collect::<Vec<_>>(),
    )
    .await?;
    wait_for_held(&first, HELD).await?;
    first.stop().await?;

    // Another owner restores them from the changelog and emits them.
    let other_dir = tempfile::tempdir()?;
    let other = InProcess::start(p.config(other_dir.path(), dedup.clone())).await?;
    let sent = p.dispatched("meta", HELD, WAIT, Duration::ZERO).await?;
    assert_eq!(sent.len(), HELD);
    other.stop().await?;

    // Retention then removes what the first store missed.
    let low = p.broker.delete_all_records(&p.changelog, 0).await?;
    assert!(low > 0, "the changelog's low watermark moved to {low}");

    // The first store comes back older than the changelog's start: it
    // still holds the conversions, which the other owner already sent.
    let back = InProcess::start(p.config(stale_dir.path(), dedup.clone())).await?;
    let letters = p.dead_letters(HELD, WAIT).await?;
    assert_eq!(letters.len(), HELD, "one dead letter per stale conversion");
    for l in &letters {
        assert_eq!(l.stage, "deduplicator");
        assert_eq!(l.reason, "stale_state", "{l:?}");
        // By reference: a state is on no topic offset, and the letter
        // copies none of the held record's bytes (not replayable anyway).
        assert_eq!(l.original_value, None, "{l:?}");
        assert_eq!(l.source_topic.as_deref(), Some(p.changelog.as_str()));
        assert_eq!(l.source_partition, Some(0));
        assert_eq!(l.source_offset, Some(-1));
        assert!(l.original_key.is_some());
        assert!(l.detail.contains("original not copied"), "{}", l.detail);
    }
    let sent = p
        .dispatched("meta", HELD, WAIT, Duration::from_secs(12))
        .await?;
    assert_eq!(sent.len(), HELD, "the stale store sent nothing again");
    assert!(
        back.metric("postback_deduplicator_held_conversions")
            .await?
            < 1.0
    );
    back.stop().await?;

    // A changelog record nobody can read: a new instance restoring the
    // partition turns it into a dead letter and goes on.
    p.broker
        .produce(&p.changelog, b"t1/Purchase/unreadable", b"not a state")
        .await?;
    let fresh_dir = tempfile::tempdir()?;
    let fresh = InProcess::start(p.config(fresh_dir.path(), dedup)).await?;
    let letters = p.dead_letters(HELD + 1, WAIT).await?;
    assert_eq!(letters.len(), HELD + 1);
    let unreadable = &letters[HELD];
    assert_eq!(unreadable.reason, "undecodable_state", "{unreadable:?}");
    // It points at the changelog record, and copies none of it.
    assert_eq!(unreadable.original_value, None);
    assert_eq!(
        unreadable.original_key.as_deref(),
        Some(&b"t1/Purchase/unreadable"[..])
    );
    assert_eq!(
        unreadable.source_topic.as_deref(),
        Some(p.changelog.as_str())
    );
    assert_eq!(unreadable.source_partition, Some(0));
    // A state record: replay skips it (offset -1); its place is in the detail.
    assert_eq!(unreadable.source_offset, Some(-1));
    assert!(
        unreadable.detail.contains("changelog record at offset"),
        "{unreadable:?}"
    );
    p.send(&[report("after", "Purchase", Source::Server)])
        .await?;
    let sent = p.dispatched("meta", HELD + 1, WAIT, Duration::ZERO).await?;
    assert!(
        sent.iter().any(|c| c.event_id == "after"),
        "the partition goes on after the unreadable record"
    );
    fresh.stop().await?;
    Ok(())
}
