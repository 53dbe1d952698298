//! What every postback service shares, and nothing more: the conversion
//! model, the Avro codec and schema registry, configuration loading, the Kafka
//! producer and at-least-once consumer loop, metrics, the ops endpoints
//! (/healthz, /readyz, /metrics), logging set-up and graceful shutdown.
//!
//! A module that only one service needs lives in that service's crate.

pub mod avro;
pub mod config;
pub mod currency;
pub mod dead_letter;
pub mod eligibility;
pub mod kafka;
pub mod metrics;
pub mod minimise;
pub mod model;
pub mod ops;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use avro::{Codec, CodecError, SchemaKind, SchemaRegistry};
pub use model::Platform;
