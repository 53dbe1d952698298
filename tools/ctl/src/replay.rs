//! `postback-ctl replay`: dead letters from `conversions.rejected` back to
//! the input topic of the stage that rejected them, each one once.
//!
//! # Why it is built this way
//!
//! A dead letter says where its original record came from (topic,
//! partition, offset, key); replaying it is writing that original to the
//! stage's input topic again, after the cause (an outage, a bug) is gone.
//! Where the original's bytes come from depends on the stage (below,
//! "Letters by reference"). The hard part is "once": a second run, or a run
//! killed midway and started again, must not write an original twice,
//! because the pipeline downstream would take it as a second conversion
//! (the dispatchers would send it twice, past the platforms' dedup windows
//! if the letter is old).
//!
//! That is what Kafka transactions give every other stage, so replay uses
//! them the same way instead of any state of its own:
//!
//! - Every replayed letter gets a record on a compacted marker topic
//!   (`postback-ctl-replayed`), keyed by the letter's coordinates on the
//!   rejected topic (`topic/partition/offset`), carrying the letter's own
//!   `time` (a letter at the same coordinates of a deleted and re-created
//!   topic is another letter) and where it went. The originals of a batch
//!   and their markers are written in one transaction: a run killed midway
//!   leaves either both (the batch committed) or neither (it aborts), and
//!   every stage reads committed records only.
//! - A run first registers a fixed transactional id
//!   (`postback-ctl-replay.<marker topic>`). The broker then fences every
//!   earlier producer with that id: a killed run's open transaction is
//!   aborted at once (not after the transaction timeout), and a run still
//!   going elsewhere cannot commit anything more. Only after that does the
//!   run read the marker topic, read committed, to its end: it sees every
//!   batch any earlier run committed, and nobody can add one behind its
//!   back. Two runs that share a marker topic are serialised by the broker.
//! - Then it reads the rejected topic (read committed) to the end it had
//!   when the run reached it, and replays each matching letter that has no
//!   marker, a batch per transaction.
//!
//! Consumer-group offsets on the rejected topic would not do: each run has
//! its own filters, so "how far we read" says nothing about which letters
//! were replayed. A marker per letter does; compaction keeps one per letter
//! (a hundred bytes or so; the topic is never cleaned by time, so "once"
//! holds however long a letter lives).
//!
//! # Letters by reference
//!
//! Only the collector's ingest letters carry their original's bytes
//! (`DeadLetters::new`): its input is a retailer's own topic, which the
//! pipeline does not keep. Every stage past the collector writes letters
//! by reference (`DeadLetters::by_reference`): no bytes, only the
//! original's key and its topic, partition and offset. The originals past
//! the collector are conversions with raw personal data (the enricher's
//! input, `conversions.raw`: plain email, phone, IP) or dispatch records
//! (IP, user agent, click ids); copied into letters, they would live again
//! on `conversions.rejected`, for its retention, beside every stage's
//! letters, read by whoever investigates rejections. By reference, personal
//! data stays on the topics it was written to, with their short retention,
//! and a letter is only a pointer.
//!
//! So replay reads such a letter's original from its source (a consumer,
//! read committed, that assigns the exact partition and offset): the
//! record's key and value, not its headers (a letter's original never
//! carried any; a retry topic's headers are its bookkeeping). A
//! dispatcher's letter from a retry topic is read from that retry topic,
//! where its bytes are, and written to the dispatch topic. The limit: a
//! letter by reference is replayable while its source topic keeps the
//! record, `conversions.raw` 1 day and `dispatch.<platform>` and its retry
//! topics 7 days by default (config/topics.txt; docs/topics.md). Past that
//! it is skipped as `source_expired`: below the partition's low watermark,
//! or at an offset that holds no record any more (compacted, a
//! transaction's marker, an aborted write); `source_missing` when the
//! topic or partition does not exist, the offset is past its end, or the
//! record there has another key (a re-created topic). The bytes are read
//! in a dry run too, so that it tells what is gone; a source that answers
//! nothing for `--timeout-secs` ends the run with an error (nothing is
//! skipped for a broker's silence, and the next run takes it up).
//!
//! # What is skipped
//!
//! What cannot be replayed is listed as skipped with the reason, never
//! written: a letter without a source topic (an event that never was on a
//! topic), without an original value nor a place to read one
//! (`no_original`: an output the broker refused, a tombstone), whose
//! original is gone from its source (`source_expired`, `source_missing`,
//! above), whose original was cut to `MAX_ORIGINAL_BYTES` (`truncated`, a
//! collector's letter: writing the head of a record would be a corrupt
//! record), whose source is a stage's own state rather than an
//! input (`state_record`: the deduplicator's `stale_state` and
//! `undecodable_state` letters, offset -1 on its changelog), or whose
//! target topic does not exist. A dispatcher's letter from one of its retry
//! topics (`dispatch.<platform>.retry-<n>s`) goes to `dispatch.<platform>`,
//! the dispatcher's input: the retry topics are its internal waiting room
//! and their headers (counts, due times) do not travel in a dead letter; on
//! the dispatch topic the conversion starts over with a fresh attempt count.
//!
//! Originals are written keyed as they were, by the stages' own producer
//! settings (same partitioner), so a replayed record lands in the partition
//! every other record of its conversion uses (`tenant/event_id`), and carry
//! a `postback-replayed-from` header naming the letter.
//!
//! The listing (stdout, one JSON object per matching letter) names stage,
//! reason, tenant, source and target topic, partition, offset and time:
//! never the letter's detail, key or bytes, which may hold personal data.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use postback_core::config::KafkaConfig;
use postback_core::dead_letter::MAX_ORIGINAL_BYTES;
use postback_core::kafka::{
    consumer_config, create_topics, partition_count, InboundRecord, KafkaError, OutboundRecord,
    TopicSpec, TransactionError, TransactionalProducer,
};
use postback_core::model::{now_millis, DeadLetter};
use postback_core::{Codec, SchemaKind};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// The rejected topic replay reads by default.
pub const DEFAULT_REJECTED_TOPIC: &str = "conversions.rejected";
/// The compacted topic of what was replayed, by default.
pub const DEFAULT_MARKER_TOPIC: &str = "postback-ctl-replayed";
/// The header each replayed record carries: the letter it came from.
pub const REPLAYED_FROM_HEADER: &str = "postback-replayed-from";

