//! Google Ads `POST /v{N}/customers/{customer_id}:uploadClickConversions`.
//!
//! Request-level problems (auth, malformed JSON, a bad enum, too many rows,
//! partialFailure not set) fail the whole call with a google.rpc.Status error.
//! Row-level problems are partial failures: HTTP 200, `{}` in `results` for
//! each failed row and one `partialFailureError` listing them with their
//! field paths. Field paths use the proto (snake_case) names, as Google does.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::DateTime;
use postback_core::Platform;
use serde_json::{json, Map, Value};

use crate::checks::{is_currency, is_sha256_hex, kind};
use crate::faults::{InjectedError, Verdict};
use crate::oauth::Bearer;
use crate::store::{DedupRule, Incoming, Outcome};
use crate::AppState;

const PLATFORM: Platform = Platform::GoogleAds;
pub const MAX_CONVERSIONS: usize = 2000;
pub const MAX_USER_IDENTIFIERS: usize = 5;
const MAX_AGE_SECS: i64 = 90 * 86_400;
const CONSENT_VALUES: &[&str] = &["UNSPECIFIED", "UNKNOWN", "GRANTED", "DENIED"];
const IDENTIFIER_SOURCES: &[&str] = &["UNSPECIFIED", "UNKNOWN", "FIRST_PARTY", "THIRD_PARTY"];
const ENVIRONMENTS: &[&str] = &["UNSPECIFIED", "UNKNOWN", "APP", "WEB"];

const REQUEST_FIELDS: &[&str] = &[
    "customerId",
    "conversions",
    "partialFailure",
    "validateOnly",
    "jobId",
    "debugEnabled",
];
const CONVERSION_FIELDS: &[&str] = &[
    "gclid",
    "gbraid",
    "wbraid",
    "conversionAction",
    "conversionDateTime",
    "conversionValue",
    "currencyCode",
    "orderId",
    "externalAttributionData",
    "customVariables",
    "cartData",
    "userIdentifiers",
    "conversionEnvironment",
    "consent",
    "customerType",
    "userIpAddress",
    "sessionAttributesEncoded",
    "sessionAttributesKeyValuePairs",
];
const IDENTIFIER_FIELDS: &[&str] = &[
    "userIdentifierSource",
    "hashedEmail",
    "hashedPhoneNumber",
    "mobileId",
    "thirdPartyUserId",
    "addressInfo",
];
const CONSENT_FIELDS: &[&str] = &["adUserData", "adPersonalization"];

/// One error of a GoogleAdsFailure.
#[derive(Debug, Clone)]
pub struct AdsError {
    /// The errorCode's key, e.g. `conversionUploadError`.
    pub family: &'static str,
    pub code: &'static str,
    pub message: String,
    /// `(field_name, index)` from the request root.
    pub location: Vec<(String, Option<usize>)>,
}

impl AdsError {
    fn new(family: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        AdsError {
            family,
            code,
            message: message.into(),
            location: Vec::new(),
        }
    }

    fn at(mut self, row: usize, fields: &[(&str, Option<usize>)]) -> Self {
        self.location = std::iter::once(("conversions".to_owned(), Some(row)))
            .chain(fields.iter().map(|(f, i)| ((*f).to_owned(), *i)))
            .collect();
        self
    }

    /// `conversions[3].user_identifiers[0].hashed_email`
    pub fn path(&self) -> String {
        let mut s = String::new();
        for (i, (name, index)) in self.location.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(name);
            if let Some(n) = index {
                s.push_str(&format!("[{n}]"));
            }
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut e = json!({
            "errorCode": { self.family: self.code },
            "message": self.message,
        });
        if !self.location.is_empty() {
            let elements: Vec<Value> = self
                .location
                .iter()
                .map(|(name, index)| match index {
                    Some(i) => json!({ "fieldName": name, "index": i }),
                    None => json!({ "fieldName": name }),
                })
                .collect();
            e["location"] = json!({ "fieldPathElements": elements });
        }
        e
    }
}

/// A whole-request failure: a google.rpc.Status.
#[derive(Debug, Clone)]
struct RequestError {
    status: StatusCode,
    grpc_status: &'static str,
    message: String,
    ads_errors: Vec<AdsError>,
    /// google.rpc.BadRequest field violations (JSON decoding problems).
    violations: Vec<(String, String)>,
    retry_after_secs: Option<u64>,
    outcome: &'static str,
}

