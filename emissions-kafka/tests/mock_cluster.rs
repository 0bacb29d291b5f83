//! Fault injection with librdkafka's mock cluster (plain `cargo test`, no broker needed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::telemetry::names;
use emissions_core::{Emissions, Metadata};
use emissions_kafka::KafkaEndpoint;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;

type Deliveries = Arc<Mutex<Vec<(String, i32)>>>;
type Dead = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// An endpoint on the mock cluster that records (key, partition) per delivery and dead letters.
fn endpoint(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topic: &str,
) -> (KafkaEndpoint, Deliveries, Dead) {
    let deliveries: Deliveries = Arc::default();
    let dead: Dead = Arc::default();
    let (d, x) = (deliveries.clone(), dead.clone());
    let endpoint = KafkaEndpoint::new("kafka", cluster.bootstrap_servers())
        .topic(topic)
        .key_from_metadata("key")
        .on_delivery(move |event, partition, _| {
            let key = event.metadata()["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            d.lock().unwrap().push((key, partition));
        })
        .dead_letter(move |letter| {
            x.lock().unwrap().push((
                letter.events.iter().map(|e| e.name().to_owned()).collect(),
                letter.failure.to_string(),
            ))
        });
    (endpoint, deliveries, dead)
}

async fn start(endpoint: KafkaEndpoint) -> Emissions {
    Emissions::builder()
        .adapter(endpoint)
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn commit(
    emissions: &Emissions,
    events: impl IntoIterator<Item = (String, String, serde_json::Value)>,
) -> emissions_core::Receipt {
    let buffer = emissions.start();
    for (name, key, payload) in events {
        let mut meta = Metadata::new();
        meta.insert("key".into(), json!(key));
        buffer.emit_with_metadata(name, &payload, meta).unwrap();
    }
    buffer.commit().await.unwrap()
}

fn keyed(range: std::ops::Range<usize>, keys: usize) -> Vec<(String, String, serde_json::Value)> {
    range
        .map(|i| {
            (
                "step".to_owned(),
                format!("k{}", i % keys),
                json!({"seq": i}),
            )
        })
        .collect()
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), written from its definition.
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java client's default partition for a keyed record.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn murmur2_matches_the_java_clients_published_values() {
    // From the Kafka project's own tests of Utils.murmur2.
    let cases: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];
    for (key, expected) in cases {
        assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_java_clients_partition_every_time() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("keys", 8, 1).unwrap();
    let (endpoint, deliveries, _) = endpoint(&cluster, "keys");
    let emissions = start(endpoint).await;
    let outcome = commit(&emissions, keyed(0..400, 40)).await.settled().await;
    assert_eq!(outcome.adapter("kafka").unwrap().delivered, 400);
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (key, partition) in deliveries.lock().unwrap().iter() {
        assert_eq!(*partition, java_partition(key.as_bytes(), 8), "key {key}");
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition,
            "key {key} moved"
        );
    }
    assert_eq!(partition_of.len(), 40);
    assert!(
        partition_of.values().collect::<HashSet<_>>().len() > 1,
        "keys spread over partitions"
    );
}

/// Reads every message of `topic` back from the mock cluster; returns the event ids.
fn read_back(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "read-back")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut ids = Vec::new();
    let started = std::time::Instant::now();
    while ids.len() < expected && started.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event-id").and_then(|h| h.value))
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap();
            ids.push(id);
        }
    }
    // Anything beyond `expected` would be a duplicate: look a little longer for one.
    if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
        panic!("unexpected extra message at offset {}", message.offset());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_for_a_while_then_up_deliver_everything_once_without_errors() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("outage", 2, 1).unwrap();
    let (endpoint, _, dead) = endpoint(&cluster, "outage");
    let emissions = start(endpoint).await;
    let errors = Arc::new(Mutex::new(0));
    let e = errors.clone();
    emissions.attach_observer(move |t| {
        if t.name() == names::ADAPTER_ERROR {
            *e.lock().unwrap() += 1;
        }
    });
    commit(&emissions, keyed(0..100, 10)).await.settled().await;
    cluster.broker_down(1).unwrap();
    let during = commit(&emissions, keyed(100..200, 10)).await;
    // Fault injection: keep the broker down for a while before bringing it back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !during.is_settled(),
        "delivered while every broker was down?"
    );
    cluster.broker_up(1).unwrap();
    let outcome = during.settled().await;
    assert_eq!(outcome.adapter("kafka").unwrap().delivered, 100);
    assert_eq!(*errors.lock().unwrap(), 0, "errors reached the pipeline");
    assert!(dead.lock().unwrap().is_empty());
    let ids = read_back(&cluster, "outage", 2, 200);
    assert_eq!(ids.len(), 200);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 200, "duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_request_errors_are_retried_by_librdkafka() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("flaky", 1, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4],
    );
    let (endpoint, _, dead) = endpoint(&cluster, "flaky");
    let emissions = start(endpoint).await;
    let outcome = commit(&emissions, keyed(0..20, 3)).await.settled().await;
    assert_eq!(outcome.adapter("kafka").unwrap().delivered, 20);
    assert!(dead.lock().unwrap().is_empty());
    assert_eq!(read_back(&cluster, "flaky", 1, 20).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_fails_at_once_while_others_flow() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("sized", 1, 1).unwrap();
    let (endpoint, _, dead) = endpoint(&cluster, "sized");
    let endpoint = endpoint.property("message.max.bytes", "10000");
    let emissions = start(endpoint).await;
    let events = vec![
        ("small".to_owned(), "a".to_owned(), json!(1)),
        ("huge".to_owned(), "a".to_owned(), json!("x".repeat(20_000))),
        ("small".to_owned(), "a".to_owned(), json!(2)),
    ];
    let outcome = commit(&emissions, events).await.settled().await;
    let counts = outcome.adapter("kafka").unwrap();
    assert_eq!((counts.delivered, counts.failed), (2, 1));
    let dead = dead.lock().unwrap();
    assert_eq!(dead[0].0, ["huge"]);
    assert!(
        dead[0].1.to_lowercase().contains("too large"),
        "{}",
        dead[0].1
    );
}

