//! postback-ctl: small operator commands against the pipeline's Kafka.
//!
//!   postback-ctl topics [--file config/topics.txt] [--prefix P]
//!   postback-ctl tail TOPIC [--count N] [--timeout-secs S]
//!   postback-ctl produce TOPIC [--key-field event_id] < records.jsonl
//!   postback-ctl lag [GROUP=TOPIC ...]
//!   postback-ctl replay [--stage S] [--reason R] [--tenant T] [--since T] [--until T] [--dry-run] ...
//!
//! Each command is a function here; `replay` (dead letters back to their
//! stage, once) is its own module, [`replay`].
//!
//! The broker connection is a service's `[kafka]` section: from
//! `--config FILE` (any service's file; its other sections are ignored),
//! then the `POSTBACK_KAFKA__*` environment (TLS, SASL), then `--bootstrap`.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use postback_core::avro::peek_fingerprint;
use postback_core::config::{ConfigError, KafkaConfig, Validate};
use postback_core::kafka::{create_topics, TopicSpec};
use postback_core::model::{ConversionEnriched, ConversionRaw, DeadLetter, DeliveryStatus};
use postback_core::{Codec, SchemaKind, SchemaRegistry};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod lag;
mod replay;

const USAGE: &str = "\
usage: postback-ctl [--config FILE] [--bootstrap HOST:PORT] COMMAND

The broker connection is a service's [kafka] section: from --config FILE (any
service's file; its other sections are ignored), then the POSTBACK_KAFKA__*
environment (TLS, SASL), then --bootstrap.

Commands:
  topics [--file config/topics.txt] [--prefix P]
      Creates every topic of the file with its partitions and configs.
  tail TOPIC [--count N] [--timeout-secs S]
      Prints the topic's records from the beginning as JSON lines, decoded.
  produce TOPIC [--key-field event_id] < records.jsonl
      Sends one record per stdin line, keyed by the JSON field.
";

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> Option<String> {
        let i = self.rest.iter().position(|a| a == name)?;
        self.rest.remove(i);
        if i < self.rest.len() {
            Some(self.rest.remove(i))
        } else {
            None
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args {
        rest: std::env::args().skip(1).collect(),
    };
    if args.rest.iter().any(|a| a == "--help" || a == "-h")
        || args.rest.first().is_some_and(|a| a == "help")
    {
        print!("{USAGE}{}{}", lag::HELP, replay::HELP);
        return Ok(());
    }
    let kafka = kafka_config(args.flag("--config"), args.flag("--bootstrap"))?;
    let command = if args.rest.is_empty() {
        String::new()
    } else {
        args.rest.remove(0)
    };
    match command.as_str() {
        "topics" => topics(&kafka, &mut args).await,
        "tail" => tail(&kafka, &mut args).await,
        "produce" => produce(&kafka, &mut args).await,
        "lag" => {
            let timeout: u64 = args
                .flag("--timeout-secs")
                .map(|c| c.parse())
                .transpose()?
                .unwrap_or(10);
            let pairs = lag::parse(&args.rest)?;
            let kafka = kafka.clone();
            let groups = tokio::task::spawn_blocking(move || {
                lag::run(&kafka, &pairs, Duration::from_secs(timeout))
            })
            .await??;
            for g in &groups {
                println!("{}", serde_json::to_string(g)?);
                eprintln!("lag: {}", g.human());
            }
            Ok(())
        }
        "replay" => {
            let options = replay::Options::parse(
                std::mem::take(&mut args.rest),
                postback_core::model::now_millis(),
            )?;
            let summary = replay::run(&kafka, &options).await?;
            println!("{}", serde_json::json!({ "summary": summary }));
            eprintln!("replay: {}", summary.human());
            Ok(())
        }
        _ => bail!("{USAGE}{}{}", lag::HELP, replay::HELP),
    }
}

/// Only the broker connection of a service's configuration.
#[derive(serde::Deserialize)]
struct ConnectionOnly {
    #[serde(default)]
    kafka: KafkaConfig,
}

impl Validate for ConnectionOnly {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()
    }
}

impl postback_core::config::PlainConfiguration for ConnectionOnly {}

fn kafka_config(file: Option<String>, bootstrap: Option<String>) -> anyhow::Result<KafkaConfig> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("POSTBACK_KAFKA__"))
        .collect();
    let mut kafka = postback_core::config::load_from::<ConnectionOnly>(
        file.as_deref().map(std::path::Path::new),
        env,
    )?
    .kafka;
    if let Some(servers) = bootstrap {
        kafka.bootstrap_servers = servers;
    }
    Ok(kafka)
}