const CLIENT_ID: &str = "postback-ctl-replay";
const DEFAULT_BATCH: usize = 100;
const DEFAULT_IDLE_SECS: u64 = 30;
/// Times an aborted (not failed) batch transaction is tried again.
const BATCH_ATTEMPTS: u32 = 5;

/// `postback-ctl --help`'s part for replay.
pub const HELP: &str =
    "  replay [--rejected-topic conversions.rejected] [--marker-topic postback-ctl-replayed]
         [--stage S]... [--reason R]... [--tenant T]... [--since TIME] [--until TIME]
         [--dry-run] [--batch N] [--limit N] [--timeout-secs S]
      Writes the original record of each matching dead letter back to the input
      topic of the stage that rejected it, once: a marker per replayed letter on
      the compacted marker topic (created if missing) commits in the same Kafka
      transaction as the original, and a later run skips what has a marker.
      Filters (a repeated filter matches any of its values; filters combine with AND):
        --stage S    the letter's stage: `enricher`, `dispatcher.meta`; `dispatcher`
                     matches every `dispatcher.<platform>`
        --reason R   the letter's reason code (delivery_failed, decode_failed, ...)
        --tenant T   the letter's tenant (letters without one never match)
        --since TIME, --until TIME
                     the letter's time, since inclusive, until exclusive: RFC 3339
                     (2025-01-31T12:00:00Z), Unix milliseconds, or an age (90s, 30m,
                     6h, 2d ago)
      --dry-run      list what would be replayed, write nothing (creates nothing)
      --batch N      letters per transaction (default 100)
      --limit N      replay at most N letters this run (the rest: `over_limit`)
      --timeout-secs S
                     give up when a topic yields nothing for S seconds before its end
                     (default 30)
      Prints one JSON line per matching letter (action: replayed, would_replay,
      already_replayed, skipped with `skip`, over_limit; undecodable for a record
      that is no dead letter): stage, reason, tenant, letter and source
      coordinates, target topic, time; never keys, details or bytes. The
      last line is the summary: matched, replayed, would_replay, already_replayed,
      skipped by reason, over_limit, undecodable.
      Letters past the collector carry no bytes (they may hold personal data): the
      original is read from the letter's source topic, partition and offset, which
      keeps it for its retention only (conversions.raw 1 day, dispatch topics 7 days).
      Not replayable, listed as skipped: no_source_topic, no_original, truncated
      (cut at the dead letter's size limit), state_record (a stage's state, not an
      input), target_missing, source_expired (its source no longer holds the record:
      retention, compaction), source_missing (its source topic, partition or record
      is not there). A dispatcher's letter from a retry topic is read from it and
      goes to dispatch.<platform>.
";

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay: {flag}: {message}")]
    Usage { flag: String, message: String },
    #[error("cannot create the Kafka {what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("cannot read the metadata of {topic}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create the marker topic {topic}: {source}")]
    CreateMarkerTopic {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot read {topic}: {source}")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("{topic}: nothing arrived for {idle:?} before its end (is the broker reachable?)")]
    Stalled { topic: String, idle: Duration },
    #[error("cannot register the replay's transactional id {transactional_id}: {source}")]
    Register {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    /// The batch's transaction did not commit: nothing of it is visible,
    /// and running replay again takes it up (earlier batches are marked).
    #[error(
        "a batch of {letters} letter(s) did not commit, nothing of it was written ({replayed} replayed before it); run replay again: {source}"
    )]
    Batch {
        letters: usize,
        replayed: u64,
        #[source]
        source: TransactionError,
    },
    #[error("cannot encode a marker: {0}")]
    Marker(#[source] serde_json::Error),
}

/// Which dead letters a run takes.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub stages: Vec<String>,
    pub reasons: Vec<String>,
    pub tenants: Vec<String>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
}

impl Filters {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let stage = self.stages.is_empty()
            || self.stages.iter().any(|s| {
                letter.stage == *s
                    || letter
                        .stage
                        .strip_prefix(s.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            });
        let reason = self.reasons.is_empty() || self.reasons.contains(&letter.reason);
        let tenant = self.tenants.is_empty()
            || letter
                .tenant
                .as_ref()
                .is_some_and(|t| self.tenants.contains(t));
        let since = self.since.is_none_or(|s| letter.time >= s);
        let until = self.until.is_none_or(|u| letter.time < u);
        stage && reason && tenant && since && until
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub rejected_topic: String,
    pub marker_topic: String,
    pub filters: Filters,
    pub dry_run: bool,
    pub batch: usize,
    pub limit: Option<u64>,
    /// How long a topic may yield nothing before its end.
    pub idle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rejected_topic: DEFAULT_REJECTED_TOPIC.into(),
            marker_topic: DEFAULT_MARKER_TOPIC.into(),
            filters: Filters::default(),
            dry_run: false,
            batch: DEFAULT_BATCH,
            limit: None,
            idle: Duration::from_secs(DEFAULT_IDLE_SECS),
        }
    }
}

