//! Starts a sandbox in-process on 127.0.0.1:0 with its own manual clock, so
//! every test has its own ports, records and time.

#![allow(dead_code)]

use std::sync::Arc;

use postback_sandbox::clock::{ManualClock, SandboxClock};
use postback_sandbox::config::{
    GoogleCustomer, MetaPixel, OAuthClient, SandboxConfig, TiktokPixel,
};
use postback_sandbox::Sandbox;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const META_PIXEL: &str = "1234567890123456";
pub const META_TOKEN: &str = "meta-test-token";
pub const OTHER_META_PIXEL: &str = "999";
pub const OTHER_META_TOKEN: &str = "meta-other-token";
pub const CUSTOMER: &str = "1234567890";
pub const ACTION: &str = "111111111";
pub const NO_TERMS_CUSTOMER: &str = "5555555555";
pub const DEV_TOKEN: &str = "dev-token";
pub const CLIENT_ID: &str = "client.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "client-secret";
pub const REFRESH_TOKEN: &str = "1//refresh";
pub const TIKTOK_PIXEL: &str = "CTESTPIXEL01";
pub const TIKTOK_TOKEN: &str = "tiktok-test-token";
pub const OTHER_TIKTOK_PIXEL: &str = "COTHERPIXEL";
pub const OTHER_TIKTOK_TOKEN: &str = "tiktok-other-token";

pub fn config() -> SandboxConfig {
    let mut c = SandboxConfig::default();
    c.meta.pixels = vec![
        MetaPixel {
            pixel_id: META_PIXEL.into(),
            access_tokens: vec![META_TOKEN.into()],
        },
        MetaPixel {
            pixel_id: OTHER_META_PIXEL.into(),
            access_tokens: vec![OTHER_META_TOKEN.into()],
        },
    ];
    c.google_ads.developer_tokens = vec![DEV_TOKEN.into()];
    c.google_ads.oauth_clients = vec![OAuthClient {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        refresh_tokens: vec![REFRESH_TOKEN.into()],
    }];
    c.google_ads.customers = vec![
        GoogleCustomer {
            customer_id: CUSTOMER.into(),
            conversion_actions: vec![ACTION.into()],
            customer_data_terms_accepted: true,
        },
        GoogleCustomer {
            customer_id: NO_TERMS_CUSTOMER.into(),
            conversion_actions: vec![ACTION.into()],
            customer_data_terms_accepted: false,
        },
    ];
    c.tiktok.pixels = vec![
        TiktokPixel {
            pixel_code: TIKTOK_PIXEL.into(),
            access_tokens: vec![TIKTOK_TOKEN.into()],
        },
        TiktokPixel {
            pixel_code: OTHER_TIKTOK_PIXEL.into(),
            access_tokens: vec![OTHER_TIKTOK_TOKEN.into()],
        },
    ];
    c
}

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start() -> Harness {
    start_with(config()).await
}

pub async fn start_with(config: SandboxConfig) -> Harness {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now().timestamp_millis()));
    let sandbox = Sandbox::with_clock(&config, SandboxClock::new(clock.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = sandbox.serve(listener, token).await;
    });
    Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        clock,
        shutdown,
    }
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn now(&self) -> i64 {
        use postback_sandbox::clock::Clock;
        self.clock.now_ms() / 1000
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.expect("GET");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("json")
    }

    pub async fn put_fault(&self, platform: &str, account: &str, spec: Value) {
        let resp = self
            .http
            .put(self.url(&format!("/admin/faults/{platform}/{account}")))
            .json(&spec)
            .send()
            .await
            .expect("PUT fault");
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }

    pub async fn clear_fault(&self, platform: &str, account: &str) {
        let resp = self
            .http
            .delete(self.url(&format!("/admin/faults/{platform}/{account}")))
            .send()
            .await
            .expect("DELETE fault");
        assert_eq!(resp.status(), 204);
    }

    // --- Meta -------------------------------------------------------------

    pub async fn meta(&self, pixel: &str, token: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(&format!("/v25.0/{pixel}/events")))
            .query(&[("access_token", token)])
            .json(body)
            .send()
            .await
            .expect("meta POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("meta json"))
    }

    // --- Google -----------------------------------------------------------

    pub async fn google_token(&self) -> String {
        let resp = self
            .http
            .post(self.url("/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("refresh_token", REFRESH_TOKEN),
            ])
            .send()
            .await
            .expect("token POST");
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("token json");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    pub async fn google_with(
        &self,
        customer: &str,
        token: &str,
        dev_token: &str,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(self.url(&format!("/v23/customers/{customer}:uploadClickConversions")))
            .bearer_auth(token)
            .header("developer-token", dev_token)
            .json(body)
            .send()
            .await
            .expect("google POST");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.expect("google json"))
    }

    pub async fn google(&self, token: &str, body: &Value) -> (u16, Value) {
        let (s, _, v) = self.google_with(CUSTOMER, token, DEV_TOKEN, body).await;
        (s, v)
    }

    // --- TikTok -----------------------------------------------------------

    pub async fn tiktok(&self, token: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/open_api/v1.3/event/track/"))
            .header("Access-Token", token)
            .json(body)
            .send()
            .await
            .expect("tiktok POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("tiktok json"))
    }
}

