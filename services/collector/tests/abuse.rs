//! The public edge under abuse, on loopback and bounded in time: hundreds
//! of connections with the public site key and an allowed Origin (the
//! worst case: what anyone can copy from a shop's page) send bodies slowly,
//! oversized bodies, or headers that never end, while a server sends
//! its events steadily with its API key. The server's events are all
//! accepted, at once or after the Retry-After of a 503 or 429, none is
//! lost, and the process's memory stays bounded. Prints the RSS, the
//! legitimate client's p99 and the count of each answer.

mod harness;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Collector, API_KEY, ORIGIN, SITE_KEY};
use postback_core::model::ConversionRaw;
use postback_core::{Codec, SchemaKind};
use postback_testkit::Broker;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const LEGIT_EVENTS: usize = 100;
const SLOW_BODIES: usize = 150;
const OVERSIZED: usize = 100;
const ENDLESS_HEADERS: usize = 50;
/// The stated bound on the test process's resident memory (collector,
/// attackers and client together).
const RSS_BOUND_MIB: u64 = 300;

type Answers = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(answers: &Answers, what: String) {
    *answers.lock().unwrap().entry(what).or_default() += 1;
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// The status code of an HTTP/1.1 answer on `s`, if one comes.
async fn status_of(s: &mut TcpStream) -> Option<u16> {
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut head))
        .await
        .ok()?
        .ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A server's purchase, valid.
fn server_event(id: &str) -> serde_json::Value {
    json!({
        "event_id": id, "event_name": "Purchase",
        "event_time": chrono::Utc::now().timestamp() - 60, "action_source": "website",
        "order": {"order_id": id, "value": "10.00", "currency": "EUR"},
        "user": {"email": "jane@example.com"},
    })
}

fn beacon_head(addr: &str, length: usize) -> String {
    format!(
        "POST /v1/collect?site_key={SITE_KEY} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {ORIGIN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Sends a 50 KB beacon a byte every 200 ms, over and over.
async fn slow_body(addr: String, stop: CancellationToken, answers: Answers) {
    while !stop.is_cancelled() {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            continue;
        };
        if s.write_all(beacon_head(&addr, 50_000).as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        let mut buf = [0u8; 64];
        let answer = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {
                    if s.write_all(b"{").await.is_err() {
                        break status_of(&mut s).await;
                    }
                }
                n = s.read(&mut buf) => {
                    let line = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).to_string();
                    break line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
                }
            }
        };
        count(
            &answers,
            format!(
                "slow body: {}",
                answer.map_or("closed".into(), |c: u16| c.to_string())
            ),
        );
    }
}

/// Announces 10 MiB and sends it as fast as the socket takes it.
async fn oversized(addr: String, stop: CancellationToken, answers: Answers) {
    let chunk = vec![b'x'; 64 * 1024];
    while !stop.is_cancelled() {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            continue;
        };
        let _ = s.write_all(beacon_head(&addr, 10 << 20).as_bytes()).await;
        let mut sent = 0;
        while sent < 10 << 20 && !stop.is_cancelled() {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let answer = status_of(&mut s).await;
        count(
            &answers,
            format!(
                "oversized: {}",
                answer.map_or("closed".into(), |c| c.to_string())
            ),
        );
    }
}