/// Creates the topics listed in the topics file (name, partitions, configs).
async fn topics(kafka: &KafkaConfig, args: &mut Args) -> anyhow::Result<()> {
    let file = args
        .flag("--file")
        .unwrap_or_else(|| "config/topics.txt".into());
    let prefix = args.flag("--prefix").unwrap_or_default();
    let text = std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?;
    let mut specs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(partitions)) = (parts.next(), parts.next()) else {
            bail!("{file}:{}: expected `name partitions [k=v,...]`", n + 1);
        };
        let mut spec = TopicSpec::new(
            format!("{prefix}{name}"),
            partitions
                .parse()
                .with_context(|| format!("{file}:{}: partitions", n + 1))?,
        );
        if let Some(configs) = parts.next() {
            for kv in configs.split(',') {
                match (kv.split_once('='), spec.configs.last_mut()) {
                    (Some((k, v)), _) => spec.configs.push((k.to_string(), v.to_string())),
                    // A list value: cleanup.policy=compact,delete.
                    (None, Some((_, v))) if !kv.is_empty() => {
                        v.push(',');
                        v.push_str(kv);
                    }
                    (None, _) => bail!("{file}:{}: config `{kv}` is not key=value", n + 1),
                }
            }
        }
        specs.push(spec);
    }
    create_topics(kafka, &specs).await?;
    for s in &specs {
        println!("{} ({} partitions)", s.name, s.partitions);
    }
    Ok(())
}

/// Prints a topic's records as JSON lines, decoding postback's Avro by the
/// writer fingerprint; anything else is printed as text.
async fn tail(kafka: &KafkaConfig, args: &mut Args) -> anyhow::Result<()> {
    let count: usize = args
        .flag("--count")
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let timeout: u64 = args
        .flag("--timeout-secs")
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(10);
    let Some(topic) = args.rest.first().cloned() else {
        bail!("tail needs a topic");
    };
    let group = format!("postback-ctl-tail-{}", std::process::id());
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut seen = 0;
    while seen < count {
        let msg = match tokio::time::timeout(Duration::from_secs(timeout), consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                eprintln!("consumer error: {e}");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        seen += 1;
        let key = msg
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value = msg.payload().map(decode).unwrap_or(serde_json::Value::Null);
        println!(
            "{}",
            serde_json::json!({"partition": msg.partition(), "offset": msg.offset(), "key": key, "value": value})
        );
    }
    eprintln!("{seen} record(s) from {topic}");
    Ok(())
}

fn decode(bytes: &[u8]) -> serde_json::Value {
    fn json<T: serde::Serialize + serde::de::DeserializeOwned>(
        kind: SchemaKind,
        bytes: &[u8],
    ) -> serde_json::Value {
        match Codec::<T>::new(kind).decode(bytes) {
            Ok(v) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
            Err(e) => serde_json::json!({"undecodable": e.to_string()}),
        }
    }
    let kind = peek_fingerprint(bytes)
        .ok()
        .and_then(|fp| SchemaRegistry::global().writer_schema(fp))
        .map(|(k, _)| k);
    match kind {
        Some(SchemaKind::ConversionRaw) => json::<ConversionRaw>(SchemaKind::ConversionRaw, bytes),
        Some(SchemaKind::ConversionEnriched) => {
            let mut v = json::<ConversionEnriched>(SchemaKind::ConversionEnriched, bytes);
            // Digests print as the hex the platforms receive.
            if let Some(sets) = v.get_mut("identifiers").and_then(|i| i.as_array_mut()) {
                for set in sets.iter_mut().filter_map(|s| s.as_object_mut()) {
                    for value in set.values_mut() {
                        if let Some(digest) = byte_array(value) {
                            *value = serde_json::Value::String(postback_core::model::hex(&digest));
                        }
                    }
                }
            }
            v
        }
        Some(SchemaKind::DeliveryStatus) => {
            json::<DeliveryStatus>(SchemaKind::DeliveryStatus, bytes)
        }
        Some(SchemaKind::DeadLetter) => {
            let mut v = json::<DeadLetter>(SchemaKind::DeadLetter, bytes);
            for field in ["original_key", "original_value"] {
                if let Some(slot) = v.get_mut(field) {
                    if let Some(b) = byte_array(slot) {
                        *slot = serde_json::Value::String(String::from_utf8_lossy(&b).into_owned());
                    }
                }
            }
            v
        }
        None => serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// A JSON array of numbers 0-255 as bytes (how serde renders Vec<u8>).
fn byte_array(v: &serde_json::Value) -> Option<Vec<u8>> {
    v.as_array()?
        .iter()
        .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect()
}

/// Produces one record per stdin line (e.g. JSON orders to an ingest topic).
async fn produce(kafka: &KafkaConfig, args: &mut Args) -> anyhow::Result<()> {
    let key_field = args
        .flag("--key-field")
        .unwrap_or_else(|| "event_id".into());
    let Some(topic) = args.rest.first().cloned() else {
        bail!("produce needs a topic");
    };
    let producer: FutureProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let mut n = 0;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let key = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| {
                v.get(&key_field)
                    .and_then(|k| k.as_str().map(str::to_string))
            })
            .unwrap_or_default();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&line),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
        n += 1;
    }
    eprintln!("{n} record(s) produced to {topic}");
    Ok(())
}
