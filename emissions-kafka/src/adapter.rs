//! [`KafkaAdapter`]: enqueue a batch on the producer, await every delivery report, and report
//! exactly which events failed and why.

use std::fmt;
use std::time::Duration;

use emissions_core::{Adapter, AdapterOptions, BatchError, BoxError, Event, Failure, async_trait};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::time::Instant;

use crate::Error;
use crate::endpoint::{Destination, KafkaEndpoint, KeyStrategy};
use crate::request_builder::{Record, Wire, record};

/// How long to wait before enqueueing again when librdkafka's local queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

type DeliveryFn = std::sync::Arc<dyn Fn(&Event, i32, i64) + Send + Sync>;

/// Delivers events to Kafka through one rdkafka `FutureProducer`. Built by
/// [`KafkaEndpoint::build`]; see the [crate docs](crate) for the delivery semantics.
pub struct KafkaAdapter {
    name: String,
    destination: Destination,
    key: KeyStrategy,
    wire: Wire,
    config: ClientConfig,
    producer: FutureProducer,
    options: AdapterOptions,
    on_delivery: Option<DeliveryFn>,
}

impl fmt::Debug for KafkaAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAdapter")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("wire", &self.wire)
            .finish_non_exhaustive()
    }
}

/// Failure for a delivery error. librdkafka already retried what is retriable within
/// `message.timeout.ms`, so every error here is final for the core (no double retries).
fn failure(err: KafkaError) -> Failure {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => Failure::permanent(Error::TimedOut),
        _ => Failure::permanent(Error::Delivery(err)),
    }
}

impl KafkaAdapter {
    pub(crate) fn create_producer(config: &ClientConfig) -> Result<FutureProducer, KafkaError> {
        config.create()
    }

    pub(crate) fn new(
        endpoint: KafkaEndpoint,
        destination: Destination,
        config: ClientConfig,
        producer: FutureProducer,
    ) -> Self {
        KafkaAdapter {
            options: endpoint.queue_options(),
            name: endpoint.name,
            destination,
            key: endpoint.key,
            wire: match endpoint.cloudevents {
                Some(ce) => Wire::CloudEvents(ce),
                None => Wire::Plain(endpoint.value),
            },
            config,
            producer,
            on_delivery: endpoint.on_delivery,
        }
    }

    /// The endpoint's name (its adapter name).
    ///
    /// See [`KafkaBuilderExt`](crate::KafkaBuilderExt).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The core options to register this adapter with.
    ///
    /// See [`KafkaBuilderExt`](crate::KafkaBuilderExt).
    pub fn adapter_options(&self) -> AdapterOptions {
        self.options.clone()
    }

    /// Enqueues one record, waiting while the local queue is full (backpressure, not loss).
    async fn enqueue(
        &self,
        record: &Record,
    ) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key: key.as_ref(),
                    value: Some(value.as_str()),
                });
            }
            let mut kafka_record = FutureRecord::<[u8], [u8]>::to(&record.topic)
                .payload(&record.value)
                .timestamp(record.timestamp_ms)
                .headers(headers);
            if let Some(key) = &record.key {
                kafka_record = kafka_record.key(key.as_slice());
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
    fn recover_from_fatal_error(&mut self) {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return;
        };
        tracing::error!(target: "emissions::kafka", adapter = %self.name, ?code, %reason, "fatal producer error; recreating the producer");
        match self.config.create() {
            Ok(producer) => self.producer = producer,
            Err(err) => {
                tracing::error!(target: "emissions::kafka", adapter = %self.name, error = %err, "could not recreate the producer")
            }
        }
    }
}

#[async_trait]
impl Adapter for KafkaAdapter {
    fn interested(&self, event: &Event) -> bool {
        match &self.destination {
            Destination::Topic(_) => true,
            computed => computed.topic(event).is_some(),
        }
    }

    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let mut failures: Vec<(usize, Failure)> = Vec::new();
        let mut pending = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let record = match record(&self.destination, &self.key, &self.wire, event) {
                Ok(record) => record,
                Err(err) => {
                    failures.push((index, Failure::permanent(err)));
                    continue;
                }
            };
            match self.enqueue(&record).await {
                Ok(delivery) => pending.push((index, delivery)),
                Err(err) => failures.push((index, failure(err))),
            }
        }
        for (index, delivery) in pending {
            match delivery.await {
                Ok(Ok(done)) => {
                    if let Some(hook) = &self.on_delivery {
                        hook(&events[index], done.partition, done.offset);
                    }
                }
                Ok(Err((err, _))) => failures.push((index, failure(err))),
                Err(_) => failures.push((index, Failure::permanent(Error::Cancelled))),
            }
        }
        self.recover_from_fatal_error();
        if failures.is_empty() {
            Ok(())
        } else {
            failures.sort_by_key(|(index, _)| *index);
            Err(BatchError::partial(failures))
        }
    }

    async fn shutdown(&mut self, deadline: Instant) -> Result<(), BoxError> {
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
