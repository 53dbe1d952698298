//! The transactional producer of a consume-transform-produce stage: a
//! stage's outputs and the input offsets they answer commit together in one
//! Kafka transaction, or not at all.
//!
//! Consumers downstream read committed records only, so an aborted
//! transaction (a crash, a broker restart, a zombie) leaves nothing behind
//! that anyone reads. A zombie (an instance whose partitions moved while it
//! stalled) is fenced by the consumer group: its offsets carry the group
//! generation it last saw, the coordinator refuses them, and the
//! transaction can only abort.
//!
//! librdkafka's transactional calls block; they run on the blocking pool.

use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder, Retryable};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer as _};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::kafka::client_config::producer_config;
use crate::kafka::producer::{
    enqueue_on, largest_too_large, resolve, Delivered, DeliveryError, OutboundRecord,
};

/// How long one transactional call may block.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transaction did not commit, and what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransactionError {
    /// Nothing of the transaction is visible; the same work may be tried
    /// again (after the caller made sure it still owns its inputs).
    #[error("transaction aborted: {reason}")]
    Aborted {
        reason: String,
        /// The consumer group refused our offsets: this instance lost (some
        /// of) its partitions. Its view of what it owns is stale until the
        /// consumer has polled again.
        fenced: bool,
    },
    /// Output `index` is larger than the producer or broker accepts: the
    /// transaction was aborted, and retrying it unchanged cannot succeed.
    #[error("output {index} is larger than the broker accepts; transaction aborted")]
    TooLarge { index: usize },
    /// This producer cannot go on: the broker bumped its epoch (a
    /// transaction outlived `transaction.timeout.ms`, say while the broker
    /// was down), another instance took its transactional id, or an
    /// invariant the broker checks broke. Nothing of the open transaction is
    /// visible; a new producer with the same id (which fences this one)
    /// can take the work up again.
    #[error("transactional producer failed for good: {0}")]
    Fatal(String),
}

/// How long a stage keeps trying for a new transactional producer after
/// one failed for good (the broker may be restarting): from 1 s, doubling
/// to 30 s with jitter, ten times; then the stage stops and its
/// orchestrator restarts it.
pub fn renewal_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(10)
        .with_jitter()
}

fn renewal_failed(error: &KafkaError, retry_in: Duration) {
    tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64,
        "cannot start a new transactional producer yet");
}

pub struct TransactionalProducer {
    producer: FutureProducer,
    transactional_id: String,
}

impl TransactionalProducer {
    /// Creates the producer and registers `transactional_id` with the
    /// broker, which aborts whatever a previous producer with that id left
    /// open.
    pub async fn new(
        kafka: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        let (kafka, client_id, transactional_id) = (
            kafka.clone(),
            client_id.to_string(),
            transactional_id.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            Self::new_blocking(&kafka, &client_id, &transactional_id)
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// [`new`](Self::new), on the calling thread.
    pub fn new_blocking(
        kafka: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        let mut config = producer_config(kafka, client_id);
        config
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                kafka.transaction_timeout_ms.to_string(),
            )
            // librdkafka requires a record to time out before its
            // transaction does.
            .set(
                "message.timeout.ms",
                kafka
                    .delivery_timeout_ms
                    .min(kafka.transaction_timeout_ms)
                    .to_string(),
            );
        let producer: FutureProducer = config.create()?;
        producer.init_transactions(CALL_TIMEOUT)?;
        Ok(TransactionalProducer {
            producer,
            transactional_id: transactional_id.to_string(),
        })
    }

    /// A new producer with the same id in place of one that failed for
    /// good (the broker fences the old one), tried under
    /// [`renewal_backoff`].
    pub async fn renew(
        kafka: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        (|| Self::new(kafka, client_id, transactional_id))
            .retry(renewal_backoff())
            .notify(renewal_failed)
            .await
    }

    /// [`renew`](Self::renew), on the calling thread.
    pub fn renew_blocking(
        kafka: &KafkaConfig,
        client_id: &str,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        (|| Self::new_blocking(kafka, client_id, transactional_id))
            .retry(renewal_backoff())
            .notify(renewal_failed)
            .call()
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// The client (for metadata requests).
    pub fn client(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Writes `outputs` and commits `offsets` (the next offset to read, per
    /// input partition; may be empty) in one transaction. Returns where
    /// each output landed.
    pub async fn commit(
        &self,
        outputs: &[OutboundRecord],
        offsets: TopicPartitionList,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<Vec<Delivered>, TransactionError> {
        self.producer.begin_transaction().map_err(classify)?;
        let outcome = self.write_and_commit(outputs, offsets, group).await;
        if let Err(error) = &outcome {
            if !matches!(error, TransactionError::Fatal(_)) {
                self.abort().await?;
            }
        }
        outcome
    }

    async fn write_and_commit(
        &self,
        outputs: &[OutboundRecord],
        offsets: TopicPartitionList,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<Vec<Delivered>, TransactionError> {
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(outputs.len());
        for (index, record) in outputs.iter().enumerate() {
            pending.push(self.enqueue(index, record).await?);
        }
        let mut results = Vec::with_capacity(pending.len());
        for future in pending {
            results.push(resolve(future.await));
        }
        let deliveries = delivered(outputs, results)?;
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            if offsets.count() > 0 {
                let group = group.ok_or_else(|| TransactionError::Aborted {
                    reason: "the consumer is not in its group".into(),
                    fenced: true,
                })?;
                producer
                    .send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)
                    .map_err(classify)?;
            }
            commit_retrying(&producer)
        })
        .await
        .map_err(|e| TransactionError::Aborted {
            reason: format!("commit task: {e}"),
            fenced: false,
        })??;
        Ok(deliveries)
    }

    /// The same as [`commit`](Self::commit), on the calling thread, with
    /// offsets for one or more consumer groups (each with its group's
    /// metadata, which fences a member that lost its partitions): for a
    /// caller that must not yield (a rebalance callback committing what its
    /// revoked partitions finished before they move), or that runs on the
    /// blocking pool already. An empty offset list is skipped.
    pub fn commit_blocking(
        &self,
        outputs: &[OutboundRecord],
        groups: &[(TopicPartitionList, Option<ConsumerGroupMetadata>)],
    ) -> Result<Vec<Delivered>, TransactionError> {
        self.producer.begin_transaction().map_err(classify)?;
        let outcome = (|| {
            let mut pending = Vec::with_capacity(outputs.len());
            for (index, record) in outputs.iter().enumerate() {
                pending.push(self.enqueue_blocking(index, record)?);
            }
            let results = pending
                .into_iter()
                .map(|f| resolve(futures::executor::block_on(f)))
                .collect();
            let deliveries = delivered(outputs, results)?;
            for (offsets, group) in groups.iter().filter(|(o, _)| o.count() > 0) {
                let group = group.as_ref().ok_or_else(|| TransactionError::Aborted {
                    reason: "the consumer is not in its group".into(),
                    fenced: true,
                })?;
                self.producer
                    .send_offsets_to_transaction(offsets, group, CALL_TIMEOUT)
                    .map_err(classify)?;
            }
            commit_retrying(&self.producer)?;
            Ok(deliveries)
        })();
        if let Err(error) = &outcome {
            if !matches!(error, TransactionError::Fatal(_)) {
                abort_blocking(&self.producer)?;
            }
        }
        outcome
    }

    fn enqueue_blocking(
        &self,
        index: usize,
        record: &OutboundRecord,
    ) -> Result<DeliveryFuture, TransactionError> {
        let started = std::time::Instant::now();
        loop {
            match enqueue_on(&self.producer, record) {
                Ok(f) => return Ok(f),
                Err(DeliveryError::TooLarge) => return Err(TransactionError::TooLarge { index }),
                Err(DeliveryError::QueueFull) if started.elapsed() < CALL_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(TransactionError::Aborted {
                        reason: e.to_string(),
                        fenced: false,
                    })
                }
            }
        }
    }

    /// Queues one output of the open transaction, waiting while the local
    /// queue is full.
    async fn enqueue(
        &self,
        index: usize,
        record: &OutboundRecord,
    ) -> Result<DeliveryFuture, TransactionError> {
        let mut waited = Duration::ZERO;
        loop {
            match enqueue_on(&self.producer, record) {
                Ok(f) => return Ok(f),
                Err(DeliveryError::TooLarge) => return Err(TransactionError::TooLarge { index }),
                Err(DeliveryError::QueueFull) if waited < CALL_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    waited += Duration::from_millis(5);
                }
                Err(e) => {
                    return Err(TransactionError::Aborted {
                        reason: e.to_string(),
                        fenced: false,
                    })
                }
            }
        }
    }

    /// Aborts the open transaction (see [`abort_blocking`]).
    async fn abort(&self) -> Result<(), TransactionError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || abort_blocking(&producer))
            .await
            .map_err(|e| TransactionError::Fatal(format!("abort task: {e}")))?
    }
}

