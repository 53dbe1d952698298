//! The at-least-once consumer loop against a real broker: nothing is lost
//! across a rebalance or a restart, and per-partition order holds.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use postback_core::kafka::{
    ConsumerLoop, ConsumerLoopConfig, InboundRecord, OutboundRecord, Producer,
};
use postback_core::metrics::ServiceMetrics;
use postback_testkit::{unique, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

async fn fill(broker: &Broker, topic: &str, from: usize, to: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let sends: Vec<_> = (from..to)
        .map(|i| {
            let key = format!("k{}", i % 97);
            let payload = format!("{i}");
            let producer = producer.clone();
            let topic = topic.to_string();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
}

/// Copies every record to `output`, tagging it with the instance name.
fn spawn_loop(
    broker: &Broker,
    name: &'static str,
    group: &str,
    input: &str,
    output: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let kafka = broker.kafka_config();
    let producer = Producer::new(&kafka, name).unwrap();
    let consumer = ConsumerLoop::new(
        &kafka,
        ConsumerLoopConfig {
            group_id: group.to_string(),
            client_id: name.to_string(),
            topics: vec![input.to_string()],
            max_batch: 200,
            linger: Duration::from_millis(5),
        },
        producer,
        &ServiceMetrics::new("test"),
    )
    .unwrap();
    let output = output.to_string();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move {
        let mut handler = move |r: &InboundRecord, out: &mut Vec<OutboundRecord>| {
            out.push(OutboundRecord::new(
                output.clone(),
                r.key.clone(),
                r.payload.clone().unwrap_or_default(),
            ));
        };
        consumer.run(&mut handler, t).await.unwrap();
    });
    (token, task)
}

fn numbers(records: &[InboundRecord]) -> Vec<(Vec<u8>, u64)> {
    records
        .iter()
        .map(|r| {
            let n: u64 = String::from_utf8_lossy(r.payload.as_deref().unwrap())
                .parse()
                .unwrap();
            (r.key.clone().unwrap(), n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_an_instance_leaves_mid_stream_and_order_per_key_holds() {
    let broker = Broker::start().await.unwrap();
    let (input, output) = (unique("loop.in"), unique("loop.out"));
    broker.create_topic(&input, PARTITIONS).await.unwrap();
    broker.create_topic(&output, PARTITIONS).await.unwrap();
    let group = unique("loop.group");
    const N: usize = 6000;

    let (a_stop, a) = spawn_loop(&broker, "a", &group, &input, &output);
    let (b_stop, b) = spawn_loop(&broker, "b", &group, &input, &output);
    fill(&broker, &input, 0, N / 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One instance leaves while records are still arriving.
    b_stop.cancel();
    fill(&broker, &input, N / 2, N).await;
    b.await.unwrap();

    let out = broker
        .consume(&output, N, Duration::from_secs(60))
        .await
        .unwrap();
    a_stop.cancel();
    a.await.unwrap();

    let seen = numbers(&out);
    let distinct: HashSet<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(distinct.len(), N, "lost {} records", N - distinct.len());
    // Per key, the first occurrence of each record comes in production order
    // (a replay after the rebalance may repeat a suffix, never reorder).
    let mut by_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    let mut first = HashSet::new();
    for (k, n) in seen {
        if first.insert(n) {
            by_key.entry(k).or_default().push(n);
        }
    }
    for (k, ns) in by_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "key {} out of order: {ns:?}",
            String::from_utf8_lossy(&k)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_commits_what_was_done_and_a_restart_resumes_without_loss() {
    let broker = Broker::start().await.unwrap();
    let (input, output) = (unique("loop.in"), unique("loop.out"));
    broker.create_topic(&input, PARTITIONS).await.unwrap();
    broker.create_topic(&output, PARTITIONS).await.unwrap();
    let group = unique("loop.group");

    fill(&broker, &input, 0, 1000).await;
    let (stop, task) = spawn_loop(&broker, "first", &group, &input, &output);
    let first = broker
        .consume(&output, 1000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(first.len(), 1000);
    stop.cancel();
    task.await.unwrap();

    fill(&broker, &input, 1000, 1500).await;
    let (stop, task) = spawn_loop(&broker, "second", &group, &input, &output);
    let all = broker
        .consume(&output, 1500, Duration::from_secs(60))
        .await
        .unwrap();
    stop.cancel();
    task.await.unwrap();
    let distinct: HashSet<u64> = numbers(&all).into_iter().map(|(_, n)| n).collect();
    assert_eq!(distinct.len(), 1500);
    // The committed offsets held: the restart did not start over.
    assert!(
        all.len() < 1500 + 200,
        "{} records: the restart replayed what was committed",
        all.len()
    );
}
