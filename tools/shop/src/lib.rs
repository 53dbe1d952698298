//! A sample shop: what a retailer's site looks like to postback. Its pages
//! carry the browser tag the collector serves, a consent banner (Google
//! Consent Mode, an IAB TCF CMP or a plain one: `?cmp=tcf|plain|consent_mode`,
//! kept in a cookie), and the platforms' own pixel snippets pointed at the
//! sandbox's stand-in libraries. Its backend sends the server report of each
//! order to `/v1/events` with the same event id, as a shop's server would.
//!
//! A demo and test double: `scripts/run.sh` serves it, and the browser tests
//! of tests/tests/shop_to_panel.rs drive it in Chromium.

pub mod config;
mod orders;
mod pages;

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::ShopConfig;
use crate::orders::Orders;
use crate::pages::{Cmp, Page};

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

struct Shop {
    config: ShopConfig,
    orders: Orders,
    http: reqwest::Client,
}

pub fn router(config: ShopConfig) -> Router {
    let shop = Arc::new(Shop {
        orders: Orders::new(),
        http: reqwest::Client::new(),
        config,
    });
    Router::new()
        .route("/", get(landing))
        .route("/checkout", get(checkout))
        .route("/order", post(order))
        .route("/thanks", get(thanks))
        .route("/assets/consent.js", get(consent_js))
        .route("/assets/shop.css", get(shop_css))
        .route("/healthz", get(|| async { "ok" }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(shop)
}

/// Serves the shop on `listener` until `shutdown`.
pub async fn run(
    config: ShopConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ShopError> {
    postback_core::serve::serve(listener, router(config), shutdown)
        .await
        .map_err(ShopError::Http)
}

#[derive(Deserialize)]
struct CmpQuery {
    cmp: Option<String>,
}

/// The CMP of this visit: `?cmp=` (remembered in a cookie), else the cookie.
fn cmp(query: &CmpQuery, headers: &HeaderMap) -> (Cmp, Option<HeaderValue>) {
    if let Some(c) = query.cmp.as_deref().and_then(Cmp::parse) {
        let set = HeaderValue::from_str(&format!(
            "shop_cmp={}; Path=/; Max-Age=86400; SameSite=Lax",
            c.as_str()
        ))
        .ok();
        return (c, set);
    }
    let from_cookie = cookie(headers, "shop_cmp").and_then(|v| Cmp::parse(&v));
    (from_cookie.unwrap_or(Cmp::ConsentMode), None)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn html(body: String, set_cookie: Option<HeaderValue>) -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    if let Some(c) = set_cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

async fn landing(
    State(shop): State<Arc<Shop>>,
    Query(q): Query<CmpQuery>,
    headers: HeaderMap,
) -> Response {
    let (cmp, set) = cmp(&q, &headers);
    html(Page::new(&shop.config, cmp).landing(), set)
}

async fn checkout(
    State(shop): State<Arc<Shop>>,
    Query(q): Query<CmpQuery>,
    headers: HeaderMap,
) -> Response {
    let (cmp, set) = cmp(&q, &headers);
    html(Page::new(&shop.config, cmp).checkout(), set)
}

#[derive(Deserialize)]
struct OrderForm {
    quantity: Option<u32>,
    email: Option<String>,
    /// The checkbox: present ("on") when the backend reports the order too.
    server_report: Option<String>,
}

/// The shop's backend: takes the order, sends its server report, and shows
/// the thank-you page (whatever the collector answered: a shop never fails
/// an order for its analytics).
async fn order(
    State(shop): State<Arc<Shop>>,
    headers: HeaderMap,
    Form(form): Form<OrderForm>,
) -> Response {
    let quantity = form.quantity.unwrap_or(1).clamp(1, 20);
    let email = form
        .email
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    let consent = cookie(&headers, "shop_consent");
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let order = shop.orders.create(quantity, email);
    let report = order.server_report(consent.as_deref(), user_agent.as_deref());
    let answer = match (&shop.config.api_key, form.server_report.is_some()) {
        (Some(key), true) => send_report(&shop, key, &report).await,
        (Some(_), false) => "not sent (browser only, as asked)".to_string(),
        (None, _) => "not sent (no API key: browser only)".to_string(),
    };
    tracing::info!(order = %order.id, server_report = %answer, "order placed");
    shop.orders.set_report(&order.id, answer);
    Redirect::to(&format!("/thanks?order={}", order.id)).into_response()
}

async fn send_report(shop: &Shop, key: &str, report: &serde_json::Value) -> String {
    let url = format!(
        "{}/v1/events",
        shop.config.collector_url.trim_end_matches('/')
    );
    match shop
        .http
        .post(url)
        .bearer_auth(key)
        .json(report)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => format!("collector answered {}", r.status().as_u16()),
        Err(e) => format!("collector unreachable: {e}"),
    }
}

#[derive(Deserialize)]
struct ThanksQuery {
    order: Option<String>,
    cmp: Option<String>,
}

async fn thanks(
    State(shop): State<Arc<Shop>>,
    Query(q): Query<ThanksQuery>,
    headers: HeaderMap,
) -> Response {
    let (cmp, set) = cmp(&CmpQuery { cmp: q.cmp }, &headers);
    let Some(order) = q.order.and_then(|id| shop.orders.get(&id)) else {
        return (StatusCode::NOT_FOUND, "no such order").into_response();
    };
    html(Page::new(&shop.config, cmp).thanks(&order), set)
}

async fn consent_js() -> Response {
    asset("text/javascript; charset=utf-8", pages::CONSENT_JS)
}

async fn shop_css() -> Response {
    asset("text/css; charset=utf-8", pages::SHOP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
