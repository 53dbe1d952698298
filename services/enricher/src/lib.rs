//! The enricher: consumes conversions.raw and writes conversions.enriched
//! (same key), exactly once (one transaction per batch), scaling by
//! consumer group. Raw personal data
//! stops here: what it writes carries per-platform normalised SHA-256
//! hashes, consent and eligibility decisions, usable click ids and the
//! device.

pub mod click_ids;
pub mod config;
pub mod consent;
pub mod device;
pub mod enrich;
pub mod handler;
pub mod metrics;
pub mod normalize;
pub mod urls;

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::ConsumerLoop;
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{Readiness, StageOps};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::EnricherConfig;

pub const SERVICE: &str = "enricher";

#[derive(Debug, thiserror::Error)]
pub enum EnricherError {
    #[error(transparent)]
    Consumer(#[from] postback_core::kafka::ConsumerLoopError),
    #[error("ops server failed: {0}")]
    Ops(#[source] std::io::Error),
}

/// Runs the enricher until `shutdown`, serving /healthz, /readyz and
/// /metrics on `ops_listener`; drains the batch in hand before returning.
pub async fn run(
    config: EnricherConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), EnricherError> {
    let service_metrics = ServiceMetrics::new(SERVICE);
    let metrics = metrics::EnricherMetrics::new(&service_metrics);
    let readiness = Readiness::new();
    let dead_letters = DeadLetters::by_reference(handler::STAGE, config.topics.rejected.clone());
    let consumer = ConsumerLoop::new(
        &config.kafka,
        config.loop_config("postback-enricher", vec![config.topics.raw.clone()]),
        dead_letters.clone(),
        &service_metrics,
    )
    .await?;
    let mut handler = handler::EnrichHandler::new(
        enrich::Enricher::new(config.stage.tenants(), config.platforms.clone()).with_url_allowlist(
            urls::QueryAllowlist::new(&config.stage.privacy.url_query_allowlist),
        ),
        config.topics.enriched.clone(),
        dead_letters,
        metrics,
    );
    let stage_ops = StageOps::spawn(
        ops_listener,
        service_metrics,
        readiness,
        consumer.probe_client(),
        shutdown.clone(),
    );
    let result = consumer.run(&mut handler, shutdown.clone()).await;
    stage_ops.stop().await.map_err(EnricherError::Ops)?;
    result.map_err(Into::into)
}
