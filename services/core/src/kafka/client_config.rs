use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// The largest record value postback writes (librdkafka's
/// `message.max.bytes`, a little under the broker's default 1 MiB
/// `max.message.bytes`). Stages that build large records check against it
/// and dead-letter what would not fit, rather than let the broker refuse it.
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// A producer that writes each record once per partition, in order, and only
/// reports success after every in-sync replica has it.
pub fn producer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut cfg = kafka.client_config();
    cfg.set("client.id", client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", kafka.delivery_timeout_ms.to_string())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("compression.type", kafka.compression.as_str())
        .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
        .set("statistics.interval.ms", "0");
    for (k, v) in &kafka.producer_properties {
        cfg.set(k, v);
    }
    cfg
}

/// A consumer that reads committed records only, rebalances cooperatively
/// (a partition that stays with an instance is never revoked), and whose
/// offsets only move when the stage says (a transaction, or a stored offset
/// once the outputs of a record are acknowledged).
pub fn consumer_config(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> ClientConfig {
    let mut cfg = kafka.client_config();
    cfg.set("client.id", client_id)
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "5000");
    for (k, v) in &kafka.consumer_properties {
        cfg.set(k, v);
    }
    cfg
}
