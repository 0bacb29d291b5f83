//! One event, one identity on every wire: the JSON envelope every adapter writes, and the
//! event's CloudEvents 1.0 form (attributes and structured JSON) for the adapters' CloudEvents
//! modes.
//!
//! Both embed the payload as the JSON text written at emit time ([`Event::payload_raw`]), never
//! serialized again, and both are infallible: ids, names and times are strings, metadata is a
//! JSON map, and the payload is JSON text.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::{Error, Event};

/// Metadata keys carried as W3C trace context: as HTTP and Kafka headers by the adapters, and
/// as CloudEvents' distributed-tracing extension.
pub const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];

/// The CloudEvents spec version written.
pub const SPEC_VERSION: &str = "1.0";

/// The CloudEvents attribute that carries metadata which cannot be an attribute of its own.
const LEFTOVER: &str = "metadata";

/// The event's W3C trace context (the `traceparent` and `tracestate` metadata entries that are
/// strings of printable ASCII), as adapters forward it in headers.
///
/// ```
/// use emissions_core::{Event, Metadata, envelope::trace_context};
/// let mut meta = Metadata::new();
/// meta.insert("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
/// let e = Event::new("a", &1, meta)?;
/// assert_eq!(trace_context(&e).count(), 1);
/// # Ok::<(), emissions_core::Error>(())
/// ```
pub fn trace_context(event: &Event) -> impl Iterator<Item = (&'static str, &str)> {
    TRACE_CONTEXT.into_iter().filter_map(|key| {
        event
            .metadata()
            .get(key)
            .and_then(|v| v.as_str())
            // W3C trace context is printable ASCII; anything else is not forwarded as such.
            .filter(|value| value.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(|value| (key, value))
    })
}

/// The latest time RFC 3339 can write: 9999-12-31T23:59:59.999999Z.
fn latest() -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(253_402_300_799_999_999)
}

/// Whether `time` is one every wire can write (1970-01-01 to 9999-12-31, UTC).
pub(crate) fn in_range(time: SystemTime) -> bool {
    time >= SystemTime::UNIX_EPOCH && time <= latest()
}

/// The control characters CloudEvents forbids in String attributes (and no header wants).
pub(crate) fn is_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x1f | 0x7f..=0x9f)
}

/// `time` as RFC 3339 in UTC with microseconds, as every envelope writes it. Total: a time
/// before 1970 or after 9999 (which events never have: [`Event::restore`] refuses them) is
/// written as the nearest end of that range.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
/// assert_eq!(emissions_core::envelope::rfc3339(t), "2023-11-14T22:13:20.123456Z");
/// ```
pub fn rfc3339(time: SystemTime) -> String {
    let time = time.clamp(SystemTime::UNIX_EPOCH, latest());
    humantime::format_rfc3339_micros(time).to_string()
}

/// The JSON envelope of an event: `{"id","type","time","metadata","data"}`, with `data` the
/// payload exactly as emitted. The Kafka adapter's envelope value, the webhook body and the
/// live feed's `event` are this, byte for byte.
///
/// ```
/// use emissions_core::{Event, Metadata};
/// let e = Event::new("order_created", &serde_json::json!({"id": 7}), Metadata::new())?;
/// let body = e.envelope().to_vec();
/// let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(v["id"], e.id().to_string());
/// assert_eq!(v["type"], "order_created");
/// assert_eq!(v["data"]["id"], 7);
/// assert!(v["time"].as_str().unwrap().ends_with('Z'));
/// # Ok::<(), emissions_core::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Envelope<'a> {
    event: &'a Event,
}

impl<'a> Envelope<'a> {
    pub(crate) fn new(event: &'a Event) -> Self {
        Envelope { event }
    }

    /// The envelope as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        to_vec(self, self.event)
    }
}

impl fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.event.id())
            .finish_non_exhaustive()
    }
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("id", &event.id())?;
        map.serialize_entry("type", event.name())?;
        map.serialize_entry("time", &rfc3339(event.emitted_at()))?;
        map.serialize_entry("metadata", event.metadata())?;
        map.serialize_entry("data", event.payload_raw())?;
        map.end()
    }
}

