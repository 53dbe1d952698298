//! `postback-ctl replay` against the real broker: dead letters go back to
//! the input topic of the stage that rejected them, each exactly once, and
//! what cannot be replayed is listed with the reason.
//!
//! The binary is run as the operator runs it (`--config` with the broker's
//! `[kafka]` section); the dispatcher and the platform sandbox of the
//! outage scenario run in this process, on topics of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use postback_core::dead_letter::{DeadLetters, MAX_ORIGINAL_BYTES};
use postback_core::kafka::InboundRecord;
use postback_core::model::{
    now_millis, ClickIds, ConversionEnriched, DeadLetter, DeliveryStatus, Page,
    PlatformIdentifiers, ServerSideStatus, Source,
};
use postback_core::{Codec, Platform, SchemaKind};
use postback_dispatcher::config::{DispatchConfig, DispatcherConfig, TiktokAccount};
use postback_sandbox::config::{SandboxConfig, TiktokPixel};
use postback_sandbox::faults::{FaultSpec, InjectedError};
use postback_sandbox::store::Filter;
use postback_sandbox::{AppState, Sandbox};
use postback_testkit::fixtures::enriched_report;
use postback_testkit::{unique, Broker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for the pipeline to get somewhere (a deadline for
/// a failure message, never a measured duration).
const WAIT: Duration = Duration::from_secs(120);
const TENANT: &str = "shop";
const TIKTOK_PIXEL: &str = "CTESTPIXEL01";
const TIKTOK_TOKEN: &str = "tiktok-test-token";
const REPLAYED_FROM: &str = "postback-replayed-from";

// ---------------------------------------------------------------- helpers

/// The binary, with a config file holding the broker's `[kafka]` section.
struct Ctl {
    config: PathBuf,
    _dir: tempfile::TempDir,
}

/// A finished run: its listing lines and its summary.
struct Run {
    lines: Vec<Value>,
    summary: Value,
    stdout: String,
}

impl Run {
    fn count(&self, key: &str) -> u64 {
        self.summary[key].as_u64().unwrap_or(u64::MAX)
    }

    fn skipped(&self) -> BTreeMap<String, u64> {
        serde_json::from_value(self.summary["skipped"].clone()).expect("skipped")
    }

    /// The source offsets (test letters' ids) listed with `action`.
    fn ids(&self, action: &str) -> BTreeSet<i64> {
        self.lines
            .iter()
            .filter(|l| l["action"] == action)
            .filter_map(|l| l["source"]["offset"].as_i64())
            .collect()
    }
}

impl Ctl {
    fn new(broker: &Broker) -> Ctl {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("ctl.toml");
        std::fs::write(
            &config,
            postback_testkit::kafka_toml(&broker.kafka_config()),
        )
        .expect("write config");
        Ctl { config, _dir: dir }
    }

    fn command<S: AsRef<str>>(&self, args: &[S]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_postback-ctl"));
        for (k, _) in std::env::vars() {
            if k.starts_with("POSTBACK_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("replay")
            .args(args.iter().map(AsRef::as_ref))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn replay<S: AsRef<str>>(&self, args: &[S]) -> Run {
        let output = self.command(args).output().await.expect("run postback-ctl");
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "postback-ctl replay {args:?} failed: {stderr}\n{stdout}"
        );
        let mut lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let summary = lines
            .pop()
            .and_then(|l| l.get("summary").cloned())
            .unwrap_or_else(|| panic!("no summary line: {stdout}"));
        Run {
            lines,
            summary,
            stdout,
        }
    }
}

fn letter(
    stage: &str,
    reason: &str,
    tenant: Option<&str>,
    source_topic: Option<&str>,
    id: i64,
    time: i64,
) -> DeadLetter {
    DeadLetter {
        stage: stage.into(),
        reason: reason.into(),
        detail: format!("detail of letter {id}"),
        errors: vec![],
        tenant: tenant.map(str::to_string),
        source_topic: source_topic.map(str::to_string),
        source_partition: Some(0),
        // The test's id of the letter, shown in the listing.
        source_offset: Some(id),
        original_key: Some(format!("{}/evt-{id}", tenant.unwrap_or("none")).into_bytes()),
        original_value: Some(format!("{{\"email\":\"person-{id}@example.com\"}}").into_bytes()),
        time,
    }
}

async fn put_letters(broker: &Broker, topic: &str, letters: &[DeadLetter]) {
    let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
    for l in letters {
        broker
            .produce(
                topic,
                l.original_key.as_deref().unwrap_or_default(),
                &codec.encode(l).expect("encode"),
            )
            .await
            .expect("produce letter");
    }
}

/// Whether the broker knows `topic` (no waiting for it to appear).
async fn topic_exists(broker: &Broker, topic: &str) -> bool {
    let client: BaseConsumer = broker.client_config().create().expect("client");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = client
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        metadata
            .topics()
            .first()
            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
    })
    .await
    .expect("metadata task")
}

fn header<'a>(r: &'a InboundRecord, name: &str) -> Option<&'a str> {
    r.header(name).and_then(|h| std::str::from_utf8(h).ok())
}

