//! Collector throughput against its ceiling.
//!
//! 1. Ceiling: the same Avro payloads produced straight through rdkafka
//!    (acks=all, idempotent) to the same broker.
//! 2. Collector: batches of JSON events POSTed to /v1/events by concurrent
//!    clients; events/s and the p50/p99 latency of the 202.
//!
//! Prints both and their ratio. Run: `scripts/bench.sh` (or
//! `cargo bench --workspace --bench collector_throughput`).
//! BENCH_EVENTS (default 500000: at this rate fewer take a fraction of a
//! second, which a shared machine disturbs), BENCH_BATCH (500),
//! BENCH_CLIENTS (8).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use postback_collector::config::{ApiKey, CollectorConfig};
use postback_core::config::TopicsConfig;
use postback_core::kafka::producer_config;
use postback_core::model::{now_millis, ConversionRaw, Source};
use postback_core::{Codec, SchemaKind};
use postback_testkit::{unique, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

const API_KEY: &str = "sk_bench_0123456789abcdef";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(i: usize) -> Value {
    json!({
        "event_id": format!("bench-{i}"),
        "event_name": "Purchase",
        "action_source": "website",
        "order": {"order_id": format!("o-{i}"), "value": "129.90", "currency": "EUR"},
        "user": {"email": "jane.doe@example.com", "phone": "+33612345678", "country": "FR",
                 "ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"},
        "click_ids": {"gclid": "Cj0KCQiA-bench", "fbp": "fb.1.1732270000000.123456789"},
        "page": {"url": "https://shop.example/checkout/thanks"},
        "consent": {"ad_storage": "granted", "ad_user_data": "granted"}
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env("BENCH_EVENTS", 500_000);
    let batch = env("BENCH_BATCH", 500);
    let clients = env("BENCH_CLIENTS", 8);
    let broker = Broker::shared().await?;
    let ceiling_topic = unique("bench.ceiling");
    let topics = TopicsConfig {
        raw: unique("bench.raw"),
        rejected: unique("bench.rejected"),
        ..TopicsConfig::default()
    };
    for t in [&ceiling_topic, &topics.raw, &topics.rejected] {
        broker.create_topic(t, 6).await?;
    }

    // The same records the collector would write, encoded up front.
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    let now = now_millis();
    let ctx = postback_collector::validate::EventContext {
        tenant: "bench",
        default_source: Source::Server,
        required_source: None,
        now_ms: now,
        signer: None,
    };
    let limits = postback_collector::validate::Limits::default();
    let mut payloads = Vec::with_capacity(n);
    for i in 0..n {
        let raw = postback_collector::validate::validate_event(&event(i), "", &ctx, &limits)
            .map_err(|e| anyhow::anyhow!("sample event invalid: {e:?}"))?;
        payloads.push((raw.key(), codec.encode(&raw)?));
    }
    let payload_bytes = payloads.iter().map(|(_, p)| p.len()).sum::<usize>() / n;

    // 1. Ceiling (run before and after the collector, the better one counts:
    //    the first run also pays for the broker warming up).
    let producer: FutureProducer =
        producer_config(&broker.kafka_config(), "bench-ceiling").create()?;
    let ceiling = |topic: String| {
        let producer = producer.clone();
        let payloads = &payloads;
        async move {
            let started = Instant::now();
            // A sliding window of batch * clients records in flight, the
            // concurrency the collector gets from its clients.
            let failures = stream::iter(payloads.iter())
                .map(|(k, p)| {
                    producer.send(
                        FutureRecord::to(&topic).key(&k[..]).payload(&p[..]),
                        Duration::from_secs(30),
                    )
                })
                .buffer_unordered(batch * clients)
                .filter(|r| futures::future::ready(r.is_err()))
                .count()
                .await;
            if failures > 0 {
                anyhow::bail!("{failures} ceiling records were not acknowledged");
            }
            Ok(n as f64 / started.elapsed().as_secs_f64())
        }
    };
    let ceiling_before = ceiling(ceiling_topic.clone()).await?;

    // 2. Collector.
    let mut config = CollectorConfig {
        http: Default::default(),
        kafka: broker.kafka_config(),
        topics: topics.clone(),
        log: Default::default(),
        ops: Default::default(),
        api_keys: vec![ApiKey {
            tenant: "bench".into(),
            key: Some(API_KEY.into()),
            key_env: None,
        }],
        site_keys: vec![],
        ingest: Default::default(),
    };
    config.http.max_batch_events = batch.max(1);
    // The bench measures throughput, not the edge's per-key rate.
    config.http.requests_per_second_per_key = 1_000_000;
    config.http.burst_per_key = 1_000_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/events", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = tokio::spawn(postback_collector::run_with_listeners(
        config,
        listener,
        ops,
        shutdown.clone(),
    ));
    let bodies: Vec<Vec<u8>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|ids| {
            serde_json::to_vec(
                &json!({"events": ids.iter().map(|i| event(*i)).collect::<Vec<_>>()}),
            )
            .unwrap_or_default()
        })
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    // Warm the connection pool and the producer.
    let _ = client
        .post(&url)
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"events": [event(n + 1)]}))?)
        .send()
        .await?;
    let client = Arc::new(client);
    let started = Instant::now();
    let results: Vec<(Duration, u16)> = stream::iter(bodies.into_iter())
        .map(|body| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let t = Instant::now();
                let status = match client
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                (t.elapsed(), status)
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let collector_secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = server.await;
    let failed = results.iter().filter(|(_, s)| *s != 202).count();
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let collector_rate = n as f64 / collector_secs;
    let ceiling_after = ceiling(ceiling_topic.clone()).await?;
    let ceiling_rate = ceiling_before.max(ceiling_after);

    println!("collector benchmark: {n} events, {batch} per request, {clients} concurrent clients, ~{payload_bytes} B Avro per event, broker {}", broker.description());
    println!("  raw rdkafka produce (ceiling)   {ceiling_rate:>10.0} events/s  (best of {ceiling_before:.0} before and {ceiling_after:.0} after)");
    println!("  collector POST /v1/events       {collector_rate:>10.0} events/s  ({collector_secs:.2} s, {failed} non-202 requests)");
    println!(
        "  collector 202 latency per {batch}-event request: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
    println!(
        "  ratio collector / ceiling       {:>10.2}  (target >= 0.50)",
        collector_rate / ceiling_rate
    );
    if failed > 0 {
        anyhow::bail!("{failed} requests were not answered 202");
    }
    Ok(())
}
