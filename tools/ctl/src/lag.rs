//! `postback-ctl lag`: how far each consumer group is behind, from the
//! broker's own books (the offsets the group committed, in its transactions
//! or otherwise, against each partition's end), not from any service's
//! metrics. It is what KEDA scales on, and the way to check a lag alert or
//! gauge when a service is down or its metrics are in doubt.

use std::time::Duration;

use anyhow::{bail, Context};
use postback_core::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub const HELP: &str = "\
  lag [GROUP=TOPIC ...] [--timeout-secs S]
      Records each group has not committed yet, per partition of its topic,
      from the broker (committed offset to the partition's end). Without
      arguments: the pipeline's groups on their default topics.
";

/// The stages' groups on their input topics, as the defaults name them.
const PIPELINE: &[(&str, &str)] = &[
    ("postback-enricher", "conversions.raw"),
    ("postback-deduplicator", "conversions.enriched"),
    ("postback-dispatcher-meta", "dispatch.meta"),
    ("postback-dispatcher-google_ads", "dispatch.google_ads"),
    ("postback-dispatcher-tiktok", "dispatch.tiktok"),
];

/// One partition's position in a group.
#[derive(Debug, serde::Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// None: the group never committed on this partition (it starts at the
    /// log start, auto.offset.reset = earliest).
    pub committed: Option<i64>,
    pub end: i64,
    pub lag: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub lag: i64,
    pub partitions: Vec<PartitionLag>,
}

pub fn parse(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    if args.is_empty() {
        return Ok(PIPELINE
            .iter()
            .map(|(g, t)| (g.to_string(), t.to_string()))
            .collect());
    }
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((g, t)) if !g.is_empty() && !t.is_empty() => Ok((g.to_string(), t.to_string())),
            _ => bail!("lag takes GROUP=TOPIC pairs, not {a:?}"),
        })
        .collect()
}

pub fn run(
    kafka: &KafkaConfig,
    pairs: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Vec<GroupLag>> {
    pairs
        .iter()
        .map(|(group, topic)| {
            group_lag(kafka, group, topic, timeout)
                .with_context(|| format!("reading the lag of group {group} on {topic}"))
        })
        .collect()
}

fn group_lag(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<GroupLag> {
    // A consumer that never subscribes only reads the group's offsets; it
    // does not join the group or move anything.
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        bail!("the broker does not know {topic}");
    };
    if let Some(e) = t.error() {
        bail!("the broker does not know {topic}: {e:?}");
    }
    let mut wanted = TopicPartitionList::new();
    for p in t.partitions() {
        wanted.add_partition(topic, p.id());
    }
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let mut partitions = Vec::new();
    for e in committed.elements() {
        let (low, end) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        let from = committed.unwrap_or(low);
        partitions.push(PartitionLag {
            partition: e.partition(),
            committed,
            end,
            lag: (end - from).max(0),
        });
    }
    partitions.sort_by_key(|p| p.partition);
    Ok(GroupLag {
        group: group.into(),
        topic: topic.into(),
        lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    })
}

impl GroupLag {
    pub fn human(&self) -> String {
        let never = self
            .partitions
            .iter()
            .filter(|p| p.committed.is_none())
            .count();
        let mut line = format!(
            "{} on {}: {} records behind over {} partitions",
            self.group,
            self.topic,
            self.lag,
            self.partitions.len()
        );
        if never > 0 {
            line.push_str(&format!(" ({never} never committed)"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_or_the_pipelines_groups() {
        assert_eq!(parse(&[]).unwrap().len(), PIPELINE.len());
        assert_eq!(
            parse(&["g=t".into()]).unwrap(),
            vec![("g".to_string(), "t".to_string())]
        );
        for bad in ["g", "=t", "g="] {
            assert!(parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
