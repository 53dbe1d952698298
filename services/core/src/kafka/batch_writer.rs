//! How the consumer loop makes a batch's outputs durable and moves past
//! its inputs, in one of two modes:
//!
//! - exactly-once (the default): the outputs and the batch's input offsets
//!   commit in one Kafka transaction. A crash, a broker restart or a fenced
//!   zombie leaves nothing downstream reads, and the batch is read again.
//! - at-least-once (`consumer.exactly_once = false`, for brokers without
//!   transactions): every output acknowledged, then the offsets stored for
//!   the next commit; a crash replays the uncommitted batches, and the
//!   stages' idempotent effects absorb the repeats.
//!
//! Either way an output the broker can never take (larger than it accepts)
//! becomes a dead letter in its place, so it never stops the partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetters;
use crate::kafka::handler::{InboundRecord, TopicPartition};
use crate::kafka::producer::{largest_too_large, Delivered, OutboundRecord, Producer};
use crate::kafka::rebalance::LoopContext;
use crate::kafka::transaction::{TransactionError, TransactionalProducer};
use crate::metrics::{latency_buckets, ServiceMetrics};

pub(crate) enum BatchWriter {
    Acknowledged(Producer),
    Transactional(TransactionalProducer),
}

/// What became of a batch's outputs.
pub(crate) enum Written {
    /// Durable, and the inputs are behind us; where each output landed
    /// (partition -1 where a dead letter took its place).
    Done(Vec<Delivered>),
    /// The group refused this instance's offsets (it lost partitions):
    /// nothing was written, and the batch is read again after a poll.
    Fenced,
    /// Shut down before the outputs were durable: nothing committed.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WriterFailed(pub TransactionError);

pub(crate) struct WriterMetrics {
    produced: IntCounterVec,
    delivery_retries: IntCounter,
    too_large: IntCounterVec,
    transactions: IntCounterVec,
    transaction_seconds: Histogram,
}

impl WriterMetrics {
    pub(crate) fn new(m: &ServiceMetrics) -> Self {
        WriterMetrics {
            produced: m.counter_vec(
                "produced_records_total",
                "Records written for good (committed or acknowledged), by output topic.",
                &["topic"],
            ),
            delivery_retries: m.counter(
                "delivery_retries_total",
                "Times a batch's outputs were written again after the broker did not take them.",
            ),
            too_large: m.counter_vec(
                "dropped_outputs_total",
                "Outputs larger than the broker accepts, replaced by a dead letter, by topic.",
                &["topic"],
            ),
            transactions: m.counter_vec(
                "transactions_total",
                "Transactions by outcome (committed, aborted, fenced).",
                &["outcome"],
            ),
            transaction_seconds: m.histogram(
                "transaction_duration_seconds",
                "From a transaction's first output to its commit.",
                latency_buckets(),
            ),
        }
    }
}

impl BatchWriter {
    pub(crate) fn probe_client(&self) -> rdkafka::producer::FutureProducer {
        match self {
            BatchWriter::Acknowledged(p) => p.client(),
            BatchWriter::Transactional(t) => t.client(),
        }
    }

    /// `offsets`: the next offset of every owned partition, the batch's
    /// included (what a transaction commits).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write(
        &self,
        consumer: &StreamConsumer<LoopContext>,
        batch: &[InboundRecord],
        offsets: &BTreeMap<TopicPartition, i64>,
        outputs: &mut [OutboundRecord],
        dead_letters: &DeadLetters,
        metrics: &WriterMetrics,
        shutdown: &CancellationToken,
    ) -> Result<Written, WriterFailed> {
        let written = match self {
            BatchWriter::Transactional(producer) => {
                transact(
                    producer,
                    consumer,
                    offsets,
                    outputs,
                    dead_letters,
                    metrics,
                    shutdown,
                )
                .await?
            }
            BatchWriter::Acknowledged(producer) => {
                match acknowledge(producer, outputs, dead_letters, metrics, shutdown).await {
                    None => Written::Stopped,
                    Some(deliveries) => {
                        store_offsets(consumer, batch);
                        Written::Done(deliveries)
                    }
                }
            }
        };
        if let Written::Done(deliveries) = &written {
            count_by_topic(
                &metrics.produced,
                outputs
                    .iter()
                    .zip(deliveries)
                    .filter(|(_, d)| d.partition >= 0)
                    .map(|(o, _)| o.topic.as_str()),
            );
        }
        Ok(written)
    }
}