/// Serializes one of this module's forms. They hold strings, a JSON map and JSON text, which
/// serde_json writes into memory without fail.
fn to_vec<T: Serialize>(value: &T, event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.payload().len() + 256);
    serde_json::to_writer(&mut out, value)
        .expect("strings, a JSON map and JSON text always serialize");
    out
}

/// How an adapter carries an event as a CloudEvent (the protocol bindings' content modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentMode {
    /// The whole event as one JSON document (`application/cloudevents+json`).
    Structured,
    /// The payload as the message body, attributes as `ce-`/`ce_` headers.
    Binary,
}

/// CloudEvents 1.0 output, as an option of every adapter: the `source` attribute this instance
/// writes (a URI-reference, such as `/orders-service` or `https://shop.example/orders`) and
/// the content mode.
///
/// Attributes: `id` = the event id, `type` = the event name, `time` = the emit time,
/// `datacontenttype` = `application/json`, `data` = the payload as emitted. Metadata entries
/// become attributes where CloudEvents allows it: a non-empty `subject` string becomes `subject`, and an
/// entry whose name is 1–20 lowercase letters or digits and whose value is a string (without
/// control characters), a boolean or a 32-bit integer becomes an extension attribute of that
/// name — so `traceparent` and
/// `tracestate` form the distributed-tracing extension. The other entries are not dropped:
/// they travel together as JSON text in the `metadata` extension attribute.
///
/// ```
/// use emissions_core::envelope::{CloudEvents, ContentMode};
/// let ce = CloudEvents::structured("/orders-service");
/// assert_eq!(ce.mode(), ContentMode::Structured);
/// assert!(ce.validate("hook").is_ok());
/// let err = CloudEvents::binary("has space").validate("hook").unwrap_err();
/// assert!(err.to_string().starts_with("adapter `hook`: invalid `cloudevents`"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvents {
    source: Arc<str>,
    mode: ContentMode,
}

impl CloudEvents {
    /// Structured mode with `source`.
    pub fn structured(source: impl Into<Arc<str>>) -> Self {
        CloudEvents {
            source: source.into(),
            mode: ContentMode::Structured,
        }
    }

    /// Binary mode with `source`.
    pub fn binary(source: impl Into<Arc<str>>) -> Self {
        CloudEvents {
            source: source.into(),
            mode: ContentMode::Binary,
        }
    }

    /// Checks the source, for the adapter named `adapter` to call when it validates its
    /// configuration: [`Error::Config`] when it is empty or has whitespace or control
    /// characters (not a URI-reference).
    pub fn validate(&self, adapter: &str) -> Result<(), Error> {
        let source = &self.source;
        if source.is_empty() || source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(
                adapter,
                "cloudevents",
                format!(
                    "source {source:?} is not a URI-reference (it must be non-empty, without spaces or control characters), e.g. \"/orders-service\""
                ),
            ));
        }
        Ok(())
    }

    /// The `source` attribute.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The content mode.
    pub fn mode(&self) -> ContentMode {
        self.mode
    }

    /// `event` as a CloudEvent from this source.
    ///
    /// ```
    /// use emissions_core::{Event, Metadata, envelope::CloudEvents};
    /// let mut meta = Metadata::new();
    /// meta.insert("tenant".into(), "acme".into());
    /// meta.insert("user_id".into(), 42.into());
    /// let e = Event::new("order_created", &serde_json::json!({"id": 7}), meta)?;
    /// let ce = CloudEvents::structured("/orders");
    /// let v: serde_json::Value = serde_json::from_slice(&ce.event(&e).to_vec()).unwrap();
    /// assert_eq!(v["specversion"], "1.0");
    /// assert_eq!(v["source"], "/orders");
    /// assert_eq!(v["type"], "order_created");
    /// assert_eq!(v["tenant"], "acme");
    /// assert_eq!(v["metadata"], r#"{"user_id":42}"#);
    /// assert_eq!(v["data"]["id"], 7);
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn event<'a>(&'a self, event: &'a Event) -> CloudEvent<'a> {
        CloudEvent {
            event,
            source: &self.source,
            partition_key: None,
        }
    }
}

