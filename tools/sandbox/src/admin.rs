//! The admin and inspection API under /admin: what was accepted, duplicated
//! and rejected; request counts; quotas and faults; credentials; the clock;
//! reset. JSON in and out. It has no authentication: bind the sandbox to
//! localhost or a private network.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use postback_core::Platform;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::faults::FaultSpec;
use crate::store::Filter;
use crate::AppState;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/events", get(events))
        .route("/duplicates", get(duplicates))
        .route("/rejections", get(rejections))
        .route("/stats", get(stats))
        .route("/faults", get(list_faults).delete(clear_faults))
        .route(
            "/faults/{platform}/{account}",
            put(set_fault).delete(clear_fault),
        )
        .route("/settings", get(settings).put(update_settings))
        .route("/hostile", get(crate::hostile::get))
        .route("/hostile/{platform}", put(crate::hostile::set))
        .route("/redirected", any(crate::hostile::redirected))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance_clock))
        .route("/oauth/expire", post(expire_tokens))
        .route("/accounts", get(accounts))
        .route("/credentials/meta", post(add_meta))
        .route("/credentials/tiktok", post(add_tiktok))
        .route("/credentials/google_ads", post(add_google))
        .route("/pixel_hits", get(crate::pixels::list_hits))
        .route("/reset", post(reset))
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.to_string() })),
    )
        .into_response()
}

fn filter(q: Result<Query<Filter>, QueryRejection>) -> Result<Filter, Response> {
    q.map(|Query(f)| f).map_err(|e| bad_request(e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    b.map(|Json(t)| t).map_err(|e| bad_request(e.body_text()))
}

fn platform(name: &str) -> Result<Platform, Response> {
    Platform::parse(name).ok_or_else(|| {
        bad_request(format!(
            "unknown platform `{name}` (meta, google_ads, tiktok)"
        ))
    })
}

async fn events(
    State(s): State<Arc<AppState>>,
    q: Result<Query<Filter>, QueryRejection>,
) -> Response {
    match filter(q) {
        Ok(f) => Json(s.store.accepted(&f)).into_response(),
        Err(r) => r,
    }
}

async fn duplicates(
    State(s): State<Arc<AppState>>,
    q: Result<Query<Filter>, QueryRejection>,
) -> Response {
    match filter(q) {
        Ok(f) => Json(s.store.duplicates(&f)).into_response(),
        Err(r) => r,
    }
}

async fn rejections(
    State(s): State<Arc<AppState>>,
    q: Result<Query<Filter>, QueryRejection>,
) -> Response {
    match filter(q) {
        Ok(f) => Json(s.store.rejections(&f)).into_response(),
        Err(r) => r,
    }
}

async fn stats(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(s.store.stats())
}

async fn list_faults(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "faults": s.faults.list(s.clock.now_ms()) }))
}

async fn clear_faults(State(s): State<Arc<AppState>>) -> StatusCode {
    s.faults.clear_all();
    s.hostile.clear();
    StatusCode::NO_CONTENT
}

async fn set_fault(
    State(s): State<Arc<AppState>>,
    Path((p, account)): Path<(String, String)>,
    spec: Result<Json<FaultSpec>, JsonRejection>,
) -> Response {
    let (p, spec) = match (platform(&p), body(spec)) {
        (Ok(p), Ok(spec)) => (p, spec),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if let Err((field, why)) = spec.check() {
        return bad_request(format!("{field}: {why}"));
    }
    tracing::info!(platform = p.as_str(), account = %account, "fault rule set");
    s.faults.set(p, &account, spec, s.clock.now_ms());
    list_faults(State(s)).await.into_response()
}

async fn clear_fault(
    State(s): State<Arc<AppState>>,
    Path((p, account)): Path<(String, String)>,
) -> Response {
    let p = match platform(&p) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if s.faults.clear(p, &account) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no rule for this platform and account" })),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    dedup_window_secs: Option<u64>,
    access_token_lifetime_secs: Option<u64>,
}

async fn settings(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "dedup_window_secs": s.store.dedup_window_secs(),
        "access_token_lifetime_secs": s.oauth.lifetime_secs(),
    }))
}

async fn update_settings(
    State(s): State<Arc<AppState>>,
    b: Result<Json<Settings>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.dedup_window_secs == Some(0) || b.access_token_lifetime_secs == Some(0) {
        return bad_request("windows and lifetimes must be at least 1 second");
    }
    if let Some(w) = b.dedup_window_secs {
        s.store.set_dedup_window_secs(w);
    }
    if let Some(l) = b.access_token_lifetime_secs {
        s.oauth.set_lifetime_secs(l);
    }
    settings(State(s)).await.into_response()
}

