//! The consumer loop against a real broker. Exactly-once (the default):
//! across a rebalance, a restart or an instance that dies mid-transaction,
//! every input record's output is on the output topic once (read
//! committed), in order per key. At-least-once: nothing is lost.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{
    ConsumerLoop, ConsumerLoopConfig, HandlerError, InboundRecord, OutboundRecord, Persisted,
    RecordHandler, TopicPartition, TopicSpec,
};
use postback_core::metrics::ServiceMetrics;
use postback_core::model::DeadLetter;
use postback_core::{Codec, SchemaKind};
use postback_testkit::{unique, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

async fn fill(broker: &Broker, topic: &str, from: usize, to: usize) {
    let producer: FutureProducer = broker
        .client_config()
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

struct Instance {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Copies every record to `output`.
async fn spawn_loop(
    broker: &Broker,
    name: &str,
    group: &str,
    topics: (&str, &str),
    exactly_once: bool,
) -> Instance {
    spawn_loop_with(
        broker,
        name,
        group,
        topics,
        exactly_once,
        &unique("rejected"),
    )
    .await
}

/// Copies every record to `output`, but for `big:<n>`, whose copy is `n`
/// bytes; dead letters go to `rejected`.
async fn spawn_loop_with(
    broker: &Broker,
    name: &str,
    group: &str,
    (input, output): (&str, &str),
    exactly_once: bool,
    rejected: &str,
) -> Instance {
    let output = output.to_string();
    let handler = move |r: &InboundRecord, out: &mut Vec<OutboundRecord>| {
        let payload = r.payload.clone().unwrap_or_default();
        let payload = match String::from_utf8_lossy(&payload).strip_prefix("big:") {
            // Bytes no compression shrinks (the limit is on the
            // compressed batch).
            Some(n) => {
                let mut x: u64 = 0x2545_F491_4F6C_DD1D;
                (0..n.parse::<usize>().unwrap_or(0))
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 32) as u8
                    })
                    .collect()
            }
            None => payload,
        };
        out.push(OutboundRecord::new(output.clone(), r.key.clone(), payload));
    };
    let group = (name, group);
    let metrics = ServiceMetrics::new("test");
    spawn_handler(
        broker,
        group,
        input,
        exactly_once,
        rejected,
        handler,
        &metrics,
    )
    .await
}

/// Runs `handler` in a consumer loop of `group` (name, group id) on `input`.
async fn spawn_handler(
    broker: &Broker,
    (name, group): (&str, &str),
    input: &str,
    exactly_once: bool,
    rejected: &str,
    mut handler: impl RecordHandler + 'static,
    metrics: &ServiceMetrics,
) -> Instance {
    let mut kafka = broker.kafka_config();
    // What an instance that died mid-transaction left open is aborted soon.
    kafka.transaction_timeout_ms = 5_000;
    let consumer = ConsumerLoop::new(
        &kafka,
        ConsumerLoopConfig {
            group_id: group.to_string(),
            client_id: name.to_string(),
            topics: vec![input.to_string()],
            max_batch: 200,
            linger: Duration::from_millis(5),
            exactly_once,
            instance_id: unique(name),
        },
        DeadLetters::new("test", rejected.to_string()),
        metrics,
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        consumer.run(&mut handler, token).await.unwrap();
    });
    Instance { stop, task }
}

impl Instance {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    /// Gone without a word: no commit, no leaving the group, whatever
    /// transaction was open stays open until the broker aborts it.
    fn crash(self) {
        self.task.abort();
    }
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

/// Each of 0..n exactly once, and in production order per key.
fn assert_exactly_once_in_order(records: &[InboundRecord], n: usize) {
    let seen = numbers(records);
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, i) in &seen {
        *count.entry(*i).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(count.len(), n, "lost {} records", n - count.len());
    let mut by_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for (k, i) in seen {
        by_key.entry(k).or_default().push(i);
    }
    for (k, ns) in by_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "key {} out of order: {ns:?}",
            String::from_utf8_lossy(&k)
        );
    }
}

