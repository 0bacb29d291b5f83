//! The Kafka adapter against a bare rdkafka `FutureProducer` sending the same records (topic,
//! key, payload, headers, idempotent defaults) to the same broker in the same run.
//!
//! Needs `EMISSIONS_KAFKA_BROKERS` (`cargo xtask bench` starts a local broker).

use std::time::{Duration, Instant};

use emissions_core::{AdapterOptions, CloudEvents, Emissions, Metadata, OverflowPolicy};
use emissions_kafka::{DEFAULT_PROPERTIES, KafkaEndpoint};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn payload(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"order": i % 100, "seq": i, "sku": "w-1"})).unwrap()
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 8, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// The headers of one record: the adapter's four (name, id, time, content type), or with
/// `cloudevents` the binary CloudEvents attributes the adapter writes for the same event
/// (`ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`, `ce_partitionkey`, the
/// metadata as `ce_metadata`, and `content-type`).
fn headers(key: &str, cloudevents: bool) -> OwnedHeaders {
    let id = uuid::Uuid::now_v7().to_string();
    let time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let pairs: Vec<(&str, String)> = if cloudevents {
        vec![
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", id),
            ("ce_source", "/bench".to_owned()),
            ("ce_type", "order_step".to_owned()),
            ("ce_time", time),
            ("ce_partitionkey", key.to_owned()),
            ("ce_metadata", format!(r#"{{"order_id":"{key}"}}"#)),
            ("content-type", "application/json".to_owned()),
        ]
    } else {
        vec![
            ("event-name", "order_step".to_owned()),
            ("event-id", id),
            ("event-time", time),
            ("content-type", "application/json".to_owned()),
        ]
    };
    pairs
        .iter()
        .fold(OwnedHeaders::new_with_capacity(pairs.len()), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            })
        })
}

async fn bare(brokers: &str, topic: &str, events: usize, cloudevents: bool) -> f64 {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in DEFAULT_PROPERTIES {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().unwrap();
    let started = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(500) {
        let mut pending = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let key = format!("order-{}", i % 100);
            let value = payload(i);
            let headers = headers(&key, cloudevents);
            loop {
                let record = FutureRecord::to(topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers.clone());
                match producer.send_result(record) {
                    Ok(delivery) => break pending.push(delivery),
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        for delivery in pending {
            delivery.await.unwrap().unwrap();
        }
    }
    events as f64 / started.elapsed().as_secs_f64()
}

async fn adapter(
    brokers: &str,
    topic: &str,
    events: usize,
    cloudevents: Option<CloudEvents>,
) -> f64 {
    let mut endpoint = KafkaEndpoint::new("kafka", brokers)
        .topic(topic)
        .key_from_metadata("order_id")
        // Lossless, as the bare producer: wait for room instead of dropping.
        .queue(
            AdapterOptions::default()
                .max_demand(500)
                .overflow(OverflowPolicy::Block),
        );
    if let Some(ce) = cloudevents {
        endpoint = endpoint.cloudevents(ce);
    }
    let emissions = Emissions::builder()
        .adapter(endpoint)
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < events {
        let buffer = emissions.start();
        for _ in 0..5 {
            let mut meta = Metadata::new();
            meta.insert("order_id".into(), format!("order-{}", i % 100).into());
            buffer
                .emit_with_metadata(
                    "order_step",
                    &serde_json::json!({"order": i % 100, "seq": i, "sku": "w-1"}),
                    meta,
                )
                .unwrap();
            i += 1;
        }
        buffer.commit().await.unwrap();
    }
    emissions.settled().await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let report = emissions.shutdown(Duration::from_secs(30)).await;
    let counts = report.adapter("kafka").unwrap().counts;
    assert_eq!(counts.delivered, events as u64, "{counts:?}");
    rate
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let Ok(brokers) = std::env::var("EMISSIONS_KAFKA_BROKERS") else {
        if quick {
            return;
        }
        panic!("EMISSIONS_KAFKA_BROKERS is not set: `cargo xtask bench` starts a broker");
    };
    let events = if quick { 1_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let [baseline, ours, baseline_ce, cloudevents] = rt.block_on(async {
        let run = std::process::id();
        let topics = ["bare", "adapter", "bare-ce", "ce"].map(|t| format!("bench-{t}-{run}"));
        for topic in &topics {
            create_topic(&brokers, topic).await;
        }
        // Five rounds, the four runs back to back in each; the median of each.
        let mut rates: [Vec<f64>; 4] = Default::default();
        for _ in 0..5 {
            rates[0].push(bare(&brokers, &topics[0], events, false).await);
            rates[1].push(adapter(&brokers, &topics[1], events, None).await);
            rates[2].push(bare(&brokers, &topics[2], events, true).await);
            let binary = CloudEvents::binary("/bench");
            rates[3].push(adapter(&brokers, &topics[3], events, Some(binary)).await);
        }
        rates.map(median)
    });
    let table = format!(
        "{events} events, 100 keys, 8 partitions, idempotent producer; median of five rounds. \
         Each adapter row is compared with a bare producer sending the same records (the same \
         headers: the adapter's four, or the binary CloudEvents attributes).\n\n\
         | implementation | events/s | ratio to the bare producer (target ≥ 0.95) |\n|---|---:|---:|\n\
         | bare `FutureProducer` | {baseline:.0} | 1.00 |\n\
         | Kafka adapter | {ours:.0} | {:.2} |\n\
         | bare `FutureProducer`, CloudEvents headers | {baseline_ce:.0} | 1.00 |\n\
         | Kafka adapter, CloudEvents binary (`ce_*` headers) | {cloudevents:.0} | {:.2} |\n",
        ours / baseline,
        cloudevents / baseline_ce
    );
    println!("{table}");
    if !quick {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("kafka.md"), table);
    }
}
