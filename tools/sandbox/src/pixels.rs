//! Stand-ins for the platforms' browser pixels, on the real libraries' paths
//! (`/en_US/fbevents.js`, `/gtag/js`, `/i18n/pixel/events.js`), so a page
//! uses each platform's own snippet with the sandbox's host. Each behaves
//! like its platform's library where the browser tag looks (fbq.callMethod,
//! google_tag_manager, ttq.loaded; the _fbp/_fbc/_ttp cookies) and reports
//! every tracked event to `POST /pixel/hit`; `GET /admin/pixel_hits` lists
//! them, so a test sees which pixel really fired.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;

const COMMON: &str = include_str!("../pixels/common.js");
const META: &str = include_str!("../pixels/fbevents.js");
const GOOGLE: &str = include_str!("../pixels/gtag.js");
const TIKTOK: &str = include_str!("../pixels/tiktok.js");

/// Hits kept; the oldest go first.
const MAX_HITS: usize = 10_000;

/// One event a stand-in pixel sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PixelHit {
    pub platform: String,
    pub event_name: String,
    pub event_id: Option<String>,
    pub page: Option<String>,
    #[serde(default)]
    pub received_at_ms: i64,
}

#[derive(Default)]
pub struct PixelHits(Mutex<VecDeque<PixelHit>>);

impl PixelHits {
    fn lock(&self) -> MutexGuard<'_, VecDeque<PixelHit>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, hit: PixelHit) {
        let mut hits = self.lock();
        if hits.len() == MAX_HITS {
            hits.pop_front();
        }
        hits.push_back(hit);
    }

    pub fn list(&self, event_id: Option<&str>) -> Vec<PixelHit> {
        self.lock()
            .iter()
            .filter(|h| event_id.is_none_or(|id| h.event_id.as_deref() == Some(id)))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/en_US/fbevents.js", get(|| script(META)))
        .route("/gtag/js", get(|| script(GOOGLE)))
        .route("/i18n/pixel/events.js", get(|| script(TIKTOK)))
        .route("/pixel/hit", post(hit))
}

async fn script(body: &'static str) -> Response {
    let mut r = format!("{COMMON}\n{body}").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A beacon: text/plain JSON, no CORS (the page never reads the answer).
async fn hit(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    let mut hit: PixelHit = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("not a pixel hit: {e}") })),
            )
                .into_response()
        }
    };
    hit.received_at_ms = s.clock.now_ms();
    s.pixel_hits.record(hit);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
pub struct HitFilter {
    event_id: Option<String>,
}

pub async fn list_hits(State(s): State<Arc<AppState>>, Query(f): Query<HitFilter>) -> Response {
    Json(json!({ "hits": s.pixel_hits.list(f.event_id.as_deref()) })).into_response()
}