async fn topics(broker: &Broker) -> (String, String) {
    let (input, output) = (unique("loop.in"), unique("loop.out"));
    broker.create_topic(&input, PARTITIONS).await.unwrap();
    broker.create_topic(&output, PARTITIONS).await.unwrap();
    (input, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_leaving_mid_stream_loses_nothing_and_writes_nothing_twice() {
    let broker = Broker::shared().await.unwrap();
    let (input, output) = topics(&broker).await;
    let group = unique("loop.group");
    const N: usize = 6000;

    let a = spawn_loop(&broker, "a", &group, (&input, &output), true).await;
    let b = spawn_loop(&broker, "b", &group, (&input, &output), true).await;
    fill(&broker, &input, 0, N / 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One instance leaves while records are still arriving.
    let leaving = tokio::spawn(b.stop());
    fill(&broker, &input, N / 2, N).await;
    leaving.await.unwrap();

    let out = broker
        .consume(&output, N, Duration::from_secs(60))
        .await
        .unwrap();
    a.stop().await;
    let all = broker.read_to_end(&output).await.unwrap();
    assert_eq!(out.len(), N);
    assert_exactly_once_in_order(&all, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_dying_mid_transaction_leaves_nothing_behind() {
    let broker = Broker::shared().await.unwrap();
    let (input, output) = topics(&broker).await;
    let group = unique("loop.group");
    const N: usize = 20_000;

    fill(&broker, &input, 0, N).await;
    let first = spawn_loop(&broker, "doomed", &group, (&input, &output), true).await;
    // Killed once it committed some of the work, in the middle of the rest.
    let partial = broker
        .consume(&output, N / 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(partial.len() >= N / 10);
    first.crash();
    let second = spawn_loop(&broker, "survivor", &group, (&input, &output), true).await;
    broker
        .consume(&output, N, Duration::from_secs(120))
        .await
        .unwrap();
    second.stop().await;
    assert_exactly_once_in_order(&broker.read_to_end(&output).await.unwrap(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_commits_what_was_done_and_a_restart_resumes_exactly_there() {
    let broker = Broker::shared().await.unwrap();
    let (input, output) = topics(&broker).await;
    let group = unique("loop.group");

    fill(&broker, &input, 0, 1000).await;
    let first = spawn_loop(&broker, "first", &group, (&input, &output), true).await;
    let done = broker
        .consume(&output, 1000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.len(), 1000);
    first.stop().await;

    fill(&broker, &input, 1000, 1500).await;
    let second = spawn_loop(&broker, "second", &group, (&input, &output), true).await;
    broker
        .consume(&output, 1500, Duration::from_secs(60))
        .await
        .unwrap();
    second.stop().await;
    assert_exactly_once_in_order(&broker.read_to_end(&output).await.unwrap(), 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_mode_loses_nothing_when_an_instance_leaves() {
    let broker = Broker::shared().await.unwrap();
    let (input, output) = topics(&broker).await;
    let group = unique("loop.group");
    const N: usize = 4000;

    let a = spawn_loop(&broker, "a", &group, (&input, &output), false).await;
    let b = spawn_loop(&broker, "b", &group, (&input, &output), false).await;
    fill(&broker, &input, 0, N / 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leaving = tokio::spawn(b.stop());
    fill(&broker, &input, N / 2, N).await;
    leaving.await.unwrap();
    let out = broker
        .consume(&output, N, Duration::from_secs(60))
        .await
        .unwrap();
    a.stop().await;
    let distinct: HashSet<u64> = numbers(&out).into_iter().map(|(_, n)| n).collect();
    assert_eq!(distinct.len(), N, "lost {} records", N - distinct.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_larger_than_the_broker_takes_is_a_dead_letter_and_its_neighbours_land() {
    let broker = Broker::shared().await.unwrap();
    for exactly_once in [true, false] {
        let (input, output, rejected) = (unique("big.in"), unique("big.out"), unique("big.dlq"));
        // The broker refuses a produce batch over this as a whole, small
        // records and all.
        let mut small_topic = TopicSpec::new(&output, 1);
        small_topic.configs = vec![("max.message.bytes".into(), "8192".into())];
        broker
            .create_topics(&[
                TopicSpec::new(&input, 1),
                small_topic,
                TopicSpec::new(&rejected, 1),
            ])
            .await
            .unwrap();
        let producer: FutureProducer = broker.client_config().create().unwrap();
        for i in 0..40 {
            let payload = if i == 20 {
                "big:20000".to_string()
            } else {
                i.to_string()
            };
            producer
                .send(
                    FutureRecord::to(&input).key("k").payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let group = unique("big.group");
        let instance = spawn_loop_with(
            &broker,
            "big",
            &group,
            (&input, &output),
            exactly_once,
            &rejected,
        )
        .await;
        let letters = broker
            .consume(&rejected, 1, Duration::from_secs(60))
            .await
            .unwrap();
        let landed = broker
            .consume(&output, 39, Duration::from_secs(60))
            .await
            .unwrap();
        instance.stop().await;
        let landed: Vec<String> = landed
            .iter()
            .map(|r| {
                let p = r.payload.as_deref().unwrap_or_default();
                if p.len() > 100 {
                    format!("<{} bytes>", p.len())
                } else {
                    String::from_utf8_lossy(p).into()
                }
            })
            .collect();
        let expected: Vec<String> = (0..40)
            .filter(|i| *i != 20)
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            landed, expected,
            "every neighbour landed, in order (exactly_once {exactly_once})"
        );
        assert_eq!(letters.len(), 1);
        let codec: Codec<DeadLetter> = Codec::new(SchemaKind::DeadLetter);
        let letter = codec
            .decode(letters[0].payload.as_deref().unwrap_or_default())
            .unwrap();
        assert_eq!(letter.reason, "output_too_large");
        assert_eq!(letter.source_topic.as_deref(), Some(output.as_str()));
        let all = broker.read_to_end(&output).await.unwrap();
        assert_eq!(
            all.len(),
            39,
            "nothing written twice (exactly_once {exactly_once})"
        );
    }
}

/// Counts what it owns and what was taken from it.
#[derive(Clone, Default)]
struct Ownership {
    owned: Arc<Mutex<BTreeSet<i32>>>,
    revoked: Arc<Mutex<Vec<i32>>>,
}

impl Ownership {
    fn assigned(&self, partitions: &[TopicPartition]) {
        let mut owned = self.owned.lock().unwrap();
        owned.extend(partitions.iter().map(|p| p.partition));
    }

    fn lost(&self, partitions: &[TopicPartition]) {
        let mut owned = self.owned.lock().unwrap();
        for p in partitions {
            owned.remove(&p.partition);
            self.revoked.lock().unwrap().push(p.partition);
        }
    }
}

impl RecordHandler for Ownership {
    fn handle(&mut self, _record: &InboundRecord, _out: &mut Vec<OutboundRecord>) {}

    // The loop tells of assignment changes between batches; ticks make
    // batches on a topic without records.
    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }

    fn on_assigned(&mut self, partitions: &[TopicPartition]) -> Result<(), HandlerError> {
        self.assigned(partitions);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        self.lost(partitions);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_instance_takes_partitions_without_revoking_the_ones_that_stay() {
    let broker = Broker::shared().await.unwrap();
    let (input, _) = topics(&broker).await;
    let group = unique("coop.group");
    let first = Ownership::default();
    let a = spawn_handler(
        &broker,
        ("a", &group),
        &input,
        true,
        &unique("rejected"),
        first.clone(),
        &ServiceMetrics::new("test"),
    )
    .await;
    let owns = |o: &Ownership| o.owned.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while owns(&first) < PARTITIONS as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never owned every partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Ownership::default();
    let b = spawn_handler(
        &broker,
        ("b", &group),
        &input,
        true,
        &unique("rejected"),
        second.clone(),
        &ServiceMetrics::new("test"),
    )
    .await;
    while owns(&second) < PARTITIONS as usize / 2 || owns(&first) > PARTITIONS as usize / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partitions were not shared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Eager rebalancing would revoke all four and give two back; here only
    // the two that moved are revoked, and the two that stayed never were.
    let revoked = first.revoked.lock().unwrap().clone();
    let moved = second.owned.lock().unwrap().clone();
    let stayed = first.owned.lock().unwrap().clone();
    assert_eq!(
        revoked.len(),
        PARTITIONS as usize / 2,
        "revoked {revoked:?}"
    );
    assert_eq!(revoked.iter().copied().collect::<BTreeSet<_>>(), moved);
    assert!(stayed.is_disjoint(&moved));
    b.stop().await;
    a.stop().await;
}

/// The loop's lag gauge, per partition of `topic`, as /metrics shows it.
fn lag(metrics: &ServiceMetrics, topic: &str) -> BTreeMap<String, i64> {
    let text = metrics.render();
    let topic_label = format!("topic=\"{topic}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("postback_test_consumer_lag_records{") && l.contains(&topic_label)
        })
        .filter_map(|l| {
            let partition = l.split("partition=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((partition.to_string(), value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_gauge_follows_the_backlog_though_offsets_are_committed_in_transactions() {
    let broker = Broker::shared().await.unwrap();
    let (input, output) = topics(&broker).await;
    fill(&broker, &input, 0, 1500).await;
    // 5 ms a record: the backlog lasts at least 7.5 s, over one statistics
    // interval (5 s), so a report falls while records are left.
    let copy = {
        let output = output.clone();
        move |r: &InboundRecord, out: &mut Vec<OutboundRecord>| {
            std::thread::sleep(Duration::from_millis(5));
            out.push(OutboundRecord::new(
                output.clone(),
                r.key.clone(),
                r.payload.clone().unwrap_or_default(),
            ));
        }
    };
    let metrics = ServiceMetrics::new("test");
    let group = unique("lag.group");
    let instance = spawn_handler(
        &broker,
        ("lag", &group),
        &input,
        true,
        &unique("rejected"),
        copy,
        &metrics,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut most_behind = 0;
    let mut done = false;
    loop {
        let now = lag(&metrics, &input);
        most_behind = most_behind.max(now.values().sum::<i64>());
        if !done {
            done = broker.read_to_end(&output).await.unwrap().len() == 1500;
        }
        // Caught up: every partition reported, each at 0 (the input was not
        // written in transactions, so there is no commit marker to count).
        if done && now.len() == PARTITIONS as usize && now.values().all(|l| *l == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag never came back to 0 per partition: {now:?} (done: {done})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    instance.stop().await;
    // librdkafka's own consumer_lag would have had no series at all here: the
    // group's offsets were only ever committed by the producer.
    assert!(
        most_behind > 0 && most_behind <= 1500,
        "while records were left the gauge said {most_behind}"
    );
    println!("lag: at most {most_behind} of 1500 records behind, then 0 on every partition");
}

/// A store that commits when the loop says: `handle` stages each record's
/// number, `persist` holds them until `hold_for` after the first
/// (`Persisted::Held`), and `flush` makes them durable. It keeps which
/// partition each record it handled came from, and which it owns.
#[derive(Clone)]
struct Staging {
    hold_for: Duration,
    handled: Arc<Mutex<Vec<(i32, u64)>>>,
    staged: Arc<Mutex<(Vec<u64>, Option<std::time::Instant>)>>,
    durable: Arc<Mutex<Vec<u64>>>,
    ownership: Ownership,
}

impl Staging {
    fn new(hold_for: Duration) -> Staging {
        Staging {
            hold_for,
            handled: Arc::default(),
            staged: Arc::default(),
            durable: Arc::default(),
            ownership: Ownership::default(),
        }
    }

    fn handled(&self) -> usize {
        self.handled.lock().unwrap().len()
    }

    /// The numbers it handled from `partitions`.
    fn handled_on(&self, partitions: &BTreeSet<i32>) -> BTreeSet<u64> {
        let handled = self.handled.lock().unwrap();
        let on = handled.iter().filter(|(p, _)| partitions.contains(p));
        on.map(|(_, n)| *n).collect()
    }

    fn durable(&self) -> BTreeSet<u64> {
        self.durable.lock().unwrap().iter().copied().collect()
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.ownership.owned.lock().unwrap().clone()
    }
}

impl RecordHandler for Staging {
    fn handle(&mut self, record: &InboundRecord, _out: &mut Vec<OutboundRecord>) {
        let n = String::from_utf8_lossy(record.payload.as_deref().unwrap_or_default())
            .parse()
            .unwrap_or(u64::MAX);
        self.staged.lock().unwrap().0.push(n);
        self.handled.lock().unwrap().push((record.partition, n));
    }

    async fn persist(&mut self) -> Result<Persisted, HandlerError> {
        let mut staged = self.staged.lock().unwrap();
        if staged.0.is_empty() {
            return Ok(Persisted::Durable);
        }
        let since = *staged.1.get_or_insert_with(std::time::Instant::now);
        Ok(Persisted::Held {
            flush_by: since + self.hold_for,
        })
    }

    async fn flush(&mut self) -> Result<(), HandlerError> {
        let mut staged = self.staged.lock().unwrap();
        self.durable.lock().unwrap().append(&mut staged.0);
        staged.1 = None;
        Ok(())
    }

    fn on_assigned(&mut self, partitions: &[TopicPartition]) -> Result<(), HandlerError> {
        self.ownership.assigned(partitions);
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        self.ownership.lost(partitions);
    }
}

async fn committed_total(broker: &Broker, group: &str, topic: &str) -> i64 {
    let committed = broker.committed(group, topic).await.unwrap();
    committed.values().map(|o| (*o).max(0)).sum()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_commit_their_offsets_only_once_flushed() {
    let broker = Broker::shared().await.unwrap();
    for exactly_once in [true, false] {
        let (input, _) = topics(&broker).await;
        let group = unique("held.group");
        let spawn = |name: &'static str, handler: Staging| {
            let (broker, group, input) = (&broker, &group, &input);
            async move {
                let rejected = unique("held.dlq");
                let metrics = &ServiceMetrics::new("test");
                spawn_handler(
                    broker,
                    (name, group),
                    input,
                    exactly_once,
                    &rejected,
                    handler,
                    metrics,
                )
                .await
            }
        };
        fill(&broker, &input, 0, 1000).await;

        // Held for a minute: handled, never flushed, so nothing committed.
        let holding = Staging::new(Duration::from_secs(60));
        let doomed = spawn("doomed", holding.clone()).await;
        wait_until("the first instance handles every record", async || {
            holding.handled() == 1000
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(committed_total(&broker, &group, &input).await, 0);
        doomed.crash();

        // Its successor reads all of them again, and an idle topic still
        // commits them once the hold is over.
        let brief = Staging::new(Duration::from_millis(300));
        let survivor = spawn("survivor", brief.clone()).await;
        wait_until("the survivor commits every record", async || {
            committed_total(&broker, &group, &input).await == 1000
        })
        .await;
        assert_eq!(brief.durable(), (0..1000).collect());
        survivor.stop().await;

        // A graceful stop flushes what it holds and commits it.
        fill(&broker, &input, 1000, 1500).await;
        let last = Staging::new(Duration::from_secs(60));
        let stopping = spawn("stopping", last.clone()).await;
        wait_until("the last instance handles the new records", async || {
            last.handled() == 500
        })
        .await;
        assert_eq!(committed_total(&broker, &group, &input).await, 1000);
        stopping.stop().await;
        assert_eq!(last.durable(), (1000..1500).collect());
        assert_eq!(committed_total(&broker, &group, &input).await, 1500);
    }
}

/// Writes `from..to` into one partition of `topic`.
async fn fill_partition(broker: &Broker, topic: &str, partition: i32, from: usize, to: usize) {
    // Idempotent: a retried send must not write a number twice, the test
    // counts offsets.
    let producer: FutureProducer = broker
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in from..to {
        let payload = i.to_string();
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key("k")
            .payload(&payload);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// The loop's count of records given up to a revocation, as /metrics shows it.
fn revoked_total(metrics: &ServiceMetrics) -> u64 {
    let text = metrics.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("postback_test_consumer_revoked_records_total"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_writes_of_revoked_partitions_are_left_to_their_new_owner() {
    let broker = Broker::shared().await.unwrap();
    // Woken by a record on a partition it kept, the loop gives the moved
    // partitions' held records up then; never woken, at its stop.
    for woken in [true, false] {
        revoked_partitions_are_left_to_their_new_owner(&broker, woken).await;
    }
}

async fn revoked_partitions_are_left_to_their_new_owner(broker: &Broker, woken: bool) {
    let (input, _) = topics(broker).await;
    let group = unique("held.moved.group");
    fill(broker, &input, 0, 1000).await;
    let metrics = ServiceMetrics::new("test");

    // The first instance holds every record far longer than the test
    // lasts, so nothing of it is committed when a second one joins and
    // takes half the partitions.
    let first = Staging::new(Duration::from_secs(3600));
    let a = spawn_handler(
        broker,
        ("a", &group),
        &input,
        true,
        &unique("held.moved.dlq"),
        first.clone(),
        &metrics,
    )
    .await;
    wait_until("the first instance handles every record", async || {
        first.handled() == 1000
    })
    .await;
    let second = Staging::new(Duration::from_millis(300));
    let b = spawn_handler(
        broker,
        ("b", &group),
        &input,
        true,
        &unique("held.moved.dlq"),
        second.clone(),
        &ServiceMetrics::new("test"),
    )
    .await;
    wait_until("the partitions are shared", async || {
        second.owned().len() == PARTITIONS as usize / 2
    })
    .await;
    let moved = second.owned();
    let moved_records = first.handled_on(&moved);
    wait_until("the new owner commits the moved partitions", async || {
        committed_total(broker, &group, &input).await == moved_records.len() as i64
    })
    .await;
    assert_eq!(second.durable(), moved_records, "read again from the start");

    // More records on a moved partition, committed by its new owner: the
    // first instance must not set that offset back to what it held.
    let partition = *moved.first().unwrap();
    fill_partition(broker, &input, partition, 1000, 1100).await;
    wait_until("the new owner commits the new records", async || {
        committed_total(broker, &group, &input).await == moved_records.len() as i64 + 100
    })
    .await;
    let moved_offsets = broker.committed(&group, &input).await.unwrap();

    let mut total = 1100;
    if woken {
        let kept = (0..PARTITIONS).find(|p| !moved.contains(p)).unwrap();
        fill_partition(broker, &input, kept, 1100, 1150).await;
        wait_until(
            "the first instance handles a kept partition's record",
            async || first.handled() == 1050,
        )
        .await;
        assert_eq!(
            revoked_total(&metrics),
            moved_records.len() as u64,
            "the held records given up are counted when the loop wakes"
        );
        total = 1150;
    }
    a.stop().await;
    let after = broker.committed(&group, &input).await.unwrap();
    for p in &moved {
        assert_eq!(
            after.get(p),
            moved_offsets.get(p),
            "partition {p}: the old owner committed over its new owner (woken {woken})"
        );
    }
    assert_eq!(committed_total(broker, &group, &input).await, total);
    assert_eq!(
        revoked_total(&metrics),
        moved_records.len() as u64,
        "the held records given up are counted (woken {woken})"
    );
    b.stop().await;
}
