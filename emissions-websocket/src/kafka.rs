//! A feed fed by Kafka: every instance consumes every partition of the topics the Kafka
//! adapter writes (assigned, no consumer group), so a client on any instance sees events
//! committed on every instance, in partition (key) order, and resumes anywhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use emissions_core::{Event, Metadata, envelope};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::adapter::carries;
use crate::config::{Authorize, FeedBuilder};
use crate::position::stable_hash;
use crate::{Error, LiveFeed, request_builder};

/// The topics a feed consumes, and how to reach the cluster.
///
/// The records are those the Kafka adapter writes: the `event-id`, `event-name` and
/// `event-time` headers, and the payload as the value (or the envelope, whose `metadata`
/// then reaches `may_see`; with the payload format only `traceparent`/`tracestate` do).
/// Records without those headers are skipped.
///
/// ```
/// use emissions_websocket::KafkaSource;
/// let source = KafkaSource::new("127.0.0.1:9092", ["orders"])
///     .property("security.protocol", "SASL_SSL")
///     .epoch("orders-2026");
/// # let _ = source;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct KafkaSource {
    brokers: String,
    topics: Vec<String>,
    properties: Vec<(String, String)>,
    epoch: Option<String>,
    timeout: Duration,
}

impl KafkaSource {
    /// Consume every partition of `topics` from the cluster at `brokers`.
    ///
    /// See [`KafkaSource`].
    pub fn new<I, S>(brokers: impl Into<String>, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KafkaSource {
            brokers: brokers.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            properties: Vec::new(),
            epoch: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// A librdkafka client property (TLS, SASL, …); set after the feed's own
    /// (`fetch.wait.max.ms=10` for latency, no commits), so it can override them.
    ///
    /// See [`KafkaSource`].
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// The stream's epoch (ASCII letters, digits, `-`, `_`). Defaults to a hash of the
    /// topics and their partition counts, the same on every instance; set a new one after
    /// re-creating a topic, so positions of the old one are refused instead of misread.
    ///
    /// See [`KafkaSource`].
    pub fn epoch(mut self, epoch: impl Into<String>) -> Self {
        self.epoch = Some(epoch.into());
        self
    }

    /// How long to wait for the cluster's metadata at start. Defaults to 10 s.
    ///
    /// See [`KafkaSource`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

fn kafka(reason: impl Into<String>, source: Option<rdkafka::error::KafkaError>) -> Error {
    Error::Kafka {
        reason: reason.into(),
        source,
    }
}

/// Where each partition starts and what this instance knows of it.
struct Layout {
    streams: Vec<(String, i32)>,
    /// Topic → partition → stream, looked up per record without allocating.
    index: HashMap<String, HashMap<i32, usize>>,
    /// Each stream's topic, shared by its frames.
    topics: Vec<Arc<str>>,
    starts: Vec<u64>,
    live_from: Vec<u64>,
}

fn layout(
    consumer: &StreamConsumer,
    source: &KafkaSource,
    history: usize,
) -> Result<(Layout, String), Error> {
    let mut streams = Vec::new();
    let mut shape = String::new();
    for topic in &source.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), source.timeout)
            .map_err(|e| kafka(format!("metadata of `{topic}`"), Some(e)))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| kafka(format!("topic `{topic}` does not exist"), None))?;
        let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        shape.push_str(&format!("{topic}/{};", partitions.len()));
        streams.extend(partitions.into_iter().map(|p| (topic.clone(), p)));
    }
    let per_stream = history.div_ceil(streams.len().max(1)) as u64;
    let mut starts = Vec::with_capacity(streams.len());
    let mut live_from = Vec::with_capacity(streams.len());
    for (topic, partition) in &streams {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, source.timeout)
            .map_err(|e| kafka(format!("offsets of `{topic}`/{partition}"), Some(e)))?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        starts.push(high.saturating_sub(per_stream).max(low));
        live_from.push(high);
    }
    let epoch = match &source.epoch {
        Some(epoch) => epoch.clone(),
        None => format!("k{:016x}", stable_hash(&shape)),
    };
    let mut index: HashMap<String, HashMap<i32, usize>> = HashMap::new();
    for (i, (topic, partition)) in streams.iter().enumerate() {
        index
            .entry(topic.clone())
            .or_default()
            .insert(*partition, i);
    }
    let topics = streams.iter().map(|(t, _)| Arc::from(t.as_str())).collect();
    Ok((
        Layout {
            streams,
            index,
            topics,
            starts,
            live_from,
        },
        epoch,
    ))
}

