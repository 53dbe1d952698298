//! No personal data where consent and the platforms do not need it
//! (ARCHITECTURE.md, "Raw personal data exists only on conversions.raw").
//!
//! Two conversions full of personal values go through the whole pipeline:
//! one with consent granted, one with it denied. Then every topic past
//! conversions.raw (enriched, the three dispatch topics, status, dead
//! letters, the deduplicator's changelog), the deduplicator's store, the
//! status database and every log line of the run are searched for each
//! value. Plain identifiers (e-mail, phone, names, address, external id, a
//! query string's e-mail and token) must be nowhere; the address, the user
//! agent, the page and each click id only where a platform that may
//! receive them under the event's consent needs them, and never for the
//! denied one. The sandbox's uploads show the needed ones did arrive, so
//! the scan is not looking at empty topics.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use postback_core::model::ServerSideStatus;
use postback_deduplicator::store::{StateStore, StoreConfig};
use postback_testkit::{unique, Broker};
use serde_json::{json, Value};

mod support;
use support::pipeline::{
    now_secs, on_every_platform, start_pipeline, statuses_once, Names, Options,
};

const API_KEY: &str = "sk_local_demo_0123456789abcdef";
const SITE_KEY: &str = "pk_local_demo";

/// Every log line of this test process, whatever the service.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// The personal values of one test conversion, unique to this run.
struct Person {
    id: String,
    email: String,
    phone_e164: String,
    first_name: String,
    last_name: String,
    city: String,
    postal_code: String,
    external_id: String,
    ip: String,
    user_agent: String,
    /// The page's path: kept (without its query) only for Meta and TikTok.
    page: String,
    query_email: String,
    query_token: String,
    referrer_query: String,
    gclid: String,
    fbclid: String,
    fbp: String,
    ttclid: String,
}

impl Person {
    fn new(tag: &str, n: u8) -> Person {
        let u = unique(tag).replace(['.', '_'], "-");
        Person {
            id: format!("order-{u}"),
            email: format!("person-{u}@example.com"),
            phone_e164: format!("+3361234{:04}", 1000 + u32::from(n)),
            first_name: format!("Firstname{u}"),
            last_name: format!("Lastname{u}"),
            city: format!("Cityname{u}"),
            postal_code: format!("7{n:04}"),
            external_id: format!("customer-{u}"),
            ip: format!("203.0.113.{}", 100 + n),
            user_agent: format!("Mozilla/5.0 (TestAgent {u})"),
            page: format!("https://shop.example/thanks-{u}"),
            query_email: format!("query-{u}@example.com"),
            query_token: format!("resettoken{u}"),
            referrer_query: format!("searchterm{u}"),
            gclid: format!("Cj0KCQ-gclid-{u}"),
            fbclid: format!("IwAR-fbclid-{u}"),
            fbp: format!("fb.1.1700000000000.{}", 1_000_000 + u32::from(n)),
            ttclid: format!("E.C.P.ttclid-{u}"),
        }
    }

    fn event(&self, consent: &str) -> Value {
        json!({
            "event_id": self.id,
            "event_name": "Purchase",
            "event_time": now_secs() - 60,
            "action_source": "website",
            "order": {"order_id": self.id, "value": "129.90", "currency": "EUR"},
            "user": {
                "email": self.email, "phone": self.phone_e164,
                "first_name": self.first_name, "last_name": self.last_name,
                "city": self.city, "postal_code": self.postal_code, "country": "FR",
                "external_id": self.external_id, "ip": self.ip, "user_agent": self.user_agent
            },
            "click_ids": {"gclid": self.gclid, "fbclid": self.fbclid, "fbp": self.fbp, "ttclid": self.ttclid},
            "page": {
                "url": format!("{}?email={}&utm_source=news&token={}",
                               self.page, self.query_email.replace('@', "%40"), self.query_token),
                "referrer": format!("https://search.example/?q={}", self.referrer_query)
            },
            "consent": {"ad_storage": consent, "ad_user_data": consent, "ad_personalization": consent}
        })
    }