impl RequestError {
    fn new(status: StatusCode, grpc_status: &'static str, message: impl Into<String>) -> Self {
        RequestError {
            status,
            grpc_status,
            message: message.into(),
            ads_errors: Vec::new(),
            violations: Vec::new(),
            retry_after_secs: None,
            outcome: "rejected",
        }
    }

    fn invalid(error: AdsError) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
        );
        e.ads_errors.push(error);
        e
    }

    fn bad_json(field: String, description: String) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            description.clone(),
        );
        e.violations.push((field, description));
        e
    }

    fn unauthenticated(code: &'static str, message: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
        e.ads_errors
            .push(AdsError::new("authenticationError", code, message));
        e.outcome = "unauthenticated";
        e
    }

    fn record_code(&self) -> String {
        self.ads_errors
            .first()
            .map(|e| e.code.to_owned())
            .unwrap_or_else(|| self.grpc_status.to_owned())
    }

    fn into_response(self, version: &str, request_id: &str) -> Response {
        let mut details = Vec::new();
        if !self.ads_errors.is_empty() {
            details.push(json!({
                "@type": failure_type(version),
                "errors": self.ads_errors.iter().map(AdsError::to_json).collect::<Vec<_>>(),
                "requestId": request_id,
            }));
        }
        if !self.violations.is_empty() {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": self.violations.iter().map(|(f, d)| json!({"field": f, "description": d})).collect::<Vec<_>>(),
            }));
        }
        let mut error = json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "status": self.grpc_status,
        });
        if !details.is_empty() {
            error["details"] = Value::Array(details);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

fn failure_type(version: &str) -> String {
    format!("type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure")
}

fn with_request_id(mut resp: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

pub async fn upload_click_conversions(
    State(state): State<Arc<AppState>>,
    Path((version, target)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let request_id = state.ids.alnum(22);
    let Some(customer_id) = parse_target(&version, &target) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}})),
        )
            .into_response();
    };
    let (outcome, resp) = match handle(&state, &version, customer_id, &headers, &body).await {
        Ok((outcome, body)) => (outcome, (StatusCode::OK, Json(body)).into_response()),
        Err(e) => {
            let outcome = e.outcome;
            (outcome, e.into_response(&version, &request_id))
        }
    };
    state.finish(PLATFORM, outcome, started);
    with_request_id(resp, &request_id)
}

/// `v23` + `1234567890:uploadClickConversions` -> the customer id.
fn parse_target<'a>(version: &str, target: &'a str) -> Option<&'a str> {
    let n = version.strip_prefix('v')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (customer, method) = target.split_once(':')?;
    (method == "uploadClickConversions").then_some(customer)
}

fn fault_error(state: &AppState, customer_id: &str, verdict: Verdict) -> Option<RequestError> {
    let (e, fault) = match verdict {
        Verdict::Pass => return None,
        Verdict::Outage | Verdict::Injected(InjectedError::Unavailable) => {
            let mut e = RequestError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            );
            e.outcome = if verdict == Verdict::Outage {
                "outage"
            } else {
                "injected_error"
            };
            (
                e,
                if verdict == Verdict::Outage {
                    "outage"
                } else {
                    "503"
                },
            )
        }
        Verdict::Injected(InjectedError::Internal) => {
            let mut e = RequestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "Internal error encountered.",
            );
            e.outcome = "injected_error";
            (e, "500")
        }
        Verdict::Throttled { .. } | Verdict::Injected(InjectedError::Throttle) => {
            let secs = match verdict {
                Verdict::Throttled { retry_after_secs } => retry_after_secs,
                _ => 1,
            };
            let mut e = RequestError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            );
            e.ads_errors.push(AdsError::new(
                "quotaError",
                "RESOURCE_EXHAUSTED",
                format!("Too many requests for customer {customer_id}. Retry in {secs} seconds."),
            ));
            e.retry_after_secs = Some(secs);
            e.outcome = "throttled";
            (e, "throttle")
        }
    };
    state.count_fault(PLATFORM, fault);
    Some(e)
}

