//! Configuration of the Kafka adapter: plain data with documented defaults, checked by `build`.

use std::fmt;
use std::sync::Arc;

use emissions_core::{
    AdapterOptions, CloudEvents, DeadLetter, Event, IntoAdapter, Registration, RetryPolicy,
    TopicRouter,
};
use rdkafka::ClientConfig;

use crate::Error;
use crate::adapter::KafkaAdapter;
use crate::service::Producer;

/// librdkafka properties set unless overridden. `enable.idempotence=true` (hence `acks=all`)
/// gives exactly-once, in-order writes per partition under retries; `murmur2_random` puts a key
/// on the same partition as the Java client does; the queue limits bound memory.
pub const DEFAULT_PROPERTIES: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    ("message.timeout.ms", "30000"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "1048576"),
    ("linger.ms", "5"),
    ("compression.type", "none"),
];

type TopicFn = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;
type DeliveryFn = Arc<dyn Fn(&Event, i32, i64) + Send + Sync>;

/// Where an event goes.
#[derive(Clone)]
pub(crate) enum Destination {
    Topic(String),
    Computed(TopicFn),
}

impl Destination {
    pub(crate) fn topic(&self, event: &Event) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Destination::Topic(topic) => Some(std::borrow::Cow::Borrowed(topic)),
            Destination::Computed(f) => f(event).map(std::borrow::Cow::Owned),
        }
    }
}

/// What becomes the message key.
///
/// ```
/// use emissions_kafka::{KafkaEndpoint, KeyStrategy};
/// // Every event of one order on one partition, in commit order.
/// let by_order = KafkaEndpoint::new("kafka", "127.0.0.1:9092")
///     .topic("orders")
///     .key(KeyStrategy::Payload("/order/id".into()));
/// assert!(by_order.build().is_ok());
/// // A pointer must start with `/`: a typed configuration error otherwise.
/// let bad = KafkaEndpoint::new("kafka", "127.0.0.1:9092")
///     .topic("orders")
///     .key(KeyStrategy::Payload("order.id".into()));
/// assert!(bad.build().unwrap_err().to_string().contains("`key`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyStrategy {
    /// The event id (the default): spreads events evenly; no cross-event ordering.
    EventId,
    /// A metadata field: all events with the same value land on one partition, in order.
    /// Strings are used as they are, other JSON values as their JSON text. Events without the
    /// field get no key.
    Metadata(String),
    /// A payload field, by JSON pointer (e.g. `/order/id`); same rules as `Metadata`.
    Payload(String),
    /// No key: librdkafka picks a partition at random.
    None,
}

/// What becomes the message value.
///
/// ```
/// use emissions_kafka::{KafkaEndpoint, ValueFormat};
/// // The envelope every adapter writes, so a consumer gets id, type, time and metadata too.
/// let k = KafkaEndpoint::new("kafka", "127.0.0.1:9092")
///     .topic("orders")
///     .value(ValueFormat::Envelope);
/// assert!(k.build().is_ok());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueFormat {
    /// The event's payload bytes as serialized at emit time (the default). Name, id and time
    /// travel in headers.
    #[default]
    Payload,
    /// The JSON envelope every adapter writes, `{"id","type","time","metadata","data"}`
    /// ([`emissions_core::Envelope`]).
    Envelope,
}

/// One Kafka destination: brokers, topic choice, key, value, librdkafka properties, queue.
///
/// Defaults: key = event id, value = payload, [`DEFAULT_PROPERTIES`], no core retries
/// (librdkafka retries within `message.timeout.ms`; retrying again would reorder and duplicate),
/// `max_demand` 500 and the core's other queue defaults.
///
/// ```no_run
/// use emissions_core::Emissions;
/// use emissions_kafka::KafkaEndpoint;
///
/// emissions_core::topic_router! {
///     pub struct Topics { "orders" => ["order_created", "order_shipped"] }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let kafka = KafkaEndpoint::new("kafka", "127.0.0.1:9092")
///     .router(Topics, "events")                 // order_created → "events.orders"
///     .key_from_metadata("order_id")            // one order, one partition, in order
///     .property("linger.ms", "10");
/// let emissions = Emissions::builder().adapter(kafka)?.start().await?;
/// # let _ = emissions;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct KafkaEndpoint {
    pub(crate) name: String,
    brokers: String,
    destination: Option<Destination>,
    pub(crate) key: KeyStrategy,
    pub(crate) value: ValueFormat,
    pub(crate) cloudevents: Option<CloudEvents>,
    properties: Vec<(String, String)>,
    queue: AdapterOptions,
    pub(crate) on_delivery: Option<DeliveryFn>,
}