/// The value of a CloudEvents attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue<'a> {
    /// A String (or URI-reference, or Timestamp) attribute.
    Text(Cow<'a, str>),
    /// An Integer attribute.
    Integer(i32),
    /// A Boolean attribute.
    Boolean(bool),
}

impl<'a> AttributeValue<'a> {
    /// The attribute's canonical string form, as binary modes carry it in a header.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            AttributeValue::Text(text) => Cow::Borrowed(text),
            AttributeValue::Integer(n) => Cow::Owned(n.to_string()),
            AttributeValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }

    /// [`as_text`](Self::as_text), keeping what the text borrows from the event.
    ///
    /// ```
    /// use emissions_core::envelope::AttributeValue;
    /// assert_eq!(AttributeValue::Text("acme".into()).into_text(), "acme");
    /// assert_eq!(AttributeValue::Integer(7).into_text(), "7");
    /// ```
    pub fn into_text(self) -> Cow<'a, str> {
        match self {
            AttributeValue::Text(text) => text,
            AttributeValue::Integer(n) => Cow::Owned(n.to_string()),
            AttributeValue::Boolean(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        }
    }
}

impl Serialize for AttributeValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AttributeValue::Text(text) => serializer.serialize_str(text),
            AttributeValue::Integer(n) => serializer.serialize_i32(*n),
            AttributeValue::Boolean(b) => serializer.serialize_bool(*b),
        }
    }
}

/// One event as a CloudEvent: its attributes (for binary modes) or its structured JSON form.
#[derive(Clone, Copy)]
pub struct CloudEvent<'a> {
    event: &'a Event,
    source: &'a str,
    partition_key: Option<&'a str>,
}

impl fmt::Debug for CloudEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudEvent")
            .field("id", &self.event.id())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A metadata entry name CloudEvents accepts as an extension attribute of our own choosing.
fn extension_name(name: &str) -> bool {
    const CONTEXT: [&str; 11] = [
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "dataschema",
        "subject",
        "time",
        "data",
        LEFTOVER,
        // Set from the Kafka record key (`CloudEvent::with_partition_key`), never from metadata.
        "partitionkey",
    ];
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !CONTEXT.contains(&name)
}

fn extension_value(value: &serde_json::Value) -> Option<AttributeValue<'_>> {
    match value {
        serde_json::Value::String(s) if !s.chars().any(is_control) => {
            Some(AttributeValue::Text(Cow::Borrowed(s)))
        }
        serde_json::Value::Bool(b) => Some(AttributeValue::Boolean(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(AttributeValue::Integer),
        _ => None,
    }
}

impl<'a> CloudEvent<'a> {
    /// With the `partitionkey` extension (the Kafka binding's: the record key, as text). A
    /// metadata entry of that name never becomes the attribute; it travels in `metadata`.
    ///
    /// ```
    /// use emissions_core::{CloudEvents, Event, Metadata};
    /// let e = Event::new("a", &1, Metadata::new())?;
    /// let ce = CloudEvents::binary("/svc");
    /// let attributes = ce.event(&e).with_partition_key("order-7").attributes();
    /// assert!(attributes.iter().any(|(n, v)| *n == "partitionkey" && v.as_text() == "order-7"));
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn with_partition_key(mut self, key: &'a str) -> Self {
        self.partition_key = Some(key).filter(|k| !k.is_empty() && !k.chars().any(is_control));
        self
    }

    /// Every attribute except `datacontenttype` (a binary mode's content type) and `data`,
    /// in a fixed order: `specversion`, `id`, `source`, `type`, `time`, then `subject` and the
    /// extensions as the metadata has them, then `metadata` for the entries left over.
    ///
    /// ```
    /// use emissions_core::{Event, Metadata, envelope::CloudEvents};
    /// let e = Event::new("a", &1, Metadata::new())?;
    /// let ce = CloudEvents::binary("/svc");
    /// let names: Vec<_> = ce.event(&e).attributes().into_iter().map(|(n, _)| n).collect();
    /// assert_eq!(names, ["specversion", "id", "source", "type", "time"]);
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn attributes(&self) -> Vec<(&'a str, AttributeValue<'a>)> {
        let event = self.event;
        let text = |s: &'a str| AttributeValue::Text(Cow::Borrowed(s));
        // The five required ones, room for a partition key, the metadata and a few more.
        let mut attributes = Vec::with_capacity(8 + event.metadata().len());
        attributes.extend([
            ("specversion", text(SPEC_VERSION)),
            (
                "id",
                AttributeValue::Text(Cow::Owned(event.id().to_string())),
            ),
            ("source", text(self.source)),
            ("type", text(event.name())),
            (
                "time",
                AttributeValue::Text(Cow::Owned(rfc3339(event.emitted_at()))),
            ),
        ]);
        // Metadata that is not an attribute of its own, borrowed (serialized below as one map).
        let mut leftover: Vec<(&String, &serde_json::Value)> = Vec::new();
        for (name, value) in event.metadata() {
            let attribute = match (name.as_str(), value) {
                // CloudEvents: a subject, when present, is a non-empty string.
                ("subject", serde_json::Value::String(s))
                    if !s.is_empty() && !s.chars().any(is_control) =>
                {
                    Some(text(s))
                }
                (name, value) if extension_name(name) => extension_value(value),
                _ => None,
            };
            match attribute {
                Some(attribute) => attributes.push((name.as_str(), attribute)),
                None => leftover.push((name, value)),
            }
        }
        if let Some(key) = self.partition_key {
            attributes.push(("partitionkey", text(key)));
        }
        if !leftover.is_empty() {
            // serde_json escapes U+0000–U+001F; DEL and the C1 controls are escaped here, so
            // that the attribute holds no control character at all.
            let mut json = serde_json::to_string(&Leftover(&leftover))
                .expect("metadata (strings and JSON values) always serializes");
            if json.chars().any(is_control) {
                json = json
                    .chars()
                    .map(|c| match c as u32 {
                        code @ 0x7f..=0x9f => format!("\\u{code:04x}"),
                        _ => c.to_string(),
                    })
                    .collect();
            }
            attributes.push((LEFTOVER, AttributeValue::Text(Cow::Owned(json))));
        }
        attributes
    }

    /// The structured form (`application/cloudevents+json`) as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        to_vec(self, self.event)
    }
}

