//! The query API (docs/api/status.openapi.yaml): the list of a tenant's
//! conversions, one conversion with its history, and the per-platform
//! summary. A read key decides the tenant: no key, no data; a key sees its
//! tenant only (another tenant's conversion is a 404, as a missing one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use postback_core::model::now_millis;
use serde::Serialize;

use crate::metrics::StatusMetrics;
use crate::params::{self, BadParam, Params, LIST_PARAMS, SUMMARY_PARAMS};
use crate::store::{Store, StoreError};

pub struct ApiState {
    pub store: Store,
    /// Read key -> tenant.
    pub keys: HashMap<String, String>,
    pub max_page: u32,
    pub metrics: StatusMetrics,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/conversions", get(list))
        .route("/v1/conversions/{event_name}/{event_id}", get(detail))
        .route("/v1/summary", get(summary))
        .with_state(state)
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<BadParam> for ApiError {
    fn from(e: BadParam) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: "invalid_query",
                message: e.message,
                field: Some(e.field),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "status store query failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: "store_unavailable",
                message: "the status store did not answer; try again".into(),
                field: None,
            },
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        body: ErrorBody {
            error: "unauthorized",
            message: message.into(),
            field: None,
        },
    }
}

/// The tenant of the request's read key.
fn tenant<'a>(state: &'a ApiState, headers: &HeaderMap) -> Result<&'a str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("send a read key: Authorization: Bearer <key>"));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    token
        .and_then(|t| state.keys.get(t))
        .map(String::as_str)
        .ok_or_else(|| unauthorized("the read key is not valid"))
}

/// Counts the answer by endpoint and status, and times it.
fn answered(
    state: &ApiState,
    endpoint: &str,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state
        .metrics
        .requests
        .with_label_values(&[endpoint, response.status().as_str()])
        .inc();
    state
        .metrics
        .request_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let p = Params::parse(query.as_deref(), LIST_PARAMS)?;
        let filter = params::list_filter(&p)?;
        let limit = p.limit(50, state.max_page)?;
        let cursor = p.cursor()?;
        let page = state
            .store
            .list(tenant, &filter, limit, cursor.as_ref())
            .await?;
        Ok(Json(page).into_response())
    }
    .await;
    answered(&state, "list", started, result)
}

async fn detail(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((event_name, event_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let tenant = tenant(&state, &headers)?;
        Params::parse(query.as_deref(), &[])?;
        match state.store.detail(tenant, &event_name, &event_id).await? {
            Some(d) => Ok(Json(d).into_response()),
            None => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                body: ErrorBody {
                    error: "not_found",
                    message: "no conversion with this event name and id".into(),
                    field: None,
                },
            }),
        }
    }
    .await;
    answered(&state, "detail", started, result)
}

async fn summary(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let tenant = tenant(&state, &headers)?;
        let p = Params::parse(query.as_deref(), SUMMARY_PARAMS)?;
        let (from, to) = params::summary_range(&p, now_millis())?;
        let summary = state.store.summary(tenant, from, to).await?;
        Ok(Json(serde_json::json!({ "from": from, "to": to, "summary": summary })).into_response())
    }
    .await;
    answered(&state, "summary", started, result)
}
