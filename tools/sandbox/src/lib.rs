//! The platform sandbox: Meta Conversions API, Google Ads click-conversion
//! uploads (with the OAuth token endpoint) and TikTok Events API, on the
//! platforms' own paths and with their documented validation, errors, batch
//! limits, dedup and throttling, so a dispatcher only swaps its base URL.
//! Quotas, latency, error rates and outages are injected per account, and an
//! admin API shows what was accepted, deduplicated and rejected.

// Platform errors are the sandbox's product, built at most once per request
// and carried straight into the response; boxing them buys nothing.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod checks;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod faults;
pub mod google_ads;
pub mod hostile;
pub mod ids;
pub mod meta;
pub mod metrics;
pub mod oauth;
pub mod pixels;
pub mod store;
pub mod tiktok;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use postback_core::metrics::ServiceMetrics;
use postback_core::ops::{self, Readiness};
use postback_core::Platform;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::SandboxClock;
use crate::config::SandboxConfig;
use crate::credentials::Credentials;
use crate::faults::Faults;
use crate::ids::Ids;
use crate::metrics::SandboxMetrics;
use crate::oauth::OAuth;
use crate::store::Store;

pub const SERVICE: &str = "sandbox";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Everything the handlers share.
pub struct AppState {
    pub clock: SandboxClock,
    pub ids: Arc<Ids>,
    pub store: Store,
    pub faults: Faults,
    pub credentials: Credentials,
    pub oauth: OAuth,
    pub metrics: SandboxMetrics,
    pub max_future_secs: i64,
    pub meta_throttle_code: i64,
    pub meta_throttle_status: StatusCode,
    pub config: SandboxConfig,
    pub pixel_hits: pixels::PixelHits,
    pub hostile: hostile::Hostile,
}

impl AppState {
    pub fn new(config: &SandboxConfig, clock: SandboxClock, metrics: &ServiceMetrics) -> Self {
        let ids = Arc::new(Ids::from_entropy());
        let faults = Faults::new(ids.clone());
        let now = clock.now_ms();
        for rule in &config.faults {
            faults.set(rule.platform, &rule.account, rule.spec(), now);
        }
        AppState {
            store: Store::new(config.rules.max_records, config.rules.dedup_window_secs),
            faults,
            credentials: Credentials::from_config(config),
            oauth: OAuth::from_config(&config.google_ads, ids.clone()),
            metrics: SandboxMetrics::new(metrics),
            max_future_secs: i64::try_from(config.rules.max_future_secs).unwrap_or(i64::MAX),
            meta_throttle_code: config.meta.throttle_code,
            meta_throttle_status: StatusCode::from_u16(config.meta.throttle_http_status)
                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            config: config.clone(),
            pixel_hits: pixels::PixelHits::default(),
            hostile: hostile::Hostile::default(),
            ids,
            clock,
        }
    }

    /// Counts one answered platform request.
    pub(crate) fn finish(&self, platform: Platform, outcome: &'static str, started: Instant) {
        self.store.count_request(platform, outcome);
        self.metrics
            .requests
            .with_label_values(&[platform.as_str(), outcome])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[platform.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records a rejected request or row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reject(
        &self,
        platform: Platform,
        account: &str,
        http_status: u16,
        code: String,
        message: String,
        field: Option<String>,
        event_id: Option<String>,
    ) {
        self.metrics
            .rejections
            .with_label_values(&[platform.as_str(), &code])
            .inc();
        self.metrics
            .events
            .with_label_values(&[platform.as_str(), "rejected"])
            .inc();
        tracing::debug!(
            platform = platform.as_str(),
            code = %code,
            field = field.as_deref().unwrap_or(""),
            "rejected"
        );
        self.store.reject(
            self.clock.now_ms(),
            platform,
            account,
            http_status,
            code,
            message,
            field,
            event_id,
        );
    }

    pub(crate) fn count_events(&self, platform: Platform, outcomes: &[store::Outcome]) {
        for o in outcomes {
            let label = match o {
                store::Outcome::Accepted => "accepted",
                store::Outcome::Duplicate { .. } => "duplicate",
            };
            self.metrics
                .events
                .with_label_values(&[platform.as_str(), label])
                .inc();
        }
    }

    pub(crate) fn count_fault(&self, platform: Platform, fault: &'static str) {
        self.metrics
            .faults
            .with_label_values(&[platform.as_str(), fault])
            .inc();
    }
}

/// The platform endpoints and the admin API (not the ops endpoints).
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.config.http.max_body_bytes;
    Router::new()
        .route("/{version}/{pixel_id}/events", post(meta::events))
        .route(
            "/{version}/customers/{target}",
            post(google_ads::upload_click_conversions),
        )
        .route("/token", post(oauth::token))
        .route("/open_api/v1.3/event/track/", post(tiktok::track))
        .route("/open_api/v1.3/event/track", post(tiktok::track))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hostile::answer,
        ))
        .merge(pixels::router())
        .nest("/admin", admin::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such endpoint in the sandbox" })),
    )
        .into_response()
}

/// A sandbox ready to serve: its state, metrics registry and readiness.
pub struct Sandbox {
    state: Arc<AppState>,
    service_metrics: ServiceMetrics,
    readiness: Readiness,
}

impl Sandbox {
    pub fn new(config: &SandboxConfig) -> Self {
        Self::with_clock(config, SandboxClock::system())
    }

    /// With a clock of the caller's choosing (tests: a `ManualClock`).
    pub fn with_clock(config: &SandboxConfig, clock: SandboxClock) -> Self {
        let service_metrics = ServiceMetrics::new(SERVICE);
        let state = Arc::new(AppState::new(config, clock, &service_metrics));
        Sandbox {
            state,
            service_metrics,
            readiness: Readiness::new(),
        }
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Platform endpoints, admin API, and /healthz /readyz /metrics.
    pub fn app(&self) -> Router {
        router(self.state.clone()).merge(ops::router(
            self.service_metrics.clone(),
            self.readiness.clone(),
        ))
    }

    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), SandboxError> {
        let app = self.app();
        self.readiness.set("sandbox", true);
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "sandbox listening"
        );
        postback_core::serve::serve(listener, app, shutdown)
            .await
            .map_err(SandboxError::Http)
    }
}

/// Serves the sandbox on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: SandboxConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SandboxError> {
    Sandbox::new(&config).serve(listener, shutdown).await
}