    /// Values that must be on no topic past conversions.raw, consent or
    /// not: only hashes of them travel.
    fn never(&self) -> Vec<(&'static str, String)> {
        vec![
            ("email", self.email.clone()),
            ("email, lower case", self.email.to_lowercase()),
            ("phone", self.phone_e164.clone()),
            ("first name", self.first_name.clone()),
            ("first name, lower case", self.first_name.to_lowercase()),
            ("last name", self.last_name.clone()),
            ("city", self.city.clone()),
            ("external id", self.external_id.clone()),
            ("the url query's email", self.query_email.clone()),
            (
                "the url query's email, encoded",
                self.query_email.replace('@', "%40"),
            ),
            ("the url query's token", self.query_token.clone()),
            ("the referrer's query", self.referrer_query.clone()),
        ]
    }

    /// Values that may travel, each with the places it may be when consent
    /// is granted (a platform that receives it needs it).
    fn needed(&self) -> Vec<(&'static str, String, &'static [&'static str])> {
        const VISIT: &[&str] = &[
            "enriched",
            "changelog",
            "store",
            "dispatch.meta",
            "dispatch.tiktok",
        ];
        vec![
            ("ip", self.ip.clone(), VISIT),
            ("user agent", self.user_agent.clone(), VISIT),
            ("page", self.page.clone(), VISIT),
            (
                "gclid",
                self.gclid.clone(),
                &["enriched", "changelog", "store", "dispatch.google_ads"],
            ),
            (
                "fbclid",
                self.fbclid.clone(),
                &["enriched", "changelog", "store", "dispatch.meta"],
            ),
            (
                "fbp",
                self.fbp.clone(),
                &["enriched", "changelog", "store", "dispatch.meta"],
            ),
            (
                "ttclid",
                self.ttclid.clone(),
                &["enriched", "changelog", "store", "dispatch.tiktok"],
            ),
        ]
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && haystack.windows(n.len()).any(|w| w == n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_goes_only_where_consent_and_a_platform_need_it() {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_env_filter(
            "debug,rdkafka=info,sqlx=info,hyper=info,reqwest=info,h2=info,fjall=info,lsm_tree=info",
        )
        .with_ansi(false)
        .try_init()
        .expect("this test's process has no other subscriber");

    let broker = Broker::shared().await.expect("broker");
    let names = Names::new("personal");
    names.create(&broker).await;
    let http = reqwest::Client::new();
    let (pipeline, addrs) = start_pipeline(
        &broker,
        &names,
        &http,
        Options {
            merge_window_ms: Some(500),
            // The browser-only conversion is still held (its record in the
            // store) when the scan runs.
            browser_wait_ms: Some(600_000),
            ..Options::default()
        },
    )
    .await;
    let collector = addrs["collector.api"];
    let sandbox = addrs["sandbox"];
    let granted = Person::new("granted", 1);
    let denied = Person::new("denied", 2);
    let held = Person::new("held", 3);
    let r = http
        .post(format!("http://{collector}/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({"events": [granted.event("granted"), denied.event("denied")]}))
        .send()
        .await
        .expect("collector");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let r = http
        .post(format!("http://{collector}/v1/collect?site_key={SITE_KEY}"))
        .header("content-type", "text/plain")
        .header("origin", "http://localhost:3000")
        .body(held.event("granted").to_string())
        .send()
        .await
        .expect("beacon");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    // Final everywhere: delivered for the granted one, not eligible for
    // the denied one.
    statuses_once(&broker, &names.status, |s| {
        on_every_platform(s, &granted.id, ServerSideStatus::Delivered)
            && on_every_platform(s, &denied.id, ServerSideStatus::NotEligible)
    })
    .await;

    let uploads: Value = http
        .get(format!("http://{sandbox}/admin/events"))
        .send()
        .await
        .expect("sandbox")
        .json()
        .await
        .expect("json");
    let state = pipeline.stop_keeping_state().await;
    let state_dir = state.path().to_path_buf();
    let status_db = std::fs::read(state_dir.join("status.db")).expect("the status database");
    let status_wal = std::fs::read(state_dir.join("status.db-wal")).unwrap_or_default();

    // Every place, as bytes.
    let mut places: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut topics = vec![
        ("enriched".to_string(), names.enriched.clone()),
        ("status".into(), names.status.clone()),
        ("rejected".into(), names.rejected.clone()),
        ("changelog".into(), names.changelog.clone()),
    ];
    for p in ["meta", "google_ads", "tiktok"] {
        topics.push((
            format!("dispatch.{p}"),
            format!("{}{p}", names.dispatch_prefix),
        ));
    }
    for (place, topic) in topics {
        let mut bytes = Vec::new();
        for r in broker.read_to_end(&topic).await.expect("topic") {
            bytes.extend(r.key.unwrap_or_default());
            bytes.extend(r.payload.unwrap_or_default());
            for (k, v) in r.headers {
                bytes.extend(k.into_bytes());
                bytes.extend(v);
            }
        }
        places.insert(place, bytes);
    }
    let mut store = StateStore::open(&StoreConfig {
        dir: state_dir.join("dedup"),
        cache_bytes: 1 << 20,
        memtable_bytes: 1 << 20,
    })
    .expect("the deduplicator's store");
    let mut dump = Vec::new();
    for p in 0..2 {
        store.open_partition(p).expect("partition");
        for (k, v) in store.dump(p).expect("dump") {
            dump.extend(k);
            dump.extend(v);
        }
    }
    places.insert("store".into(), dump);
    places.insert("status database".into(), [status_db, status_wal].concat());
    places.insert(
        "logs".into(),
        logs.0.lock().map(|b| b.clone()).unwrap_or_default(),
    );

    // The scan is of real data: each place holds the conversions.
    assert!(
        places["logs"].len() > 10_000,
        "the run logged next to nothing"
    );
    for place in ["enriched", "status", "changelog", "store", "dispatch.meta"] {
        assert!(
            contains(&places[place], &granted.id),
            "{place} does not mention the granted conversion: the scan would prove nothing"
        );
    }
    let mut found = Vec::new();
    assert!(
        contains(&places["store"], &held.ip),
        "the held conversion's record is not in the store dump"
    );
    for person in [&granted, &denied, &held] {
        for (what, value) in person.never() {
            for (place, bytes) in &places {
                if contains(bytes, &value) {
                    found.push(format!("{}: {what} in {place}", person.id));
                }
            }
        }
    }
    for (what, value, allowed) in granted.needed() {
        for (place, bytes) in &places {
            if contains(bytes, &value) && !allowed.contains(&place.as_str()) {
                found.push(format!("granted: {what} in {place}"));
            }
        }
        // An emitted conversion's record leaves the store; the topics keep it.
        for place in allowed.iter().filter(|p| **p != "store") {
            assert!(
                contains(&places[*place], &value),
                "granted: {what} missing from {place}, where a platform needs it"
            );
        }
    }
    for (what, value, _) in held.needed() {
        for (place, bytes) in &places {
            let waiting = ["enriched", "changelog", "store"];
            if contains(bytes, &value) && !waiting.contains(&place.as_str()) {
                found.push(format!("held: {what} in {place}"));
            }
        }
    }
    for (what, value, _) in denied.needed() {
        for (place, bytes) in &places {
            if contains(bytes, &value) {
                found.push(format!("denied: {what} in {place}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "personal data where it must not be:\n{}",
        found.join("\n")
    );

    // What the platforms needed reached them, and the denied one nothing.
    let text = uploads.to_string();
    for needed in [
        &granted.ip,
        &granted.user_agent,
        &granted.gclid,
        &granted.fbp,
        &granted.ttclid,
    ] {
        assert!(text.contains(needed.as_str()), "{needed} not uploaded");
    }
    assert!(
        text.contains("utm_source=news"),
        "the allowlisted query parameter was dropped"
    );
    assert!(
        !text.contains(&denied.id),
        "the denied conversion was uploaded"
    );
}