impl FeedBuilder {
    /// Builds a feed on a Kafka source: it consumes every partition of the topics (no
    /// consumer group), keeps the last [`history`](Self::history) events (read from Kafka at
    /// start) for resume and replay, and publishes what arrives from then on. Events of every
    /// instance reach clients of every instance, in partition order; positions are Kafka
    /// offsets, valid on any instance. The consumer stops at [`LiveFeed::shutdown`].
    ///
    /// ```no_run
    /// use emissions_websocket::{KafkaSource, LiveFeed, Public};
    /// # #[allow(dead_code)]
    /// # async fn run() -> Result<(), emissions_websocket::Error> {
    /// let feed = LiveFeed::builder()
    ///     .events(["order_*"])
    ///     .build_on_kafka(Public, KafkaSource::new("127.0.0.1:9092", ["orders"]))
    ///     .await?;
    /// let app: axum::Router = axum::Router::new().route("/live", feed.handler());
    /// # let _ = app;
    /// # Ok(()) }
    /// ```
    pub async fn build_on_kafka<A: Authorize>(
        self,
        auth: A,
        source: KafkaSource,
    ) -> Result<LiveFeed<A>, Error> {
        self.validate()?;
        if source.topics.is_empty() {
            return Err(Error::Config {
                field: "kafka",
                reason: "a Kafka source needs at least one topic".into(),
            });
        }
        if let Some(bad) = source.epoch.as_deref().filter(|e| {
            e.is_empty()
                || e.len() > 64
                || !e
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return Err(Error::Config {
                field: "epoch",
                reason: format!("{bad:?}: 1 to 64 ASCII letters, digits, `-` or `_`"),
            });
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &source.brokers)
            .set(
                "group.id",
                format!("emissions-feed-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // A live feed: the broker answers a fetch as soon as there is a record, or
            // after 10 ms (librdkafka waits up to 500 ms by default).
            .set("fetch.wait.max.ms", "10");
        for (key, value) in &source.properties {
            config.set(key, value);
        }
        let consumer: StreamConsumer = config.create().map_err(|e| kafka("consumer", Some(e)))?;
        let consumer = Arc::new(consumer);
        let history = self.limits.history;
        let (layout, epoch) = {
            let consumer = consumer.clone();
            let source = source.clone();
            tokio::task::spawn_blocking(move || layout(&consumer, &source, history))
                .await
                .map_err(|e| kafka(format!("metadata task: {e}"), None))??
        };
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), start) in layout.streams.iter().zip(&layout.starts) {
            assignment
                .add_partition_offset(topic, *partition, Offset::Offset(*start as i64))
                .map_err(|e| kafka("assignment", Some(e)))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| kafka("assignment", Some(e)))?;
        let feed = self.into_feed(auth, epoch.clone(), layout.starts.clone(), true);
        feed.hub().extend_horizon(&layout.live_from);
        // Until the history is read, a position cannot be resumed here.
        feed.hub().set_loading(true);
        let ends = tokio::spawn(watch_ends(
            consumer.clone(),
            layout.streams.clone(),
            feed.hub().clone(),
            source.timeout,
        ));
        feed.hub().own_task(ends);
        let task = tokio::spawn(consume(
            consumer,
            layout,
            epoch,
            feed.hub().clone(),
            feed.carried().clone(),
        ));
        feed.hub().own_task(task);
        Ok(feed)
    }
}

/// Most records handled under one lock of the hub.
const CHUNK: usize = 512;

async fn consume(
    consumer: Arc<StreamConsumer>,
    layout: Layout,
    epoch: String,
    hub: Arc<crate::hub::Hub>,
    carried: crate::config::Carried,
) {
    let mut cursor = layout.starts.clone();
    let mut loading = history_left(&cursor, &layout, None);
    if !loading {
        hub.set_loading(false);
    }
    let mut records = consumer.stream().ready_chunks(CHUNK);
    let mut tick = tokio::time::interval(HORIZON_EVERY);
    loop {
        let chunk = tokio::select! {
            chunk = records.next() => match chunk {
                Some(chunk) => chunk,
                None => break,
            },
            _ = tick.tick(), if loading => {
                // Control records (transaction markers) are never delivered: the consumer's
                // position tells when the history is read all the same.
                let position = consumer.position().ok();
                loading = history_left(&cursor, &layout, position.as_ref());
                if !loading {
                    hub.set_loading(false);
                }
                continue;
            }
        };
        let mut history = Vec::new();
        let mut live = Vec::new();
        for record in chunk {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!(target: "emissions::websocket", %err, "Kafka source: consumer error");
                    continue;
                }
            };
            let (topic, partition) = (record.topic(), record.partition());
            let Some(&stream) = layout.index.get(topic).and_then(|p| p.get(&partition)) else {
                continue;
            };
            let Ok(offset) = u64::try_from(record.offset()) else {
                continue;
            };
            cursor[stream] = offset + 1;
            let Some(event) = decode(&record) else {
                tracing::debug!(target: "emissions::websocket", topic, partition, offset, "Kafka source: a record without the event headers; skipped");
                continue;
            };
            if !carries(&carried, event.name(), Some(topic)) {
                continue;
            }
            let topic = layout.topics[stream].clone();
            let entry = request_builder::entry(
                event,
                Some(topic),
                stream,
                offset,
                &epoch,
                &cursor,
                hub.cloudevents.as_ref(),
            );
            if offset < layout.live_from[stream] {
                history.push(entry);
            } else {
                live.push(entry);
            }
        }
        if !history.is_empty() {
            hub.remember(history, &cursor);
        }
        hub.publish(live, &cursor);
        if loading && !history_left(&cursor, &layout, None) {
            loading = false;
            hub.set_loading(false);
        }
    }
}