impl Options {
    /// The command's arguments (after `replay`). Anything unknown is an
    /// error: a mistyped filter must not widen a replay to everything.
    pub fn parse(args: Vec<String>, now_ms: i64) -> Result<Options, ReplayError> {
        let mut options = Options::default();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--dry-run" {
                options.dry_run = true;
                continue;
            }
            let mut value = || {
                args.next()
                    .filter(|v| !v.starts_with("--"))
                    .ok_or_else(|| usage(&flag, "needs a value"))
            };
            match flag.as_str() {
                "--rejected-topic" => options.rejected_topic = topic_name(&flag, value()?)?,
                "--marker-topic" => options.marker_topic = topic_name(&flag, value()?)?,
                "--stage" => options.filters.stages.push(value()?),
                "--reason" => options.filters.reasons.push(value()?),
                "--tenant" => options.filters.tenants.push(value()?),
                "--since" => options.filters.since = Some(parse_time(&flag, &value()?, now_ms)?),
                "--until" => options.filters.until = Some(parse_time(&flag, &value()?, now_ms)?),
                "--batch" => options.batch = positive(&flag, &value()?)? as usize,
                "--limit" => options.limit = Some(positive(&flag, &value()?)?),
                "--timeout-secs" => options.idle = Duration::from_secs(positive(&flag, &value()?)?),
                _ => return Err(usage(&flag, "unknown argument (see postback-ctl --help)")),
            }
        }
        if let (Some(s), Some(u)) = (options.filters.since, options.filters.until) {
            if s >= u {
                return Err(usage("--since", "must be before --until"));
            }
        }
        Ok(options)
    }

    /// The fixed transactional id of runs that share this marker topic.
    pub fn transactional_id(&self) -> String {
        format!("{CLIENT_ID}.{}", self.marker_topic)
    }
}

fn usage(flag: &str, message: &str) -> ReplayError {
    ReplayError::Usage {
        flag: flag.to_string(),
        message: message.to_string(),
    }
}

fn topic_name(flag: &str, name: String) -> Result<String, ReplayError> {
    postback_core::config::validate_topic_name(flag, &name)
        .map_err(|_| usage(flag, "not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"))?;
    Ok(name)
}

fn positive(flag: &str, value: &str) -> Result<u64, ReplayError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(usage(flag, "must be a positive whole number")),
    }
}

/// RFC 3339, Unix milliseconds, or an age (`90s`, `30m`, `6h`, `2d`) before
/// `now_ms`.
pub fn parse_time(flag: &str, value: &str, now_ms: i64) -> Result<i64, ReplayError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| usage(flag, "Unix milliseconds out of range"));
    }
    let unit_ms = match value.as_bytes().last() {
        Some(b's') => Some(1_000),
        Some(b'm') => Some(60_000),
        Some(b'h') => Some(3_600_000),
        Some(b'd') => Some(86_400_000),
        _ => None,
    };
    if let Some(unit) = unit_ms {
        if let Ok(n) = value[..value.len() - 1].parse::<i64>() {
            if n >= 0 {
                return Ok(now_ms.saturating_sub(n.saturating_mul(unit)));
            }
        }
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            usage(
                flag,
                "expected RFC 3339 (2025-01-31T12:00:00Z), Unix milliseconds or an age (30m, 6h, 2d)",
            )
        })
}

/// Why a matching letter is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    NoSourceTopic,
    NoOriginal,
    Truncated,
    StateRecord,
    TargetMissing,
    /// A letter by reference whose original its source topic no longer
    /// holds: below the partition's low watermark (retention deleted it),
    /// or its offset holds no record any more (compacted away, a
    /// transaction's marker, an aborted write).
    SourceExpired,
    /// A letter by reference whose source is not there at all: its topic or
    /// partition does not exist, the offset is past the partition's end, or
    /// another conversion's record is at that offset (the topic was deleted
    /// and created again).
    SourceMissing,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoSourceTopic => "no_source_topic",
            Skip::NoOriginal => "no_original",
            Skip::Truncated => "truncated",
            Skip::StateRecord => "state_record",
            Skip::TargetMissing => "target_missing",
            Skip::SourceExpired => "source_expired",
            Skip::SourceMissing => "source_missing",
        }
    }
}

/// The topic a letter's original goes back to, or why it cannot (what a
/// look at the letter alone tells; a missing target topic is found later).
pub fn target(letter: &DeadLetter) -> Result<String, Skip> {
    let Some(source) = letter.source_topic.as_deref().filter(|t| !t.is_empty()) else {
        return Err(Skip::NoSourceTopic);
    };
    if letter.source_offset.is_some_and(|o| o < 0) {
        return Err(Skip::StateRecord);
    }
    match &letter.original_value {
        // dead_letter.rs cuts an original longer than MAX_ORIGINAL_BYTES to
        // that length; one of exactly that length cannot be told from a cut
        // one by its bytes, and a cut record must never be written.
        Some(value) if value.len() >= MAX_ORIGINAL_BYTES => return Err(Skip::Truncated),
        Some(_) => {}
        // By reference: fetched from its source at replay time.
        None if at_source(letter).is_some() => {}
        None => return Err(Skip::NoOriginal),
    }
    Ok(input_topic(&letter.stage, source).to_string())
}

/// Where the original of a letter that carries no bytes is (a letter by
/// reference, `DeadLetters::by_reference`): its source topic, partition and
/// offset. None for a letter that carries its original, or has no place to
/// read one from (an output the broker refused, a stage's state).
pub fn at_source(letter: &DeadLetter) -> Option<SourceRecord> {
    if letter.original_value.is_some() {
        return None;
    }
    let topic = letter.source_topic.as_deref().filter(|t| !t.is_empty())?;
    match (letter.source_partition, letter.source_offset) {
        (Some(partition), Some(offset)) if partition >= 0 && offset >= 0 => Some(SourceRecord {
            topic: topic.to_string(),
            partition,
            offset,
        }),
        _ => None,
    }
}

