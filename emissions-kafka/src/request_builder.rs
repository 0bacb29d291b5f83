//! Event → Kafka record: topic, key, value, headers, timestamp. Pure; no I/O.

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

use emissions_core::Event;
use emissions_core::envelope::{CloudEvents, ContentMode, rfc3339, trace_context};

use crate::Error;
use crate::config::{Destination, KeyStrategy, ValueFormat};

/// Header names set on every record (except in CloudEvents modes, whose headers the Kafka
/// protocol binding names: `ce_*` and `content-type`).
pub mod headers {
    /// The event name.
    pub const EVENT_NAME: &str = "event-name";
    /// The event id (UUID v7).
    pub const EVENT_ID: &str = "event-id";
    /// The emit time, RFC 3339 with microseconds.
    pub const EVENT_TIME: &str = "event-time";
    /// `application/json`, or `application/cloudevents+json` in structured CloudEvents mode.
    pub const CONTENT_TYPE: &str = "content-type";
}

/// One record, borrowing what it can from its event and destination (the topic, a payload
/// sent as emitted).
#[derive(Debug, PartialEq)]
pub(crate) struct Record<'a> {
    pub(crate) topic: Cow<'a, str>,
    pub(crate) key: Option<Cow<'a, [u8]>>,
    pub(crate) value: Cow<'a, [u8]>,
    pub(crate) headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub(crate) timestamp_ms: i64,
}

/// How the value and headers are written.
#[derive(Clone, Debug)]
pub(crate) enum Wire {
    Plain(ValueFormat),
    CloudEvents(CloudEvents),
}

/// A string as its bytes (borrowed), anything else as its JSON text.
fn key_text(value: &serde_json::Value) -> Cow<'_, [u8]> {
    match value {
        serde_json::Value::String(s) => Cow::Borrowed(s.as_bytes()),
        other => Cow::Owned(other.to_string().into_bytes()),
    }
}

pub(crate) fn key<'a>(strategy: &KeyStrategy, event: &'a Event) -> Option<Cow<'a, [u8]>> {
    match strategy {
        KeyStrategy::EventId => Some(Cow::Owned(event.id().to_string().into_bytes())),
        KeyStrategy::Metadata(field) => event.metadata().get(field).map(key_text),
        KeyStrategy::Payload(pointer) => event
            .payload_json()
            .pointer(pointer)
            .map(|value| Cow::Owned(key_text(value).into_owned())),
        KeyStrategy::None => None,
    }
}

const JSON: &str = "application/json";

/// The binary mode's header for an attribute: `ce_` and its name (the usual ones without an
/// allocation per record).
fn ce_header(name: &str) -> Cow<'static, str> {
    const KNOWN: [(&str, &str); 10] = [
        ("specversion", "ce_specversion"),
        ("id", "ce_id"),
        ("source", "ce_source"),
        ("type", "ce_type"),
        ("time", "ce_time"),
        ("subject", "ce_subject"),
        ("partitionkey", "ce_partitionkey"),
        ("metadata", "ce_metadata"),
        ("traceparent", "ce_traceparent"),
        ("tracestate", "ce_tracestate"),
    ];
    match KNOWN.iter().find(|(attribute, _)| *attribute == name) {
        Some((_, header)) => Cow::Borrowed(header),
        None => Cow::Owned(format!("ce_{name}")),
    }
}