/// An in-process platform sandbox on a free port, stopped when dropped.
struct SandboxGuard {
    base: String,
    state: Arc<AppState>,
    shutdown: CancellationToken,
}

impl SandboxGuard {
    async fn start() -> SandboxGuard {
        let mut config = SandboxConfig::default();
        config.tiktok.pixels = vec![TiktokPixel {
            pixel_code: TIKTOK_PIXEL.into(),
            access_tokens: vec![TIKTOK_TOKEN.into()],
        }];
        let sandbox = Sandbox::new(&config);
        let state = sandbox.state();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = sandbox.serve(listener, token).await;
        });
        SandboxGuard {
            base,
            state,
            shutdown,
        }
    }

    fn filter() -> Filter {
        Filter {
            platform: Some(Platform::Tiktok),
            limit: Some(1_000_000),
            ..Default::default()
        }
    }

    /// Accepted events per event id (resends the platform deduplicated are
    /// not among them: `duplicates` counts those).
    fn accepted_per_event(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.state.store.accepted(&Self::filter()).items {
            *out.entry(e.event_id.unwrap_or_default()).or_default() += 1;
        }
        out
    }

    fn duplicates(&self) -> usize {
        self.state.store.duplicates(&Self::filter()).total
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A dispatcher in this process, cancelled when dropped (a failed test
/// leaves nothing running).
struct DispatcherGuard {
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DispatcherGuard {
    async fn start(config: DispatcherConfig) -> DispatcherGuard {
        postback_core::config::Validate::validate(&config).expect("valid dispatcher config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = postback_dispatcher::run(config, listener, token).await {
                panic!("dispatcher failed: {e}");
            }
        });
        DispatcherGuard {
            shutdown,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for DispatcherGuard {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A purchase of tenant "shop" that TikTok takes.
fn conversion(event_id: &str, event_time_ms: i64) -> ConversionEnriched {
    let mut c = enriched_report(TENANT, event_id, "Purchase", Source::Server, event_time_ms);
    c.page = Some(Page {
        url: Some("https://shop.example/checkout/thank-you".into()),
        referrer: None,
    });
    c.click_ids = Some(ClickIds {
        ttclid: Some("E.C.P.test-ttclid".into()),
        ..Default::default()
    });
    c.identifiers = Platform::ALL
        .into_iter()
        .map(|p| PlatformIdentifiers {
            platform: p.as_str().into(),
            email: Some(vec![0x5e; 32]),
            phone: Some(vec![0x50; 32]),
            ..Default::default()
        })
        .collect();
    c
}

/// Every status so far, read again until `done` holds or WAIT passed.
async fn statuses_until(
    broker: &Broker,
    topic: &str,
    done: impl Fn(&[DeliveryStatus]) -> bool,
) -> Vec<DeliveryStatus> {
    let codec: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all: Vec<DeliveryStatus> = broker
            .read_to_end(topic)
            .await
            .expect("statuses")
            .iter()
            .filter_map(|r| codec.decode(r.payload.as_deref()?).ok())
            .collect();
        if done(&all) || tokio::time::Instant::now() >= deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn is_final(s: ServerSideStatus) -> bool {
    matches!(
        s,
        ServerSideStatus::Delivered
            | ServerSideStatus::Rejected
            | ServerSideStatus::Expired
            | ServerSideStatus::Failed
            | ServerSideStatus::NotEligible
    )
}

/// Each event's final statuses, in the order they were written.
fn finals(statuses: &[DeliveryStatus]) -> BTreeMap<String, Vec<ServerSideStatus>> {
    let mut out: BTreeMap<String, Vec<ServerSideStatus>> = BTreeMap::new();
    for s in statuses.iter().filter(|s| is_final(s.server_side)) {
        out.entry(s.event_id.clone())
            .or_default()
            .push(s.server_side);
    }
    out
}

// ------------------------------------------------------------------ tests

#[test]
fn help_documents_replay_and_a_mistyped_filter_is_refused() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_postback-ctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in [
        "replay",
        "--stage",
        "--reason",
        "--tenant",
        "--since",
        "--until",
        "--dry-run",
    ] {
        assert!(text.contains(word), "--help mentions {word}");
    }
    // Refused before any connection: a typo must not widen a replay.
    let typo = std::process::Command::new(env!("CARGO_BIN_EXE_postback-ctl"))
        .args(["--bootstrap", "127.0.0.1:1", "replay", "--tennant", "shop"])
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("--tennant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversions_failed_in_an_outage_are_replayed_and_delivered_exactly_once() {
    postback_core::telemetry::init(&Default::default());
    let broker = Broker::shared().await.expect("broker");
    let status = unique("status");
    let rejected = unique("rejected");
    let marker = unique("replayed");
    let prefix = format!("{}.", unique("dispatch"));
    let dispatch = format!("{prefix}tiktok");
    broker.create_topic(&status, 1).await.unwrap();
    broker.create_topic(&rejected, 2).await.unwrap();
    broker.create_topic(&dispatch, 2).await.unwrap();

    // The outage: TikTok answers every request with a 500.
    let sandbox = SandboxGuard::start().await;
    sandbox.state.faults.set(
        Platform::Tiktok,
        "*",
        FaultSpec {
            error_rate: 1.0,
            error: InjectedError::Internal,
            ..Default::default()
        },
        sandbox.state.clock.now_ms(),
    );

    let mut config: DispatcherConfig =
        postback_core::config::load_from(None, vec![("POSTBACK_PLATFORM".into(), "tiktok".into())])
            .expect("default dispatcher config");
    config.kafka = broker.kafka_config();
    config.topics.status = status.clone();
    config.topics.rejected = rejected.clone();
    config.topics.dispatch_prefix = prefix.clone();
    config.consumer.group_id = Some(unique("dispatchers-tiktok"));
    config.ops.listen = "127.0.0.1:0".parse().unwrap();
    config.stage.dispatch = DispatchConfig {
        linger_ms: 50,
        backoff_initial_ms: 100,
        backoff_max_ms: 500,
        throttle_pause_ms: 200,
        request_timeout_ms: 5_000,
        // Failed for good after two failed attempts.
        max_attempts: 2,
        ..DispatchConfig::default()
    };
    config.stage.tiktok.base_url = sandbox.base.clone();
    config.stage.tiktok.accounts = BTreeMap::from([(
        TENANT.to_string(),
        TiktokAccount {
            pixel_code: TIKTOK_PIXEL.into(),
            access_token: TIKTOK_TOKEN.into(),
            test_event_code: None,
            quota_per_sec: None,
        },
    )]);
    let dispatcher = DispatcherGuard::start(config).await;

    let now = now_millis();
    let ids: Vec<String> = (0..8).map(|i| format!("outage-{i:02}")).collect();
    let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
    for id in &ids {
        let c = conversion(id, now - 60_000);
        broker
            .produce(&dispatch, &c.key(), &codec.encode(&c).unwrap())
            .await
            .unwrap();
    }

    // Every conversion ends failed, and dead-lettered for replay.
    let during = statuses_until(&broker, &status, |s| finals(s).len() == ids.len()).await;
    let failed = finals(&during);
    assert_eq!(failed.len(), ids.len(), "every conversion has an outcome");
    assert!(
        failed.values().all(|f| f == &[ServerSideStatus::Failed]),
        "{failed:?}"
    );
    let letter_codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
    let letters: Vec<DeadLetter> = broker
        .read_to_end(&rejected)
        .await
        .unwrap()
        .iter()
        .filter_map(|r| letter_codec.decode(r.payload.as_deref()?).ok())
        .collect();
    assert_eq!(letters.len(), ids.len());
    assert!(letters
        .iter()
        .all(|l| l.stage == "dispatcher.tiktok" && l.reason == "delivery_failed"));
    // By reference: no bytes of the dispatch record, only where it is.
    for l in &letters {
        assert_eq!(l.original_value, None, "{l:?}");
        assert!(l.source_partition.is_some() && l.source_offset.is_some_and(|o| o >= 0));
        assert!(l.original_key.is_some());
    }
    for r in broker.read_to_end(&rejected).await.unwrap() {
        let bytes = r.payload.unwrap_or_default();
        for secret in [&b"test-ttclid"[..], b"thank-you"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "a letter copied {secret:?}"
            );
        }
    }
    // The last attempt came off a retry topic: replay sends those to the
    // dispatch topic itself.
    assert!(
        letters
            .iter()
            .any(|l| l.source_topic.as_deref() != Some(dispatch.as_str())),
        "the scenario goes through the retry path"
    );
    assert!(
        sandbox.accepted_per_event().is_empty(),
        "nothing got through"
    );

    // The outage ends; the operator replays.
    sandbox.state.faults.clear_all();
    let ctl = Ctl::new(&broker);
    let args = ["--rejected-topic", &rejected, "--marker-topic", &marker];
    let first = ctl.replay(&args).await;
    println!("first replay: {}", first.summary);
    assert_eq!(first.count("matched"), ids.len() as u64);
    assert_eq!(first.count("replayed"), ids.len() as u64);
    assert_eq!(first.count("already_replayed"), 0);
    assert!(first.skipped().is_empty(), "{}", first.summary);
    for line in first.lines.iter().filter(|l| l["action"] == "replayed") {
        assert_eq!(line["target"], dispatch.as_str(), "{line}");
        assert_eq!(line["stage"], "dispatcher.tiktok");
        assert_eq!(line["tenant"], TENANT);
    }

    // Each conversion is delivered once, after its failure.
    let after = statuses_until(&broker, &status, |s| {
        finals(s).values().all(|f| f.len() == 2)
    })
    .await;
    let outcomes = finals(&after);
    for id in &ids {
        assert_eq!(
            outcomes.get(id).map(Vec::as_slice),
            Some(&[ServerSideStatus::Failed, ServerSideStatus::Delivered][..]),
            "{id}: failed, then delivered once"
        );
    }
    let accepted = sandbox.accepted_per_event();
    assert_eq!(
        accepted.keys().cloned().collect::<Vec<_>>(),
        ids,
        "every conversion arrived"
    );
    assert!(
        accepted.values().all(|n| *n == 1),
        "once each: {accepted:?}"
    );
    assert_eq!(sandbox.duplicates(), 0, "nothing was sent twice");

    // A second run replays nothing.
    let second = ctl.replay(&args).await;
    println!("second replay: {}", second.summary);
    assert_eq!(second.count("matched"), ids.len() as u64);
    assert_eq!(second.count("replayed"), 0);
    assert_eq!(second.count("already_replayed"), ids.len() as u64);
    let replayed: Vec<InboundRecord> = broker
        .read_to_end(&dispatch)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| header(r, REPLAYED_FROM).is_some())
        .collect();
    assert_eq!(
        replayed.len(),
        ids.len(),
        "each original written back once, in all"
    );
    let statuses_now = statuses_until(&broker, &status, |_| true).await;
    assert_eq!(finals(&statuses_now), outcomes, "no new outcome");
    assert!(sandbox.accepted_per_event().values().all(|n| *n == 1));
    assert_eq!(sandbox.duplicates(), 0);
    dispatcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_filters_select_exactly_their_letters() {
    let broker = Broker::shared().await.expect("broker");
    let rejected = unique("rejected");
    let marker = unique("replayed");
    let raw = unique("raw");
    let dispatch = unique("dispatch.meta");
    broker.create_topic(&rejected, 2).await.unwrap();
    broker.create_topic(&raw, 3).await.unwrap();
    broker.create_topic(&dispatch, 3).await.unwrap();
    let hour = 3_600_000;
    let base = 1_750_000_000_000;
    let retry = format!("{dispatch}.retry-10s");
    let letters = vec![
        letter(
            "collector",
            "validation_failed",
            Some("a"),
            Some(&raw),
            1,
            base,
        ),
        letter(
            "enricher",
            "decode_failed",
            Some("a"),
            Some(&raw),
            2,
            base + hour,
        ),
        letter(
            "enricher",
            "unknown_schema",
            Some("b"),
            Some(&raw),
            3,
            base + 2 * hour,
        ),
        letter(
            "dispatcher.meta",
            "delivery_failed",
            Some("b"),
            Some(&retry),
            4,
            base + 3 * hour,
        ),
        letter(
            "dispatcher.meta",
            "delivery_failed",
            Some("a"),
            Some(&dispatch),
            5,
            base + 4 * hour,
        ),
    ];
    put_letters(&broker, &rejected, &letters).await;
    let ctl = Ctl::new(&broker);
    let topics = ["--rejected-topic", &rejected, "--marker-topic", &marker];
    let dry = |extra: &[&str]| {
        let mut args: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
        args.push("--dry-run".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let set = |ids: &[i64]| ids.iter().copied().collect::<BTreeSet<i64>>();

    let all = ctl.replay(&dry(&[])).await;
    println!("dry run: {}", all.summary);
    assert_eq!(all.count("matched"), 5);
    assert_eq!(all.count("would_replay"), 5);
    assert_eq!(all.count("replayed"), 0);
    assert_eq!(all.ids("would_replay"), set(&[1, 2, 3, 4, 5]));
    let to_dispatch: Vec<&Value> = all
        .lines
        .iter()
        .filter(|l| l["source"]["offset"] == 4)
        .collect();
    assert_eq!(
        to_dispatch[0]["target"],
        dispatch.as_str(),
        "a retry topic's letter goes to its dispatch topic"
    );
    for line in &all.lines {
        for field in ["stage", "reason", "tenant", "time", "letter", "source"] {
            assert!(!line[field].is_null(), "{field} listed: {line}");
        }
    }
    assert!(
        !all.stdout.contains("example.com") && !all.stdout.contains("evt-"),
        "the listing never shows a record's bytes or key: {}",
        all.stdout
    );
    assert!(broker.read_to_end(&raw).await.unwrap().is_empty());
    assert!(broker.read_to_end(&dispatch).await.unwrap().is_empty());
    assert!(
        !topic_exists(&broker, &marker).await,
        "a dry run creates nothing"
    );

    let since = chrono::DateTime::from_timestamp_millis(base + hour)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let until = (base + 3 * hour).to_string();
    let cases: Vec<(Vec<&str>, Vec<i64>)> = vec![
        (vec!["--stage", "enricher"], vec![2, 3]),
        (vec!["--stage", "dispatcher"], vec![4, 5]),
        (
            vec!["--stage", "collector", "--stage", "enricher"],
            vec![1, 2, 3],
        ),
        (vec!["--reason", "delivery_failed"], vec![4, 5]),
        (vec!["--tenant", "a"], vec![1, 2, 5]),
        (vec!["--since", &since, "--until", &until], vec![2, 3]),
        (vec!["--since", &until], vec![4, 5]),
        (vec!["--stage", "enricher", "--tenant", "b"], vec![3]),
        (vec!["--reason", "nothing_like_it"], vec![]),
    ];
    for (filter, expected) in &cases {
        let run = ctl.replay(&dry(filter)).await;
        assert_eq!(run.ids("would_replay"), set(expected), "{filter:?}");
        assert_eq!(run.count("matched"), expected.len() as u64, "{filter:?}");
    }

    let limited = ctl.replay(&dry(&["--limit", "2"])).await;
    assert_eq!(limited.count("would_replay"), 2);
    assert_eq!(limited.count("over_limit"), 3);

    // A filtered run replays exactly its letter, as it was.
    let mut args: Vec<&str> = topics.to_vec();
    args.extend(["--stage", "enricher", "--tenant", "a"]);
    let one = ctl.replay(&args).await;
    println!("filtered replay: {}", one.summary);
    assert_eq!(one.count("replayed"), 1);
    assert_eq!(one.ids("replayed"), set(&[2]));
    let on_raw = broker.read_to_end(&raw).await.unwrap();
    assert_eq!(on_raw.len(), 1);
    assert_eq!(on_raw[0].key, letters[1].original_key);
    assert_eq!(on_raw[0].payload, letters[1].original_value);
    assert!(header(&on_raw[0], REPLAYED_FROM).is_some_and(|h| h.starts_with(&rejected)));
    assert!(topic_exists(&broker, &marker).await);
    let configs = broker.topic_configs(&marker).await.unwrap();
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );

    // The rest, then nothing.
    let rest = ctl.replay(&topics).await;
    println!("unfiltered replay: {}", rest.summary);
    assert_eq!(rest.count("matched"), 5);
    assert_eq!(rest.count("replayed"), 4);
    assert_eq!(rest.count("already_replayed"), 1);
    assert_eq!(rest.ids("already_replayed"), set(&[2]));
    assert_eq!(broker.read_to_end(&raw).await.unwrap().len(), 3);
    let on_dispatch = broker.read_to_end(&dispatch).await.unwrap();
    let keys: BTreeSet<Vec<u8>> = on_dispatch.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([b"b/evt-4".to_vec(), b"a/evt-5".to_vec()])
    );
    let dry_after = ctl.replay(&dry(&[])).await;
    assert_eq!(dry_after.count("would_replay"), 0);
    assert_eq!(dry_after.count("already_replayed"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_state_and_source_less_letters_are_skipped_with_the_reason() {
    let broker = Broker::shared().await.expect("broker");
    let rejected = unique("rejected");
    let marker = unique("replayed");
    let raw = unique("raw");
    let changelog = unique("changelog");
    let missing = unique("not-created");
    broker.create_topic(&rejected, 1).await.unwrap();
    broker.create_topic(&raw, 1).await.unwrap();
    let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
    let base = now_millis();

    // Truncated by the dead-letter builder itself: a record larger than a
    // letter may carry.
    let huge = InboundRecord {
        topic: raw.clone(),
        partition: 0,
        offset: 10,
        key: Some(b"shop/huge".to_vec()),
        payload: Some(vec![b'x'; MAX_ORIGINAL_BYTES + 100]),
        ..Default::default()
    };
    // (Only the collector's letters carry bytes.)
    let built = DeadLetters::new("collector", rejected.clone())
        .for_record(&huge, "validation_failed", "too big to read", vec![], None)
        .unwrap();
    broker
        .produce(&rejected, b"shop/huge", &built.payload)
        .await
        .unwrap();
    let truncated: DeadLetter = codec.decode(&built.payload).unwrap();
    assert_eq!(
        truncated.original_value.as_ref().map(Vec::len),
        Some(MAX_ORIGINAL_BYTES)
    );

    // A held conversion of the deduplicator's state (offset -1 on its
    // changelog), as restore.rs makes them.
    let mut state = letter(
        "deduplicator",
        "stale_state",
        Some("shop"),
        Some(&changelog),
        11,
        base,
    );
    state.source_offset = Some(-1);
    state.original_value = None;
    let mut http = letter(
        "collector",
        "validation_failed",
        Some("shop"),
        None,
        12,
        base,
    );
    http.source_partition = None;
    http.source_offset = None;
    let mut empty = letter(
        "dispatcher.meta",
        "empty_record",
        None,
        Some(&raw),
        13,
        base,
    );
    // Neither bytes nor a place to read them (an output the broker
    // refused, by reference).
    empty.original_value = None;
    empty.source_partition = None;
    empty.source_offset = None;
    let nowhere = letter("enricher", "decode_failed", None, Some(&missing), 14, base);
    let good = letter(
        "enricher",
        "decode_failed",
        Some("shop"),
        Some(&raw),
        15,
        base,
    );
    put_letters(
        &broker,
        &rejected,
        &[state, http, empty, nowhere, good.clone()],
    )
    .await;
    broker
        .produce(&rejected, b"junk", b"not a dead letter")
        .await
        .unwrap();

    let ctl = Ctl::new(&broker);
    let args = ["--rejected-topic", &rejected, "--marker-topic", &marker];
    let run = ctl.replay(&args).await;
    println!("replay with unreplayable letters: {}", run.summary);
    assert_eq!(run.count("matched"), 6);
    assert_eq!(run.count("replayed"), 1);
    assert_eq!(run.count("undecodable"), 1);
    let expected: BTreeMap<String, u64> = [
        "truncated",
        "state_record",
        "no_source_topic",
        "no_original",
        "target_missing",
    ]
    .into_iter()
    .map(|r| (r.to_string(), 1))
    .collect();
    assert_eq!(run.skipped(), expected);
    let skip_of = |id: i64| {
        run.lines
            .iter()
            .find(|l| l["source"]["offset"] == id)
            .map(|l| l["skip"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(skip_of(10), "truncated");
    let state_line = run
        .lines
        .iter()
        .find(|l| l["reason"] == "stale_state")
        .expect("listed");
    assert_eq!(state_line["skip"], "state_record");
    let no_original = run
        .lines
        .iter()
        .find(|l| l["reason"] == "empty_record")
        .expect("listed");
    assert_eq!(no_original["skip"], "no_original");
    assert_eq!(skip_of(14), "target_missing");
    let source_less = run
        .lines
        .iter()
        .find(|l| l["skip"] == "no_source_topic")
        .expect("listed");
    assert!(source_less["source"]["topic"].is_null());

    let on_raw = broker.read_to_end(&raw).await.unwrap();
    assert_eq!(on_raw.len(), 1, "only the whole original was written");
    assert_eq!(on_raw[0].payload, good.original_value);
    assert!(!topic_exists(&broker, &missing).await, "nothing created");

    // Skipped letters stay skipped (no marker); the replayed one is marked.
    let again = ctl.replay(&args).await;
    assert_eq!(again.count("replayed"), 0);
    assert_eq!(again.count("already_replayed"), 1);
    assert_eq!(again.skipped(), expected);
    assert_eq!(broker.read_to_end(&raw).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_midway_and_a_stale_transaction_never_write_an_original_twice() {
    let broker = Broker::shared().await.expect("broker");
    let rejected = unique("rejected");
    let marker = unique("replayed");
    let raw = unique("raw");
    broker.create_topic(&rejected, 2).await.unwrap();
    broker.create_topic(&raw, 2).await.unwrap();
    let n = 150;
    let base = now_millis();
    let letters: Vec<DeadLetter> = (0..n)
        .map(|i| {
            letter(
                "enricher",
                "decode_failed",
                Some("shop"),
                Some(&raw),
                i,
                base,
            )
        })
        .collect();
    put_letters(&broker, &rejected, &letters).await;
    let ctl = Ctl::new(&broker);
    let args = [
        "--rejected-topic",
        &rejected,
        "--marker-topic",
        &marker,
        "--batch",
        "1",
    ];

    // kill -9 once the first batch is committed (and its line printed).
    let mut child = ctl
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn postback-ctl");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut before_kill = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("\"action\":\"replayed\"") {
            before_kill += 1;
            break;
        }
    }
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    assert_eq!(before_kill, 1, "the first run got as far as one batch");

    // A run that died with a transaction open: same transactional id, an
    // original and its marker written, never committed.
    let zombie: FutureProducer = broker
        .client_config()
        .set("transactional.id", format!("postback-ctl-replay.{marker}"))
        .create()
        .expect("zombie producer");
    let zombie = tokio::task::spawn_blocking(move || {
        zombie
            .init_transactions(Duration::from_secs(30))
            .map(|()| zombie)
    })
    .await
    .unwrap()
    .expect("zombie init");
    zombie.begin_transaction().expect("zombie begin");
    zombie
        .send(
            FutureRecord::to(&raw)
                .key("zombie")
                .payload("never visible"),
            Duration::from_secs(10),
        )
        .await
        .expect("zombie write");
    zombie
        .send(
            FutureRecord::to(&marker)
                .key(&format!("{rejected}/0/0"))
                .payload("{\"letter_time\":0}"),
            Duration::from_secs(10),
        )
        .await
        .expect("zombie marker");

    let rest = ctl.replay(&args[..4]).await;
    println!("replay after a kill: {}", rest.summary);
    assert_eq!(rest.count("matched"), n as u64);
    assert!(rest.count("already_replayed") >= 1, "{}", rest.summary);
    assert_eq!(
        rest.count("replayed") + rest.count("already_replayed"),
        n as u64
    );
    let zombie_commit =
        tokio::task::spawn_blocking(move || zombie.commit_transaction(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(zombie_commit.is_err(), "the stale transaction was fenced");

    let written = broker.read_to_end(&raw).await.unwrap();
    let mut per_key: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for r in &written {
        *per_key
            .entry(r.key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert!(!per_key.contains_key(b"zombie".as_slice()));
    assert_eq!(per_key.len(), n as usize, "every original arrived");
    assert!(
        per_key.values().all(|c| *c == 1),
        "and each once: {:?}",
        per_key.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
}

/// The letter a stage past the collector writes for `record`
/// (`DeadLetters::by_reference`, as the enricher and the dispatchers build
/// it): its coordinates and key, no bytes.
fn letter_by_reference(stage: &str, rejected: &str, record: &InboundRecord) -> Vec<u8> {
    DeadLetters::by_reference(stage, rejected)
        .for_record(
            record,
            "decode_failed",
            "cannot decode",
            vec![],
            Some(TENANT.into()),
        )
        .expect("letter")
        .payload
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Writes `records` in one transaction, committed or aborted.
async fn produce_in_transaction(broker: &Broker, topic: &str, keys: &[&str], commit: bool) {
    let producer: FutureProducer = broker
        .client_config()
        .set("transactional.id", unique("test-txn"))
        .create()
        .expect("transactional producer");
    let producer = tokio::task::spawn_blocking(move || {
        producer
            .init_transactions(Duration::from_secs(30))
            .map(|()| producer)
    })
    .await
    .unwrap()
    .expect("init transactions");
    producer.begin_transaction().expect("begin");
    for key in keys {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(*key)
                    .payload("in a transaction"),
                Duration::from_secs(10),
            )
            .await
            .expect("transactional write");
    }
    tokio::task::spawn_blocking(move || {
        if commit {
            producer.commit_transaction(Duration::from_secs(10))
        } else {
            producer.abort_transaction(Duration::from_secs(10))
        }
    })
    .await
    .unwrap()
    .expect("end transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_by_reference_are_read_from_their_source_and_replayed_byte_identical() {
    let broker = Broker::shared().await.expect("broker");
    let rejected = unique("rejected");
    let marker = unique("replayed");
    let raw = unique("raw");
    let dispatch = unique("dispatch.meta");
    broker.create_topic(&rejected, 1).await.unwrap();
    broker.create_topic(&raw, 2).await.unwrap();
    broker.create_topic(&dispatch, 2).await.unwrap();

    // Raw conversions as the collector wrote them: plain personal data,
    // and bytes of every value.
    let n = 6;
    for i in 0..n {
        let mut value =
            format!("\u{c3}{{\"email\":\"person-{i}@example.com\",\"ip\":\"203.0.113.{i}\"}}")
                .into_bytes();
        value.extend(0..=255u8);
        broker
            .produce(&raw, format!("{TENANT}/ref-{i}").as_bytes(), &value)
            .await
            .unwrap();
    }
    let mut originals = broker.read_to_end(&raw).await.unwrap();
    assert_eq!(originals.len(), n);
    originals.sort_by_key(|r| (r.partition, r.offset));
    // The enricher's letters, in reverse order of their sources (the
    // fetcher seeks back).
    for r in originals.iter().rev() {
        broker
            .produce(
                &rejected,
                r.key.as_deref().unwrap(),
                &letter_by_reference("enricher", &rejected, r),
            )
            .await
            .unwrap();
    }
    // Letters whose source is not what they say: another key at the
    // offset, an offset past the end, a retry topic that is gone.
    let mut moved = originals[0].clone();
    moved.key = Some(format!("{TENANT}/someone-else").into_bytes());
    let past_end = InboundRecord {
        topic: raw.clone(),
        partition: 0,
        offset: 1_000,
        key: Some(format!("{TENANT}/never").into_bytes()),
        ..Default::default()
    };
    let gone_retry = InboundRecord {
        topic: format!("{dispatch}.retry-10s"),
        partition: 0,
        offset: 0,
        key: Some(format!("{TENANT}/retried").into_bytes()),
        payload: Some(b"203.0.113.99".to_vec()),
        ..Default::default()
    };
    for (stage, r) in [
        ("enricher", &moved),
        ("enricher", &past_end),
        ("dispatcher.meta", &gone_retry),
    ] {
        broker
            .produce(
                &rejected,
                r.key.as_deref().unwrap(),
                &letter_by_reference(stage, &rejected, r),
            )
            .await
            .unwrap();
    }
    for letter in broker.read_to_end(&rejected).await.unwrap() {
        let bytes = letter.payload.unwrap_or_default();
        for secret in [&b"example.com"[..], b"203.0.113."] {
            assert!(!contains(&bytes, secret), "a letter copied {secret:?}");
        }
    }

    let ctl = Ctl::new(&broker);
    let args = ["--rejected-topic", &rejected, "--marker-topic", &marker];
    let mut dry_args: Vec<&str> = args.to_vec();
    dry_args.push("--dry-run");
    let dry = ctl.replay(&dry_args).await;
    println!("dry run by reference: {}", dry.summary);
    assert_eq!(dry.count("would_replay"), n as u64);
    assert_eq!(
        dry.skipped(),
        BTreeMap::from([("source_missing".to_string(), 3)])
    );
    assert_eq!(broker.read_to_end(&raw).await.unwrap().len(), n);

    let run = ctl.replay(&args).await;
    println!("replay by reference: {}", run.summary);
    assert_eq!(run.count("replayed"), n as u64);
    assert_eq!(
        run.skipped(),
        BTreeMap::from([("source_missing".to_string(), 3)])
    );
    let retry_line = run
        .lines
        .iter()
        .find(|l| l["stage"] == "dispatcher.meta")
        .expect("listed");
    assert_eq!(retry_line["target"], dispatch.as_str());
    assert_eq!(retry_line["skip"], "source_missing");
    assert!(
        !run.stdout.contains("example.com") && !run.stdout.contains("203.0.113"),
        "the listing never shows a record's bytes: {}",
        run.stdout
    );
    let replayed: Vec<InboundRecord> = broker
        .read_to_end(&raw)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| header(r, REPLAYED_FROM).is_some())
        .collect();
    assert_eq!(replayed.len(), n, "each original written back once");
    for original in &originals {
        let copy = replayed
            .iter()
            .find(|r| r.key == original.key)
            .expect("replayed");
        assert_eq!(copy.payload, original.payload, "byte-identical");
        assert_eq!(copy.partition, original.partition, "same partition");
        assert_eq!(copy.headers.len(), 1, "only the replay's header");
    }
    assert!(broker.read_to_end(&dispatch).await.unwrap().is_empty());

    let again = ctl.replay(&args).await;
    assert_eq!(again.count("replayed"), 0);
    assert_eq!(again.count("already_replayed"), n as u64);
    assert_eq!(broker.read_to_end(&raw).await.unwrap().len(), 2 * n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_whose_source_no_longer_holds_the_record_are_skipped_as_source_expired() {
    let broker = Broker::shared().await.expect("broker");
    let rejected = unique("rejected");
    let marker = unique("replayed");
    let raw = unique("raw");
    let txn = unique("txn");
    broker.create_topic(&rejected, 1).await.unwrap();
    broker.create_topic(&raw, 1).await.unwrap();
    broker.create_topic(&txn, 1).await.unwrap();

    // Retention took them: below the partition's low watermark.
    for i in 0..3 {
        broker
            .produce(
                &raw,
                format!("{TENANT}/old-{i}").as_bytes(),
                b"person@example.com",
            )
            .await
            .unwrap();
    }
    let old = broker.read_to_end(&raw).await.unwrap();
    assert_eq!(old.len(), 3);
    for r in &old {
        broker
            .produce(
                &rejected,
                r.key.as_deref().unwrap(),
                &letter_by_reference("enricher", &rejected, r),
            )
            .await
            .unwrap();
    }
    let low = broker.delete_all_records(&raw, 0).await.unwrap();
    assert_eq!(low, 3, "the low watermark is past every letter's source");

    // Offsets that hold no committed record: a transaction's commit marker,
    // an aborted write and its marker, around records that are there.
    produce_in_transaction(&broker, &txn, &["shop/t-0", "shop/t-1"], true).await;
    broker.produce(&txn, b"shop/after", b"kept").await.unwrap();
    produce_in_transaction(&broker, &txn, &["shop/aborted"], false).await;
    broker
        .produce(&txn, b"shop/last", b"kept too")
        .await
        .unwrap();
    let committed = broker.read_to_end(&txn).await.unwrap();
    let offsets: BTreeSet<i64> = committed.iter().map(|r| r.offset).collect();
    let end = committed.iter().map(|r| r.offset).max().unwrap() + 1;
    let holes: Vec<i64> = (0..end).filter(|o| !offsets.contains(o)).collect();
    assert_eq!(
        holes.len(),
        3,
        "a commit marker, an aborted write, its marker: {holes:?}"
    );
    for offset in &holes {
        let hole = InboundRecord {
            topic: txn.clone(),
            partition: 0,
            offset: *offset,
            key: Some(format!("{TENANT}/hole-{offset}").into_bytes()),
            ..Default::default()
        };
        broker
            .produce(
                &rejected,
                hole.key.as_deref().unwrap(),
                &letter_by_reference("enricher", &rejected, &hole),
            )
            .await
            .unwrap();
    }
    let after = committed
        .iter()
        .find(|r| r.key.as_deref() == Some(&b"shop/after"[..]))
        .unwrap();
    broker
        .produce(
            &rejected,
            b"shop/after",
            &letter_by_reference("enricher", &rejected, after),
        )
        .await
        .unwrap();

    let ctl = Ctl::new(&broker);
    let args = ["--rejected-topic", &rejected, "--marker-topic", &marker];
    let run = ctl.replay(&args).await;
    println!("replay of expired sources: {}", run.summary);
    assert_eq!(run.count("matched"), 7);
    assert_eq!(
        run.skipped(),
        BTreeMap::from([("source_expired".to_string(), 6)])
    );
    assert_eq!(run.count("replayed"), 1, "the record that is still there");
    assert_eq!(
        run.ids("skipped"),
        [0, 1, 2].into_iter().chain(holes.iter().copied()).collect()
    );
    assert!(
        broker.read_to_end(&raw).await.unwrap().is_empty(),
        "nothing written"
    );
    let on_txn: Vec<InboundRecord> = broker
        .read_to_end(&txn)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| header(r, REPLAYED_FROM).is_some())
        .collect();
    assert_eq!(on_txn.len(), 1);
    assert_eq!(on_txn[0].key.as_deref(), Some(&b"shop/after"[..]));
    assert_eq!(on_txn[0].payload.as_deref(), Some(&b"kept"[..]));

    // Still skipped, never marked: a later run says the same.
    let again = ctl.replay(&args).await;
    assert_eq!(again.count("already_replayed"), 1);
    assert_eq!(
        again.skipped(),
        BTreeMap::from([("source_expired".to_string(), 6)])
    );
}