/// Where each output landed, or why the transaction cannot commit: any
/// failure but size aborts it; otherwise an output too large is named (the
/// largest refused one, see `largest_too_large`).
fn delivered(
    outputs: &[OutboundRecord],
    results: Vec<Result<Delivered, DeliveryError>>,
) -> Result<Vec<Delivered>, TransactionError> {
    // Any other failure aborts: the transaction is tried again as it is.
    if let Some(e) = results.iter().find_map(|r| match r {
        Err(e) if e.is_retriable() => Some(e),
        _ => None,
    }) {
        return Err(TransactionError::Aborted {
            reason: e.to_string(),
            fenced: false,
        });
    }
    match largest_too_large(outputs, &results) {
        Some(index) => Err(TransactionError::TooLarge { index }),
        None => Ok(results.into_iter().flatten().collect()),
    }
}

/// Aborts the open transaction; librdkafka allows retrying an abort that
/// timed out. An abort that cannot complete leaves the producer unusable,
/// which is fatal.
fn abort_blocking(producer: &FutureProducer) -> Result<(), TransactionError> {
    let mut last = None;
    for _ in 0..3 {
        match producer.abort_transaction(CALL_TIMEOUT) {
            Ok(()) => return Ok(()),
            Err(e) => match classify(e) {
                fatal @ TransactionError::Fatal(_) => return Err(fatal),
                other => last = Some(other),
            },
        }
    }
    Err(TransactionError::Fatal(format!(
        "cannot abort the transaction: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// commit_transaction, again while librdkafka says the same call may
/// succeed (a coordinator moving, a request timing out).
fn commit_retrying(producer: &FutureProducer) -> Result<(), TransactionError> {
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(CALL_TIMEOUT) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100 << attempts));
            }
            Err(e) => return Err(classify(e)),
        }
    }
}

/// Group-membership codes: the coordinator refused offsets from a member
/// that is no longer (or not yet) part of the current generation.
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::FencedMemberEpoch
            | RDKafkaErrorCode::StaleMemberEpoch
    )
}

fn classify(error: KafkaError) -> TransactionError {
    match &error {
        KafkaError::Transaction(e) if e.is_fatal() => TransactionError::Fatal(e.to_string()),
        KafkaError::Transaction(e) => TransactionError::Aborted {
            reason: e.to_string(),
            fenced: is_fencing(e.code()),
        },
        other => TransactionError::Aborted {
            reason: other.to_string(),
            fenced: other.rdkafka_error_code().is_some_and(is_fencing),
        },
    }
}
