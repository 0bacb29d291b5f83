//! The Kafka example: events routed to topics by a compile-time router, keyed by order, and the
//! partition/offset of each delivered event printed.
//!
//! ```text
//! cargo xtask broker start          # prints EMISSIONS_KAFKA_BROKERS=…, or use any Kafka
//! EMISSIONS_KAFKA_BROKERS=127.0.0.1:9092 cargo run -p emissions-examples --bin kafka
//! ```

use std::time::Duration;

use emissions_core::{Emissions, Metadata};
use emissions_kafka::KafkaEndpoint;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

emissions_core::topic_router! {
    /// Logical topics of the shop.
    pub struct Topics {
        "orders" => ["order_created", "order_shipped"],
        "inventory" => ["item_reserved"],
    }
}

const PREFIX: &str = "example";

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let brokers = std::env::var("EMISSIONS_KAFKA_BROKERS")
        .map_err(|_| "set EMISSIONS_KAFKA_BROKERS (e.g. from `cargo xtask broker start`)")?;

    // Create the routed topics (3 partitions each); existing ones are fine.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let names: Vec<String> = Topics::topics()
        .iter()
        .map(|t| format!("{PREFIX}.{t}"))
        .collect();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 3, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        if let Err((topic, err)) = result {
            println!("topic {topic}: {err}");
        }
    }

    let kafka = KafkaEndpoint::new("kafka", brokers.as_str())
        .router(Topics, PREFIX) // "order_created" → "example.orders"
        .key_from_metadata("order_id") // one order → one partition, in order
        .on_delivery(|event, partition, offset| {
            println!(
                "  delivered {:<14} key={} → partition {partition}, offset {offset}",
                event.name(),
                event.metadata()["order_id"]
            )
        });
    let emissions = Emissions::builder().adapter(kafka)?.start().await?;

    for order in 1..=3 {
        let buffer = emissions.start();
        let mut meta = Metadata::new();
        meta.insert("order_id".into(), format!("order-{order}").into());
        buffer.emit_with_metadata(
            "order_created",
            &serde_json::json!({"order": order}),
            meta.clone(),
        )?;
        buffer.emit_with_metadata(
            "item_reserved",
            &serde_json::json!({"order": order, "sku": "w-1"}),
            meta.clone(),
        )?;
        buffer.emit_with_metadata("order_shipped", &serde_json::json!({"order": order}), meta)?;
        println!("order {order}: committed 3 events");
        buffer.commit().await?.settled().await;
    }

    let report = emissions.shutdown(Duration::from_secs(10)).await;
    let counts = report
        .adapter("kafka")
        .map(|a| a.counts)
        .unwrap_or_default();
    println!(
        "summary: committed {} · delivered {} · failed {} · dropped {}",
        counts.committed, counts.delivered, counts.failed, counts.dropped
    );
    if counts.delivered != counts.committed {
        return Err("not every event was delivered".into());
    }
    Ok(())
}