async fn handle(
    state: &AppState,
    version: &str,
    customer_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(&'static str, Value), RequestError> {
    let rejected = |e: RequestError| {
        if e.outcome != "throttled" {
            state.reject(
                PLATFORM,
                customer_id,
                e.status.as_u16(),
                e.record_code(),
                e.message.clone(),
                e.ads_errors
                    .first()
                    .map(AdsError::path)
                    .filter(|p| !p.is_empty()),
                None,
            );
        }
        e
    };
    if !customer_id.bytes().all(|b| b.is_ascii_digit()) || customer_id.is_empty() {
        return Err(rejected(RequestError::invalid(AdsError::new(
            "requestError",
            "INVALID_CUSTOMER_ID",
            "The customer ID is invalid: use digits only, without dashes.",
        ))));
    }
    let verdict = state
        .faults
        .apply(&state.clock, PLATFORM, customer_id)
        .await;
    if let Some(e) = fault_error(state, customer_id, verdict) {
        return Err(e);
    }
    authenticate(state, customer_id, headers).map_err(rejected)?;
    let now_ms = state.clock.now_ms();
    let request = parse_request(version, body).map_err(rejected)?;
    if let Some(cid) = request.get("customerId") {
        if cid.as_str() != Some(customer_id) {
            return Err(rejected(RequestError::invalid(AdsError::new(
                "requestError",
                "INVALID_CUSTOMER_ID",
                "customer_id in the body does not match the URL.",
            ))));
        }
    }
    if request.get("partialFailure").and_then(Value::as_bool) != Some(true) {
        return Err(rejected(RequestError::invalid(AdsError::new(
            "partialFailureError",
            "PARTIAL_FAILURE_MODE_REQUIRED",
            "The partial failure field must be set to true.",
        ))));
    }
    if let Some(job) = request.get("jobId") {
        let ok = job_id(job).is_some_and(|n| (0..(1i64 << 31)).contains(&n));
        if !ok {
            return Err(rejected(RequestError::invalid(AdsError::new(
                "conversionUploadError",
                "INVALID_JOB_ID",
                "The job ID must be a non-negative number below 2^31.",
            ))));
        }
    }
    let validate_only = request.get("validateOnly").and_then(Value::as_bool) == Some(true);
    let conversions: &[Value] = request
        .get("conversions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if conversions.is_empty() {
        let mut e = AdsError::new(
            "fieldError",
            "REQUIRED",
            "The required field was not present.",
        );
        e.location = vec![("conversions".into(), None)];
        return Err(rejected(RequestError::invalid(e)));
    }
    if conversions.len() > MAX_CONVERSIONS {
        return Err(rejected(RequestError::invalid(AdsError::new(
            "conversionUploadError",
            "TOO_MANY_CONVERSIONS_IN_REQUEST",
            format!(
                "Upload fewer than {} events in a single request.",
                MAX_CONVERSIONS + 1
            ),
        ))));
    }

    let terms_ok = state.credentials.customer_data_terms_accepted(customer_id);
    let mut rows: Vec<Result<Map<String, Value>, AdsError>> = Vec::with_capacity(conversions.len());
    let mut incoming = Vec::new();
    let mut incoming_rows = Vec::new();
    for (i, c) in conversions.iter().enumerate() {
        let Some(c) = c.as_object() else {
            rows.push(Err(AdsError::new(
                "fieldError",
                "REQUIRED",
                "A conversion must be an object.",
            )
            .at(i, &[])));
            continue;
        };
        match validate_row(state, customer_id, i, c, now_ms, terms_ok) {
            Ok(v) => {
                incoming_rows.push(i);
                incoming.push(v.incoming(customer_id, c));
                rows.push(Ok(v.result));
            }
            Err(e) => rows.push(Err(e)),
        }
    }
    let outcomes = state.store.commit(now_ms, incoming, validate_only);
    state.count_events(PLATFORM, &outcomes);
    for (row, outcome) in incoming_rows.into_iter().zip(outcomes) {
        if let Outcome::Duplicate {
            matched_on,
            in_request,
        } = outcome
        {
            let (code, message, field) = match (matched_on, in_request) {
                ("order_id", false) => ("ORDER_ID_ALREADY_IN_USE", "The order ID was already used by a conversion of this conversion action.", "order_id"),
                ("order_id", true) => ("DUPLICATE_ORDER_ID", "The request contains several conversions with this order ID.", "order_id"),
                (_, false) => ("CLICK_CONVERSION_ALREADY_EXISTS", "A conversion with this click, conversion action and conversion date time was already uploaded.", "gclid"),
                (_, true) => ("DUPLICATE_CLICK_CONVERSION_IN_REQUEST", "The request contains this click conversion more than once.", "gclid"),
            };
            rows[row] = Err(
                AdsError::new("conversionUploadError", code, message).at(row, &[(field, None)])
            );
        }
    }

    let mut results = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        match row {
            Ok(r) => results.push(Value::Object(r)),
            Err(e) => {
                let order_id = conversions[i]
                    .get("orderId")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let duplicate = matches!(
                    e.code,
                    "ORDER_ID_ALREADY_IN_USE"
                        | "DUPLICATE_ORDER_ID"
                        | "CLICK_CONVERSION_ALREADY_EXISTS"
                        | "DUPLICATE_CLICK_CONVERSION_IN_REQUEST"
                );
                if !duplicate && !validate_only {
                    state.reject(
                        PLATFORM,
                        customer_id,
                        200,
                        e.code.to_owned(),
                        e.message.clone(),
                        Some(e.path()),
                        order_id,
                    );
                }
                results.push(json!({}));
                errors.push(e);
            }
        }
    }
    let ok = results.len() - errors.len();
    let outcome = match (ok, errors.len()) {
        (_, 0) => "accepted",
        (0, _) => "rejected",
        _ => "partial",
    };
    let mut response = Map::new();
    if !validate_only {
        response.insert("results".into(), Value::Array(results));
    }
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(|e| format!("{}, at {}", e.message, e.path()))
            .collect::<Vec<_>>()
            .join(", ");
        response.insert(
            "partialFailureError".into(),
            json!({
                "code": 3,
                "message": message,
                "details": [{
                    "@type": failure_type(version),
                    "errors": errors.iter().map(AdsError::to_json).collect::<Vec<_>>(),
                }],
            }),
        );
    }
    if let Some(job) = request.get("jobId").and_then(job_id) {
        response.insert("jobId".into(), json!(job));
    }
    Ok((outcome, Value::Object(response)))
}

