//! Against a real Kafka-protocol broker (`EMISSIONS_KAFKA_BROKERS`; `cargo xtask ci` starts a
//! local one). Under plain `cargo test` without it the test says so and passes; under
//! `cargo xtask ci` a missing broker is a failure.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use emissions_core::{Emissions, Metadata};
use emissions_kafka::KafkaEndpoint;
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::json;

const EVENTS: usize = 10_000;
const KEYS: usize = 100;
const PARTITIONS: i32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_a_hundred_keys_arrive_once_each_in_key_order() {
    let Some(brokers) = support::brokers() else {
        return;
    };
    let topic = format!("emissions-it-{}", std::process::id());
    support::create_topic(&brokers, &topic, PARTITIONS).await;

    let emissions = Emissions::builder()
        .adapter(
            KafkaEndpoint::new("kafka", brokers.as_str())
                .topic(topic.as_str())
                .key_from_metadata("order_id"),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut sent: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    let mut receipts = Vec::new();
    for chunk in 0..EVENTS / 50 {
        let buffer = emissions.start();
        for i in chunk * 50..(chunk + 1) * 50 {
            let key = format!("order-{}", i % KEYS);
            let mut meta = Metadata::new();
            meta.insert("order_id".into(), json!(key));
            buffer
                .emit_with_metadata("order_step", &json!({"seq": i, "key": key}), meta)
                .unwrap();
        }
        for event in buffer.events() {
            let key = event.metadata()["order_id"].as_str().unwrap().to_owned();
            sent.insert(event.id().to_string(), (key, event.payload().to_vec()));
        }
        receipts.push(buffer.commit().await.unwrap());
    }
    for receipt in receipts {
        assert!(receipt.settled().await.is_delivered());
    }
    let report = emissions.shutdown(Duration::from_secs(30)).await;
    assert_eq!(
        report.adapter("kafka").unwrap().counts.delivered,
        EVENTS as u64
    );

    let consumer = support::consumer(&brokers, &topic, PARTITIONS);
    let mut seen_ids = HashSet::new();
    let mut last_seq_per_key: HashMap<String, (i32, u64)> = HashMap::new();
    let started = std::time::Instant::now();
    while seen_ids.len() < EVENTS {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "read back only {} events",
            seen_ids.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        let headers = message.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_else(|| panic!("header {name} missing"))
        };
        let id = header("event-id");
        assert_eq!(header("event-name"), "order_step");
        assert_eq!(header("content-type"), "application/json");
        let (key, payload) = sent.get(&id).expect("an event we sent");
        assert_eq!(message.key().unwrap(), key.as_bytes(), "key as configured");
        assert_eq!(
            message.payload().unwrap(),
            payload.as_slice(),
            "payload bytes identical"
        );
        assert!(seen_ids.insert(id), "an event arrived twice");
        let seq = serde_json::from_slice::<serde_json::Value>(payload).unwrap()["seq"]
            .as_u64()
            .unwrap();
        if let Some((partition, previous)) =
            last_seq_per_key.insert(key.clone(), (message.partition(), seq))
        {
            assert_eq!(partition, message.partition(), "key {key} moved partitions");
            assert!(
                seq > previous,
                "key {key} out of order: {seq} after {previous}"
            );
        }
    }
    assert_eq!(seen_ids.len(), EVENTS);
    assert_eq!(last_seq_per_key.len(), KEYS);
}
