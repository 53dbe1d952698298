//! Status records as the pipeline writes them, and the status service
//! started on them, for the store's, the service's and the panel's tests.
#![allow(dead_code)]

use postback_core::model::{
    click_id_hash, ConversionSummary, DeliveryStatus, FrontEndStatus, ServerSideStatus,
};
use std::time::Duration;

use postback_core::config::{StageConfig, TenantKey};
use postback_status::config::{StatusConfig, StatusSections, StoreConfig};
use postback_status::store::StatusRow;
use postback_testkit::Broker;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const T0: i64 = 1_790_000_000_000;

pub fn status(
    tenant: &str,
    event_id: &str,
    platform: &str,
    server_side: ServerSideStatus,
    time: i64,
) -> DeliveryStatus {
    DeliveryStatus {
        tenant: tenant.into(),
        event_id: event_id.into(),
        event_name: "Purchase".into(),
        platform: platform.into(),
        stage: "dispatcher".into(),
        front_end: None,
        server_side,
        reason: None,
        attempt: None,
        next_attempt_at: None,
        duplicate_of: None,
        reported_by: None,
        platform_request_id: None,
        time,
        conversion: None,
    }
}

/// The deduplicator's record: the summary and the front-end status.
pub fn emitted(
    tenant: &str,
    n: usize,
    platform: &str,
    server_side: ServerSideStatus,
    fired: bool,
) -> DeliveryStatus {
    let event_id = format!("ord-{n}");
    DeliveryStatus {
        stage: "deduplicator".into(),
        front_end: Some(if fired {
            FrontEndStatus::Fired
        } else {
            FrontEndStatus::NotFired
        }),
        reason: (server_side == ServerSideStatus::NotEligible).then(|| "no_consent".into()),
        reported_by: Some("server".into()),
        conversion: Some(ConversionSummary {
            event_time: T0 + n as i64 * 1_000,
            value: Some(format!("{n}.50")),
            currency: Some("EUR".into()),
            order_id: Some(format!("A-{n}")),
            sources: if n % 2 == 0 {
                vec!["browser".into(), "server".into()]
            } else {
                vec!["server".into()]
            },
            match_keys: vec!["email".into(), "fbp".into()],
            click_id_hashes: vec![click_id_hash(&format!("gclid-{n}"))],
        }),
        ..status(
            tenant,
            &event_id,
            platform,
            server_side,
            T0 + n as i64 * 1_000 + 100,
        )
    }
}

/// 40 conversions of `acme` on two platforms with full histories, and 3 of
/// `other`: every record with its place on a two-partition topic.
pub fn history() -> Vec<StatusRow> {
    use ServerSideStatus::*;
    let mut records = Vec::new();
    for n in 0..40usize {
        let id = format!("ord-{n}");
        let t = T0 + n as i64 * 1_000;
        // meta: eligible, then retrying, then the outcome by n.
        records.push(emitted("acme", n, "meta", Eligible, n % 3 == 0));
        records.push(DeliveryStatus {
            attempt: Some(1),
            reason: Some("throttled".into()),
            ..status("acme", &id, "meta", Retrying, t + 200)
        });
        let outcome = match n % 4 {
            0 | 1 => DeliveryStatus {
                platform_request_id: Some(format!("fbtrace-{n}")),
                ..status("acme", &id, "meta", Delivered, t + 300 + n as i64)
            },
            2 => DeliveryStatus {
                reason: Some("invalid_parameter".into()),
                ..status("acme", &id, "meta", Rejected, t + 300)
            },
            _ => status("acme", &id, "meta", Failed, t + 300),
        };
        records.push(outcome);
        // google_ads: not eligible for odd n, delivered for even.
        if n % 2 == 1 {
            records.push(emitted("acme", n, "google_ads", NotEligible, false));
        } else {
            records.push(emitted("acme", n, "google_ads", Eligible, false));
            records.push(status("acme", &id, "google_ads", Delivered, t + 500));
        }
        // A repeat report of every fifth: a duplicate record, not a state.
        if n % 5 == 0 {
            records.push(DeliveryStatus {
                stage: "deduplicator".into(),
                duplicate_of: Some("server report first seen".into()),
                front_end: Some(FrontEndStatus::Fired),
                ..status("acme", &id, "meta", Duplicate, t + 10_000)
            });
        }
    }
    for n in 0..3usize {
        records.push(emitted(
            "other",
            n,
            "meta",
            ServerSideStatus::Eligible,
            true,
        ));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, status)| StatusRow {
            partition: (i % 2) as i32,
            offset: (i / 2) as i64,
            status,
        })
        .collect()
}

pub const ACME_KEY: &str = "rk_acme_0123456789abcdef";
pub const OTHER_KEY: &str = "rk_other_0123456789abcdef";

pub struct Running {
    pub base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), postback_status::StatusError>>,
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub async fn start(
    broker: &Broker,
    topics: &(String, String),
    group: &str,
    store_url: String,
) -> Running {
    let mut config: StatusConfig = StageConfig::with_defaults(StatusSections {
        store: StoreConfig {
            url: store_url,
            ..StoreConfig::default()
        },
        read_keys: vec![
            TenantKey {
                tenant: "acme".into(),
                key: Some(ACME_KEY.into()),
                key_env: None,
            },
            TenantKey {
                tenant: "other".into(),
                key: Some(OTHER_KEY.into()),
                key_env: None,
            },
        ],
        ..StatusSections::default()
    });
    config.kafka = broker.kafka_config();
    config.topics.status = topics.0.clone();
    config.topics.rejected = topics.1.clone();
    config.consumer.group_id = Some(group.to_string());
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", api.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(postback_status::run_with_listener(
        config,
        api,
        ops,
        stop.clone(),
    ));
    Running { base, stop, task }
}

pub async fn get(http: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = http.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until acme's list has `n` conversions.
pub async fn until_listed(http: &reqwest::Client, base: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = get(
            http,
            &format!("{base}/v1/conversions?limit=500"),
            Some(ACME_KEY),
        )
        .await;
        let got = body["conversions"].as_array().map(Vec::len).unwrap_or(0);
        if status == 200 && got == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "listed {got} of {n} (HTTP {status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