/// A record's place on its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A dispatcher's retry topic (`<dispatch topic>.retry-<n>s`) stands for its
/// dispatch topic; any other source topic is the stage's input itself.
fn input_topic<'a>(stage: &str, source: &'a str) -> &'a str {
    if stage == "dispatcher" || stage.starts_with("dispatcher.") {
        if let Some((main, tier)) = source.rsplit_once(".retry-") {
            let is_tier = tier
                .strip_suffix('s')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_tier && !main.is_empty() {
                return main;
            }
        }
    }
    source
}

/// A letter's place on the rejected topic: the marker's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Coordinates {
    topic: String,
    partition: i32,
    offset: i64,
}

impl Coordinates {
    fn key(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// A marker's value: what was replayed, where to, when.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// The replayed letter's own `time`: a letter at the same coordinates
    /// with another time (the topic was re-created) is not this one.
    letter_time: i64,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    replayed_at: i64,
}

/// One line of the listing: never a key, a detail or bytes.
#[derive(Debug, Serialize)]
struct Listing<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    skip: Option<&'static str>,
    letter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Source<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Source<'a> {
    topic: Option<&'a str>,
    partition: Option<i32>,
    offset: Option<i64>,
}

impl<'a> Listing<'a> {
    fn of(
        action: &'static str,
        at: &Coordinates,
        letter: &'a DeadLetter,
        target: Option<&'a str>,
    ) -> Self {
        Listing {
            action,
            skip: None,
            letter: at.key(),
            stage: Some(&letter.stage),
            reason: Some(&letter.reason),
            tenant: letter.tenant.as_deref(),
            time: Some(rfc3339(letter.time)),
            source: Some(Source {
                topic: letter.source_topic.as_deref(),
                partition: letter.source_partition,
                offset: letter.source_offset,
            }),
            target,
        }
    }