fn job_id(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn authenticate(
    state: &AppState,
    customer_id: &str,
    headers: &HeaderMap,
) -> Result<(), RequestError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = bearer else {
        let mut e = RequestError::unauthenticated(
            "OAUTH_TOKEN_HEADER_INVALID",
            "The Authorization header is missing or is not a Bearer token.",
        );
        e.message = "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.".into();
        return Err(e);
    };
    match state.oauth.check(token, state.clock.now_ms()) {
        Bearer::Valid => {}
        Bearer::Expired => {
            return Err(RequestError::unauthenticated(
                "OAUTH_TOKEN_EXPIRED",
                "The OAuth access token has expired.",
            ))
        }
        Bearer::Invalid => {
            return Err(RequestError::unauthenticated(
                "OAUTH_TOKEN_INVALID",
                "The OAuth access token is invalid.",
            ))
        }
    }
    let developer_token = headers
        .get("developer-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !state.credentials.developer_token_ok(developer_token) {
        let mut e = RequestError::unauthenticated(
            "DEVELOPER_TOKEN_INVALID",
            "The developer token is not valid.",
        );
        e.message = "Request is missing required authentication credential.".into();
        return Err(e);
    }
    if let Some(login) = headers.get("login-customer-id") {
        let ok = login
            .to_str()
            .is_ok_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(RequestError::invalid(AdsError::new(
                "requestError",
                "INVALID_CUSTOMER_ID",
                "The login-customer-id header must be a customer ID of digits only, without dashes.",
            )));
        }
    }
    if !state.credentials.customer_exists(customer_id) {
        let mut e = RequestError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "The caller does not have permission",
        );
        e.ads_errors.push(AdsError::new(
            "authorizationError",
            "USER_PERMISSION_DENIED",
            "User doesn't have permission to access customer. Note: If you're accessing a client customer, the manager's customer id must be set in the 'login-customer-id' header.",
        ));
        return Err(e);
    }
    Ok(())
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// proto3 JSON takes both lowerCamel and snake_case names; normalise to camel.
fn normalise(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (camel(&k), normalise(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(normalise).collect()),
        other => other,
    }
}

/// Decodes the body like Google's JSON front end: unknown fields, wrong
/// types and unknown enum values fail the whole request.
fn parse_request(version: &str, body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        RequestError::bad_json(String::new(), format!("Invalid JSON payload received. {e}"))
    })?;
    let Value::Object(request) = normalise(value) else {
        return Err(RequestError::bad_json(
            String::new(),
            "Invalid JSON payload received. Expected an object.".into(),
        ));
    };
    known_fields(&request, REQUEST_FIELDS, "")?;
    for key in ["partialFailure", "validateOnly", "debugEnabled"] {
        if let Some(v) = request.get(key) {
            if !v.is_boolean() {
                return Err(type_error(&snake(key), "TYPE_BOOL", v));
            }
        }
    }
    if let Some(v) = request.get("conversions") {
        let Some(items) = v.as_array() else {
            return Err(type_error("conversions", "TYPE_MESSAGE", v));
        };
        for (i, c) in items.iter().enumerate() {
            let at = format!("conversions[{i}]");
            let Some(c) = c.as_object() else {
                return Err(type_error(&at, "TYPE_MESSAGE", c));
            };
            check_conversion_types(version, &at, c)?;
        }
    }
    Ok(request)
}