pub(crate) fn record<'a>(
    destination: &'a Destination,
    strategy: &KeyStrategy,
    wire: &'a Wire,
    event: &'a Event,
) -> Result<Record<'a>, Error> {
    let topic = destination.topic(event).ok_or_else(|| Error::NoTopic {
        event: event.name().to_owned(),
    })?;
    let key = key(strategy, event);
    let mut headers: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8);
    let value = match wire {
        Wire::Plain(format) => {
            headers.extend([
                (headers::EVENT_NAME.into(), event.name().into()),
                (headers::EVENT_ID.into(), event.id().to_string().into()),
                (
                    headers::EVENT_TIME.into(),
                    rfc3339(event.emitted_at()).into(),
                ),
                (headers::CONTENT_TYPE.into(), JSON.into()),
            ]);
            for (name, value) in trace_context(event) {
                headers.push((name.into(), value.into()));
            }
            match format {
                ValueFormat::Payload => Cow::Borrowed(event.payload()),
                ValueFormat::Envelope => Cow::Owned(event.envelope().to_vec()),
            }
        }
        Wire::CloudEvents(ce) => {
            // The binding's `partitionkey` is the record key.
            let partition_key = key.as_deref().and_then(|k| std::str::from_utf8(k).ok());
            match ce.mode() {
                ContentMode::Binary => {
                    // The attributes borrow from the event; the key is this record's own.
                    for (name, value) in ce.event(event).attributes() {
                        headers.push((ce_header(name), value.into_text()));
                    }
                    if let Some(text) = partition_key {
                        headers.push((ce_header("partitionkey"), text.to_owned().into()));
                    }
                    headers.push((headers::CONTENT_TYPE.into(), JSON.into()));
                    Cow::Borrowed(event.payload())
                }
                ContentMode::Structured => {
                    let mut cloudevent = ce.event(event);
                    if let Some(text) = partition_key {
                        cloudevent = cloudevent.with_partition_key(text);
                    }
                    headers.push((
                        headers::CONTENT_TYPE.into(),
                        "application/cloudevents+json".into(),
                    ));
                    Cow::Owned(cloudevent.to_vec())
                }
            }
        }
    };
    let timestamp_ms = event
        .emitted_at()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(Record {
        topic,
        key,
        value,
        headers,
        timestamp_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use emissions_core::Metadata;
    use serde_json::json;

    fn event() -> Event {
        let mut meta = Metadata::new();
        meta.insert("order_id".into(), json!("o-42"));
        meta.insert("shard".into(), json!(7));
        meta.insert(
            "traceparent".into(),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        Event::new(
            "order_created",
            &json!({"order": {"id": 42}, "sku": "w"}),
            meta,
        )
        .unwrap()
    }

    #[test]
    fn keys_follow_the_strategy() {
        let e = event();
        assert_eq!(
            key(&KeyStrategy::EventId, &e).as_deref(),
            Some(e.id().to_string().as_bytes())
        );
        assert_eq!(
            key(&KeyStrategy::Metadata("order_id".into()), &e).as_deref(),
            Some(&b"o-42"[..])
        );
        assert_eq!(
            key(&KeyStrategy::Metadata("shard".into()), &e).as_deref(),
            Some(&b"7"[..])
        );
        assert_eq!(key(&KeyStrategy::Metadata("missing".into()), &e), None);
        assert_eq!(
            key(&KeyStrategy::Payload("/order/id".into()), &e).as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(
            key(&KeyStrategy::Payload("/sku".into()), &e).as_deref(),
            Some(&b"w"[..])
        );
        assert_eq!(key(&KeyStrategy::None, &e), None);
    }

    #[test]
    fn payload_records_carry_the_emitted_bytes_and_headers() {
        let e = event();
        let topic = Destination::Topic("events".into());
        let r = record(
            &topic,
            &KeyStrategy::EventId,
            &Wire::Plain(ValueFormat::Payload),
            &e,
        )
        .unwrap();
        assert_eq!(r.topic, "events");
        assert_eq!(r.value, e.payload());
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "event-name",
                "event-id",
                "event-time",
                "content-type",
                "traceparent"
            ]
        );
        assert_eq!(r.headers[0].1, "order_created");
        assert!(r.timestamp_ms > 1_600_000_000_000);
    }

    #[test]
    fn envelopes_embed_the_payload() {
        let e = event();
        let topic = Destination::Topic("t".into());
        let r = record(
            &topic,
            &KeyStrategy::None,
            &Wire::Plain(ValueFormat::Envelope),
            &e,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(r.value, e.envelope().to_vec());
        assert_eq!(v["type"], "order_created");
        assert_eq!(v["data"], e.payload_json());
        assert_eq!(v["metadata"]["order_id"], "o-42");
    }

    #[test]
    fn cloudevents_binary_records_carry_attributes_as_ce_headers_and_the_payload() {
        let e = event();
        let ce = CloudEvents::binary("/orders");
        let topic = Destination::Topic("t".into());
        let wire = Wire::CloudEvents(ce);
        let r = record(&topic, &KeyStrategy::EventId, &wire, &e).unwrap();
        assert_eq!(r.value, e.payload());
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_ref())
        };
        assert_eq!(header("ce_specversion"), Some("1.0"));
        assert_eq!(header("ce_id"), Some(e.id().to_string().as_str()));
        assert_eq!(header("ce_source"), Some("/orders"));
        assert_eq!(header("ce_type"), Some("order_created"));
        assert_eq!(header("ce_shard"), Some("7"));
        assert_eq!(
            header("ce_partitionkey"),
            Some(e.id().to_string().as_str()),
            "the binding's partition key is the record key"
        );
        assert_eq!(header("ce_metadata"), Some(r#"{"order_id":"o-42"}"#));
        assert!(header("ce_traceparent").is_some());
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(header("event-name"), None);
    }

    #[test]
    fn cloudevents_structured_records_are_one_json_document() {
        let e = event();
        let ce = CloudEvents::structured("/orders");
        let topic = Destination::Topic("t".into());
        let wire = Wire::CloudEvents(ce.clone());
        let r = record(&topic, &KeyStrategy::EventId, &wire, &e).unwrap();
        assert_eq!(
            r.value,
            ce.event(&e)
                .with_partition_key(&e.id().to_string())
                .to_vec()
        );
        assert_eq!(
            r.headers,
            [(
                Cow::Borrowed("content-type"),
                Cow::Borrowed("application/cloudevents+json")
            )]
        );
    }

    #[test]
    fn no_topic_is_a_typed_error() {
        let nowhere = Destination::Computed(std::sync::Arc::new(|_: &Event| None));
        let err = record(
            &nowhere,
            &KeyStrategy::None,
            &Wire::Plain(ValueFormat::Payload),
            &event(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoTopic { .. }));
    }
}
