//! Kafka plumbing shared by the services: client configuration, the
//! acknowledged producer, the transactional producer, the consumer loop
//! (exactly-once by default), topic creation and the broker readiness probe.

mod admin;
mod batch_writer;
mod client_config;
mod consumer;
mod handler;
mod lag;
mod producer;
mod rebalance;
mod transaction;

pub use admin::{
    create_topics, partition_count, probe_broker, topic_configs, watch_broker, TopicSpec,
};
pub use batch_writer::WriterFailed;
pub use client_config::{consumer_config, producer_config, MAX_RECORD_BYTES};
pub use consumer::{run_blocking, ConsumerLoop, ConsumerLoopConfig, ConsumerLoopError};
pub use handler::{HandlerError, InboundRecord, Persisted, RecordHandler, TopicPartition};
pub use lag::LagReporter;
pub use producer::{Delivered, DeliveryError, OutboundRecord, Producer};
pub use rdkafka::error::KafkaError;
pub use rebalance::LoopContext;
pub use transaction::{TransactionError, TransactionalProducer};

/// The transactional id of an instance of a consumer group: stable across
/// restarts exactly when `instance_id` is, so a restart fences (and aborts)
/// what its previous life left open.
pub fn transactional_id(group_id: &str, instance_id: &str) -> String {
    format!("{group_id}.{instance_id}")
}

/// A name for this process among the instances of its group: the
/// configured one (a StatefulSet pod name: stable across restarts, so a
/// restarted instance's transactional producer aborts at once what its
/// previous life left open), or one made up per start (what a crash left
/// open is then aborted after `kafka.transaction_timeout_ms`).
pub fn instance_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}
