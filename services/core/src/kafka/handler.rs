//! What a stage plugs into the consumer loop: a handler that turns each
//! input record into outputs, and the records it sees.

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};

use crate::kafka::producer::{Delivered, OutboundRecord};

/// One consumed record, detached from the consumer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InboundRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Broker or producer timestamp, Unix milliseconds.
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl InboundRecord {
    /// A copy of a consumed message that outlives the consumer's buffer.
    pub fn detached<M: Message>(m: &M) -> InboundRecord {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        InboundRecord {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
            headers,
        }
    }

    /// Frees the key, the value and the headers, keeping the record's
    /// place (topic, partition, offset) and timestamp.
    pub fn shed_contents(&mut self) {
        self.key = None;
        self.payload = None;
        self.headers = Vec::new();
    }

    /// The value of header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

/// Why a stateful handler cannot go on (its store failed, a restore
/// stalled). The loop stops without committing the batch in hand.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A stage's logic: what one input record becomes. Anything the stage cannot
/// process becomes a dead letter pushed to `out` like any other output, so a
/// poison record never stops its partition.
///
/// The other methods are for stateful stages; stateless ones leave them be.
pub trait RecordHandler: Send {
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>);

    /// This instance now owns `partitions`. Called before any of their
    /// records is handled. An error stops the loop: the instance leaves the
    /// group and its partitions move to another one.
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) -> Result<(), HandlerError> {
        Ok(())
    }

    /// This instance no longer owns `partitions`; none of their records is
    /// handled any more, and no output of theirs is in flight. A store's
    /// held writes of their records (`Persisted::Held`) may still commit
    /// after this: the new owner writes them again, so those writes must
    /// be idempotent.
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}

    /// How often `tick` runs; None (the default) never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Time-driven outputs (a window closing), written and committed like
    /// the outputs of records.
    fn tick(&mut self, _out: &mut Vec<OutboundRecord>) {}

    /// Every output pushed since the last call is written for good (in
    /// exactly-once mode: its transaction committed; otherwise
    /// acknowledged); `deliveries[i]` is where the i-th one landed
    /// (partition -1 for an output that was replaced by a dead letter
    /// because the broker can never take it). An error stops the loop.
    fn on_acknowledged(&mut self, _deliveries: &[Delivered]) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Every output pushed since the last acknowledgement was thrown away
    /// (its transaction aborted) and the records that caused them will be
    /// handled again: forget what handling them changed.
    fn on_aborted(&mut self) {}

    /// The batch's records are handled: write what they changed outside
    /// Kafka (a projection's database) before their offsets move. Runs
    /// after `handle` and `tick`, before the batch's outputs and offsets
    /// are written. An error stops the loop without committing, so the
    /// records are read again: what this writes must be idempotent.
    ///
    /// [`Persisted::Held`] lets a store commit less often than the loop
    /// takes batches (Kafka Streams' record cache): the loop then holds
    /// the batch's offsets, with those of the batches held before it,
    /// until a later `persist` answers `Durable` or `flush` returns.
    fn persist(&mut self) -> impl Future<Output = Result<Persisted, HandlerError>> + Send {
        std::future::ready(Ok(Persisted::Durable))
    }

    /// Make durable what every `persist` since the last `Durable` wrote.
    /// The loop calls it once the held batches' `flush_by` passed (records
    /// arriving or not), before it writes any output (so outputs never
    /// wait on a store, and a revoked partition never has held outputs),
    /// and at shutdown. An error stops the loop as `persist`'s does.
    fn flush(&mut self) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// What `persist` made of the batch's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// Durable, and so is everything written before: the offsets of this
    /// batch and of those held may move.
    Durable,
    /// Written but not durable yet (a transaction left open): the loop
    /// calls `flush` once `flush_by` passed, at its next turn (a batch
    /// being collected first takes its `linger`).
    Held { flush_by: Instant },
}

/// A handler that is a closure; handy for small stages and tests.
impl<F> RecordHandler for F
where
    F: FnMut(&InboundRecord, &mut Vec<OutboundRecord>) + Send,
{
    fn handle(&mut self, record: &InboundRecord, out: &mut Vec<OutboundRecord>) {
        self(record, out)
    }
}
