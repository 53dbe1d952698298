//! Who is calling, decided from the request's head before a byte of its
//! body is read: a server by its API key (`Authorization: Bearer`), a
//! browser by its public site key (`?site_key=`) and an Origin the key
//! allows. Each configured key has its own rate (governor's GCRA); past it
//! the answer is 429 with Retry-After. An unknown key is refused before it
//! reaches a limiter, so there is one limiter per configured key and no
//! request can add one.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::api::ErrorBody;
use crate::config::CollectorConfig;
use crate::metrics::CollectorMetrics;
use crate::signed_ids::EventSigner;

/// The caller of a request that passed: what the handler needs.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    /// A browser's Origin, checked against its site key.
    pub origin: Option<String>,
    /// The site key's, when its events' ids must be signed.
    pub signer: Option<Arc<EventSigner>>,
}

struct Key {
    tenant: String,
    /// Empty for API keys.
    origins: Vec<String>,
    limiter: DefaultDirectRateLimiter,
    signer: Option<Arc<EventSigner>>,
}

/// A refusal's reason (the metric's label and the body's code), status
/// and message.
type Refusal = (&'static str, StatusCode, &'static str);

pub struct Callers {
    api_keys: HashMap<String, Key>,
    site_keys: HashMap<String, Key>,
    metrics: CollectorMetrics,
}

impl Callers {
    pub fn new(config: &CollectorConfig, metrics: CollectorMetrics) -> Callers {
        let quota = Quota::per_second(
            NonZeroU32::new(config.http.requests_per_second_per_key).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(config.http.burst_per_key).unwrap_or(NonZeroU32::MIN));
        let key = |tenant: &str, origins: &[String], secret: Option<String>| Key {
            tenant: tenant.to_string(),
            origins: origins.to_vec(),
            limiter: RateLimiter::direct(quota),
            signer: secret.map(|s| Arc::new(EventSigner::new(s.as_bytes()))),
        };
        Callers {
            api_keys: config
                .api_keys
                .iter()
                .filter_map(|k| k.resolve().map(|value| (value, key(&k.tenant, &[], None))))
                .collect(),
            site_keys: config
                .site_keys
                .iter()
                .map(|s| {
                    let k = key(&s.tenant, &s.allowed_origins, s.signing_secret());
                    (s.key.clone(), k)
                })
                .collect(),
            metrics,
        }
    }

    /// Whether `origin` may use the site key `key` (the CORS preflight).
    pub fn origin_allowed(&self, key: Option<&str>, origin: &str) -> bool {
        match key {
            Some(k) => self
                .site_keys
                .get(k)
                .is_some_and(|s| s.origins.iter().any(|o| o == origin)),
            None => self
                .site_keys
                .values()
                .any(|s| s.origins.iter().any(|o| o == origin)),
        }
    }

    fn refuse(&self, reason: &'static str, status: StatusCode, message: &str) -> Response {
        self.metrics.refused(reason);
        let body = ErrorBody {
            error: reason.into(),
            message: message.into(),
        };
        (status, Json(body)).into_response()
    }

    /// The site key, if it exists and allows the origin; else the refusal
    /// (without CORS headers: the browser keeps the page from reading it).
    fn browser_key<'a>(
        &self,
        site_key: Option<&str>,
        origin: Option<&'a str>,
    ) -> Result<(&Key, &'a str), Refusal> {
        let Some(site_key) = site_key else {
            return Err((
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                "missing site_key (the query string: /v1/collect?site_key=...)",
            ));
        };
        let Some(key) = self.site_keys.get(site_key) else {
            return Err(("unauthorized", StatusCode::UNAUTHORIZED, "unknown site_key"));
        };
        let Some(origin) = origin else {
            return Err((
                "origin_required",
                StatusCode::FORBIDDEN,
                "browser beacons must carry an Origin header",
            ));
        };
        if !key.origins.iter().any(|o| o == origin) {
            return Err((
                "origin_not_allowed",
                StatusCode::FORBIDDEN,
                "this origin is not allowed for the site key",
            ));
        }
        Ok((key, origin))
    }

    /// 429 with the seconds until `key` may send again, or None if it may
    /// now.
    fn over_rate(&self, key: &Key) -> Option<Response> {
        let not_until = key.limiter.check().err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut r = self.refuse(
            "rate_limited",
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests for this key; retry after the time in Retry-After",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, retry_after(wait));
        Some(r)
    }
}

/// Whole seconds, rounded up, at least one.
pub fn retry_after(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// `POST /v1/events`: the Bearer API key decides the tenant.
pub async fn server(
    State(callers): State<Arc<Callers>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = match bearer(request.headers()).and_then(|k| callers.api_keys.get(k)) {
        None => {
            let mut r = callers.refuse(
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                "missing or unknown API key (Authorization: Bearer <key>)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postback\""),
            );
            r
        }
        Some(key) => match callers.over_rate(key) {
            Some(r) => r,
            None => {
                request.extensions_mut().insert(Caller {
                    tenant: key.tenant.clone(),
                    origin: None,
                    signer: None,
                });
                next.run(request).await
            }
        },
    };
    callers.metrics.observe("events", started, &response);
    response
}

/// `POST /v1/collect`: the site key in the query string and an Origin it
/// allows. The key is never read from the body: the body is not read
/// until the caller is known.
pub async fn browser(
    State(callers): State<Arc<Callers>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let site_key = site_key(request.uri().query());
    let response = match callers.browser_key(site_key.as_deref(), origin.as_deref()) {
        Err((reason, status, message)) => callers.refuse(reason, status, message),
        Ok((key, origin)) => {
            let response = match callers.over_rate(key) {
                Some(r) => r,
                None => {
                    request.extensions_mut().insert(Caller {
                        tenant: key.tenant.clone(),
                        origin: Some(origin.to_string()),
                        signer: key.signer.clone(),
                    });
                    next.run(request).await
                }
            };
            allow_origin(response, origin)
        }
    };
    callers.metrics.observe("collect", started, &response);
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[derive(serde::Deserialize)]
struct SiteKeyQuery {
    site_key: Option<String>,
}

/// The `site_key` of a query string, decoded; None if absent or the
/// query string does not parse.
pub fn site_key(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<SiteKeyQuery>(query.unwrap_or_default())
        .ok()?
        .site_key
}

/// The CORS answer for an allowed origin. sendBeacon sends credentials;
/// the exact origin plus `Allow-Credentials` is what the browser requires
/// for such a request.
pub fn allow_origin(mut response: Response, origin: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(origin) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::ZERO), "1");
        assert_eq!(retry_after(Duration::from_millis(2_001)), "3");
    }

    #[test]
    fn the_site_key_comes_from_the_query_string_decoded() {
        assert_eq!(
            site_key(Some("a=1&site_key=pk%2Bx")).as_deref(),
            Some("pk+x")
        );
        assert_eq!(site_key(Some("a=1")), None);
        assert_eq!(site_key(None), None);
    }
}
