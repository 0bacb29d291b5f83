//! What an on-call engineer watches, scraped the way Prometheus scrapes it: emissions' metrics
//! through the OpenTelemetry Prometheus exporter, served at `/metrics` by axum.
//!
//! One adapter is slow (a CRM that takes 200 ms per call), one is quick. The program commits
//! twenty orders, scrapes its own `/metrics` while the slow adapter is behind, prints the
//! emissions lines, and fails unless the backlog, lag, duration and latency series are there
//! and the slow adapter shows a backlog. `cargo run -p emissions-examples --bin metrics`.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use emissions_core::{Adapter, AdapterOptions, BatchError, Emissions, Event, Named, async_trait};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

/// A destination that takes 200 ms per call.
struct SlowCrm;

#[async_trait]
impl Adapter for SlowCrm {
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

/// A destination that keeps up.
struct Audit;

#[async_trait]
impl Adapter for Audit {
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The exporter registers into a Prometheus registry, which /metrics encodes.
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()?;
    let provider = SdkMeterProvider::builder().with_reader(exporter).build();

    let emissions = Emissions::builder()
        .adapter(Named::new("slow_crm", SlowCrm).options(AdapterOptions::default().max_demand(2)))?
        .adapter(Named::new("audit", Audit))?
        .start()
        .await?;
    emissions_core::otel::record_metrics(&emissions, &provider.meter("emissions"));

    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut text = Vec::new();
                TextEncoder::new()
                    .encode(&registry.gather(), &mut text)
                    .expect("the text format encodes");
                String::from_utf8(text).expect("the text format is UTF-8")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    for order in 0..20 {
        let buffer = emissions.start();
        buffer.emit("order_created", &serde_json::json!({"order": order}))?;
        buffer.commit().await?;
    }
    // The quick adapter is done; the slow one has worked through a few calls of two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scraped = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    println!("GET /metrics (the emissions lines):");
    for line in scraped.lines().filter(|l| l.starts_with("emissions_")) {
        println!("  {line}");
    }

    // What the README tells an on-call engineer to watch must be there.
    let series = |prefix: &str| scraped.lines().filter(|l| l.starts_with(prefix)).count();
    for prefix in [
        "emissions_adapter_queued",
        "emissions_adapter_in_flight",
        "emissions_adapter_waiting",
        "emissions_adapter_oldest_pending_age",
        "emissions_adapter_duration",
        "emissions_adapter_latency",
        "emissions_buffer_committed",
    ] {
        if series(prefix) == 0 {
            return Err(format!("no {prefix} series in the scrape").into());
        }
    }
    let behind = scraped.lines().any(|l| {
        l.starts_with("emissions_adapter_queued")
            && l.contains("adapter=\"slow_crm\"")
            && !l.ends_with(" 0")
    });
    if !behind {
        return Err("the slow adapter's queue shows no backlog".into());
    }
    let report = emissions.shutdown(Duration::from_secs(10)).await;
    println!("shutdown report balanced: {}", report.is_balanced());
    Ok(())
}