    fn print(&self) {
        if let Ok(line) = serde_json::to_string(self) {
            println!("{line}");
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub dry_run: bool,
    /// Letters that passed the filters.
    pub matched: u64,
    /// Written back (and marked), this run.
    pub replayed: u64,
    /// Dry run: what would have been written.
    pub would_replay: u64,
    /// Marked by an earlier run: not written again.
    pub already_replayed: u64,
    /// Not replayable, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Replayable, left for a later run by `--limit`.
    pub over_limit: u64,
    /// Records of the rejected topic that are no dead letter (not matched).
    pub undecodable: u64,
}

impl Summary {
    /// The closing line for people (stderr).
    pub fn human(&self) -> String {
        let skipped = if self.skipped.is_empty() {
            "none".to_string()
        } else {
            self.skipped
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let written = if self.dry_run {
            format!("{} would be replayed", self.would_replay)
        } else {
            format!("{} replayed", self.replayed)
        };
        format!(
            "{} matched: {written}, {} already replayed, {} over the limit; skipped: {skipped}; {} undecodable record(s)",
            self.matched, self.already_replayed, self.over_limit, self.undecodable
        )
    }
}

/// Runs a replay (see the module docs) and returns its counts; the listing
/// goes to stdout as it happens.
pub async fn run(kafka: &KafkaConfig, options: &Options) -> Result<Summary, ReplayError> {
    let rejected_partitions = partitions(kafka, &options.rejected_topic).await?;
    // Fence earlier runs before reading what they committed.
    let producer = if options.dry_run {
        None
    } else {
        ensure_marker_topic(kafka, &options.marker_topic).await?;
        let transactional_id = options.transactional_id();
        Some(
            TransactionalProducer::new(kafka, CLIENT_ID, &transactional_id)
                .await
                .map_err(|source| ReplayError::Register {
                    transactional_id,
                    source,
                })?,
        )
    };
    let markers = read_markers(kafka, options).await?;
    let mut run = Run {
        options,
        producer,
        markers,
        targets: HashMap::new(),
        fetcher: None,
        batch: Vec::new(),
        summary: Summary {
            dry_run: options.dry_run,
            ..Summary::default()
        },
        kafka,
    };
    let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
    let mut reader = ToEnd::open(
        kafka,
        &options.rejected_topic,
        rejected_partitions,
        options.idle,
    )?;
    while let Some(record) = reader.next().await? {
        let at = Coordinates {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        match record.payload.as_deref().map(|p| codec.decode(p)) {
            Some(Ok(letter)) => run.letter(at, letter).await?,
            _ => {
                run.summary.undecodable += 1;
                Listing {
                    action: "undecodable",
                    skip: None,
                    letter: at.key(),
                    stage: None,
                    reason: None,
                    tenant: None,
                    time: None,
                    source: None,
                    target: None,
                }
                .print();
            }
        }
    }
    run.flush().await?;
    Ok(run.summary)
}

struct Run<'a> {
    options: &'a Options,
    kafka: &'a KafkaConfig,
    producer: Option<TransactionalProducer>,
    /// Marker key -> the marked letter's time (None: unreadable marker,
    /// taken as replayed: never risk a second write).
    markers: HashMap<String, Option<i64>>,
    /// Target topic -> whether it exists.
    targets: HashMap<String, bool>,
    /// Reads the originals of letters by reference (made at the first).
    fetcher: Option<Fetcher>,
    /// The open batch: each letter's listing and its two records.
    batch: Vec<Pending>,
    summary: Summary,
}

struct Pending {
    at: Coordinates,
    letter: DeadLetter,
    target: String,
    original: OutboundRecord,
    marker: OutboundRecord,
}

impl Run<'_> {
    async fn letter(&mut self, at: Coordinates, letter: DeadLetter) -> Result<(), ReplayError> {
        if !self.options.filters.matches(&letter) {
            return Ok(());
        }
        self.summary.matched += 1;
        let marked = match self.markers.get(&at.key()) {
            Some(Some(time)) => *time == letter.time,
            Some(None) => true,
            None => false,
        };
        if marked {
            self.summary.already_replayed += 1;
            Listing::of("already_replayed", &at, &letter, None).print();
            return Ok(());
        }
        let target = match target(&letter) {
            Ok(t) => t,
            Err(skip) => {
                self.skip(&at, &letter, skip, None);
                return Ok(());
            }
        };
        if !self.target_exists(&target).await? {
            self.skip(&at, &letter, Skip::TargetMissing, Some(&target));
            return Ok(());
        }
        let taken = self.summary.replayed + self.summary.would_replay + self.batch.len() as u64;
        if self.options.limit.is_some_and(|limit| taken >= limit) {
            self.summary.over_limit += 1;
            Listing::of("over_limit", &at, &letter, Some(&target)).print();
            return Ok(());
        }
        // A letter by reference: its original is read from where the stage
        // read it (a dispatcher's retry topic, not the dispatch topic it
        // goes back to), a dry run too, so that it tells what is gone.
        let (key, value) = match at_source(&letter) {
            None => (
                letter.original_key.clone(),
                letter.original_value.clone().unwrap_or_default(),
            ),
            Some(source) => match self.fetch(&source).await? {
                Fetched::Record(record) => {
                    // Another conversion's record at that offset: the
                    // topic is not the one the letter was written about.
                    if record.key != letter.original_key {
                        self.skip(&at, &letter, Skip::SourceMissing, Some(&target));
                        return Ok(());
                    }
                    let Some(value) = record.payload else {
                        self.skip(&at, &letter, Skip::NoOriginal, Some(&target));
                        return Ok(());
                    };
                    // Its headers stay behind, as a letter's original never
                    // had any: a retry topic's bookkeeping (counts, due
                    // times) must not follow it to the dispatch topic.
                    (record.key, value)
                }
                Fetched::Expired => {
                    self.skip(&at, &letter, Skip::SourceExpired, Some(&target));
                    return Ok(());
                }
                Fetched::Missing => {
                    self.skip(&at, &letter, Skip::SourceMissing, Some(&target));
                    return Ok(());
                }
            },
        };
        if self.options.dry_run {
            self.summary.would_replay += 1;
            Listing::of("would_replay", &at, &letter, Some(&target)).print();
            return Ok(());
        }
        let original = OutboundRecord::new(target.clone(), key, value)
            .with_header(REPLAYED_FROM_HEADER, at.key());
        let marker = Marker {
            letter_time: letter.time,
            stage: letter.stage.clone(),
            reason: letter.reason.clone(),
            target: target.clone(),
            replayed_at: now_millis(),
        };
        let marker = OutboundRecord::new(
            self.options.marker_topic.clone(),
            Some(at.key().into_bytes()),
            serde_json::to_vec(&marker).map_err(ReplayError::Marker)?,
        );
        self.batch.push(Pending {
            at,
            letter,
            target,
            original,
            marker,
        });
        if self.batch.len() >= self.options.batch {
            self.flush().await?;
        }
        Ok(())
    }

    fn skip(&mut self, at: &Coordinates, letter: &DeadLetter, skip: Skip, target: Option<&str>) {
        *self
            .summary
            .skipped
            .entry(skip.as_str().to_string())
            .or_default() += 1;
        let mut line = Listing::of("skipped", at, letter, target);
        line.skip = Some(skip.as_str());
        line.print();
    }

    /// The original at `source`, read by the run's fetcher (a blocking
    /// client, off the async threads).
    async fn fetch(&mut self, source: &SourceRecord) -> Result<Fetched, ReplayError> {
        let mut fetcher = match self.fetcher.take() {
            Some(f) => f,
            None => Fetcher::open(self.kafka, self.options.idle)?,
        };
        let wanted = source.clone();
        let (fetcher, fetched) = tokio::task::spawn_blocking(move || {
            let fetched = fetcher.fetch(&wanted);
            (fetcher, fetched)
        })
        .await
        .map_err(|_| ReplayError::Read {
            topic: source.topic.clone(),
            source: KafkaError::Canceled,
        })?;
        self.fetcher = Some(fetcher);
        fetched
    }

    async fn target_exists(&mut self, topic: &str) -> Result<bool, ReplayError> {
        if let Some(known) = self.targets.get(topic) {
            return Ok(*known);
        }
        let exists = topic_exists(self.kafka, topic).await?;
        self.targets.insert(topic.to_string(), exists);
        Ok(exists)
    }

    /// Commits the open batch: its originals and markers in one
    /// transaction, tried again while the broker aborts it for a passing
    /// reason; a fenced or failed producer ends the run.
    async fn flush(&mut self) -> Result<(), ReplayError> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        let records: Vec<OutboundRecord> = self
            .batch
            .iter()
            .map(|p| p.original.clone())
            .chain(self.batch.iter().map(|p| p.marker.clone()))
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match producer
                .commit(&records, TopicPartitionList::new(), None)
                .await
            {
                Ok(_) => break,
                Err(TransactionError::Aborted { .. }) if attempt < BATCH_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(source) => {
                    return Err(ReplayError::Batch {
                        letters: self.batch.len(),
                        replayed: self.summary.replayed,
                        source,
                    })
                }
            }
        }
        for p in self.batch.drain(..) {
            self.summary.replayed += 1;
            Listing::of("replayed", &p.at, &p.letter, Some(&p.target)).print();
        }
        Ok(())
    }
}

