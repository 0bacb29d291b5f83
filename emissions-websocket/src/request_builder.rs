//! Event → frame: the JSON text every transport carries, and its WebSocket frame. Pure; no
//! I/O.
//!
//! `{"type":"event","position","event"}` — `event` is the event's envelope as every adapter
//! writes it ([`Event::envelope`]: `{"id","type","time","metadata","data"}`, the payload
//! exactly as emitted), or with CloudEvents its structured form; `position` is where the
//! connection resumes from after this event.

use std::sync::Arc;

use bytes::Bytes;
use emissions_core::envelope::CloudEvent;
use emissions_core::{CloudEvents, Envelope, Event};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::Entry;
use crate::position::Position;
use crate::socket;

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Envelope(Envelope<'a>),
    CloudEvent(CloudEvent<'a>),
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    position: &'a str,
    event: Body<'a>,
}

/// The entry for `event` at `offset` of `stream`; `cursor` is the stream's cursor after it.
/// The text is encoded once as a WebSocket frame, and the SSE text is a view of it.
pub(crate) fn entry(
    event: Event,
    topic: Option<Arc<str>>,
    stream: usize,
    offset: u64,
    epoch: &str,
    cursor: &[u64],
    cloudevents: Option<&CloudEvents>,
) -> Arc<Entry> {
    let position = Position::format(epoch, cursor);
    let frame = EventFrame {
        kind: "event",
        position: &position,
        event: match cloudevents {
            None => Body::Envelope(event.envelope()),
            Some(ce) => Body::CloudEvent(ce.event(&event)),
        },
    };
    // Strings, an envelope and a CloudEvent: serde_json writes them without fail.
    let text = serde_json::to_string(&frame).expect("a frame always serializes");
    let len = text.len();
    let frame = Bytes::from(socket::text_frame(text));
    let text = frame.slice(frame.len() - len..);
    Arc::new(Entry {
        stream,
        offset,
        event,
        topic,
        position,
        text: Utf8Bytes::try_from(text).expect("the frame ends with the text"),
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use emissions_core::Metadata;

    #[test]
    fn the_frame_carries_the_payload_as_emitted_and_the_position() {
        let event = Event::new(
            "café_opened",
            &serde_json::json!({"é": [1, 2]}),
            Metadata::new(),
        )
        .unwrap();
        let entry = entry(event.clone(), None, 0, 7, "e1", &[8], None);
        let frame: serde_json::Value = serde_json::from_str(entry.text.as_str()).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["position"], "e1.8");
        assert_eq!(entry.position, "e1.8");
        let envelope: serde_json::Value =
            serde_json::from_slice(&event.envelope().to_vec()).unwrap();
        assert_eq!(frame["event"], envelope);
        assert_eq!(frame["event"]["type"], "café_opened");
        assert_eq!(frame["event"]["data"], serde_json::json!({"é": [1, 2]}));
        assert_eq!(&entry.frame[..], socket::text_frame(entry.text.to_string()));
    }

    #[test]
    fn with_cloudevents_the_frame_carries_the_structured_event() {
        let event = Event::new("a", &1, Metadata::new()).unwrap();
        let ce = CloudEvents::structured("/live");
        let entry = entry(event.clone(), None, 0, 0, "e1", &[1], Some(&ce));
        let frame: serde_json::Value = serde_json::from_str(entry.text.as_str()).unwrap();
        let structured: serde_json::Value =
            serde_json::from_slice(&ce.event(&event).to_vec()).unwrap();
        assert_eq!(frame["event"], structured);
        assert_eq!(frame["event"]["specversion"], "1.0");
    }
}