/// Headers a line every second, never ending.
async fn endless_headers(addr: String, stop: CancellationToken, answers: Answers) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    let _ = s
        .write_all(
            format!("POST /v1/collect?site_key={SITE_KEY} HTTP/1.1\r\nHost: {addr}\r\n").as_bytes(),
        )
        .await;
    let mut n = 0;
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s.write_all(format!("X-Slow-{n}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            count(&answers, "endless headers: closed by the collector".into());
            return;
        }
        n += 1;
    }
    count(&answers, "endless headers: still open at the end".into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_holds_under_slow_and_oversized_requests_and_loses_nothing() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start_with(&broker, |config| {
        let http = &mut config.http;
        http.max_concurrent_requests = 128;
        http.body_timeout_secs = 3;
        http.body_idle_timeout_secs = 1;
        http.retry_after_secs = 1;
        // The public key may hold at most ~20 x 3 s of slots: under 128.
        http.requests_per_second_per_key = 20;
        http.burst_per_key = 20;
    })
    .await;
    let addr = c.base.trim_start_matches("http://").to_string();
    let stop = CancellationToken::new();
    let answers: Answers = Default::default();
    let rss_before = rss_mib();

    let mut attackers = Vec::new();
    for _ in 0..SLOW_BODIES {
        attackers.push(tokio::spawn(slow_body(
            addr.clone(),
            stop.clone(),
            answers.clone(),
        )));
    }
    for _ in 0..OVERSIZED {
        attackers.push(tokio::spawn(oversized(
            addr.clone(),
            stop.clone(),
            answers.clone(),
        )));
    }
    for _ in 0..ENDLESS_HEADERS {
        attackers.push(tokio::spawn(endless_headers(
            addr.clone(),
            stop.clone(),
            answers.clone(),
        )));
    }
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        async move {
            while !stop.is_cancelled() {
                peak.fetch_max(rss_mib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The server: 10 events a second, each retried after its Retry-After.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    for n in 0..LEGIT_EVENTS {
        let id = format!("legit-{n}-{}", postback_testkit::unique("abuse"));
        let body = server_event(&id);
        let started = Instant::now();
        for attempt in 0.. {
            assert!(attempt < 30, "{id}: not accepted after 30 attempts");
            let r = client
                .post(format!("{}/v1/events", c.base))
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await
                .expect("the collector answers its legitimate client");
            let status = r.status().as_u16();
            count(&answers, format!("legitimate: {status}"));
            if status == 202 {
                break;
            }
            assert!(matches!(status, 429 | 503), "{id}: answered {status}");
            let wait: u64 = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .expect("a 429 or 503 says when to retry");
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        latencies.push(started.elapsed());
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    for a in attackers {
        let _ = tokio::time::timeout(Duration::from_secs(20), a).await;
    }
    let _ = sampler.await;

    let records = broker
        .consume(&c.topics.raw, LEGIT_EVENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    let landed: std::collections::BTreeSet<String> = records
        .iter()
        .filter_map(|r| codec.decode(r.payload.as_deref()?).ok())
        .map(|e| e.event_id)
        .collect();
    for id in &ids {
        assert!(
            landed.contains(id),
            "{id} accepted but not on conversions.raw"
        );
    }

    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "abuse: {SLOW_BODIES} slow bodies, {OVERSIZED} oversized, {ENDLESS_HEADERS} endless headers; \
         RSS {rss_before} MiB before, peak {peak} MiB (bound {RSS_BOUND_MIB}); legitimate p50 {:?} p99 {p99:?} \
         over {LEGIT_EVENTS} events, all on conversions.raw",
        latencies[latencies.len() / 2]
    );
    for (what, n) in answers.lock().unwrap().iter() {
        println!("abuse:   {what}: {n}");
    }
    assert!(
        peak < RSS_BOUND_MIB,
        "peak RSS {peak} MiB over {RSS_BOUND_MIB} MiB"
    );
    let answers = answers.lock().unwrap().clone();
    assert!(
        answers.keys().any(|k| k.starts_with("slow body: 408")),
        "slow bodies time out: {answers:?}"
    );
    assert!(
        answers.keys().any(|k| k.starts_with("oversized: 413")),
        "oversized bodies are refused: {answers:?}"
    );
    c.stop().await;
}

/// Past its limit of requests in progress the collector sheds at once, 503
/// with Retry-After, instead of queueing; and it takes requests again as
/// soon as the slow ones time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_collector_sheds_with_503_and_retry_after() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start_with(&broker, |config| {
        config.http.max_concurrent_requests = 2;
        config.http.body_timeout_secs = 2;
        config.http.retry_after_secs = 7;
    })
    .await;
    let addr = c.base.trim_start_matches("http://").to_string();
    // Two beacons that announce a body and send none hold both slots.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(beacon_head(&addr, 1000).as_bytes())
            .await
            .unwrap();
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!("{}/v1/events", c.base))
            .bearer_auth(API_KEY)
            .json(&server_event("shed-1"))
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "overloaded");
    // The holders time out (408) and give their slots back.
    for mut s in holders {
        assert_eq!(status_of(&mut s).await, Some(408));
    }
    assert_eq!(send().await.unwrap().status(), 202);
    c.stop().await;
}

/// A key past its rate is answered 429 with the seconds until it may send,
/// before its body is read; another key is not slowed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_rate_gets_429_with_retry_after() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start_with(&broker, |config| {
        config.http.requests_per_second_per_key = 1;
        config.http.burst_per_key = 2;
    })
    .await;
    let client = reqwest::Client::new();
    let beacon = || {
        client
            .post(format!("{}/v1/collect?site_key={SITE_KEY}", c.base))
            .header("origin", ORIGIN)
            .body("not JSON")
            .send()
    };
    assert_eq!(beacon().await.unwrap().status(), 400);
    assert_eq!(beacon().await.unwrap().status(), 400);
    let r = beacon().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    // Refused from the head alone: an unknown key whose announced body
    // never comes is answered at once, not after the body's timeout.
    let addr = c.base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = beacon_head(addr, 1000).replace(SITE_KEY, "pk_unknown_key");
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    assert_eq!(status_of(&mut s).await, Some(401));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered before any body"
    );
    // The API key has its own budget.
    let r = client
        .post(format!("{}/v1/events", c.base))
        .bearer_auth(API_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "validated, not rate-limited");
    c.stop().await;
}
