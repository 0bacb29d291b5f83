//! The I/O: one rdkafka `FutureProducer` — enqueueing records with backpressure, recovering
//! from a fatal producer error, flushing at shutdown — and the classification of delivery
//! errors.

use std::time::Duration;

use emissions_core::{BoxError, Failure};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use tokio::time::Instant;

use crate::Error;
use crate::request_builder::Record;

/// How long to wait before enqueueing again when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Failure for a delivery error. librdkafka already retried what is retriable within
/// `message.timeout.ms`, so every error here is final for the core (no double retries).
pub(crate) fn failure(err: KafkaError) -> Failure {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => Failure::permanent(Error::TimedOut),
        _ => Failure::permanent(Error::Delivery(err)),
    }
}

/// The producer, and the configuration to recreate it from.
pub(crate) struct Producer {
    config: ClientConfig,
    producer: FutureProducer,
}

impl Producer {
    /// Creates the producer (no connection is made yet).
    pub(crate) fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        let producer = config.create()?;
        Ok(Producer { config, producer })
    }

    /// Enqueues one record, waiting while the local queue is full (backpressure, not loss).
    pub(crate) async fn send(&self, record: &Record<'_>) -> Result<DeliveryFuture, KafkaError> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key: key.as_ref(),
                    value: Some(value.as_ref()),
                });
            }
            let mut kafka_record = FutureRecord::<[u8], [u8]>::to(&record.topic)
                .payload(&record.value)
                .timestamp(record.timestamp_ms)
                .headers(headers);
            if let Some(key) = &record.key {
                kafka_record = kafka_record.key(key.as_ref());
            }
            match self.producer.send_result(kafka_record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// A fatal producer error (e.g. an idempotence violation) makes the producer unusable:
    /// replace it and report.
    pub(crate) fn recover_from_fatal_error(&mut self, adapter: &str) {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return;
        };
        tracing::error!(target: "emissions::kafka", adapter, ?code, %reason, "fatal producer error; recreating the producer");
        match self.config.create() {
            Ok(producer) => self.producer = producer,
            Err(err) => {
                tracing::error!(target: "emissions::kafka", adapter, error = %err, "could not recreate the producer")
            }
        }
    }

    /// Flushes what is in flight within `deadline`; says how many messages a flush that could
    /// not finish left behind.
    pub(crate) async fn flush(&self, deadline: Instant) -> Result<(), BoxError> {
        let producer = self.producer.clone();
        let budget = deadline.saturating_duration_since(Instant::now());
        // `flush` blocks its thread; keep it off the runtime's workers.
        let flushed = tokio::task::spawn_blocking(move || {
            let result = producer.flush(budget);
            (result, producer.in_flight_count())
        })
        .await?;
        match flushed {
            (Ok(()), _) => Ok(()),
            (Err(err), in_flight) => Err(format!(
                "flush failed with {in_flight} message(s) still in flight: {err}"
            )
            .into()),
        }
    }
}
