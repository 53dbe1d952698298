//! The status service: a projection of conversions.status. It folds every
//! status record into the current front-end and server-side state of each
//! conversion on each platform, keeps the history behind it, and serves
//! both as a JSON API per tenant and a panel on top of it (`panel.rs`).
//!
//! It is a projection: it can be rebuilt from the topic (a new database
//! reads it from the start: the consumer group is named after the
//! database, `Store::projection_id`), and the fold is
//! order-free and idempotent (`fold.rs`), so at-least-once reading gives
//! exactly the state of the records on the topic.

pub mod api;
pub mod config;
pub mod fold;
pub mod handler;
pub mod keys;
pub mod legend;
pub mod metrics;
pub mod panel;
pub mod params;
pub mod queries;
pub mod rollups;
pub mod shards;
pub mod store;
pub mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::ConsumerLoop;
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{Readiness, StageOps};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::StatusConfig;
use crate::store::Store;

pub const SERVICE: &str = "status";

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Consumer(#[from] postback_core::kafka::ConsumerLoopError),
    #[error("cannot listen on {addr} for the API: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API server failed: {0}")]
    Api(#[source] std::io::Error),
    #[error("ops server failed: {0}")]
    Ops(#[source] std::io::Error),
}

/// Runs the status service until `shutdown`: the projection's consumer,
/// the API on `http.listen`, the ops endpoints on `ops_listener`.
pub async fn run(
    config: StatusConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StatusError> {
    let api_listener = TcpListener::bind(config.stage.http.listen)
        .await
        .map_err(|source| StatusError::Listen {
            addr: config.stage.http.listen,
            source,
        })?;
    run_with_listener(config, api_listener, ops_listener, shutdown).await
}

/// `run` on a listener the caller bound (tests: port 0).
pub async fn run_with_listener(
    config: StatusConfig,
    api_listener: TcpListener,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StatusError> {
    let service_metrics = ServiceMetrics::new(SERVICE);
    let metrics = metrics::StatusMetrics::new(&service_metrics);
    let store = Store::open(&config.stage.store).await?;
    tracing::info!(store = %config::redacted_url(&config.stage.store.url), "status store open");
    let dead_letters = DeadLetters::by_reference(handler::STAGE, config.topics.rejected.clone());
    let mut loop_config = config.loop_config("postback-status", vec![config.topics.status.clone()]);
    // The group's offsets describe this database's rows (see
    // `Store::projection_id`): a new database reads the topic from its start.
    let projection = store.projection_id().await?;
    loop_config.group_id = format!("{}.{projection}", loop_config.group_id);
    tracing::info!(group = %loop_config.group_id, "projection's consumer group");
    // Nothing but dead letters goes to Kafka: the database holds the work,
    // written before the offsets move and idempotent if read again.
    loop_config.exactly_once = false;
    let consumer = ConsumerLoop::new(
        &config.kafka,
        loop_config,
        dead_letters.clone(),
        &service_metrics,
    )
    .await?;
    let mut handler = handler::StatusHandler::new(
        store.clone(),
        dead_letters,
        Duration::from_secs(config.stage.store.write_retry_secs),
        handler::CommitPolicy {
            every_records: config.stage.store.commit_every_records,
            within: Duration::from_millis(config.stage.store.commit_within_ms),
        },
        metrics.clone(),
    );
    let keys: HashMap<String, String> = config
        .stage
        .read_keys
        .iter()
        .filter_map(|k| Some((k.resolve()?, k.tenant.clone())))
        .collect();
    let api = api::router(Arc::new(api::ApiState {
        store,
        keys,
        max_page: config.stage.http.max_page,
        metrics,
    }))
    .merge(panel::router());
    let api_task = tokio::spawn(postback_core::serve::serve(
        api_listener,
        api,
        shutdown.clone(),
    ));
    let stage_ops = StageOps::spawn(
        ops_listener,
        service_metrics,
        Readiness::new(),
        consumer.probe_client(),
        shutdown.clone(),
    );
    let result = consumer.run(&mut handler, shutdown.clone()).await;
    // The API stops with the service, whichever ended it.
    shutdown.cancel();
    let served = api_task.await;
    stage_ops.stop().await.map_err(StatusError::Ops)?;
    result?;
    match served {
        Ok(r) => r.map_err(StatusError::Api),
        Err(e) => Err(StatusError::Api(std::io::Error::other(e))),
    }
}
