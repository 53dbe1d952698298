//! Topic creation and broker reachability.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer as _};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::ops::Readiness;

#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Extra topic configs, e.g. cleanup.policy=compact, retention.ms.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            configs: Vec::new(),
        }
    }
}

/// Creates the topics that do not exist yet; existing ones are left alone.
pub async fn create_topics(kafka: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1));
            for (k, v) in &t.configs {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, error = %code, "cannot create topic");
                })
            }
        }
    }
    Ok(())
}

/// A topic's configuration as the broker applies it: every key with its
/// effective value (set on the topic, or the broker's default).
pub async fn topic_configs(
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<BTreeMap<String, String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let mut out = BTreeMap::new();
    for result in admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?
    {
        let resource = result.map_err(KafkaError::AdminOp)?;
        for entry in resource.entries {
            if let Some(value) = entry.value {
                out.insert(entry.name, value);
            }
        }
    }
    Ok(out)
}

/// Whether the broker answers a metadata request within `timeout`.
pub async fn probe_broker(client: &FutureProducer, timeout: Duration) -> bool {
    let client = client.clone();
    tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).is_ok())
        .await
        .unwrap_or(false)
}

/// Keeps the `broker` readiness check current until shutdown; `client` is
/// any producer of the service (its metadata requests are the probe).
pub async fn watch_broker(
    client: FutureProducer,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    loop {
        let ok = probe_broker(&client, Duration::from_secs(2)).await;
        readiness.set("broker", ok);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })) => {}
        }
    }
}

/// The partition count of `topic`. A topic another instance just created
/// may not be in every broker's metadata yet, so a missing one is looked
/// up again for up to 30 s before it counts as missing
/// (UnknownTopicOrPartition).
pub async fn partition_count(kafka: &KafkaConfig, topic: &str) -> Result<i32, KafkaError> {
    let client: rdkafka::consumer::BaseConsumer = kafka.client_config().create()?;
    let name = topic.to_string();
    let found = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer as _;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metadata = client.fetch_metadata(Some(&name), Duration::from_secs(30))?;
            let partitions = metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if partitions > 0 {
                return Ok::<_, KafkaError>(Some(partitions as i32));
            }
            if std::time::Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;
    found.ok_or(KafkaError::MetadataFetch(
        RDKafkaErrorCode::UnknownTopicOrPartition,
    ))
}