fn known_fields(m: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), RequestError> {
    for key in m.keys() {
        if !known.contains(&key.as_str()) {
            let place = if at.is_empty() {
                String::new()
            } else {
                format!(" at '{at}'")
            };
            return Err(RequestError::bad_json(
                at.to_owned(),
                format!(
                    "Invalid JSON payload received. Unknown name \"{}\"{place}: Cannot find field.",
                    snake(key)
                ),
            ));
        }
    }
    Ok(())
}

fn type_error(path: &str, proto_type: &str, v: &Value) -> RequestError {
    RequestError::bad_json(
        path.to_owned(),
        format!("Invalid value at '{path}' ({proto_type}), {v}"),
    )
}

fn enum_error(version: &str, path: &str, enum_type: &str, v: &Value) -> RequestError {
    RequestError::bad_json(
        path.to_owned(),
        format!("Invalid value at '{path}' (type.googleapis.com/google.ads.googleads.{version}.enums.{enum_type}), {v}"),
    )
}

fn check_conversion_types(
    version: &str,
    at: &str,
    c: &Map<String, Value>,
) -> Result<(), RequestError> {
    known_fields(c, CONVERSION_FIELDS, at)?;
    for key in [
        "gclid",
        "gbraid",
        "wbraid",
        "conversionAction",
        "conversionDateTime",
        "currencyCode",
        "orderId",
        "userIpAddress",
        "sessionAttributesEncoded",
    ] {
        if let Some(v) = c.get(key) {
            if !v.is_string() {
                return Err(type_error(
                    &format!("{at}.{}", snake(key)),
                    "TYPE_STRING",
                    v,
                ));
            }
        }
    }
    if let Some(v) = c.get("conversionValue") {
        let ok = v.is_number()
            || v.as_str()
                .is_some_and(|s| s.parse::<f64>().is_ok_and(f64::is_finite));
        if !ok {
            return Err(type_error(
                &format!("{at}.conversion_value"),
                "TYPE_DOUBLE",
                v,
            ));
        }
    }
    if let Some(v) = c.get("conversionEnvironment") {
        if !v.as_str().is_some_and(|s| ENVIRONMENTS.contains(&s)) {
            return Err(enum_error(
                version,
                &format!("{at}.conversion_environment"),
                "ConversionEnvironmentEnum.ConversionEnvironment",
                v,
            ));
        }
    }
    if let Some(v) = c.get("consent") {
        let path = format!("{at}.consent");
        let Some(consent) = v.as_object() else {
            return Err(type_error(&path, "TYPE_MESSAGE", v));
        };
        known_fields(consent, CONSENT_FIELDS, &path)?;
        for (key, value) in consent {
            if !value.as_str().is_some_and(|s| CONSENT_VALUES.contains(&s)) {
                return Err(enum_error(
                    version,
                    &format!("{path}.{}", snake(key)),
                    "ConsentStatusEnum.ConsentStatus",
                    value,
                ));
            }
        }
    }
    if let Some(v) = c.get("userIdentifiers") {
        let path = format!("{at}.user_identifiers");
        let Some(items) = v.as_array() else {
            return Err(type_error(&path, "TYPE_MESSAGE", v));
        };
        for (j, item) in items.iter().enumerate() {
            let p = format!("{path}[{j}]");
            let Some(ident) = item.as_object() else {
                return Err(type_error(&p, "TYPE_MESSAGE", item));
            };
            known_fields(ident, IDENTIFIER_FIELDS, &p)?;
            if let Some(src) = ident.get("userIdentifierSource") {
                if !src
                    .as_str()
                    .is_some_and(|s| IDENTIFIER_SOURCES.contains(&s))
                {
                    return Err(enum_error(
                        version,
                        &format!("{p}.user_identifier_source"),
                        "UserIdentifierSourceEnum.UserIdentifierSource",
                        src,
                    ));
                }
            }
            for key in [
                "hashedEmail",
                "hashedPhoneNumber",
                "mobileId",
                "thirdPartyUserId",
            ] {
                if let Some(v) = ident.get(key) {
                    if !v.is_string() {
                        return Err(type_error(&format!("{p}.{}", snake(key)), "TYPE_STRING", v));
                    }
                }
            }
            if let Some(v) = ident.get("addressInfo") {
                if !v.is_object() {
                    return Err(type_error(&format!("{p}.address_info"), "TYPE_MESSAGE", v));
                }
            }
        }
    }
    for key in ["customVariables", "sessionAttributesKeyValuePairs"] {
        if let Some(v) = c.get(key) {
            let ok = if key == "customVariables" {
                v.is_array()
            } else {
                v.is_object()
            };
            if !ok {
                return Err(type_error(
                    &format!("{at}.{}", snake(key)),
                    "TYPE_MESSAGE",
                    v,
                ));
            }
        }
    }
    for key in ["cartData", "externalAttributionData"] {
        if let Some(v) = c.get(key) {
            if !v.is_object() {
                return Err(type_error(
                    &format!("{at}.{}", snake(key)),
                    "TYPE_MESSAGE",
                    v,
                ));
            }
        }
    }
    Ok(())
}

