//! Event → webhook request: the JSON envelope and the headers. Pure; no I/O.

use bytes::Bytes;
use emissions_core::{Event, Metadata};
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Serialize;

use crate::Error;
use crate::signature::{Secret, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, sign};

/// Metadata keys forwarded as HTTP headers (W3C trace context).
const FORWARDED: [&str; 2] = ["traceparent", "tracestate"];

#[derive(Serialize)]
struct Envelope<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    metadata: &'a Metadata,
}

/// The body POSTed for `event`: `{"id","type","timestamp","metadata","data"}`, with `data` the
/// payload bytes serialized at emit time, embedded as they are.
pub(crate) fn envelope(event: &Event) -> Result<Bytes, Error> {
    let envelope = Envelope {
        id: event.id().to_string(),
        kind: event.name(),
        timestamp: humantime::format_rfc3339_micros(event.emitted_at()).to_string(),
        metadata: event.metadata(),
    };
    // A struct of strings and a JSON map serializes as an object; should it ever fail, the
    // event fails with the reason instead of an empty body being sent.
    event
        .to_json_with_payload(&envelope, "data")
        .map(Bytes::from)
        .map_err(Error::Envelope)
}

/// The headers of one attempt: content type, static headers, trace context, and the Standard
/// Webhooks id/timestamp/signature over exactly `body`.
pub(crate) fn headers(
    event: &Event,
    body: &[u8],
    timestamp: i64,
    secrets: &[Secret],
    extra: &HeaderMap,
) -> HeaderMap {
    let mut headers = extra.clone();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for key in FORWARDED {
        if let Some(value) = event.metadata().get(key).and_then(|v| v.as_str()) {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(key), value);
            }
        }
    }
    let id = event.id().to_string();
    let signature = sign(secrets, &id, timestamp, body);
    // Ids are UUIDs, timestamps digits, signatures base64: always valid header values.
    let value = |s: &str| HeaderValue::from_str(s).expect("ASCII header value");
    headers.insert(WEBHOOK_ID, value(&id));
    headers.insert(WEBHOOK_TIMESTAMP, value(&timestamp.to_string()));
    headers.insert(WEBHOOK_SIGNATURE, value(&signature));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verifier;
    use serde_json::json;

    fn event() -> Event {
        let mut meta = Metadata::new();
        meta.insert(
            "traceparent".into(),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        meta.insert("source".into(), json!("api"));
        Event::new("order_created", &json!({"id": 7, "item": "widget"}), meta).unwrap()
    }

    #[test]
    fn envelope_embeds_the_emitted_payload_bytes() {
        let e = event();
        let body = envelope(&e).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["id"], e.id().to_string());
        assert_eq!(parsed["type"], "order_created");
        assert_eq!(parsed["data"], json!({"id": 7, "item": "widget"}));
        assert_eq!(parsed["metadata"]["source"], "api");
        assert!(parsed["timestamp"].as_str().unwrap().ends_with('Z'));
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(&format!(
            "\"data\":{}",
            std::str::from_utf8(e.payload()).unwrap()
        )));
    }

    #[test]
    fn headers_sign_exactly_the_body_and_forward_trace_context() {
        let e = event();
        let body = envelope(&e).unwrap();
        let secret = Secret::from_bytes(vec![5; 32]).unwrap();
        let mut extra = HeaderMap::new();
        extra.insert("x-tenant", HeaderValue::from_static("acme"));
        let now = std::time::SystemTime::now();
        let ts = crate::signature::unix_seconds(now);
        let h = headers(&e, &body, ts, std::slice::from_ref(&secret), &extra);
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h["x-tenant"], "acme");
        assert_eq!(h["webhook-id"], e.id().to_string().as_str());
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(
            Verifier::new([secret.clone()])
                .verify_at(&h, &body, now)
                .is_ok()
        );
        let mut altered = body.to_vec();
        altered.push(b' ');
        assert!(
            Verifier::new([secret])
                .verify_at(&h, &altered, now)
                .is_err()
        );
    }
}
