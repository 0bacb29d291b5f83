//! Event → frame: the JSON text every transport carries. Pure; no I/O.
//!
//! `{"type":"event","id","name","timestamp","metadata","payload","position"}` — the payload
//! exactly as emitted, the position the connection resumes from after this event.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use emissions_core::{Event, Metadata};
use serde::Serialize;

use crate::hub::Entry;
use crate::position::Position;

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    name: &'a str,
    timestamp: String,
    metadata: &'a Metadata,
    position: &'a str,
}

/// The entry for `event` at `offset` of `stream`; `cursor` is the stream's cursor after it.
/// `None` only if the frame cannot be serialized (it is then counted by the caller).
pub(crate) fn entry(
    event: Event,
    topic: Option<Arc<str>>,
    stream: usize,
    offset: u64,
    epoch: &str,
    cursor: &[u64],
) -> Option<Arc<Entry>> {
    let position = Position::format(epoch, cursor);
    let fields = EventFrame {
        kind: "event",
        id: event.id().to_string(),
        name: event.name(),
        timestamp: humantime::format_rfc3339_micros(event.emitted_at()).to_string(),
        metadata: event.metadata(),
        position: &position,
    };
    let bytes = event.to_json_with_payload(&fields, "payload").ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Some(Arc::new(Entry {
        stream,
        offset,
        event,
        topic,
        position,
        text: Utf8Bytes::from(text),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_carries_the_payload_as_emitted_and_the_position() {
        let event = Event::new(
            "café_opened",
            &serde_json::json!({"é": [1, 2]}),
            Metadata::new(),
        )
        .unwrap();
        let entry = entry(event.clone(), None, 0, 7, "e1", &[8]).unwrap();
        let frame: serde_json::Value = serde_json::from_str(entry.text.as_str()).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["name"], "café_opened");
        assert_eq!(frame["id"], event.id().to_string());
        assert_eq!(frame["payload"], serde_json::json!({"é": [1, 2]}));
        assert_eq!(frame["position"], "e1.8");
        assert_eq!(entry.position, "e1.8");
    }
}