async fn partitions(kafka: &KafkaConfig, topic: &str) -> Result<i32, ReplayError> {
    partition_count(kafka, topic)
        .await
        .map_err(|source| ReplayError::Metadata {
            topic: topic.to_string(),
            source,
        })
}

/// Whether `topic` exists (one metadata request; no waiting for it).
async fn topic_exists(kafka: &KafkaConfig, topic: &str) -> Result<bool, ReplayError> {
    let client: BaseConsumer = kafka
        .client_config()
        .set("client.id", CLIENT_ID)
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|source| ReplayError::Client {
            what: "metadata client",
            source,
        })?;
    let name = topic.to_string();
    let found = tokio::task::spawn_blocking(move || {
        let metadata = client.fetch_metadata(Some(&name), Duration::from_secs(30))?;
        Ok::<_, KafkaError>(metadata.topics().first().map(|t| {
            (
                t.error().map(RDKafkaErrorCode::from),
                t.partitions().is_empty(),
            )
        }))
    })
    .await
    .map_err(|_| ReplayError::Metadata {
        topic: topic.to_string(),
        source: KafkaError::Canceled,
    })?
    .map_err(|source| ReplayError::Metadata {
        topic: topic.to_string(),
        source,
    })?;
    match found {
        Some((None, false)) => Ok(true),
        None | Some((Some(RDKafkaErrorCode::UnknownTopicOrPartition), _)) | Some((None, true)) => {
            Ok(false)
        }
        Some((Some(code), _)) => Err(ReplayError::Metadata {
            topic: topic.to_string(),
            source: KafkaError::MetadataFetch(code),
        }),
    }
}

/// Creates the marker topic, compacted, if it is missing (config/topics.txt
/// declares it the same way).
async fn ensure_marker_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), ReplayError> {
    let mut spec = TopicSpec::new(topic, 1);
    spec.configs = vec![("cleanup.policy".into(), "compact".into())];
    create_topics(kafka, &[spec])
        .await
        .map_err(|source| ReplayError::CreateMarkerTopic {
            topic: topic.to_string(),
            source,
        })
}

/// Every marker committed so far (none when the topic does not exist, which
/// only a dry run sees).
async fn read_markers(
    kafka: &KafkaConfig,
    options: &Options,
) -> Result<HashMap<String, Option<i64>>, ReplayError> {
    let topic = &options.marker_topic;
    let mut markers = HashMap::new();
    // A real run created it (partitions() waits for its metadata).
    if options.dry_run && !topic_exists(kafka, topic).await? {
        return Ok(markers);
    }
    let n = partitions(kafka, topic).await?;
    let mut reader = ToEnd::open(kafka, topic, n, options.idle)?;
    while let Some(record) = reader.next().await? {
        let Some(key) = record.key.and_then(|k| String::from_utf8(k).ok()) else {
            continue;
        };
        let time = record
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<Marker>(p).ok())
            .map(|m| m.letter_time);
        markers.insert(key, time);
    }
    Ok(markers)
}

/// Reads every partition of a topic from its beginning to the end it had
/// when the reader got there (read committed: the last stable offset).
struct ToEnd {
    consumer: StreamConsumer,
    topic: String,
    at_end: Vec<bool>,
    idle: Duration,
}

impl ToEnd {
    fn open(
        kafka: &KafkaConfig,
        topic: &str,
        partitions: i32,
        idle: Duration,
    ) -> Result<Self, ReplayError> {
        // Assigned by hand: no group is joined and no offset committed.
        let group = format!("{CLIENT_ID}-reader-{}", std::process::id());
        let consumer: StreamConsumer = consumer_config(kafka, CLIENT_ID, &group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "0")
            .create()
            .map_err(|source| ReplayError::Client {
                what: "consumer",
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|source| ReplayError::Read {
                    topic: topic.to_string(),
                    source,
                })?;
        }
        consumer.assign(&tpl).map_err(|source| ReplayError::Read {
            topic: topic.to_string(),
            source,
        })?;
        Ok(ToEnd {
            consumer,
            topic: topic.to_string(),
            at_end: vec![false; partitions.max(0) as usize],
            idle,
        })
    }

    /// The next record, or None once every partition reached its end.
    async fn next(&mut self) -> Result<Option<InboundRecord>, ReplayError> {
        use rdkafka::message::Message as _;
        loop {
            if self.at_end.iter().all(|e| *e) {
                return Ok(None);
            }
            match tokio::time::timeout(self.idle, self.consumer.recv()).await {
                Err(_) => {
                    return Err(ReplayError::Stalled {
                        topic: self.topic.clone(),
                        idle: self.idle,
                    })
                }
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(slot) = self.at_end.get_mut(p as usize) {
                        *slot = true;
                    }
                }
                // Transport trouble is retried by the client; a stall ends
                // the run (above).
                Ok(Err(_)) => {}
                Ok(Ok(m)) => {
                    let past_end = self
                        .at_end
                        .get(m.partition() as usize)
                        .copied()
                        .unwrap_or(true);
                    // Committed after this run got to the partition's end:
                    // the next run's.
                    if !past_end {
                        return Ok(Some(InboundRecord::detached(&m)));
                    }
                }
            }
        }
    }
}

/// What is at a letter's source.
enum Fetched {
    Record(InboundRecord),
    Expired,
    Missing,
}

/// How far past its position the fetcher reads on, rather than seeking,
/// to the next letter's original on the same partition (a run's letters
/// mostly come in their sources' order).
const SCAN_AHEAD: i64 = 256;

