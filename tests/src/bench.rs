//! What the stages' benchmarks share: filling an input topic fast, timing a
//! consumer loop over it, and the pass-through every stage is compared with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use postback_core::dead_letter::DeadLetters;
use postback_core::kafka::{
    producer_config, ConsumerLoop, ConsumerLoopConfig, Delivered, HandlerError, InboundRecord,
    OutboundRecord, RecordHandler, TopicPartition,
};
use postback_core::metrics::ServiceMetrics;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::{unique, Broker};

/// Writes `records` (key, value) to `topic`, many in flight at once.
pub async fn fill(
    broker: &Broker,
    topic: &str,
    records: &[(Vec<u8>, Vec<u8>)],
) -> anyhow::Result<()> {
    let producer: FutureProducer =
        producer_config(&broker.kafka_config(), "bench-fill").create()?;
    let failed = stream::iter(records.iter())
        .map(|(k, p)| {
            producer.send(
                FutureRecord::to(topic).key(&k[..]).payload(&p[..]),
                Duration::from_secs(30),
            )
        })
        .buffer_unordered(5000)
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} input records not written");
    Ok(())
}

/// Forwards everything to the stage's handler; stops the loop once `target`
/// records were handled.
struct Counting<H> {
    inner: H,
    seen: Arc<AtomicUsize>,
    target: usize,
    done: CancellationToken,
}

impl<H: RecordHandler> RecordHandler for Counting<H> {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        self.inner.handle(record, out);
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 >= self.target {
            self.done.cancel();
        }
    }
    fn on_assigned(&mut self, p: &[TopicPartition]) -> Result<(), HandlerError> {
        self.inner.on_assigned(p)
    }
    fn on_revoked(&mut self, p: &[TopicPartition]) {
        self.inner.on_revoked(p)
    }
    fn tick_interval(&self) -> Option<Duration> {
        self.inner.tick_interval()
    }
    fn tick(&mut self, out: &mut Vec<OutboundRecord>) {
        self.inner.tick(out)
    }
    fn on_acknowledged(&mut self, d: &[Delivered]) -> Result<(), HandlerError> {
        self.inner.on_acknowledged(d)
    }
    fn on_aborted(&mut self) {
        self.inner.on_aborted()
    }
}

/// Runs `handler` in a consumer loop (a new group) over `input` until it
/// handled `n` records, with transactions (`exactly_once`) or without;
/// returns records per second.
pub async fn timed<H: RecordHandler>(
    broker: &Broker,
    input: &str,
    name: &str,
    handler: H,
    n: usize,
    exactly_once: bool,
) -> anyhow::Result<f64> {
    let kafka = broker.kafka_config();
    let consumer = ConsumerLoop::new(
        &kafka,
        ConsumerLoopConfig {
            group_id: unique(name),
            client_id: name.into(),
            topics: vec![input.into()],
            max_batch: 1000,
            linger: Duration::from_millis(5),
            exactly_once,
            instance_id: postback_core::kafka::instance_id(None),
        },
        DeadLetters::new("bench", unique("bench.rejected")),
        &ServiceMetrics::new("bench"),
    )
    .await?;
    let done = CancellationToken::new();
    let mut counting = Counting {
        inner: handler,
        seen: Arc::new(AtomicUsize::new(0)),
        target: n,
        done: done.clone(),
    };
    let started = Instant::now();
    consumer.run(&mut counting, done).await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The ceiling of a stage: consume, write the same bytes, commit.
pub struct PassThrough {
    pub topic: String,
}

impl RecordHandler for PassThrough {
    fn handle(&mut self, r: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        out.push(OutboundRecord::new(
            self.topic.clone(),
            r.key.clone(),
            r.payload.clone().unwrap_or_default(),
        ));
    }
}
