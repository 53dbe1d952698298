//! The collector: where conversions enter postback. It validates them
//! strictly and writes each accepted one to conversions.raw, answering 2xx
//! only once the broker acknowledged it.

pub mod api;
pub mod caller;
pub mod config;
pub mod edge;
pub mod ingest;
pub mod metrics;
pub mod publish;
pub mod signed_ids;
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

/// Runs the collector until `shutdown`: the public API on `http.listen`,
/// the ops endpoints on `ops_listener` (`ops.listen`).
pub async fn run(
    config: CollectorConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CollectorError> {
    let api_listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(CollectorError::Http)?;
    run_with_listeners(config, api_listener, ops_listener, shutdown).await
}

/// `run` on listeners the caller bound (tests: port 0). Until `shutdown`;
/// then it stops taking requests, lets in-flight ones finish (their broker
/// acknowledgements included), and drains the ingest consumer.
pub async fn run_with_listeners(
    config: CollectorConfig,
    api_listener: TcpListener,
    ops_listener: TcpListener,
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

    let callers = Arc::new(caller::Callers::new(&config, metrics.clone()));
    let state = Arc::new(api::ApiState::new(&config, publisher, metrics));
    let app = api::router(state, callers, &config);
    let ops_app = ops::router(service_metrics, readiness.clone());
    readiness.set("http", true);
    let address = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %address(&api_listener), ops = %address(&ops_listener), "collector listening");
    let ops_served = tokio::spawn(postback_core::serve::serve(
        ops_listener,
        ops_app,
        shutdown.clone(),
    ));
    let served = postback_core::serve::serve(api_listener, app, shutdown.clone()).await;

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
    let ops_served = ops_served.await.unwrap_or(Ok(()));
    served.and(ops_served).map_err(CollectorError::Http)
}
