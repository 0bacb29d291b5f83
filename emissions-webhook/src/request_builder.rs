//! Event → webhook request: the body and the headers. Pure; no I/O.

use bytes::Bytes;
use emissions_core::envelope::{ContentMode, trace_context};
use emissions_core::{CloudEvents, Event};
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::signature::{Secret, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, sign};

/// What the HTTP CloudEvents binding percent-encodes in a `ce-` header value: space, `"`, `%`
/// and everything outside printable ASCII (non-ASCII is always encoded, as UTF-8 bytes).
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// The body POSTed for `event`: the core envelope ([`Event::envelope`]), or with CloudEvents
/// the structured event, or in binary mode the payload as emitted.
pub(crate) fn body(event: &Event, cloudevents: Option<&CloudEvents>) -> Bytes {
    Bytes::from(match cloudevents {
        None => event.envelope().to_vec(),
        Some(ce) => match ce.mode() {
            ContentMode::Structured => ce.event(event).to_vec(),
            ContentMode::Binary => event.payload().to_vec(),
        },
    })
}

/// The headers of one attempt: content type, static headers, trace context, CloudEvents
/// attributes in binary mode, and the Standard Webhooks id/timestamp/signature over exactly
/// `body`.
pub(crate) fn headers(
    event: &Event,
    body: &[u8],
    timestamp: i64,
    secrets: &[Secret],
    extra: &HeaderMap,
    cloudevents: Option<&CloudEvents>,
) -> HeaderMap {
    let mut headers = extra.clone();
    let content_type = match cloudevents.map(CloudEvents::mode) {
        Some(ContentMode::Structured) => "application/cloudevents+json; charset=utf-8",
        _ => "application/json",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (key, value) in trace_context(event) {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(key), value);
        }
    }
    if let Some(ce) = cloudevents.filter(|ce| ce.mode() == ContentMode::Binary) {
        for (name, value) in ce.event(event).attributes() {
            // Attribute names are lowercase letters and digits; percent-encoded values are
            // printable ASCII: both always valid.
            let name = HeaderName::try_from(format!("ce-{name}"));
            let value = HeaderValue::try_from(
                utf8_percent_encode(&value.as_text(), HEADER_UNSAFE).to_string(),
            );
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.insert(name, value);
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
    use emissions_core::Metadata;
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
        let body = body(&e, None);
        assert_eq!(body, e.envelope().to_vec());
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["type"], "order_created");
        assert_eq!(parsed["data"], json!({"id": 7, "item": "widget"}));
    }

    #[test]
    fn headers_sign_exactly_the_body_and_forward_trace_context() {
        let e = event();
        let body = body(&e, None);
        let secret = Secret::from_bytes(vec![5; 32]).unwrap();
        let mut extra = HeaderMap::new();
        extra.insert("x-tenant", HeaderValue::from_static("acme"));
        let now = std::time::SystemTime::now();
        let ts = crate::signature::unix_seconds(now);
        let h = headers(&e, &body, ts, std::slice::from_ref(&secret), &extra, None);
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

    #[test]
    fn cloudevents_binary_puts_percent_encoded_attributes_in_ce_headers() {
        let mut meta = Metadata::new();
        meta.insert("subject".into(), json!("Bestellung \"Nr. 5\" 100% ✓"));
        meta.insert("tenant".into(), json!("acme"));
        let e = Event::new("order_created", &json!({"id": 7}), meta).unwrap();
        let ce = CloudEvents::binary("/orders");
        let body = body(&e, Some(&ce));
        assert_eq!(body, e.payload());
        let secret = Secret::from_bytes(vec![5; 32]).unwrap();
        let h = headers(&e, &body, 1, &[secret], &HeaderMap::new(), Some(&ce));
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], e.id().to_string().as_str());
        assert_eq!(h["ce-id"], h["webhook-id"]);
        assert_eq!(h["ce-source"], "/orders");
        assert_eq!(h["ce-type"], "order_created");
        assert_eq!(h["ce-tenant"], "acme");
        assert_eq!(
            h["ce-subject"],
            "Bestellung%20%22Nr.%205%22%20100%25%20%E2%9C%93"
        );
    }

    #[test]
    fn cloudevents_structured_signs_the_whole_event() {
        let e = event();
        let ce = CloudEvents::structured("/orders");
        let body = body(&e, Some(&ce));
        assert_eq!(body, ce.event(&e).to_vec());
        let secret = Secret::from_bytes(vec![5; 32]).unwrap();
        let now = std::time::SystemTime::now();
        let ts = crate::signature::unix_seconds(now);
        let h = headers(
            &e,
            &body,
            ts,
            std::slice::from_ref(&secret),
            &HeaderMap::new(),
            Some(&ce),
        );
        assert_eq!(
            h[CONTENT_TYPE],
            "application/cloudevents+json; charset=utf-8"
        );
        assert!(h.get("ce-id").is_none());
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["id"], h["webhook-id"].to_str().unwrap());
        assert!(Verifier::new([secret]).verify_at(&h, &body, now).is_ok());
    }
}
