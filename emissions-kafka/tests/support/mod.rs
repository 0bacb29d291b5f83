//! The real broker the tests talk to (`EMISSIONS_KAFKA_BROKERS`; `cargo xtask ci` starts a
//! local one), fresh topics on it, and reading records back.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The brokers, or `None` (the test is skipped) outside `cargo xtask ci`; under it
/// (`EMISSIONS_REQUIRE_SERVICES`) a missing broker is a failure.
pub fn brokers() -> Option<String> {
    match std::env::var("EMISSIONS_KAFKA_BROKERS") {
        Ok(brokers) => Some(brokers),
        Err(_) if std::env::var("EMISSIONS_REQUIRE_SERVICES").is_ok() => {
            panic!("EMISSIONS_KAFKA_BROKERS is not set: `cargo xtask ci` starts a broker")
        }
        Err(_) => {
            eprintln!("skipped: set EMISSIONS_KAFKA_BROKERS or run `cargo xtask ci`");
            None
        }
    }
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

/// A consumer assigned every partition of `topic` from the beginning (consumer-group joins
/// are slow on some brokers).
pub fn consumer(brokers: &str, topic: &str, partitions: i32) -> BaseConsumer {
    consumer_with(brokers, topic, partitions, &[])
}

/// [`consumer`] with more client properties (TLS, say).
pub fn consumer_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    properties: &[(&str, &str)],
) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "emissions-it")
        .set("enable.auto.commit", "false");
    for (key, value) in properties {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// The first `count` records of `topic` (one partition), within 60 s.
pub fn read(brokers: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer = consumer(brokers, topic, 1);
    let started = std::time::Instant::now();
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "read back only {} records",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            records.push(message.unwrap().detach());
        }
    }
    records.sort_by_key(|m| m.offset());
    records
}