impl fmt::Debug for KafkaEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaEndpoint")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("key", &self.key)
            .field("value", &self.value)
            .field("properties", &self.properties)
            .finish_non_exhaustive()
    }
}

impl KafkaEndpoint {
    /// An endpoint named `name` (its adapter name) producing to the brokers in
    /// `bootstrap_servers` (`host:port,…`).
    ///
    /// See [`KafkaEndpoint`].
    pub fn new(name: impl Into<String>, bootstrap_servers: impl Into<String>) -> Self {
        KafkaEndpoint {
            name: name.into(),
            brokers: bootstrap_servers.into(),
            destination: None,
            key: KeyStrategy::EventId,
            value: ValueFormat::Payload,
            cloudevents: None,
            properties: Vec::new(),
            queue: AdapterOptions::default()
                .max_demand(500)
                .retry(RetryPolicy::none()),
            on_delivery: None,
        }
    }

    /// Every event goes to `topic`.
    ///
    /// ```
    /// let k = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092").topic("events");
    /// # let _ = k;
    /// ```
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.destination = Some(Destination::Topic(topic.into()));
        self
    }

    /// Topic `"{prefix}.{topic}"` from a [`TopicRouter`]; events it does not route are not
    /// interesting to this adapter (counted as filtered). An empty prefix gives `"{topic}"`.
    ///
    /// See [`KafkaEndpoint`].
    pub fn router(
        mut self,
        router: impl TopicRouter + Send + Sync + 'static,
        prefix: impl Into<String>,
    ) -> Self {
        let prefix = prefix.into();
        self.destination = Some(Destination::Computed(Arc::new(move |event| {
            let topic = router.topic_for_event(event.name())?;
            Some(if prefix.is_empty() {
                topic.to_owned()
            } else {
                format!("{prefix}.{topic}")
            })
        })));
        self
    }

    /// The topic computed from each event; `None` means "not for this adapter" (filtered).
    ///
    /// ```
    /// let k = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .destination(|event| Some(format!("tenant-a.{}", event.name())));
    /// # let _ = k;
    /// ```
    pub fn destination(
        mut self,
        topic: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.destination = Some(Destination::Computed(Arc::new(topic)));
        self
    }

    /// Key by a metadata field. See [`KeyStrategy::Metadata`].
    ///
    /// See [`KafkaEndpoint`].
    pub fn key_from_metadata(mut self, field: impl Into<String>) -> Self {
        self.key = KeyStrategy::Metadata(field.into());
        self
    }

    /// Key by a payload field (JSON pointer). See [`KeyStrategy::Payload`].
    ///
    /// ```
    /// let k = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092").topic("t").key_from_payload("/order_id");
    /// # let _ = k;
    /// ```
    pub fn key_from_payload(mut self, pointer: impl Into<String>) -> Self {
        self.key = KeyStrategy::Payload(pointer.into());
        self
    }

    /// Sets the key strategy. Defaults to [`KeyStrategy::EventId`].
    ///
    /// ```
    /// use emissions_kafka::{KafkaEndpoint, KeyStrategy};
    /// let k = KafkaEndpoint::new("k", "127.0.0.1:9092").topic("t").key(KeyStrategy::None);
    /// # let _ = k;
    /// ```
    pub fn key(mut self, strategy: KeyStrategy) -> Self {
        self.key = strategy;
        self
    }

    /// Writes records as CloudEvents 1.0 (Kafka protocol binding). Binary mode: the value is
    /// the payload as emitted, the attributes are `ce_*` headers (`ce_id`, `ce_type`,
    /// `ce_source`, `ce_specversion`, `ce_time`, extensions) and `content-type` is
    /// `application/json`. Structured mode: the value is the whole event as
    /// `application/cloudevents+json`. Either replaces the `event-*` headers and the
    /// [`value`](Self::value) format (setting both is a configuration error); see
    /// [`CloudEvents`] for how metadata maps to attributes.
    ///
    /// ```
    /// use emissions_core::CloudEvents;
    /// use emissions_kafka::{KafkaEndpoint, ValueFormat};
    /// let k = KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .topic("orders")
    ///     .cloudevents(CloudEvents::binary("/orders-service"));
    /// assert!(k.build().is_ok());
    /// let both = KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .topic("orders")
    ///     .value(ValueFormat::Envelope)
    ///     .cloudevents(CloudEvents::structured("/orders-service"));
    /// assert!(both.build().unwrap_err().to_string().contains("`cloudevents`"));
    /// ```
    pub fn cloudevents(mut self, cloudevents: CloudEvents) -> Self {
        self.cloudevents = Some(cloudevents);
        self
    }

    /// Sets the value format. Defaults to [`ValueFormat::Payload`].
    ///
    /// ```
    /// use emissions_kafka::{KafkaEndpoint, ValueFormat};
    /// let k = KafkaEndpoint::new("k", "127.0.0.1:9092").topic("t").value(ValueFormat::Envelope);
    /// # let _ = k;
    /// ```
    pub fn value(mut self, format: ValueFormat) -> Self {
        self.value = format;
        self
    }

    /// Passes a librdkafka property through (overrides [`DEFAULT_PROPERTIES`]).
    ///
    /// See [`KafkaEndpoint`].
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// The core queue options: capacity, `max_demand`, overflow and backlog. What the
    /// endpoint sets itself is kept — core retries stay off (librdkafka retries; a core retry
    /// would reorder and duplicate), and a [`dead_letter`](Self::dead_letter) hook or an
    /// [`ordered_by`](Self::ordered_by) key set before or after stays — as
    /// `WebhookEndpoint::queue` does.
    ///
    /// ```
    /// use emissions_core::AdapterOptions;
    /// let k = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .topic("t")
    ///     .dead_letter(|dead| eprintln!("{} events lost at {}", dead.events.len(), dead.destination))
    ///     .queue(AdapterOptions::default().capacity(100_000).max_demand(1_000));
    /// let options = k.build()?.adapter_options();
    /// assert_eq!((options.capacity, options.retry.attempts()), (100_000, 1));
    /// assert!(options.dead_letter.is_some());
    /// # Ok::<(), emissions_kafka::Error>(())
    /// ```
    pub fn queue(mut self, options: AdapterOptions) -> Self {
        self.queue = self.queue.with_queue_of(options);
        self
    }

    /// Keeps each key's records in order across crashes and restarts with the durable outbox
    /// (`emissions-outbox`): at most one record of a key is in flight at a time, and one that is
    /// retried holds back only the later records of its key. Use the same key as the message
    /// key. In memory this is not needed — librdkafka keeps each partition's order itself — and
    /// it costs throughput on a hot key (one record of it per round trip). Defaults to none.
    ///
    /// ```
    /// let k = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .topic("orders")
    ///     .key_from_payload("/customer")
    ///     .ordered_by(|e| e.payload_json()["customer"].as_str().map(str::to_owned));
    /// # let _ = k;
    /// ```
    pub fn ordered_by(
        mut self,
        key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.queue = self.queue.ordered_by(key);
        self
    }

    /// Receives events that failed, with the reason.
    ///
    /// See [`KafkaEndpoint`].
    pub fn dead_letter(mut self, hook: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        self.queue = self.queue.dead_letter(hook);
        self
    }

    /// Called with each delivered event's partition and offset (on the adapter's task).
    ///
    /// ```
    /// let k = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .topic("t")
    ///     .on_delivery(|event, partition, offset| println!("{} → {partition}@{offset}", event.name()));
    /// # let _ = k;
    /// ```
    pub fn on_delivery(mut self, f: impl Fn(&Event, i32, i64) + Send + Sync + 'static) -> Self {
        self.on_delivery = Some(Arc::new(f));
        self
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Config {
            endpoint: self.name.clone(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// A core configuration error, as this crate's (naming this endpoint).
    fn core_config(&self, error: emissions_core::Error) -> Error {
        match error {
            emissions_core::Error::Config { field, reason, .. } => self.invalid(field, reason),
            other => self.invalid("queue", other.to_string()),
        }
    }

    /// The effective librdkafka properties, defaults first, then overrides.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut merged: Vec<(String, String)> = DEFAULT_PROPERTIES
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (key, value) in &self.properties {
            if key == "bootstrap.servers" {
                return Err(self.invalid(key, "set the brokers with KafkaEndpoint::new instead"));
            }
            match merged.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.clone(),
                None => merged.push((key.clone(), value.clone())),
            }
        }
        let get = |key: &str| {
            merged
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if get("enable.idempotence") == Some("true") {
            if !matches!(get("acks"), Some("all" | "-1")) {
                return Err(
                    self.invalid("acks", "enable.idempotence=true requires acks=all (or -1)")
                );
            }
            let in_flight = get("max.in.flight.requests.per.connection").or(get("max.in.flight"));
            if in_flight
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|n| n > 5)
            {
                return Err(self.invalid(
                    "max.in.flight.requests.per.connection",
                    "enable.idempotence=true allows at most 5",
                ));
            }
            if get("retries").or(get("message.send.max.retries")) == Some("0") {
                return Err(self.invalid("retries", "enable.idempotence=true requires retries > 0"));
            }
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in merged {
            config.set(key, value);
        }
        Ok(config)
    }

    /// Checks the configuration and creates the producer (no connection is made yet); errors
    /// name the endpoint and the field or property.
    ///
    /// ```
    /// let err = emissions_kafka::KafkaEndpoint::new("k", "127.0.0.1:9092")
    ///     .topic("t")
    ///     .property("acks", "1")
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "kafka endpoint `k`: invalid `acks`: enable.idempotence=true requires acks=all (or -1)");
    /// ```
    pub fn build(self) -> Result<KafkaAdapter, Error> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("name", "must not be empty"));
        }
        if self.brokers.trim().is_empty() {
            return Err(self.invalid("bootstrap_servers", "must list at least one host:port"));
        }
        let Some(destination) = self.destination.clone() else {
            return Err(self.invalid(
                "destination",
                "set a topic, a router or a destination closure",
            ));
        };
        if let Destination::Topic(topic) = &destination
            && (topic.is_empty()
                || topic.len() > 249
                || !topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(self.invalid("topic", format!("`{topic}` is not a valid topic name")));
        }
        if let KeyStrategy::Payload(pointer) = &self.key
            && !pointer.starts_with('/')
        {
            return Err(self.invalid(
                "key",
                format!("`{pointer}` is not a JSON pointer (it must start with /)"),
            ));
        }
        if let Some(ce) = &self.cloudevents {
            if self.value != ValueFormat::Payload {
                return Err(self.invalid(
                    "cloudevents",
                    "CloudEvents modes choose the value themselves; drop `value(ValueFormat::Envelope)`",
                ));
            }
            ce.validate(&self.name).map_err(|e| self.core_config(e))?;
        }
        self.queue
            .validate(&self.name)
            .map_err(|e| self.core_config(e))?;
        let config = self.client_config()?;
        let producer = Producer::new(config).map_err(|e| {
            // librdkafka names the property in its message.
            self.invalid("properties", e.to_string())
        })?;
        Ok(KafkaAdapter::new(self, destination, producer))
    }

    pub(crate) fn queue_options(&self) -> AdapterOptions {
        self.queue.clone()
    }
}

/// Registers the endpoint with
/// [`EmissionsBuilder::adapter`](emissions_core::EmissionsBuilder::adapter) under its name,
/// with its queue options; its configuration is checked there ([`KafkaEndpoint::build`]).
impl IntoAdapter for KafkaEndpoint {
    type Error = Error;

    fn into_adapter(self) -> Result<Registration, Error> {
        let adapter = self.build()?;
        let options = adapter.adapter_options();
        Ok(Registration::new(adapter.name().to_owned(), adapter).options(options))
    }
}