fn clock_view(s: &AppState) -> Value {
    json!({
        "now": rfc3339(s.clock.now_ms()),
        "now_unix": s.clock.now_secs(),
        "offset_secs": s.clock.offset_ms() / 1000,
    })
}

async fn clock(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(clock_view(&s))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    secs: i64,
}

/// Moves the sandbox clock forward (dedup windows, token expiry, event age,
/// outages and quota windows all follow it).
async fn advance_clock(
    State(s): State<Arc<AppState>>,
    b: Result<Json<Advance>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !(0..=10 * 365 * 86_400).contains(&b.secs) {
        return bad_request("secs must be between 0 and ten years: the clock only moves forward");
    }
    s.clock.advance_ms(b.secs * 1000);
    Json(clock_view(&s)).into_response()
}

async fn expire_tokens(State(s): State<Arc<AppState>>) -> Json<Value> {
    let n = s.oauth.expire_all(s.clock.now_ms());
    Json(json!({ "expired": n }))
}

async fn accounts(State(s): State<Arc<AppState>>) -> Response {
    Json(s.credentials.view()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaCredential {
    pixel_id: String,
    access_token: String,
}

async fn add_meta(
    State(s): State<Arc<AppState>>,
    b: Result<Json<MetaCredential>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.pixel_id.is_empty()
        || !b.pixel_id.bytes().all(|c| c.is_ascii_digit())
        || b.access_token.is_empty()
    {
        return bad_request("pixel_id must be digits and access_token non-empty");
    }
    s.credentials.add_meta(b.pixel_id, b.access_token);
    accounts(State(s)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TiktokCredential {
    pixel_code: String,
    access_token: String,
}

async fn add_tiktok(
    State(s): State<Arc<AppState>>,
    b: Result<Json<TiktokCredential>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.pixel_code.is_empty()
        || !b.pixel_code.bytes().all(|c| c.is_ascii_alphanumeric())
        || b.access_token.is_empty()
    {
        return bad_request("pixel_code must be alphanumeric and access_token non-empty");
    }
    s.credentials.add_tiktok(b.pixel_code, b.access_token);
    accounts(State(s)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthClientCredential {
    client_id: String,
    client_secret: String,
    refresh_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoogleCredential {
    developer_token: Option<String>,
    customer_id: Option<String>,
    #[serde(default)]
    conversion_actions: Vec<String>,
    #[serde(default = "yes")]
    customer_data_terms_accepted: bool,
    oauth_client: Option<OAuthClientCredential>,
    /// A bearer token that never expires.
    access_token: Option<String>,
}

fn yes() -> bool {
    true
}

async fn add_google(
    State(s): State<Arc<AppState>>,
    b: Result<Json<GoogleCredential>, JsonRejection>,
) -> Response {
    let b = match body(b) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let digits = |v: &str| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit());
    if b.customer_id.as_deref().is_some_and(|c| !digits(c))
        || !b.conversion_actions.iter().all(|a| digits(a))
    {
        return bad_request("customer_id and conversion_actions must be digits only");
    }
    if !b.conversion_actions.is_empty() && b.customer_id.is_none() {
        return bad_request("conversion_actions need a customer_id");
    }
    if let Some(t) = b.developer_token.filter(|t| !t.is_empty()) {
        s.credentials.add_developer_token(t);
    }
    if let Some(c) = b.customer_id {
        s.credentials
            .add_customer(c, b.conversion_actions, b.customer_data_terms_accepted);
    }
    if let Some(c) = b.oauth_client {
        if c.client_id.is_empty() || c.client_secret.is_empty() {
            return bad_request("oauth_client needs client_id and client_secret");
        }
        s.oauth
            .add_client(c.client_id, c.client_secret, c.refresh_token);
    }
    if let Some(t) = b.access_token.filter(|t| !t.is_empty()) {
        s.oauth.add_static_token(t);
    }
    accounts(State(s)).await
}

/// Forgets what was recorded (events, duplicates, rejections, counts, dedup
/// memory, quota windows). Faults, credentials, settings and the clock stay.
async fn reset(State(s): State<Arc<AppState>>) -> StatusCode {
    s.store.reset();
    s.pixel_hits.clear();
    s.faults.reset_windows();
    tracing::info!("sandbox records reset");
    StatusCode::NO_CONTENT
}
