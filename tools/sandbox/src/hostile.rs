//! Answers no platform gives, but a hijacked DNS name, a captive portal or
//! a broken proxy in front of one could: a redirect elsewhere, which must
//! never receive the dispatcher's credentials, and an answer too large to
//! hold. Set per platform (`PUT /admin/hostile/{platform}`); the upload
//! endpoints of that platform then answer with it, before any other rule.
//! The redirect points at `/admin/redirected`, which counts what reached it
//! and with which credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use postback_core::Platform;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostileAnswer {
    /// 307 to `/admin/redirected` (a 307 keeps the method and the body).
    Redirect,
    /// 200 with a body of 64 MiB, sent as fast as it is read.
    Oversized,
}

/// The size of an `oversized` answer.
pub const OVERSIZED_BYTES: usize = 64 << 20;

/// Headers that carry a platform credential.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "developer-token",
    "access-token",
    "login-customer-id",
];

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Redirected {
    /// Requests that followed a redirect here.
    pub requests: u64,
    /// Of them, those that carried a credential (a header above, or an
    /// `access_token` in the query string or the body).
    pub with_credentials: u64,
}

#[derive(Default)]
pub struct Hostile {
    answers: Mutex<HashMap<Platform, HostileAnswer>>,
    redirected: Mutex<Redirected>,
}

impl Hostile {
    pub fn set(&self, platform: Platform, answer: Option<HostileAnswer>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Some(a) => answers.insert(platform, a),
            None => answers.remove(&platform),
        };
    }

    pub fn clear(&self) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn answer(&self, platform: Platform) -> Option<HostileAnswer> {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&platform)
            .copied()
    }

    pub fn redirected(&self) -> Redirected {
        self.redirected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, with_credentials: bool) {
        let mut r = self.redirected.lock().unwrap_or_else(|e| e.into_inner());
        r.requests += 1;
        r.with_credentials += u64::from(with_credentials);
    }
}

/// The platform of an upload route.
fn platform_of(route: &str) -> Option<Platform> {
    if route.starts_with("/open_api/") {
        Some(Platform::Tiktok)
    } else if route.contains("/customers/") {
        Some(Platform::GoogleAds)
    } else if route.ends_with("/events") {
        Some(Platform::Meta)
    } else {
        None
    }
}

/// The middleware of the upload routes.
pub async fn answer(
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let hostile = platform_of(route.as_str()).and_then(|p| Some((p, state.hostile.answer(p)?)));
    let Some((platform, answer)) = hostile else {
        return next.run(request).await;
    };
    match answer {
        HostileAnswer::Redirect => {
            state.count_fault(platform, "redirect");
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            r.headers_mut().insert(
                header::LOCATION,
                header::HeaderValue::from_static("/admin/redirected"),
            );
            r
        }
        HostileAnswer::Oversized => {
            state.count_fault(platform, "oversized");
            let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
            let chunks =
                (0..OVERSIZED_BYTES >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
            let body = Body::from_stream(futures::stream::iter(chunks));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// `/admin/redirected`: where a followed redirect lands.
pub async fn redirected(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let credential_header = CREDENTIAL_HEADERS.iter().any(|h| headers.contains_key(*h));
    let token_in_query = uri.query().is_some_and(|q| q.contains("access_token"));
    let token_in_body = body.windows(12).any(|w| w == b"access_token");
    state
        .hostile
        .record(credential_header || token_in_query || token_in_body);
    (
        StatusCode::OK,
        Json(json!({"error": "a redirect was followed: it must not be"})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SetHostile {
    pub answer: Option<HostileAnswer>,
}

/// `PUT /admin/hostile/{platform}` `{"answer": "redirect" | "oversized" | null}`.
pub async fn set(
    State(state): State<Arc<AppState>>,
    Path(platform): Path<Platform>,
    Json(body): Json<SetHostile>,
) -> Response {
    state.hostile.set(platform, body.answer);
    Json(json!({"platform": platform, "answer": body.answer})).into_response()
}

/// `GET /admin/hostile`: what reached `/admin/redirected`.
pub async fn get(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({"redirected": state.hostile.redirected()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_routes_name_their_platform() {
        assert_eq!(
            platform_of("/{version}/{pixel_id}/events"),
            Some(Platform::Meta)
        );
        assert_eq!(
            platform_of("/{version}/customers/{target}"),
            Some(Platform::GoogleAds)
        );
        assert_eq!(
            platform_of("/open_api/v1.3/event/track/"),
            Some(Platform::Tiktok)
        );
        assert_eq!(platform_of("/token"), None);
    }
}