/// The next offset to read per input partition of `batch`.
fn batch_offsets(batch: &[InboundRecord]) -> BTreeMap<TopicPartition, i64> {
    let mut next = BTreeMap::new();
    advance_past(&mut next, batch);
    next
}

/// Moves each partition's next offset past `records`, never back.
pub(crate) fn advance_past(offsets: &mut BTreeMap<TopicPartition, i64>, records: &[InboundRecord]) {
    for r in records {
        let tp = TopicPartition {
            topic: r.topic.clone(),
            partition: r.partition,
        };
        let next = offsets.entry(tp).or_insert(0);
        *next = (*next).max(r.offset + 1);
    }
}

fn offsets_list(offsets: &BTreeMap<TopicPartition, i64>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in offsets {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset)) {
            tracing::warn!(error = %e, "cannot build the offsets to commit");
        }
    }
    tpl
}

/// Replaces output `index` by its dead letter (it is larger than the broker
/// accepts); true if it was replaced.
fn replace_too_large(
    outputs: &mut [OutboundRecord],
    index: usize,
    dead_letters: &DeadLetters,
    metrics: &WriterMetrics,
) -> bool {
    let Some(output) = outputs.get(index) else {
        return false;
    };
    if output.topic == dead_letters.topic() {
        // A dead letter too large to write: nothing smaller to put there.
        return false;
    }
    metrics
        .too_large
        .with_label_values(&[output.topic.as_str()])
        .inc();
    tracing::error!(topic = %output.topic, bytes = output.payload.len(),
        "output larger than the broker accepts; a dead letter takes its place");
    let detail = format!(
        "a record of {} bytes for {} is larger than the broker accepts",
        output.payload.len(),
        output.topic
    );
    match dead_letters.for_output(output, "output_too_large", detail) {
        Ok(letter) => {
            outputs[index] = letter;
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a dead letter");
            false
        }
    }
}

async fn transact(
    producer: &TransactionalProducer,
    consumer: &StreamConsumer<LoopContext>,
    offsets: &BTreeMap<TopicPartition, i64>,
    outputs: &mut [OutboundRecord],
    dead_letters: &DeadLetters,
    metrics: &WriterMetrics,
    shutdown: &CancellationToken,
) -> Result<Written, WriterFailed> {
    let mut replaced = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = producer
            .commit(outputs, offsets_list(offsets), consumer.group_metadata())
            .await;
        match result {
            Ok(mut deliveries) => {
                metrics.transactions.with_label_values(&["committed"]).inc();
                metrics
                    .transaction_seconds
                    .observe(started.elapsed().as_secs_f64());
                for i in &replaced {
                    if let Some(d) = deliveries.get_mut(*i) {
                        *d = Delivered {
                            partition: -1,
                            offset: -1,
                        };
                    }
                }
                return Ok(Written::Done(deliveries));
            }
            Err(TransactionError::TooLarge { index }) => {
                metrics.transactions.with_label_values(&["aborted"]).inc();
                if !replace_too_large(outputs, index, dead_letters, metrics) {
                    return Err(WriterFailed(TransactionError::TooLarge { index }));
                }
                replaced.push(index);
                continue;
            }
            Err(TransactionError::Aborted {
                fenced: true,
                reason,
            }) => {
                metrics.transactions.with_label_values(&["fenced"]).inc();
                tracing::warn!(%reason, "the group refused this instance's offsets (partitions moved); the batch is read again");
                return Ok(Written::Fenced);
            }
            Err(TransactionError::Aborted { reason, .. }) => {
                metrics.transactions.with_label_values(&["aborted"]).inc();
                metrics.delivery_retries.inc();
                tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64,
                    "transaction aborted; writing the batch again");
            }
            Err(fatal @ TransactionError::Fatal(_)) => return Err(WriterFailed(fatal)),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Written::Stopped),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Writes the outputs, the deferred ones only once all others are