/// Events named `bad` go to a topic whose metadata answers `error`; the others to a good topic.
/// Returns the dead letter's reason after checking that only `bad` failed, within seconds.
async fn bad_topic(error: RDKafkaRespErr) -> String {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("good", 1, 1).unwrap();
    cluster.topic_error("bad-topic", error).unwrap();
    let (endpoint, _, dead) = endpoint(&cluster, "good");
    let endpoint = endpoint
        .destination(|e| {
            Some(if e.name() == "bad" {
                "bad-topic".into()
            } else {
                "good".into()
            })
        })
        .property("topic.metadata.propagation.max.ms", "1000");
    let emissions = start(endpoint).await;
    let started = std::time::Instant::now();
    let events = vec![
        ("fine".to_owned(), "a".to_owned(), json!(1)),
        ("bad".to_owned(), "a".to_owned(), json!(2)),
        ("fine".to_owned(), "a".to_owned(), json!(3)),
    ];
    let outcome = commit(&emissions, events).await.settled().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let counts = outcome.adapter("kafka").unwrap();
    assert_eq!((counts.delivered, counts.failed), (2, 1));
    let dead = dead.lock().unwrap();
    assert_eq!(dead[0].0, ["bad"]);
    dead[0].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_topic_fails_within_seconds_while_others_flow() {
    let reason = bad_topic(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).await;
    assert!(reason.to_lowercase().contains("authoriz"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_fails_within_seconds_while_others_flow() {
    let reason = bad_topic(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART).await;
    assert!(reason.to_lowercase().contains("unknown"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bootstrap_fails_every_event_and_loses_none() {
    let dead = Arc::new(Mutex::new(Vec::new()));
    let d = dead.clone();
    let endpoint = KafkaEndpoint::new("kafka", "127.0.0.1:1")
        .topic("nowhere")
        .property("message.timeout.ms", "1500")
        .dead_letter(move |letter| d.lock().unwrap().push(letter.failure.to_string()));
    let emissions = start(endpoint).await;
    let outcome = commit(&emissions, keyed(0..25, 5)).await.settled().await;
    let counts = outcome.adapter("kafka").unwrap();
    assert_eq!((counts.committed, counts.failed), (25, 25));
    let reasons = dead.lock().unwrap().clone();
    assert_eq!(reasons.len(), 25);
    assert!(
        reasons
            .iter()
            .all(|reason| reason.contains("may or may not have been written")),
        "{reasons:?}"
    );
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_queue_is_backpressure_not_loss() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("narrow", 1, 1).unwrap();
    cluster
        .broker_round_trip_time(1, Duration::from_millis(20))
        .unwrap();
    let (endpoint, _, dead) = endpoint(&cluster, "narrow");
    let endpoint = endpoint.property("queue.buffering.max.messages", "5");
    let emissions = start(endpoint).await;
    let outcome = commit(&emissions, keyed(0..300, 7)).await.settled().await;
    let counts = outcome.adapter("kafka").unwrap();
    assert_eq!(
        (counts.delivered, counts.failed, counts.dropped),
        (300, 0, 0)
    );
    assert!(dead.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_broker_down_ends_at_the_deadline_and_reports_everything() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("stuck", 1, 1).unwrap();
    let (endpoint, _, _) = endpoint(&cluster, "stuck");
    let emissions = start(endpoint).await;
    commit(&emissions, keyed(0..5, 1)).await.settled().await;
    cluster.broker_down(1).unwrap();
    commit(&emissions, keyed(5..45, 4)).await;
    let started = std::time::Instant::now();
    let report = emissions.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(report.is_balanced(), "{report:?}");
    let kafka = report.adapter("kafka").unwrap();
    assert_eq!(kafka.counts.committed, 45);
    assert_eq!(kafka.counts.delivered, 5);
    assert_eq!(kafka.counts.dropped + kafka.counts.failed, 40);
    assert!(kafka.deadline_exceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_recreates_the_producer() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("fatal", 1, 1).unwrap();
    let (endpoint, _, dead) = endpoint(&cluster, "fatal");
    // With the gapless guarantee, a sequence error is fatal for an idempotent producer.
    let endpoint = endpoint.property("enable.gapless.guarantee", "true");
    let emissions = start(endpoint).await;
    commit(&emissions, keyed(0..3, 1)).await.settled().await;
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let broken = commit(&emissions, keyed(3..6, 1)).await.settled().await;
    assert!(broken.adapter("kafka").unwrap().failed > 0, "{broken:?}");
    assert!(!dead.lock().unwrap().is_empty());
    // The next batch goes through a fresh producer.
    let after = commit(&emissions, keyed(6..9, 1)).await.settled().await;
    assert_eq!(after.adapter("kafka").unwrap().delivered, 3, "{after:?}");
}
