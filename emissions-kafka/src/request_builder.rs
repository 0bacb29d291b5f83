//! Event → Kafka record: topic, key, value, headers, timestamp. Pure; no I/O.

use std::time::UNIX_EPOCH;

use emissions_core::{Event, Metadata};
use serde::Serialize;

use crate::Error;
use crate::endpoint::{Destination, KeyStrategy, ValueFormat};

/// Header names set on every record.
pub mod headers {
    /// The event name.
    pub const EVENT_NAME: &str = "event-name";
    /// The event id (UUID v7).
    pub const EVENT_ID: &str = "event-id";
    /// The emit time, RFC 3339 with microseconds.
    pub const EVENT_TIME: &str = "event-time";
    /// `application/json`.
    pub const CONTENT_TYPE: &str = "content-type";
}

/// Metadata forwarded as headers when present (W3C trace context).
const FORWARDED: [&str; 2] = ["traceparent", "tracestate"];

#[derive(Debug, PartialEq)]
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) timestamp_ms: i64,
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: String,
    name: &'a str,
    timestamp: String,
    metadata: &'a Metadata,
}

fn key_text(value: &serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

pub(crate) fn key(strategy: &KeyStrategy, event: &Event) -> Option<Vec<u8>> {
    match strategy {
        KeyStrategy::EventId => Some(event.id().to_string().into_bytes()),
        KeyStrategy::Metadata(field) => event.metadata().get(field).map(key_text),
        KeyStrategy::Payload(pointer) => event.payload_json().pointer(pointer).map(key_text),
        KeyStrategy::None => None,
    }
}

pub(crate) fn record(
    destination: &Destination,
    strategy: &KeyStrategy,
    format: ValueFormat,
    event: &Event,
) -> Result<Record, Error> {
    let topic = destination.topic(event).ok_or_else(|| Error::NoTopic {
        event: event.name().to_owned(),
    })?;
    let time = humantime::format_rfc3339_micros(event.emitted_at()).to_string();
    let value = match format {
        ValueFormat::Payload => event.payload().to_vec(),
        ValueFormat::Envelope => event
            .to_json_with_payload(
                &Envelope {
                    id: event.id().to_string(),
                    name: event.name(),
                    timestamp: time.clone(),
                    metadata: event.metadata(),
                },
                "payload",
            )
            .map_err(Error::Envelope)?,
    };
    let mut headers = vec![
        (headers::EVENT_NAME, event.name().to_owned()),
        (headers::EVENT_ID, event.id().to_string()),
        (headers::EVENT_TIME, time),
        (headers::CONTENT_TYPE, "application/json".to_owned()),
    ];
    for name in FORWARDED {
        if let Some(value) = event.metadata().get(name).and_then(|v| v.as_str()) {
            headers.push((name, value.to_owned()));
        }
    }
    let timestamp_ms = event
        .emitted_at()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(Record {
        topic,
        key: key(strategy, event),
        value,
        headers,
        timestamp_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
            key(&KeyStrategy::EventId, &e),
            Some(e.id().to_string().into_bytes())
        );
        assert_eq!(
            key(&KeyStrategy::Metadata("order_id".into()), &e),
            Some(b"o-42".to_vec())
        );
        assert_eq!(
            key(&KeyStrategy::Metadata("shard".into()), &e),
            Some(b"7".to_vec())
        );
        assert_eq!(key(&KeyStrategy::Metadata("missing".into()), &e), None);
        assert_eq!(
            key(&KeyStrategy::Payload("/order/id".into()), &e),
            Some(b"42".to_vec())
        );
        assert_eq!(
            key(&KeyStrategy::Payload("/sku".into()), &e),
            Some(b"w".to_vec())
        );
        assert_eq!(key(&KeyStrategy::None, &e), None);
    }

    #[test]
    fn payload_records_carry_the_emitted_bytes_and_headers() {
        let e = event();
        let r = record(
            &Destination::Topic("events".into()),
            &KeyStrategy::EventId,
            ValueFormat::Payload,
            &e,
        )
        .unwrap();
        assert_eq!(r.topic, "events");
        assert_eq!(r.value, e.payload());
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| *k).collect();
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
        let r = record(
            &Destination::Topic("t".into()),
            &KeyStrategy::None,
            ValueFormat::Envelope,
            &e,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["name"], "order_created");
        assert_eq!(v["payload"], e.payload_json());
        assert_eq!(v["metadata"]["order_id"], "o-42");
    }

    #[test]
    fn no_topic_is_a_typed_error() {
        let nowhere = Destination::Computed(std::sync::Arc::new(|_: &Event| None));
        let err = record(&nowhere, &KeyStrategy::None, ValueFormat::Payload, &event()).unwrap_err();
        assert!(matches!(err, Error::NoTopic { .. }));
    }
}