/// acknowledged; returns where each landed, in the order of `outputs`.
/// None if shutdown interrupted it.
async fn acknowledge(
    producer: &Producer,
    outputs: &mut [OutboundRecord],
    dead_letters: &DeadLetters,
    metrics: &WriterMetrics,
    shutdown: &CancellationToken,
) -> Option<Vec<Delivered>> {
    let (deferred, first): (Vec<usize>, Vec<usize>) =
        (0..outputs.len()).partition(|i| outputs[*i].deferred);
    let mut deliveries = vec![
        Delivered {
            partition: -1,
            offset: -1
        };
        outputs.len()
    ];
    for group in [first, deferred] {
        if group.is_empty() {
            continue;
        }
        let landed =
            acknowledge_all(producer, outputs, &group, dead_letters, metrics, shutdown).await?;
        for (i, d) in group.iter().zip(landed) {
            deliveries[*i] = d;
        }
    }
    Some(deliveries)
}

/// Writes outputs `indices`, retrying from the first unacknowledged one
/// until all are acknowledged (per-key order holds: what follows a failure
/// is written again after it; duplicates are absorbed downstream, losses
/// would not be).
async fn acknowledge_all(
    producer: &Producer,
    outputs: &mut [OutboundRecord],
    indices: &[usize],
    dead_letters: &DeadLetters,
    metrics: &WriterMetrics,
    shutdown: &CancellationToken,
) -> Option<Vec<Delivered>> {
    let mut deliveries = Vec::with_capacity(indices.len());
    // Slots whose output a dead letter replaced: the handler hears they
    // never landed where it meant them to.
    let mut replaced = Vec::new();
    let mut start = 0;
    let mut backoff = Duration::from_millis(100);
    while start < indices.len() {
        let records: Vec<OutboundRecord> = indices[start..]
            .iter()
            .map(|i| outputs[*i].clone())
            .collect();
        let results = producer.send_all(&records).await;
        let first_failure = results
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e.clone())));
        let acknowledged = first_failure.as_ref().map_or(results.len(), |(i, _)| *i);
        deliveries.extend(
            results[..acknowledged]
                .iter()
                .filter_map(|r| r.clone().ok()),
        );
        let sent_from = start;
        start += acknowledged;
        let Some((_, error)) = first_failure else {
            break;
        };
        if !error.is_retriable() {
            let worst = largest_too_large(&records, &results).unwrap_or(acknowledged);
            let index = indices[sent_from + worst];
            if replace_too_large(outputs, index, dead_letters, metrics) {
                // Its dead letter goes out in its place; everything from
                // the first refusal is written again.
                replaced.push(sent_from + worst);
            } else {
                tracing::error!(topic = %outputs[index].topic, "output can never be written; dropped");
                deliveries.push(Delivered {
                    partition: -1,
                    offset: -1,
                });
                start += 1;
            }
            continue;
        }
        metrics.delivery_retries.inc();
        tracing::warn!(%error, pending = indices.len() - start, retry_in_ms = backoff.as_millis() as u64,
            "outputs not acknowledged; holding the batch and retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    for slot in replaced {
        if let Some(d) = deliveries.get_mut(slot) {
            *d = Delivered {
                partition: -1,
                offset: -1,
            };
        }
    }
    Some(deliveries)
}

fn store_offsets(consumer: &StreamConsumer<LoopContext>, batch: &[InboundRecord]) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = consumer.store_offsets(&offsets_list(&batch_offsets(batch))) {
        // Happens when a partition was lost (session timeout) meanwhile;
        // its new owner replays from the last commit.
        tracing::warn!(error = %e, "cannot store offsets");
    }
}

/// Adds one per item to `counter{topic}`, looking each label up once per
/// run of equal topics rather than once per record.
pub(crate) fn count_by_topic<'a>(counter: &IntCounterVec, topics: impl Iterator<Item = &'a str>) {
    let mut run: Option<(&str, u64)> = None;
    for topic in topics {
        match &mut run {
            Some((t, n)) if *t == topic => *n += 1,
            _ => {
                if let Some((t, n)) = run {
                    counter.with_label_values(&[t]).inc_by(n);
                }
                run = Some((topic, 1));
            }
        }
    }
    if let Some((t, n)) = run {
        counter.with_label_values(&[t]).inc_by(n);
    }
}
