//! The collector: where conversions enter postback. It validates them
//! strictly and writes each accepted one to conversions.raw, answering 2xx
//! only once the broker acknowledged it.

pub mod api;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod publish;
pub mod tag;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{watch_broker, ConsumerLoop, ConsumerLoopConfig, Producer};
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{self, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorConfig;
use crate::metrics::CollectorMetrics;
use crate::publish::Publisher;

pub const SERVICE: &str = "collector";

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Ingest(#[from] postback_core::kafka::ConsumerLoopError),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Runs the collector on `listener` until `shutdown`; then stops taking
/// requests, lets in-flight ones finish (their broker acknowledgements
/// included), and drains the ingest consumer.
pub async fn run(
    config: CollectorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    let service_metrics = ServiceMetrics::new(SERVICE);
    let metrics = CollectorMetrics::new(&service_metrics);
    let readiness = Readiness::new();
    let producer =
        Producer::new(&config.kafka, "postback-collector").map_err(CollectorError::Producer)?;
    let publisher = Publisher::new(
        producer.clone(),
        config.topics.raw.clone(),
        readiness.clone(),
        metrics.clone(),
    );

    let probe = tokio::spawn(watch_broker(
        producer.client(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let ingest = if config.ingest.enabled {
        let tenants: HashMap<String, String> = config
            .ingest
            .topics
            .iter()
            .map(|t| (t.topic.clone(), t.tenant.clone()))
            .collect();
        let dead_letters = DeadLetters::new(ingest::STAGE, config.topics.rejected.clone());
        let consumer = ConsumerLoop::new(
            &config.kafka,
            ConsumerLoopConfig {
                group_id: config.ingest.group_id.clone(),
                client_id: "postback-collector-ingest".into(),
                topics: tenants.keys().cloned().collect(),
                max_batch: 500,
                linger: Duration::from_millis(5),
                exactly_once: config.ingest.exactly_once,
                instance_id: postback_core::kafka::instance_id(
                    config.ingest.instance_id.as_deref(),
                ),
            },
            dead_letters.clone(),
            &service_metrics,
        )
        .await?;
        let mut handler = ingest::IngestHandler::new(
            tenants,
            publisher.clone(),
            dead_letters,
            validate::Limits {
                max_future_ms: config.http.max_future_secs as i64 * 1000,
                ..validate::Limits::default()
            },
            metrics.clone(),
        );
        let token = shutdown.clone();
        Some(tokio::spawn(async move {
            consumer.run(&mut handler, token).await
        }))
    } else {
        None
    };

    let state = Arc::new(api::ApiState::new(&config, publisher, metrics));
    let app = api::router(state).merge(ops::router(service_metrics, readiness.clone()));
    readiness.set("http", true);
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "collector listening");
    let served = ops::serve(listener, app, shutdown.clone()).await;

    shutdown.cancel();
    if let Some(ingest) = ingest {
        match ingest.await {
            Ok(Err(e)) => tracing::error!(error = %e, "ingest consumer failed"),
            Err(e) => tracing::error!(error = %e, "ingest consumer panicked"),
            Ok(Ok(())) => {}
        }
    }
    let _ = probe.await;
    producer.flush(Duration::from_secs(10));
    served.map_err(CollectorError::Http)
}
