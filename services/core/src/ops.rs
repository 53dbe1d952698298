//! The endpoints every service exposes: /healthz (the process serves),
//! /readyz (its dependencies are reachable: Kubernetes stops routing to it
//! otherwise) and /metrics (Prometheus text format).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::ServiceMetrics;

/// Named readiness checks; the service is ready when all are.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, check: &'static str, ready: bool) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.insert(check, ready);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.checks.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        let checks = self.snapshot();
        !checks.is_empty() && checks.values().all(|ok| *ok)
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: ServiceMetrics,
    readiness: Readiness,
}

/// /healthz, /readyz and /metrics; merge a service's own routes into it.
pub fn router(metrics: ServiceMetrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { metrics, readiness })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let checks = state.readiness.snapshot();
    let ready = state.readiness.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
        .into_response()
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// What runs beside a consumer stage's loop: its ops endpoints, and its
/// readiness following the broker.
pub struct StageOps {
    probe: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: CancellationToken,
}

impl StageOps {
    pub fn spawn(
        listener: TcpListener,
        metrics: ServiceMetrics,
        readiness: Readiness,
        broker_client: rdkafka::producer::FutureProducer,
        shutdown: CancellationToken,
    ) -> Self {
        let probe = tokio::spawn(crate::kafka::watch_broker(
            broker_client,
            readiness.clone(),
            shutdown.clone(),
        ));
        let server = tokio::spawn(crate::serve::serve(
            listener,
            router(metrics, readiness),
            shutdown.clone(),
        ));
        StageOps {
            probe,
            server,
            shutdown,
        }
    }

    /// Stops both (the stage is done) and reports the server's failure.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        let _ = self.probe.await;
        match self.server.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "ops server panicked");
                Ok(())
            }
        }
    }
}
