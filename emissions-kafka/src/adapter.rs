//! [`KafkaAdapter`]: wires the record builder and the producer into the core's adapter
//! contract — enqueue a batch, await every delivery report, report exactly which events failed
//! and why.

use std::fmt;

use emissions_core::{Adapter, AdapterOptions, BatchError, BoxError, Event, Failure, async_trait};
use tokio::time::Instant;

use crate::Error;
use crate::config::{Destination, KafkaEndpoint, KeyStrategy};
use crate::request_builder::{Wire, record};
use crate::service::{Producer, failure};
use rdkafka::producer::DeliveryFuture;

type DeliveryFn = std::sync::Arc<dyn Fn(&Event, i32, i64) + Send + Sync>;

/// Delivers events to Kafka through one rdkafka `FutureProducer`. Built by
/// [`KafkaEndpoint::build`]; see the [crate docs](crate) for the delivery semantics.
/// Registering the endpoint itself (`.adapter(endpoint)?`) builds it too; build it yourself to
/// check a configuration early or to read what it registers with.
///
/// ```
/// let adapter = emissions_kafka::KafkaEndpoint::new("kafka", "127.0.0.1:9092")
///     .topic("orders")
///     .build()?;
/// assert_eq!(adapter.name(), "kafka");
/// // librdkafka retries; core retries stay off so that nothing is reordered or duplicated.
/// assert_eq!(adapter.adapter_options().retry.attempts(), 1);
/// # Ok::<(), emissions_kafka::Error>(())
/// ```
pub struct KafkaAdapter {
    name: String,
    destination: Destination,
    key: KeyStrategy,
    wire: Wire,
    producer: Producer,
    options: AdapterOptions,
    on_delivery: Option<DeliveryFn>,
    /// The batch's records being delivered (kept between batches: no allocation per batch).
    pending: Vec<(usize, DeliveryFuture)>,
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

impl KafkaAdapter {
    pub(crate) fn new(
        endpoint: KafkaEndpoint,
        destination: Destination,
        producer: Producer,
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
            producer,
            on_delivery: endpoint.on_delivery,
            pending: Vec::new(),
        }
    }

    /// The endpoint's name (its adapter name).
    ///
    /// See [`KafkaEndpoint`](crate::KafkaEndpoint).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The core options to register this adapter with.
    ///
    /// See [`KafkaEndpoint`](crate::KafkaEndpoint).
    pub fn adapter_options(&self) -> AdapterOptions {
        self.options.clone()
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
        let mut pending = std::mem::take(&mut self.pending);
        for (index, event) in events.iter().enumerate() {
            let record = match record(&self.destination, &self.key, &self.wire, event) {
                Ok(record) => record,
                Err(err) => {
                    failures.push((index, Failure::permanent(err)));
                    continue;
                }
            };
            match self.producer.send(&record).await {
                Ok(delivery) => pending.push((index, delivery)),
                Err(err) => failures.push((index, failure(err))),
            }
        }
        for (index, delivery) in pending.drain(..) {
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
        self.pending = pending;
        self.producer.recover_from_fatal_error(&self.name);
        if failures.is_empty() {
            Ok(())
        } else {
            failures.sort_by_key(|(index, _)| *index);
            Err(BatchError::partial(failures))
        }
    }

    async fn shutdown(&mut self, deadline: Instant) -> Result<(), BoxError> {
        self.producer.flush(deadline).await
    }
}
