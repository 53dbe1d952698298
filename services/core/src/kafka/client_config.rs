use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// A producer that writes each record once per partition, in order, and only
/// reports success after every in-sync replica has it.
pub fn producer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", kafka.delivery_timeout_ms.to_string())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .set("statistics.interval.ms", "0");
    for (k, v) in kafka.properties.iter().chain(&kafka.producer_properties) {
        cfg.set(k, v);
    }
    cfg
}

/// A consumer whose offsets only move when the loop stores them, i.e. after
/// the outputs of a record are acknowledged.
pub fn consumer_config(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "5000");
    for (k, v) in kafka.properties.iter().chain(&kafka.consumer_properties) {
        cfg.set(k, v);
    }
    cfg
}
