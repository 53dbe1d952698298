//! The broker's own ceiling on this machine, which every stage's figure is
//! read against: how fast the services' producer settings (acks=all,
//! idempotent, lz4) write conversion-sized records, how fast a consumer
//! reads them back, and the pass-through (the consumer loop writing every
//! record on unchanged and committing: a stage that does nothing), with
//! and without a transaction per batch.
//!
//! `scripts/bench.sh`, or `cargo bench --workspace --bench kafka_ceiling`.
//! BENCH_EVENTS (default 200000), BENCH_RECORD_BYTES (default 700).

use std::time::{Duration, Instant};

use postback_testkit::bench::{fill, timed, PassThrough};
use postback_testkit::{unique, Broker};
use rdkafka::consumer::{Consumer, StreamConsumer};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n = env("BENCH_EVENTS", 200_000);
    let size = env("BENCH_RECORD_BYTES", 700);
    let broker = Broker::shared().await?;
    // Conversion-like payloads: mostly distinct bytes, some repetition.
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            let key = format!("bench/e-{i}").into_bytes();
            let mut value = format!("{i:08}|").into_bytes();
            while value.len() < size {
                value.extend_from_slice(
                    format!(
                        "{:x}",
                        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ value.len() as u64
                    )
                    .as_bytes(),
                );
            }
            value.truncate(size);
            (key, value)
        })
        .collect();
    let input = unique("bench.ceiling.in");
    let output = unique("bench.ceiling.out");
    broker.create_topic(&input, 6).await?;
    broker.create_topic(&output, 6).await?;

    let t = Instant::now();
    fill(&broker, &input, &records).await?;
    let produce = n as f64 / t.elapsed().as_secs_f64();

    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", unique("bench.ceiling.reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&input])?;
    let first = consumer.recv().await?;
    drop(first);
    let t = Instant::now();
    let mut read = 1;
    while read < n {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(_)) => read += 1,
            Ok(Err(e)) => anyhow::bail!("consume: {e}"),
            Err(_) => anyhow::bail!("consume: stalled after {read} records"),
        }
    }
    let consume = (n - 1) as f64 / t.elapsed().as_secs_f64();

    let mut pass = Vec::new();
    for exactly_once in [false, true] {
        pass.push(
            timed(
                &broker,
                &input,
                "bench-ceiling-pass",
                PassThrough {
                    topic: output.clone(),
                },
                n,
                exactly_once,
            )
            .await?,
        );
    }

    println!(
        "kafka ceiling: {n} records of {size} B, 6 partitions, broker {}",
        broker.description()
    );
    println!("  produce (acks=all, idempotent, lz4)  {produce:>10.0} records/s");
    println!("  consume                              {consume:>10.0} records/s");
    println!(
        "  pass-through, at-least-once (acks, then offsets)      {:>9.0} records/s",
        pass[0]
    );
    println!(
        "  pass-through, exactly-once (a transaction per batch)  {:>9.0} records/s",
        pass[1]
    );
    Ok(())
}