/// Reads single records by topic, partition and offset, read committed:
/// the originals of letters by reference. One partition assigned at a time,
/// by hand (no group joined, nothing committed).
struct Fetcher {
    consumer: BaseConsumer,
    timeout: Duration,
    /// Partition count per topic (None: no such topic), as first asked.
    partitions: HashMap<String, Option<i32>>,
    /// (low watermark, last stable offset) per partition, as last asked.
    watermarks: HashMap<(String, i32), (i64, i64)>,
    /// The partition assigned and the offset of its next record.
    at: Option<(String, i32, i64)>,
}

impl Fetcher {
    fn open(kafka: &KafkaConfig, timeout: Duration) -> Result<Self, ReplayError> {
        let group = format!("{CLIENT_ID}-fetcher-{}", std::process::id());
        let consumer: BaseConsumer = consumer_config(kafka, CLIENT_ID, &group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // An offset retention deleted under the run is an error to see,
            // never a jump to another record.
            .set("auto.offset.reset", "error")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            .set("statistics.interval.ms", "0")
            .create()
            .map_err(|source| ReplayError::Client {
                what: "consumer",
                source,
            })?;
        Ok(Fetcher {
            consumer,
            timeout,
            partitions: HashMap::new(),
            watermarks: HashMap::new(),
            at: None,
        })
    }

    /// The committed record at `source`, or why there is none. A source
    /// that yields nothing for the timeout is an error (the run ends, and a
    /// later run takes the letter up): a letter is never skipped for a
    /// broker's silence.
    fn fetch(&mut self, source: &SourceRecord) -> Result<Fetched, ReplayError> {
        use rdkafka::message::Message as _;
        let read_error = |e: KafkaError| ReplayError::Read {
            topic: source.topic.clone(),
            source: e,
        };
        let partitions = match self.partitions.get(&source.topic) {
            Some(n) => *n,
            None => {
                let n = self.partition_count(&source.topic)?;
                self.partitions.insert(source.topic.clone(), n);
                n
            }
        };
        if partitions.is_none_or(|n| source.partition >= n) {
            return Ok(Fetched::Missing);
        }
        let tp = (source.topic.clone(), source.partition);
        let (low, end) = match self.watermarks.get(&tp) {
            Some(&(low, end)) if source.offset < end => (low, end),
            // Unknown, or the end moved on since it was asked.
            _ => {
                let w = self
                    .consumer
                    .fetch_watermarks(&source.topic, source.partition, self.timeout)
                    .map_err(read_error)?;
                self.watermarks.insert(tp.clone(), w);
                w
            }
        };
        if source.offset < low {
            return Ok(Fetched::Expired);
        }
        // Read committed, the end is the last stable offset: a stage only
        // ever read (and dead-lettered) committed records below it.
        if source.offset >= end {
            return Ok(Fetched::Missing);
        }
        let reading_on = self.at.as_ref().is_some_and(|(t, p, next)| {
            *t == source.topic
                && *p == source.partition
                && *next <= source.offset
                && source.offset - *next <= SCAN_AHEAD
        });
        if !reading_on {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                &source.topic,
                source.partition,
                Offset::Offset(source.offset),
            )
            .map_err(read_error)?;
            self.consumer.assign(&tpl).map_err(read_error)?;
            self.at = Some((source.topic.clone(), source.partition, source.offset));
        }
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            if std::time::Instant::now() >= deadline {
                self.at = None;
                return Err(ReplayError::Stalled {
                    topic: source.topic.clone(),
                    idle: self.timeout,
                });
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => {
                    // Left over from an earlier assignment.
                    if m.topic() != source.topic || m.partition() != source.partition {
                        continue;
                    }
                    self.at = Some((source.topic.clone(), source.partition, m.offset() + 1));
                    if m.offset() == source.offset {
                        return Ok(Fetched::Record(InboundRecord::detached(&m)));
                    }
                    // Past it: the offset holds no committed record.
                    if m.offset() > source.offset {
                        return Ok(Fetched::Expired);
                    }
                }
                // At the end without it: the offset held a marker or an
                // aborted write, or compaction removed it.
                Some(Err(KafkaError::PartitionEOF(p))) if p == source.partition => {
                    self.at = None;
                    return Ok(Fetched::Expired);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e))
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
                        )
                    ) =>
                {
                    // Retention deleted it after the watermarks were asked.
                    self.at = None;
                    self.watermarks.remove(&tp);
                    return Ok(Fetched::Expired);
                }
                // Transport trouble is retried by the client; the deadline
                // ends the wait.
                Some(Err(_)) => {}
            }
        }
    }

    /// The topic's partition count, or None when it does not exist.
    fn partition_count(&self, topic: &str) -> Result<Option<i32>, ReplayError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|source| ReplayError::Metadata {
                topic: topic.to_string(),
                source,
            })?;
        match metadata.topics().first() {
            None => Ok(None),
            Some(t) => match t.error().map(RDKafkaErrorCode::from) {
                None if t.partitions().is_empty() => Ok(None),
                None => Ok(Some(t.partitions().len() as i32)),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
                Some(code) => Err(ReplayError::Metadata {
                    topic: topic.to_string(),
                    source: KafkaError::MetadataFetch(code),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(stage: &str, source: Option<&str>, offset: Option<i64>, bytes: usize) -> DeadLetter {
        DeadLetter {
            stage: stage.into(),
            reason: "r".into(),
            detail: String::new(),
            errors: vec![],
            tenant: Some("shop".into()),
            source_topic: source.map(str::to_string),
            source_partition: offset.map(|_| 0),
            source_offset: offset,
            original_key: Some(b"shop/e".to_vec()),
            original_value: Some(vec![1; bytes]),
            time: 1_000,
        }
    }

    #[test]
    fn a_retry_topic_stands_for_its_dispatch_topic_only_for_dispatchers() {
        let l = letter(
            "dispatcher.meta",
            Some("dispatch.meta.retry-10s"),
            Some(3),
            10,
        );
        assert_eq!(target(&l).unwrap(), "dispatch.meta");
        let l = letter("dispatcher.meta", Some("dispatch.meta"), Some(3), 10);
        assert_eq!(target(&l).unwrap(), "dispatch.meta");
        let l = letter("enricher", Some("x.retry-10s"), Some(3), 10);
        assert_eq!(target(&l).unwrap(), "x.retry-10s");
        let l = letter(
            "dispatcher.meta",
            Some("dispatch.meta.retry-s"),
            Some(3),
            10,
        );
        assert_eq!(target(&l).unwrap(), "dispatch.meta.retry-s");
    }

    #[test]
    fn unreplayable_letters_say_why() {
        assert_eq!(
            target(&letter("collector", None, None, 10)),
            Err(Skip::NoSourceTopic)
        );
        assert_eq!(
            target(&letter("deduplicator", Some("changelog"), Some(-1), 10)),
            Err(Skip::StateRecord)
        );
        assert_eq!(
            target(&letter(
                "enricher",
                Some("raw"),
                Some(1),
                MAX_ORIGINAL_BYTES
            )),
            Err(Skip::Truncated)
        );
        // An output the broker refused has no position, and goes where it was meant to.
        assert_eq!(
            target(&letter("enricher", Some("enriched"), None, 10)).unwrap(),
            "enriched"
        );
        // ...unless it was not copied: nothing to write, nowhere to read it.
        let mut l = letter("enricher", Some("enriched"), None, 10);
        l.original_value = None;
        assert_eq!(target(&l), Err(Skip::NoOriginal));
        // A stage's state by reference is still a state.
        let mut l = letter("deduplicator", Some("changelog"), Some(-1), 10);
        l.original_value = None;
        assert_eq!(target(&l), Err(Skip::StateRecord));
    }

    #[test]
    fn a_letter_by_reference_is_read_from_its_source_and_written_to_its_stage_input() {
        let mut l = letter("enricher", Some("conversions.raw"), Some(41), 10);
        assert_eq!(at_source(&l), None, "it carries its original");
        l.original_value = None;
        assert_eq!(target(&l).unwrap(), "conversions.raw");
        assert_eq!(
            at_source(&l),
            Some(SourceRecord {
                topic: "conversions.raw".into(),
                partition: 0,
                offset: 41,
            })
        );
        // A dispatcher's letter: written to the dispatch topic, read from
        // the retry topic that holds it.
        let mut l = letter(
            "dispatcher.tiktok",
            Some("dispatch.tiktok.retry-60s"),
            Some(7),
            10,
        );
        l.original_value = None;
        assert_eq!(target(&l).unwrap(), "dispatch.tiktok");
        assert_eq!(
            at_source(&l).map(|s| s.topic),
            Some("dispatch.tiktok.retry-60s".to_string())
        );
        // No partition: no place to read it at.
        l.source_partition = None;
        assert_eq!(at_source(&l), None);
        assert_eq!(target(&l), Err(Skip::NoOriginal));
    }

    #[test]
    fn filters_combine_and_a_stage_names_its_platforms() {
        let l = letter("dispatcher.meta", Some("dispatch.meta"), Some(1), 1);
        let f = |stages: &[&str]| Filters {
            stages: stages.iter().map(|s| s.to_string()).collect(),
            ..Filters::default()
        };
        assert!(f(&[]).matches(&l));
        assert!(f(&["dispatcher"]).matches(&l));
        assert!(f(&["dispatcher.meta"]).matches(&l));
        assert!(!f(&["dispatcher.me"]).matches(&l));
        assert!(!f(&["dispatch"]).matches(&l));
        assert!(f(&["enricher", "dispatcher.meta"]).matches(&l));
        let mut tenant = f(&["dispatcher"]);
        tenant.tenants = vec!["other".into()];
        assert!(!tenant.matches(&l));
        let window = Filters {
            since: Some(1_000),
            until: Some(1_001),
            ..Filters::default()
        };
        assert!(window.matches(&l));
        let after = Filters {
            until: Some(1_000),
            ..Filters::default()
        };
        assert!(!after.matches(&l), "until is exclusive");
    }

    #[test]
    fn times_are_rfc3339_milliseconds_or_ages() {
        let now = 10 * 86_400_000;
        assert_eq!(
            parse_time("--since", "1700000000000", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_time("--since", "2d", now).unwrap(), 8 * 86_400_000);
        assert_eq!(parse_time("--since", "30m", now).unwrap(), now - 1_800_000);
        assert_eq!(
            parse_time("--since", "2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("--since", "yesterday", now).is_err());
    }

    #[test]
    fn unknown_arguments_and_missing_values_are_refused() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Options::parse(args(&["--tennant", "shop"]), 0).is_err());
        assert!(Options::parse(args(&["--stage"]), 0).is_err());
        assert!(Options::parse(args(&["--stage", "--dry-run"]), 0).is_err());
        assert!(Options::parse(args(&["--batch", "0"]), 0).is_err());
        assert!(Options::parse(args(&["--since", "2", "--until", "1"]), 0).is_err());
        let o = Options::parse(
            args(&["--stage", "enricher", "--stage", "collector", "--dry-run"]),
            0,
        )
        .unwrap();
        assert_eq!(o.filters.stages, ["enricher", "collector"]);
        assert!(o.dry_run);
        assert_eq!(o.rejected_topic, DEFAULT_REJECTED_TOPIC);
        assert_eq!(o.marker_topic, DEFAULT_MARKER_TOPIC);
    }
}