/// Metadata entries serialized as one JSON object, without copying them into a map.
struct Leftover<'a>(&'a [(&'a String, &'a serde_json::Value)]);

impl Serialize for Leftover<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

impl Serialize for CloudEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attributes = self.attributes();
        let mut map = serializer.serialize_map(Some(attributes.len() + 2))?;
        for (name, value) in &attributes {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("datacontenttype", "application/json")?;
        map.serialize_entry("data", self.event.payload_raw())?;
        map.end()
    }
}

/// What [`read_envelope`] and [`read_structured`] parse: every field borrowed, the data as
/// JSON text.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(flatten)]
    rest: crate::Metadata,
}

impl Incoming<'_> {
    fn restore(&self, metadata: crate::Metadata) -> Result<Event, Error> {
        let data = self.data.map_or("null", |d| d.get());
        restore(
            &self.id,
            &self.name,
            self.time.as_deref(),
            data.as_bytes(),
            metadata,
        )
    }
}

fn invalid(reason: impl fmt::Display) -> Error {
    Error::InvalidEnvelope(reason.to_string())
}

fn restore(
    id: &str,
    name: &str,
    time: Option<&str>,
    data: &[u8],
    metadata: crate::Metadata,
) -> Result<Event, Error> {
    let id = uuid::Uuid::parse_str(id).map_err(|e| invalid(format!("id {id:?}: {e}")))?;
    let time = match time {
        Some(time) => {
            humantime::parse_rfc3339(time).map_err(|e| invalid(format!("time {time:?}: {e}")))?
        }
        None => SystemTime::UNIX_EPOCH,
    };
    Event::restore(id, name.to_owned(), data.to_vec(), metadata, time)
}