struct ValidRow {
    action: String,
    click: Option<String>,
    date_time_utc: String,
    order_id: Option<String>,
    result: Map<String, Value>,
}

impl ValidRow {
    fn incoming(&self, customer_id: &str, c: &Map<String, Value>) -> Incoming {
        let mut dedup = Vec::new();
        if let Some(order) = &self.order_id {
            dedup.push(DedupRule {
                matched_on: "order_id",
                key: format!("order\u{1f}{}\u{1f}{order}", self.action),
                windowed: false,
            });
        }
        if let Some(click) = &self.click {
            dedup.push(DedupRule {
                matched_on: "click",
                key: format!(
                    "click\u{1f}{}\u{1f}{click}\u{1f}{}",
                    self.action, self.date_time_utc
                ),
                windowed: false,
            });
        }
        Incoming {
            platform: PLATFORM,
            account: customer_id.to_owned(),
            event_id: self.order_id.clone(),
            event_name: Some(self.action.clone()),
            test_event_code: None,
            dedup,
            payload: Value::Object(c.clone()),
        }
    }
}

fn is_click_id(s: &str) -> bool {
    (10..=512).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn validate_row(
    state: &AppState,
    customer_id: &str,
    i: usize,
    c: &Map<String, Value>,
    now_ms: i64,
    terms_ok: bool,
) -> Result<ValidRow, AdsError> {
    let s = |k: &str| c.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let cv = "conversionUploadError";

    let Some(action) = s("conversionAction") else {
        return Err(AdsError::new(
            "fieldError",
            "REQUIRED",
            "The required field was not present.",
        )
        .at(i, &[("conversion_action", None)]));
    };
    let parts: Vec<&str> = action.split('/').collect();
    let (action_customer, action_id) = match parts.as_slice() {
        ["customers", cid, "conversionActions", id]
            if !cid.is_empty()
                && !id.is_empty()
                && cid.bytes().chain(id.bytes()).all(|b| b.is_ascii_digit()) =>
        {
            (*cid, *id)
        }
        _ => return Err(AdsError::new(
            "requestError",
            "RESOURCE_NAME_MALFORMED",
            "The resource name is malformed: use customers/{customer_id}/conversionActions/{id}.",
        )
        .at(i, &[("conversion_action", None)])),
    };
    if action_customer != customer_id
        || !state
            .credentials
            .conversion_action_exists(customer_id, action_id)
    {
        return Err(AdsError::new(cv, "NO_CONVERSION_ACTION_FOUND", "The conversion action specified in the upload request cannot be found. Make sure it's available in this account.")
            .at(i, &[("conversion_action", None)]));
    }

    let (gclid, gbraid, wbraid) = (s("gclid"), s("gbraid"), s("wbraid"));
    let identifiers: &[Value] = c
        .get("userIdentifiers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if gbraid.is_some() && wbraid.is_some() {
        return Err(AdsError::new(
            cv,
            "GBRAID_WBRAID_BOTH_SET",
            "Only one of gbraid and wbraid may be set.",
        )
        .at(i, &[("wbraid", None)]));
    }
    if gclid.is_some() && (gbraid.is_some() || wbraid.is_some()) {
        let field = if gbraid.is_some() { "gbraid" } else { "wbraid" };
        return Err(AdsError::new(
            "fieldError",
            "VALUE_MUST_BE_UNSET",
            "Only one of gclid, gbraid and wbraid may be set.",
        )
        .at(i, &[(field, None)]));
    }
    if gclid.is_none() && gbraid.is_none() && wbraid.is_none() && identifiers.is_empty() {
        return Err(AdsError::new(
            "fieldError",
            "REQUIRED",
            "One of gclid, gbraid, wbraid or user_identifiers must be set.",
        )
        .at(i, &[("gclid", None)]));
    }
    for (field, value, code) in [
        ("gclid", gclid, "UNPARSEABLE_GCLID"),
        ("gbraid", gbraid, "UNPARSEABLE_GBRAID"),
        ("wbraid", wbraid, "UNPARSEABLE_WBRAID"),
    ] {
        if let Some(v) = value {
            if !is_click_id(v) {
                return Err(AdsError::new(
                    cv,
                    code,
                    format!("The imported {field} could not be decoded."),
                )
                .at(i, &[(field, None)]));
            }
        }
    }

    let Some(when) = s("conversionDateTime") else {
        return Err(AdsError::new(
            "fieldError",
            "REQUIRED",
            "The required field was not present.",
        )
        .at(i, &[("conversion_date_time", None)]));
    };
    let parsed = (when.len() == 25)
        .then(|| DateTime::parse_from_str(when, "%Y-%m-%d %H:%M:%S%:z").ok())
        .flatten();
    let Some(parsed) = parsed else {
        return Err(AdsError::new(
            "dateError",
            "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET",
            "The string date time's format should be yyyy-mm-dd hh:mm:ss+|-hh:mm.",
        )
        .at(i, &[("conversion_date_time", None)]));
    };
    let at_secs = parsed.timestamp();
    let now_secs = now_ms.div_euclid(1000);
    if at_secs > now_secs.saturating_add(state.max_future_secs) {
        return Err(AdsError::new(
            "dateError",
            "LATER_THAN_MAXIMUM_DATE",
            "The conversion date time is in the future.",
        )
        .at(i, &[("conversion_date_time", None)]));
    }
    if now_secs - at_secs > MAX_AGE_SECS {
        return Err(AdsError::new(cv, "EXPIRED_EVENT", "The imported event can't be recorded because its click occurred before this conversion's click-through window (90 days).")
            .at(i, &[("conversion_date_time", None)]));
    }

    if let Some(cur) = c.get("currencyCode") {
        if !cur.as_str().is_some_and(is_currency) {
            return Err(AdsError::new(
                "currencyCodeError",
                "UNSUPPORTED",
                "The currency code is not supported.",
            )
            .at(i, &[("currency_code", None)]));
        }
    }
    let order_id = s("orderId");
    if let Some(o) = order_id {
        if o.contains('@') {
            return Err(AdsError::new(
                cv,
                "ORDER_ID_CONTAINS_PII",
                "The order ID contains personally identifiable information.",
            )
            .at(i, &[("order_id", None)]));
        }
    }

    if identifiers.len() > MAX_USER_IDENTIFIERS {
        return Err(AdsError::new(
            "collectionSizeError",
            "TOO_MANY",
            format!("At most {MAX_USER_IDENTIFIERS} user identifiers are allowed."),
        )
        .at(i, &[("user_identifiers", None)]));
    }
    for (j, ident) in identifiers.iter().enumerate() {
        check_identifier(i, j, ident)?;
    }
    if !identifiers.is_empty() && !terms_ok {
        return Err(AdsError::new(
            cv,
            "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
            "The customer has not accepted the customer data terms in the conversion settings.",
        )
        .at(i, &[("user_identifiers", None)]));
    }
    if c.get("consent")
        .and_then(|v| v.get("adPersonalization"))
        .is_some()
    {
        return Err(AdsError::new(
            "fieldError",
            "VALUE_MUST_BE_UNSET",
            "ad_personalization consent is not accepted on click conversions.",
        )
        .at(i, &[("consent", None), ("ad_personalization", None)]));
    }

    let mut result = Map::new();
    let click = gclid
        .map(|v| ("gclid", v))
        .or(gbraid.map(|v| ("gbraid", v)))
        .or(wbraid.map(|v| ("wbraid", v)));
    if let Some((field, value)) = click {
        result.insert(field.into(), Value::String(value.to_owned()));
    } else if let Some(ids) = c.get("userIdentifiers") {
        result.insert("userIdentifiers".into(), ids.clone());
    }
    result.insert("conversionAction".into(), Value::String(action.to_owned()));
    result.insert("conversionDateTime".into(), Value::String(when.to_owned()));
    Ok(ValidRow {
        action: action.to_owned(),
        click: click.map(|(f, v)| format!("{f}:{v}")),
        date_time_utc: at_secs.to_string(),
        order_id: order_id.map(str::to_owned),
        result,
    })
}

fn check_identifier(i: usize, j: usize, ident: &Value) -> Result<(), AdsError> {
    let cv = "conversionUploadError";
    let invalid = |field: Option<&'static str>, msg: &str| {
        let mut loc = vec![("user_identifiers", Some(j))];
        if let Some(f) = field {
            loc.push((f, None));
        }
        AdsError::new(cv, "INVALID_USER_IDENTIFIER", msg).at(i, &loc)
    };
    let Some(ident) = ident.as_object() else {
        return Err(invalid(None, "A user identifier must be an object."));
    };
    let set: Vec<&str> = [
        "hashedEmail",
        "hashedPhoneNumber",
        "mobileId",
        "thirdPartyUserId",
        "addressInfo",
    ]
    .into_iter()
    .filter(|k| ident.contains_key(*k))
    .collect();
    if set.len() != 1 {
        return Err(invalid(
            None,
            "Each user identifier must set exactly one identifier.",
        ));
    }
    match set[0] {
        "mobileId" | "thirdPartyUserId" => Err(AdsError::new(
            cv,
            "UNSUPPORTED_USER_IDENTIFIER",
            "This user identifier is not supported for click conversions.",
        )
        .at(
            i,
            &[
                ("user_identifiers", Some(j)),
                (
                    if set[0] == "mobileId" {
                        "mobile_id"
                    } else {
                        "third_party_user_id"
                    },
                    None,
                ),
            ],
        )),
        "addressInfo" => {
            let Some(addr) = ident.get("addressInfo").and_then(Value::as_object) else {
                return Err(invalid(
                    Some("address_info"),
                    "address_info must be an object.",
                ));
            };
            for key in ["hashedFirstName", "hashedLastName", "hashedStreetAddress"] {
                if let Some(v) = addr.get(key) {
                    if !v.as_str().is_some_and(is_sha256_hex) {
                        return Err(invalid(Some("address_info"), &format!("{} must be a SHA-256 hex digest (64 lowercase hex characters), not {}.", snake(key), kind(v))));
                    }
                }
            }
            Ok(())
        }
        key => {
            let field = if key == "hashedEmail" {
                "hashed_email"
            } else {
                "hashed_phone_number"
            };
            let ok = ident
                .get(key)
                .and_then(Value::as_str)
                .is_some_and(is_sha256_hex);
            if ok {
                Ok(())
            } else {
                Err(invalid(Some(field), &format!("{field} must be a SHA-256 hex digest (64 lowercase hex characters) of the normalised value.")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("v23", "123:uploadClickConversions"),
            Some("123")
        );
        assert_eq!(parse_target("v23", "123:uploadCallConversions"), None);
        assert_eq!(parse_target("23", "123:uploadClickConversions"), None);
        assert_eq!(parse_target("v23", "123"), None);
    }

    #[test]
    fn names() {
        assert_eq!(camel("conversion_date_time"), "conversionDateTime");
        assert_eq!(snake("conversionDateTime"), "conversion_date_time");
        assert_eq!(camel("gclid"), "gclid");
    }

    #[test]
    fn snake_case_requests_decode() {
        let body = br#"{"partial_failure": true, "conversions": [{"conversion_action": "customers/1/conversionActions/2", "consent": {"ad_user_data": "GRANTED"}}]}"#;
        let r = parse_request("v23", body).expect("decodes");
        assert_eq!(
            r["conversions"][0]["conversionAction"],
            "customers/1/conversionActions/2"
        );
    }

    #[test]
    fn bad_enums_and_unknown_fields_fail_the_request() {
        let body =
            br#"{"partialFailure": true, "conversions": [{"consent": {"adUserData": "MAYBE"}}]}"#;
        let e = parse_request("v23", body).unwrap_err();
        assert!(
            e.message.contains("conversions[0].consent.ad_user_data"),
            "{}",
            e.message
        );
        let body = br#"{"partialFailure": true, "conversions": [{"gclidd": "x"}]}"#;
        let e = parse_request("v23", body).unwrap_err();
        assert!(
            e.message.contains("Unknown name \"gclidd\""),
            "{}",
            e.message
        );
    }
}
