//! Writes accepted conversions to conversions.raw and reports success only
//! when the broker acknowledged every one of them.

use postback_core::kafka::{DeliveryError, OutboundRecord, Producer};
use postback_core::model::ConversionRaw;
use postback_core::ops::Readiness;
use postback_core::{Codec, CodecError, SchemaKind};

use crate::metrics::CollectorMetrics;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker is known to be unreachable; nothing was queued.
    #[error("broker unavailable")]
    BrokerDown,
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error(transparent)]
    Encode(#[from] CodecError),
}

#[derive(Clone)]
pub struct Publisher {
    producer: Producer,
    topic: String,
    codec: Codec<ConversionRaw>,
    readiness: Readiness,
    metrics: CollectorMetrics,
}

impl Publisher {
    pub fn new(
        producer: Producer,
        topic: String,
        readiness: Readiness,
        metrics: CollectorMetrics,
    ) -> Self {
        Publisher {
            producer,
            topic,
            codec: Codec::new(SchemaKind::ConversionRaw),
            readiness,
            metrics,
        }
    }

    pub fn codec(&self) -> &Codec<ConversionRaw> {
        &self.codec
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The record that carries `event` on conversions.raw.
    pub fn record(&self, event: &ConversionRaw) -> Result<OutboundRecord, CodecError> {
        Ok(OutboundRecord::new(
            self.topic.clone(),
            Some(event.key()),
            self.codec.encode(event)?,
        ))
    }

    /// Writes all events; Ok only if the broker acknowledged each one.
    pub async fn publish(&self, events: &[ConversionRaw]) -> Result<(), PublishError> {
        // Fail fast while the broker probe says it is gone: the client gets
        // its 503 now instead of after the delivery timeout.
        if self.readiness.snapshot().get("broker") == Some(&false) {
            self.metrics
                .publish_failures
                .with_label_values(&["broker_down"])
                .inc_by(events.len() as u64);
            return Err(PublishError::BrokerDown);
        }
        let records = events
            .iter()
            .map(|e| self.record(e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut first_error = None;
        for result in self.producer.send_all(&records).await {
            if let Err(e) = result {
                let reason = match e {
                    DeliveryError::QueueFull => "queue_full",
                    _ => "not_acknowledged",
                };
                self.metrics
                    .publish_failures
                    .with_label_values(&[reason])
                    .inc();
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e.into()),
        }
    }
}