/// Whether some partition has history this instance has not read yet.
fn history_left(cursor: &[u64], layout: &Layout, position: Option<&TopicPartitionList>) -> bool {
    layout
        .streams
        .iter()
        .zip(cursor.iter().zip(&layout.live_from))
        .any(|((topic, partition), (at, end))| {
            let fetched = position
                .and_then(|p| p.find_partition(topic, *partition))
                .and_then(|p| match p.offset() {
                    Offset::Offset(n) => u64::try_from(n).ok(),
                    _ => None,
                })
                .unwrap_or(0);
            (*at).max(fetched) < *end
        })
}

/// How often the partitions' ends are read, so that a position served by a faster instance
/// is recognised as real while this one catches up.
const HORIZON_EVERY: Duration = Duration::from_secs(1);

async fn watch_ends(
    consumer: Arc<StreamConsumer>,
    streams: Vec<(String, i32)>,
    hub: Arc<crate::hub::Hub>,
    timeout: Duration,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HORIZON_EVERY) => {}
            () = hub.horizon_wanted.notified() => {}
        }
        let consumer = consumer.clone();
        let streams = streams.clone();
        let ends = tokio::task::spawn_blocking(move || {
            streams
                .iter()
                .map(|(topic, partition)| {
                    consumer
                        .fetch_watermarks(topic, *partition, timeout)
                        .map_or(0, |(_, high)| high.max(0) as u64)
                })
                .collect::<Vec<u64>>()
        })
        .await;
        if let Ok(ends) = ends {
            hub.extend_horizon(&ends);
        }
    }
}

/// The Kafka adapter's header names.
const EVENT_ID: &str = "event-id";
const EVENT_NAME: &str = "event-name";
const EVENT_TIME: &str = "event-time";

/// The event a record written by the Kafka adapter carries, in any of its formats: `event-*`
/// headers with the payload or the envelope as the value, or a CloudEvent in binary (`ce_*`
/// headers) or structured (`application/cloudevents+json`) mode.
fn decode(record: &BorrowedMessage<'_>) -> Option<Event> {
    let headers = record.headers()?;
    let value = record.payload().unwrap_or_default();
    let mut id = None;
    let mut name = None;
    let mut time = None;
    let mut metadata = Metadata::new();
    let mut attributes = Vec::new();
    for header in headers.iter() {
        let Some(text) = header.value.and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        match header.key {
            EVENT_ID => id = uuid::Uuid::parse_str(text).ok(),
            EVENT_NAME => name = Some(text.to_owned()),
            EVENT_TIME => time = humantime::parse_rfc3339(text).ok(),
            "traceparent" | "tracestate" => {
                metadata.insert(header.key.to_owned(), text.into());
            }
            "content-type" if text.starts_with("application/cloudevents+json") => {
                return envelope::read_structured(value).ok();
            }
            key => {
                if let Some(attribute) = key.strip_prefix("ce_") {
                    attributes.push((attribute, text));
                }
            }
        }
    }
    if !attributes.is_empty() {
        return envelope::read_binary(attributes, value).ok();
    }
    let (id, name) = (id?, name?);
    if let Ok(event) = envelope::read_envelope(value)
        && event.id() == id
        && event.name() == name
    {
        return Some(event);
    }
    let time = time.unwrap_or(SystemTime::UNIX_EPOCH);
    Event::restore(id, name, value.to_vec(), metadata, time).ok()
}