pub fn sha(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// A Meta event with every field the reference lists, valid at `now`.
pub fn meta_event(now: i64, event_id: &str) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now - 120,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout/thanks",
        "opt_out": false,
        "user_data": {
            "em": [sha('a')],
            "ph": [sha('b')],
            "fn": sha('c'),
            "ln": sha('d'),
            "db": sha('e'),
            "ge": sha('f'),
            "ct": sha('1'),
            "st": sha('2'),
            "zp": sha('3'),
            "country": sha('4'),
            "external_id": ["customer-42"],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "fbc": "fb.1.1700000000000.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
            "fbp": "fb.1.1700000000000.1098115397",
        },
        "custom_data": {
            "value": 142.52,
            "currency": "EUR",
            "order_id": format!("order-{event_id}"),
            "content_ids": ["sku-1", "sku-2"],
            "contents": [{"id": "sku-1", "quantity": 1}, {"id": "sku-2", "quantity": 2}],
            "num_items": 3,
        },
        "data_processing_options": [],
    })
}

/// A Google click conversion with every documented field, valid at `now`.
pub fn google_row(now: i64, gclid: &str, order_id: &str) -> Value {
    json!({
        "gclid": gclid,
        "conversionAction": format!("customers/{CUSTOMER}/conversionActions/{ACTION}"),
        "conversionDateTime": google_time(now - 3600),
        "conversionValue": 142.52,
        "currencyCode": "EUR",
        "orderId": order_id,
        "userIdentifiers": [
            {"hashedEmail": sha('a'), "userIdentifierSource": "FIRST_PARTY"},
            {"hashedPhoneNumber": sha('b')},
        ],
        "consent": {"adUserData": "GRANTED"},
    })
}

pub fn google_time(unix: i64) -> String {
    use chrono::TimeZone;
    let tz = chrono::FixedOffset::east_opt(2 * 3600).expect("offset");
    tz.timestamp_opt(unix, 0)
        .single()
        .expect("time")
        .format("%Y-%m-%d %H:%M:%S%:z")
        .to_string()
}

pub fn google_body(rows: Vec<Value>) -> Value {
    json!({ "conversions": rows, "partialFailure": true })
}

/// A TikTok event with every documented field, valid at `now`.
pub fn tiktok_event(now: i64, event_id: &str) -> Value {
    json!({
        "event": "Purchase",
        "event_time": now - 60,
        "event_id": event_id,
        "user": {
            "email": sha('a'),
            "phone": [sha('b')],
            "external_id": sha('c'),
            "ttclid": "E.C.P.CtwBe7XiPbm6vZs",
            "ttp": "2kzr0NgFb8p6v0vNqF4Uq1c7xYz",
            "ip": "2001:db8::7",
            "user_agent": "Mozilla/5.0 (iPhone)",
        },
        "properties": {
            "currency": "EUR",
            "value": 142.52,
            "order_id": format!("order-{event_id}"),
            "content_type": "product",
            "contents": [{"content_id": "sku-1", "quantity": 1, "price": 42.52}],
        },
        "page": {"url": "https://shop.example/thanks", "referrer": "https://shop.example/cart"},
        "limited_data_use": false,
    })
}

pub fn tiktok_body(events: Vec<Value>) -> Value {
    json!({ "event_source": "web", "event_source_id": TIKTOK_PIXEL, "data": events })
}

/// Removes `key` from a JSON object (no-op on anything else).
pub fn remove(v: &mut Value, key: &str) {
    if let Some(o) = v.as_object_mut() {
        o.remove(key);
    }
}
