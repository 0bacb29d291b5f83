//! CloudEvents over Kafka, checked by an independent implementation: records written by the
//! adapter to a real broker, read back, and parsed by the official Python `cloudevents` SDK's
//! Kafka binding (installed by `cargo xtask ci`), in binary and structured mode.

#[path = "../../xtask/python/independent.rs"]
mod independent;
mod support;

use std::time::Duration;

use emissions_core::{CloudEvents, Emissions, Event, Metadata};
use emissions_kafka::KafkaEndpoint;
use emissions_testing::TestAdapter;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::json;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Writes three events through an endpoint with `cloudevents` (keyed by `order_id`) and
/// returns them with the records read back.
async fn produce(
    brokers: &str,
    cloudevents: CloudEvents,
    mode: &str,
) -> (Vec<Event>, Vec<OwnedMessage>) {
    let topic = format!("emissions-ce-{mode}-{}", fastrand::u64(..));
    support::create_topic(brokers, &topic, 1).await;
    let recording = TestAdapter::new();
    let sent = recording.recorder();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("record", recording))
        .unwrap()
        .adapter(
            KafkaEndpoint::new("kafka", brokers)
                .topic(topic.as_str())
                .key_from_metadata("order_id")
                .cloudevents(cloudevents),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    let mut meta = Metadata::new();
    meta.insert("order_id".into(), json!("o-1"));
    meta.insert("traceparent".into(), json!(TRACEPARENT));
    meta.insert("subject".into(), json!("Bestellung Nr. 5 ✓"));
    meta.insert("vip".into(), json!(true));
    buffer
        .emit_with_metadata(
            "order_created",
            &json!({"id": 1, "note": "ünïcode ✓"}),
            meta,
        )
        .unwrap();
    let mut meta = Metadata::new();
    meta.insert("order_id".into(), json!("o-1"));
    buffer
        .emit_with_metadata("order_paid", &json!({"cents": 1250}), meta)
        .unwrap();
    buffer.emit("heartbeat", &json!(null)).unwrap();
    assert!(
        buffer
            .commit()
            .await
            .unwrap()
            .settled()
            .await
            .is_delivered()
    );
    assert!(
        emissions
            .shutdown(Duration::from_secs(10))
            .await
            .is_balanced()
    );
    let records = support::read(brokers, &topic, 3);
    (sent.events(), records)
}

fn kafka_message(record: &OwnedMessage) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = std::str::from_utf8(h.value.unwrap()).unwrap();
                    (h.key.to_owned(), json!(value))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "binding": "kafka",
        "headers": headers,
        "key": record.key().map(|k| std::str::from_utf8(k).unwrap()),
        "body": independent::b64(record.payload().unwrap_or_default()),
    })
}

/// What the SDK read must be the event, with the metadata as attributes.
fn check(parsed: &serde_json::Value, event: &Event) {
    independent::assert_cloudevent(parsed, event, "/orders-service");
    let attributes = &parsed["attributes"];
    if event.name() == "order_created" {
        assert_eq!(attributes["subject"], "Bestellung Nr. 5 ✓");
        assert_eq!(attributes["traceparent"], TRACEPARENT);
    }
}

async fn round_trip(cloudevents: CloudEvents, mode: &str) -> Option<Vec<OwnedMessage>> {
    let brokers = support::brokers()?;
    let (events, records) = produce(&brokers, cloudevents, mode).await;
    assert_eq!(events.len(), 3);
    let parsed = independent::cloudevents(records.iter().map(kafka_message).collect())?;
    for (parsed, event) in parsed.iter().zip(&events) {
        check(parsed, event);
    }
    // The key is the ordering key, which the binding reads as the `partitionkey` extension.
    assert_eq!(parsed[0]["attributes"]["partitionkey"], "o-1");
    Some(records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_records_are_cloudevents_with_the_payload_as_the_value() {
    let Some(records) = round_trip(CloudEvents::binary("/orders-service"), "binary").await else {
        return;
    };
    let header = |record: &OwnedMessage, name: &str| {
        record
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == name)
            .map(|h| String::from_utf8(h.value.unwrap().to_vec()).unwrap())
    };
    assert_eq!(
        records[0].payload().unwrap(),
        r#"{"id":1,"note":"ünïcode ✓"}"#.as_bytes()
    );
    assert_eq!(
        header(&records[0], "content-type").unwrap(),
        "application/json"
    );
    assert_eq!(header(&records[0], "ce_vip").unwrap(), "true");
    assert_eq!(
        header(&records[0], "ce_metadata").unwrap(),
        r#"{"order_id":"o-1"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_records_are_one_cloudevents_json_document() {
    let Some(records) = round_trip(CloudEvents::structured("/orders-service"), "structured").await
    else {
        return;
    };
    let value: serde_json::Value = serde_json::from_slice(records[0].payload().unwrap()).unwrap();
    assert_eq!(value["specversion"], "1.0");
    assert_eq!(value["vip"], true, "typed extensions keep their JSON type");
}
