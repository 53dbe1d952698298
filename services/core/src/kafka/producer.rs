//! The producer every stage writes through. A record counts as written only
//! when the broker acknowledged it (acks=all, idempotent): callers await the
//! delivery before they answer a client or commit an input offset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;
use crate::kafka::client_config::producer_config;

/// One record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRecord {
    pub topic: String,
    /// Where to write it; None lets the partitioner choose by key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Kafka record headers (retry bookkeeping rides here, beside an
    /// unchanged value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Written only after every other output of its batch is acknowledged.
    /// For records that claim the others happened (a state changelog): they
    /// go to other partitions, whose acknowledgements come in any order, and
    /// a claim must never land without what it claims.
    pub deferred: bool,
}

impl OutboundRecord {
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        OutboundRecord {
            topic: topic.into(),
            partition: None,
            key,
            payload,
            headers: Vec::new(),
            deferred: false,
        }
    }

    /// The record with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The record, written after the rest of its batch (see `deferred`).
    pub fn deferred(mut self) -> Self {
        self.deferred = true;
        self
    }

    /// Bytes of key, value and headers: what counts against a size limit.
    pub fn bytes(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + headers
    }

    /// The record, written to exactly `partition` (a changelog partition
    /// mirrors its input partition, whatever the key hashes to).
    pub fn to_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// Where the broker stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The local queue is full: the broker is slow or gone. Retry later.
    #[error("producer queue is full")]
    QueueFull,
    /// The broker did not acknowledge the record in time, or refused it.
    #[error("broker did not acknowledge the record: {0}")]
    NotAcknowledged(String),
    #[error("producer shut down before the record was acknowledged")]
    Cancelled,
    /// The record is larger than the producer or broker accepts: retrying
    /// cannot help.
    #[error("record too large for the broker")]
    TooLarge,
}

impl DeliveryError {
    /// Whether trying the same record again may succeed.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, DeliveryError::TooLarge)
    }
}

/// The shared producer. Cloning shares the underlying client.
///
/// A client that hit a fatal error (an idempotence invariant the broker
/// says was broken) is unusable for good: the next attempt goes through a
/// fresh client with a new producer id. Anything short of fatal (a broker
/// gone, a timeout) librdkafka recovers from itself, bumping the idempotent
/// producer's epoch.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Shared>,
}

struct Shared {
    config: ClientConfig,
    current: RwLock<(u64, FutureProducer)>,
    generation: AtomicU64,
}

impl Producer {
    pub fn new(kafka: &KafkaConfig, client_id: &str) -> Result<Self, KafkaError> {
        let config = producer_config(kafka, client_id);
        let producer: FutureProducer = config.create()?;
        Ok(Producer {
            inner: Arc::new(Shared {
                config,
                current: RwLock::new((0, producer)),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The current client (for metadata requests).
    pub fn client(&self) -> FutureProducer {
        self.current().1
    }

    fn current(&self) -> (u64, FutureProducer) {
        match self.inner.current.read() {
            Ok(g) => (g.0, g.1.clone()),
            Err(poisoned) => {
                let g = poisoned.into_inner();
                (g.0, g.1.clone())
            }
        }
    }

    /// Replaces the client that had `generation` (after a fatal error),
    /// unless another caller did already. Records still queued in the old
    /// client fail (their callers see an error and retry), none is silently
    /// dropped.
    pub fn renew(&self, generation: u64) {
        let Ok(mut guard) = self.inner.current.write() else {
            return;
        };
        if guard.0 != generation {
            return;
        }
        match self.inner.config.create::<FutureProducer>() {
            Ok(fresh) => {
                let next = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
                *guard = (next, fresh);
                tracing::info!(
                    generation = next,
                    "producer client renewed after a failed write"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the producer client"),
        }
    }

    /// Queues one record; the returned future resolves when the broker acknowledged it.
    pub fn enqueue(&self, record: &OutboundRecord) -> Result<DeliveryFuture, DeliveryError> {
        enqueue_on(&self.current().1, record)
    }

    /// Writes every record and waits for all acknowledgements. Returns one
    /// result per record, in order.
    pub async fn send_all(
        &self,
        records: &[OutboundRecord],
    ) -> Vec<Result<Delivered, DeliveryError>> {
        let (generation, producer) = self.current();
        // Stop queueing at the first record the client refuses: queueing the
        // ones after it would let them land before it is retried, and a
        // conversion's records must stay in order.
        let mut pending = Vec::with_capacity(records.len());
        let mut refused: Option<DeliveryError> = None;
        for record in records {
            match &refused {
                Some(e) => pending.push(Err(e.clone())),
                None => {
                    let r = enqueue_on(&producer, record);
                    if let Err(e) = &r {
                        refused = Some(e.clone());
                    }
                    pending.push(r);
                }
            }
        }
        let waits = pending.into_iter().map(|p| async move {
            match p {
                Err(e) => Err(e),
                Ok(fut) => resolve(fut.await),
            }
        });
        let results = join_all(waits).await;
        if results.iter().any(Result::is_err) {
            if let Some((code, reason)) = producer.client().fatal_error() {
                tracing::error!(error = %code, %reason, "producer client failed for good");
                self.renew(generation);
            }
        }
        results
    }

    /// Waits until queued records are delivered, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.current().1.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}

/// Queues one record on `producer`.
pub(crate) fn enqueue_on(
    producer: &FutureProducer,
    record: &OutboundRecord,
) -> Result<DeliveryFuture, DeliveryError> {
    let mut fr: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&record.topic).payload(&record.payload[..]);
    if let Some(key) = &record.key {
        fr = fr.key(&key[..]);
    }
    if let Some(partition) = record.partition {
        fr = fr.partition(partition);
    }
    if !record.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(&value[..]),
            });
        }
        fr = fr.headers(headers);
    }
    producer.send_result(fr).map_err(|(e, _)| match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => DeliveryError::QueueFull,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
            DeliveryError::TooLarge
        }
        other => DeliveryError::NotAcknowledged(other.to_string()),
    })
}

pub(crate) fn resolve(
    result: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<Delivered, DeliveryError> {
    match result {
        Ok(Ok(delivery)) => Ok(Delivered {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        // The broker's own size limit (message.max.bytes) can be below the
        // producer's: same verdict, retrying cannot help.
        Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))) => {
            Err(DeliveryError::TooLarge)
        }
        Ok(Err((e, _))) => Err(DeliveryError::NotAcknowledged(e.to_string())),
        Err(_) => Err(DeliveryError::Cancelled),
    }
}

/// Of the records refused as too large, the one to blame. A broker refuses
/// a whole produce batch over its topic's `max.message.bytes`, so every
/// record of the batch reports "too large": the largest is the culprit
/// (writing the rest again tells whether another one is too large as
/// well), never a small neighbour. `results[i]` is the outcome of
/// `records[i]`.
pub(crate) fn largest_too_large(
    records: &[OutboundRecord],
    results: &[Result<Delivered, DeliveryError>],
) -> Option<usize> {
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(DeliveryError::TooLarge)))
        .max_by_key(|(i, _)| records.get(*i).map_or(0, OutboundRecord::bytes))
        .map(|(i, _)| i)
}
