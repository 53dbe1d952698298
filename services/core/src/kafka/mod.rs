//! Kafka plumbing shared by the services: client configuration, the
//! acknowledged producer, the at-least-once consumer loop, topic creation and
//! the broker readiness probe.

mod admin;
mod client_config;
mod consumer;
mod producer;

pub use admin::{create_topics, probe_broker, watch_broker, TopicSpec};
pub use client_config::{consumer_config, producer_config};
pub use consumer::{
    ConsumerLoop, ConsumerLoopConfig, ConsumerLoopError, HandlerError, InboundRecord,
    RecordHandler, TopicPartition,
};
pub use producer::{Delivered, DeliveryError, OutboundRecord, Producer};
pub use rdkafka::error::KafkaError;
