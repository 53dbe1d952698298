//! Google's OAuth 2.0 token endpoint (`POST /token`, refresh-token grant) and
//! the bearer tokens it issues. Tokens expire on the sandbox clock, so a
//! dispatcher's refresh path runs for real: advance the clock (or expire all
//! tokens through the admin API) and the next upload gets 401.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::config::GoogleAdsConfig;
use crate::ids::Ids;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer {
    Valid,
    Expired,
    Invalid,
}

struct Client {
    secret: String,
    refresh_tokens: HashSet<String>,
}

struct Issued {
    expires_at_ms: i64,
}

pub struct OAuth {
    clients: RwLock<HashMap<String, Client>>,
    issued: Mutex<HashMap<String, Issued>>,
    static_tokens: RwLock<HashSet<String>>,
    lifetime_secs: AtomicU64,
    ids: Arc<Ids>,
}

/// How long an expired token is still told apart from an unknown one
/// ("expired" vs "invalid" in the 401), before it is forgotten.
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

impl OAuth {
    pub fn from_config(config: &GoogleAdsConfig, ids: Arc<Ids>) -> Self {
        let clients = config
            .oauth_clients
            .iter()
            .map(|c| {
                (
                    c.client_id.clone(),
                    Client {
                        secret: c.client_secret.clone(),
                        refresh_tokens: c.refresh_tokens.iter().cloned().collect(),
                    },
                )
            })
            .collect();
        OAuth {
            clients: RwLock::new(clients),
            issued: Mutex::new(HashMap::new()),
            static_tokens: RwLock::new(config.static_access_tokens.iter().cloned().collect()),
            lifetime_secs: AtomicU64::new(config.access_token_lifetime_secs),
            ids,
        }
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs.load(Ordering::SeqCst)
    }

    pub fn set_lifetime_secs(&self, secs: u64) {
        self.lifetime_secs.store(secs.max(1), Ordering::SeqCst);
    }

    pub fn add_client(&self, client_id: String, secret: String, refresh_token: Option<String>) {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        let client = clients.entry(client_id).or_insert_with(|| Client {
            secret: secret.clone(),
            refresh_tokens: HashSet::new(),
        });
        client.secret = secret;
        if let Some(t) = refresh_token {
            client.refresh_tokens.insert(t);
        }
    }

    pub fn add_static_token(&self, token: String) {
        self.static_tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token);
    }

    pub fn check(&self, token: &str, now_ms: i64) -> Bearer {
        if self
            .static_tokens
            .read()
            .map(|s| s.contains(token))
            .unwrap_or(false)
        {
            return Bearer::Valid;
        }
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        match issued.get(token) {
            Some(t) if t.expires_at_ms > now_ms => Bearer::Valid,
            Some(_) => Bearer::Expired,
            None => Bearer::Invalid,
        }
    }

    /// Expires every issued token now (static tokens stay valid).
    pub fn expire_all(&self, now_ms: i64) -> usize {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for t in issued.values_mut() {
            if t.expires_at_ms > now_ms {
                t.expires_at_ms = now_ms;
                n += 1;
            }
        }
        n
    }

    fn issue(&self, now_ms: i64) -> (String, u64) {
        let lifetime = self.lifetime_secs();
        let token = format!("ya29.sandbox-{}", self.ids.alnum(48));
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.retain(|_, t| t.expires_at_ms.saturating_add(FORGET_AFTER_MS) > now_ms);
        let lifetime_ms = i64::try_from(lifetime)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        issued.insert(
            token.clone(),
            Issued {
                expires_at_ms: now_ms.saturating_add(lifetime_ms),
            },
        );
        (token, lifetime)
    }

    fn grant(&self, form: &TokenForm) -> Result<(), (StatusCode, &'static str, &'static str)> {
        let (Some(grant_type), Some(client_id)) = (&form.grant_type, &form.client_id) else {
            return Err((
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: grant_type or client_id",
            ));
        };
        if grant_type != "refresh_token" {
            return Err((
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid grant_type: only refresh_token is supported by the sandbox",
            ));
        }
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        let client = match clients.get(client_id) {
            Some(c) if form.client_secret.as_deref() == Some(c.secret.as_str()) => c,
            _ => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "The OAuth client was not found.",
                ))
            }
        };
        match &form.refresh_token {
            Some(t) if client.refresh_tokens.contains(t) => Ok(()),
            Some(_) => Err((StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request")),
            None => Err((
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: refresh_token",
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

/// `POST /token`: form-encoded as Google's client libraries send it; a JSON
/// body is accepted too, as Google's endpoint does.
pub async fn token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let form: Result<TokenForm, String> = if is_json {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes(&body).map_err(|e| e.to_string())
    };
    let outcome = match form {
        Err(_) => Err((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Could not parse the request body",
        )),
        Ok(form) => state.oauth.grant(&form),
    };
    match outcome {
        Ok(()) => {
            let (access_token, expires_in) = state.oauth.issue(state.clock.now_ms());
            state.metrics.oauth.with_label_values(&["issued"]).inc();
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({
                    "access_token": access_token,
                    "expires_in": expires_in,
                    "scope": "https://www.googleapis.com/auth/adwords",
                    "token_type": "Bearer",
                })),
            )
                .into_response()
        }
        Err((status, error, description)) => {
            state.metrics.oauth.with_label_values(&[error]).inc();
            tracing::info!(error, "token request refused");
            (
                status,
                Json(json!({ "error": error, "error_description": description })),
            )
                .into_response()
        }
    }
}