/// Reads an event back from its envelope (as [`Envelope::to_vec`] writes it): same id,
/// name, time, metadata and payload. [`Error::InvalidEnvelope`] when it is not one.
///
/// ```
/// use emissions_core::{Event, Metadata, envelope::read_envelope};
/// let e = Event::new("a", &serde_json::json!({"x": [1]}), Metadata::new())?;
/// let back = read_envelope(&e.envelope().to_vec())?;
/// assert_eq!((back.id(), back.name(), back.payload()), (e.id(), "a", e.payload()));
/// assert!(read_envelope(b"{}").is_err());
/// # Ok::<(), emissions_core::Error>(())
/// ```
pub fn read_envelope(bytes: &[u8]) -> Result<Event, Error> {
    let incoming: Incoming<'_> = serde_json::from_slice(bytes).map_err(invalid)?;
    let metadata = match &incoming.metadata {
        Some(serde_json::Value::Object(map)) => map.clone(),
        None => crate::Metadata::new(),
        Some(_) => return Err(invalid("metadata is not an object")),
    };
    incoming.restore(metadata)
}

/// Metadata from CloudEvents attributes: every attribute but the context ones this crate
/// sets from the event itself, with the `metadata` attribute's entries merged back in.
fn metadata_from_attributes<'a>(
    attributes: impl IntoIterator<Item = (&'a str, serde_json::Value)>,
) -> Result<crate::Metadata, Error> {
    let mut metadata = crate::Metadata::new();
    let mut leftover = None;
    for (name, value) in attributes {
        match name {
            "specversion" | "id" | "source" | "type" | "time" | "datacontenttype" | "data" => {}
            LEFTOVER => leftover = Some(value),
            _ => {
                metadata.insert(name.to_owned(), value);
            }
        }
    }
    if let Some(leftover) = leftover {
        let text = leftover
            .as_str()
            .ok_or_else(|| invalid("the metadata attribute is not a string"))?;
        let serde_json::Value::Object(entries) = serde_json::from_str(text).map_err(invalid)?
        else {
            return Err(invalid("the metadata attribute is not a JSON object"));
        };
        metadata.extend(entries);
    }
    Ok(metadata)
}

/// Reads an event back from a structured CloudEvent (as [`CloudEvent::to_vec`] writes it):
/// same id, type, time and data; the metadata from `subject`, the extensions and the
/// `metadata` attribute. [`Error::InvalidEnvelope`] when it is not one.
///
/// ```
/// use emissions_core::{CloudEvents, Event, Metadata, envelope::read_structured};
/// let mut meta = Metadata::new();
/// meta.insert("user_id".into(), 5.into());
/// let e = Event::new("a", &[1, 2], meta)?;
/// let ce = CloudEvents::structured("/svc");
/// let back = read_structured(&ce.event(&e).to_vec())?;
/// assert_eq!((back.id(), back.payload()), (e.id(), e.payload()));
/// assert_eq!(back.metadata(), e.metadata());
/// # Ok::<(), emissions_core::Error>(())
/// ```
pub fn read_structured(bytes: &[u8]) -> Result<Event, Error> {
    let incoming: Incoming<'_> = serde_json::from_slice(bytes).map_err(invalid)?;
    if incoming.rest.get("specversion").and_then(|v| v.as_str()) != Some(SPEC_VERSION) {
        return Err(invalid("specversion is not 1.0"));
    }
    let mut attributes: Vec<(&str, serde_json::Value)> = incoming
        .rest
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    if let Some(leftover) = &incoming.metadata {
        attributes.push((LEFTOVER, leftover.clone()));
    }
    let metadata = metadata_from_attributes(attributes)?;
    incoming.restore(metadata)
}

