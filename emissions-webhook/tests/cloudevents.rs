//! CloudEvents over HTTP, checked by an independent implementation: real requests from the
//! adapter to a real receiver on loopback, parsed by the official Python `cloudevents` SDK
//! (installed by `cargo xtask ci`), in structured and binary mode; the signed structured
//! requests are verified by our verifier and by the `standardwebhooks` Python package.

#[path = "../../xtask/python/independent.rs"]
mod independent;
mod support;

use emissions_core::{CloudEvents, Emissions, Event, Metadata};
use emissions_testing::TestAdapter;
use serde_json::json;
use support::{Received, always, endpoint, receiver, verifier};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Spaces, quotes, a percent sign and non-ASCII: what the HTTP binding percent-encodes.
const SUBJECT: &str = "Bestellung \"Nr. 5\" 100% ✓ ü";

fn metadata() -> Metadata {
    let mut meta = Metadata::new();
    meta.insert("traceparent".into(), json!(TRACEPARENT));
    meta.insert("subject".into(), json!(SUBJECT));
    meta.insert("tenant".into(), json!("acme"));
    meta.insert("shard".into(), json!(7));
    meta.insert("user_id".into(), json!(42));
    meta
}

/// Sends two events through an endpoint with `cloudevents` and returns what the receiver got.
async fn send(cloudevents: CloudEvents) -> (Vec<Event>, Vec<Received>) {
    let hooks = receiver(always(200)).await;
    let recording = TestAdapter::new();
    let sent = recording.recorder();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("record", recording))
        .unwrap()
        .adapter(endpoint("ce", &hooks.url).cloudevents(cloudevents))
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    buffer
        .emit_with_metadata(
            "order_created",
            &json!({"id": 1, "note": "ünïcode ✓"}),
            metadata(),
        )
        .unwrap();
    buffer.emit("order_shipped", &json!([1, 2, 3])).unwrap();
    buffer.commit().await.unwrap().settled().await;
    let report = emissions.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(report.is_balanced());
    let events = sent.events();
    (events, hooks.requests())
}

fn http_message(r: &Received) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
        .collect();
    json!({"binding": "http", "headers": headers, "body": independent::b64(&r.body)})
}

/// What the SDK read must be the event, with the metadata as attributes.
fn check(parsed: &serde_json::Value, event: &Event) {
    independent::assert_cloudevent(parsed, event, "https://shop.example.com/orders");
    let attributes = &parsed["attributes"];
    if event.name() == "order_created" {
        assert_eq!(attributes["subject"], SUBJECT);
        assert_eq!(attributes["traceparent"], TRACEPARENT);
        assert_eq!(attributes["tenant"], "acme");
        assert_eq!(attributes["metadata"], r#"{"user_id":42}"#);
    } else {
        assert!(attributes.get("subject").is_none());
        assert!(attributes.get("metadata").is_none());
    }
}

fn in_order<'a>(events: &'a [Event], received: &[Received]) -> Vec<&'a Event> {
    received
        .iter()
        .map(|r| {
            events
                .iter()
                .find(|e| e.id().to_string() == r.headers["webhook-id"].to_str().unwrap())
                .expect("a sent event")
        })
        .collect()
}

#[tokio::test]
async fn structured_requests_are_cloudevents_and_their_signature_covers_every_attribute() {
    let (events, received) = send(CloudEvents::structured("https://shop.example.com/orders")).await;
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(
            r.headers["content-type"],
            "application/cloudevents+json; charset=utf-8"
        );
        verifier().verify(&r.headers, &r.body).expect("signed");
        assert_eq!(r.json()["id"], r.headers["webhook-id"].to_str().unwrap());
    }
    let Some(parsed) = independent::cloudevents(received.iter().map(http_message).collect()) else {
        return;
    };
    for (parsed, event) in parsed.iter().zip(in_order(&events, &received)) {
        check(parsed, event);
    }
    // The Standard Webhooks package accepts every signed CloudEvents request too.
    let pythonpath = independent::python_path().unwrap();
    let cases: Vec<serde_json::Value> = received
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, serde_json::Value> =
                ["webhook-id", "webhook-timestamp", "webhook-signature"]
                    .iter()
                    .map(|h| (h.to_string(), json!(r.headers[*h].to_str().unwrap())))
                    .collect();
            json!({"body": independent::b64(&r.body), "headers": headers})
        })
        .collect();
    let script = format!(
        "import base64, json, sys\nfrom standardwebhooks.webhooks import Webhook\n\
         for case in json.load(sys.stdin):\n    \
         Webhook({:?}).verify(base64.b64decode(case['body']), case['headers'])\n\
         print(json.dumps({{'verified': True}}))",
        support::SECRET
    );
    let answer = independent::run(&pythonpath, &script, &json!(cases));
    assert_eq!(answer["verified"], true);
}

#[tokio::test]
async fn binary_requests_carry_the_payload_and_percent_encoded_attributes() {
    let (events, received) = send(CloudEvents::binary("https://shop.example.com/orders")).await;
    assert_eq!(received.len(), 2);
    for (r, event) in received.iter().zip(in_order(&events, &received)) {
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            &r.body[..],
            event.payload(),
            "the payload exactly as emitted"
        );
        assert_eq!(r.headers["ce-id"], r.headers["webhook-id"]);
        verifier().verify(&r.headers, &r.body).expect("signed");
        if event.name() == "order_created" {
            let subject = r.headers["ce-subject"].to_str().unwrap();
            assert!(subject.is_ascii() && !subject.contains(' ') && !subject.contains('"'));
        }
    }
    let Some(parsed) = independent::cloudevents(received.iter().map(http_message).collect()) else {
        return;
    };
    for (parsed, event) in parsed.iter().zip(in_order(&events, &received)) {
        check(parsed, event);
    }
}

#[test]
fn a_source_that_is_not_a_uri_reference_is_a_config_error_naming_the_endpoint() {
    let err = endpoint("crm", "http://127.0.0.1:9/")
        .cloudevents(CloudEvents::structured("not a uri"))
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("webhook endpoint `crm`: invalid `cloudevents`: source"),
        "{err}"
    );
    for ce in [
        CloudEvents::binary("/orders"),
        CloudEvents::structured("/orders"),
    ] {
        // Binary: it would be an attribute; structured: a receiver would read binary mode.
        let err = endpoint("crm", "http://127.0.0.1:9/")
            .cloudevents(ce)
            .header("ce-source", "/spoofed")
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("`ce-source` is set by the adapter"),
            "{err}"
        );
    }
}