/// Reads an event back from binary-mode attributes (names without their `ce-`/`ce_` prefix,
/// values as the headers carried them, percent-decoded) and the data: same id, type, time
/// and data; extensions come back as strings (a binary header has no types).
/// [`Error::InvalidEnvelope`] when an attribute is missing or malformed.
///
/// ```
/// use emissions_core::{CloudEvents, Event, Metadata, envelope::read_binary};
/// let e = Event::new("a", &[1, 2], Metadata::new())?;
/// let ce = CloudEvents::binary("/svc");
/// let attributes: Vec<(&str, String)> = ce.event(&e).attributes().into_iter()
///     .map(|(n, v)| (n, v.as_text().into_owned())).collect();
/// let back = read_binary(attributes.iter().map(|(n, v)| (*n, v.as_str())), e.payload())?;
/// assert_eq!((back.id(), back.name(), back.payload()), (e.id(), "a", e.payload()));
/// # Ok::<(), emissions_core::Error>(())
/// ```
pub fn read_binary<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
    data: &[u8],
) -> Result<Event, Error> {
    let attributes: Vec<(&str, &str)> = attributes.into_iter().collect();
    let get = |name: &str| attributes.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    if get("specversion") != Some(SPEC_VERSION) {
        return Err(invalid("specversion is not 1.0"));
    }
    let id = get("id").ok_or_else(|| invalid("no id"))?;
    let name = get("type").ok_or_else(|| invalid("no type"))?;
    let metadata = metadata_from_attributes(
        attributes
            .iter()
            .map(|(n, v)| (*n, serde_json::Value::from(*v))),
    )?;
    restore(id, name, get("time"), data, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metadata;
    use serde_json::json;

    fn event(meta: serde_json::Value) -> Event {
        let serde_json::Value::Object(meta) = meta else {
            panic!("an object")
        };
        Event::new("café_opened", &json!({"é": [1, 2.5], "n": null}), meta).unwrap()
    }

    #[test]
    fn the_envelope_embeds_the_payload_text_as_emitted() {
        let e = event(json!({"source": "api"}));
        let body = String::from_utf8(e.envelope().to_vec()).unwrap();
        assert!(body.ends_with(&format!(",\"data\":{}}}", e.payload_raw().get())));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "id": e.id().to_string(),
                "type": "café_opened",
                "time": rfc3339(e.emitted_at()),
                "metadata": {"source": "api"},
                "data": {"é": [1, 2.5], "n": null},
            })
        );
    }

    #[test]
    fn metadata_becomes_attributes_where_cloudevents_allows_and_the_rest_travels_together() {
        let e = event(json!({
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "subject": "orders/42",
            "tenant": "acme",
            "shard": 7,
            "big": 1_u64 << 40,
            "vip": true,
            "user_id": 5,
            "nested": {"a": 1},
            "id": "spoofed",
            "type": "spoofed",
            "metadata": "mine",
            "ünï": "x",
            "averyveryverylongname1": "x",
        }));
        let ce = CloudEvents::binary("/svc");
        let attributes = ce.event(&e).attributes();
        let get = |name: &str| {
            attributes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("id").unwrap().as_text(), e.id().to_string());
        assert_eq!(get("type").unwrap().as_text(), "café_opened");
        assert_eq!(get("subject").unwrap().as_text(), "orders/42");
        assert_eq!(get("tenant").unwrap().as_text(), "acme");
        assert_eq!(get("shard"), Some(AttributeValue::Integer(7)));
        assert_eq!(get("vip"), Some(AttributeValue::Boolean(true)));
        assert!(get("traceparent").is_some());
        assert_eq!(attributes.iter().filter(|(n, _)| *n == "id").count(), 1);
        let leftover: serde_json::Value =
            serde_json::from_str(&get("metadata").unwrap().as_text()).unwrap();
        assert_eq!(
            leftover,
            json!({
                "big": 1_u64 << 40,
                "user_id": 5,
                "nested": {"a": 1},
                "id": "spoofed",
                "type": "spoofed",
                "metadata": "mine",
                "ünï": "x",
                "averyveryverylongname1": "x",
            })
        );
        let structured: serde_json::Value = serde_json::from_slice(&ce.event(&e).to_vec()).unwrap();
        assert_eq!(structured["shard"], 7);
        assert_eq!(structured["vip"], true);
        assert_eq!(structured["datacontenttype"], "application/json");
        assert_eq!(structured["data"], e.payload_json());
        assert_eq!(structured["id"], e.id().to_string());
    }

    #[test]
    fn without_metadata_there_is_no_leftover_attribute() {
        let e = Event::new("a", &1, Metadata::new()).unwrap();
        let ce = CloudEvents::structured("urn:x");
        let v: serde_json::Value = serde_json::from_slice(&ce.event(&e).to_vec()).unwrap();
        assert!(v.get("metadata").is_none());
        assert_eq!(v.as_object().unwrap().len(), 7);
    }

    #[test]
    fn every_form_reads_back_as_the_same_event() {
        let e = event(json!({"tenant": "acme", "shard": 7, "user_id": {"deep": [1]}}));
        let same = |back: &Event| {
            assert_eq!(back.id(), e.id());
            assert_eq!(back.name(), e.name());
            assert_eq!(back.payload(), e.payload());
            assert_eq!(
                rfc3339(back.emitted_at()),
                rfc3339(e.emitted_at()),
                "microsecond precision"
            );
        };
        let back = read_envelope(&e.envelope().to_vec()).unwrap();
        same(&back);
        assert_eq!(back.metadata(), e.metadata());
        let ce = CloudEvents::structured("/svc");
        let back = read_structured(&ce.event(&e).to_vec()).unwrap();
        same(&back);
        assert_eq!(back.metadata(), e.metadata());
        let attributes: Vec<(&str, String)> = ce
            .event(&e)
            .attributes()
            .into_iter()
            .map(|(n, v)| (n, v.as_text().into_owned()))
            .collect();
        let back = read_binary(
            attributes.iter().map(|(n, v)| (*n, v.as_str())),
            e.payload(),
        )
        .unwrap();
        same(&back);
        assert_eq!(back.metadata()["shard"], "7", "binary headers carry text");
        assert_eq!(back.metadata()["user_id"], json!({"deep": [1]}));
        for bad in [
            &br#"{"id":"x","type":"a"}"#[..],
            br#"{"type":"a","data":1}"#,
            br#"{"id":"0192f0c4-1c3a-7000-8000-000000000000","type":"a","time":"yesterday"}"#,
            br#"{"id":"0192f0c4-1c3a-7000-8000-000000000000","type":"","data":1}"#,
            b"[1]",
        ] {
            assert!(
                read_envelope(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            read_structured(&e.envelope().to_vec()).is_err(),
            "no specversion"
        );
    }

    #[test]
    fn control_characters_never_reach_an_attribute_and_times_stay_in_range() {
        let e = event(json!({"tenant": "acme\r\nce-id: forged", "subject": "a\u{0}b\u{85}"}));
        let ce = CloudEvents::binary("/svc");
        let attributes = ce.event(&e).attributes();
        for (name, value) in &attributes {
            assert!(
                !value.as_text().chars().any(is_control),
                "{name}: {value:?}"
            );
        }
        let leftover: serde_json::Value = serde_json::from_str(
            &attributes
                .iter()
                .find(|(n, _)| *n == "metadata")
                .unwrap()
                .1
                .as_text(),
        )
        .unwrap();
        assert_eq!(leftover["tenant"], "acme\r\nce-id: forged");
        assert_eq!(leftover["subject"], "a\u{0}b\u{85}");
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000000Z");
        let after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_900);
        assert_eq!(rfc3339(after), "9999-12-31T23:59:59.999999Z");
        assert!(matches!(
            Event::new("evil\r\nX-Injected: 1", &1, Metadata::new()),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            Event::restore(e.id(), "a".into(), b"1".to_vec(), Metadata::new(), before),
            Err(Error::InvalidTime { .. })
        ));
        assert!(matches!(
            Event::restore(e.id(), "a".into(), b"1".to_vec(), Metadata::new(), after),
            Err(Error::InvalidTime { .. })
        ));
    }

    #[test]
    fn an_empty_subject_a_metadata_partitionkey_and_non_ascii_trace_context_stay_in_metadata() {
        let e = event(json!({
            "subject": "",
            "partitionkey": "customer-9",
            "tracestate": "vendor=é",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        }));
        let ce = CloudEvents::structured("/svc");
        let v: serde_json::Value =
            serde_json::from_slice(&ce.event(&e).with_partition_key("o-1").to_vec()).unwrap();
        assert!(v.get("subject").is_none(), "{v}");
        assert_eq!(v["partitionkey"], "o-1");
        let leftover: serde_json::Value =
            serde_json::from_str(v["metadata"].as_str().unwrap()).unwrap();
        assert_eq!(leftover["subject"], "");
        assert_eq!(leftover["partitionkey"], "customer-9");
        let forwarded: Vec<_> = trace_context(&e).map(|(k, _)| k).collect();
        assert_eq!(
            forwarded,
            ["traceparent"],
            "a non-ASCII tracestate is not a header"
        );
    }
}
