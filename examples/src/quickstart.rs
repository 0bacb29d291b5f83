//! Quickstart: simulated requests emit events into per-request buffers; committed events are
//! delivered to two adapters, failed requests emit nothing, and shutdown prints the accounting.
//!
//! Run: `cargo run -p emissions-examples --bin quickstart`

use std::time::Duration;

use emissions_core::{Adapter, BatchError, Emissions, Event, Metadata, Named, async_trait};
use serde::Serialize;

/// Prints every event it is given.
struct Console;

#[async_trait]
impl Adapter for Console {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        for event in events {
            println!(
                "  [console] {:<20} {} {}",
                event.name(),
                String::from_utf8_lossy(event.payload()),
                serde_json::Value::Object(event.metadata().clone())
            );
        }
        Ok(())
    }
}

/// Only wants order events, and counts them.
#[derive(Default)]
struct OrderAudit {
    seen: usize,
}

#[async_trait]
impl Adapter for OrderAudit {
    fn interested(&self, event: &Event) -> bool {
        event.name().starts_with("order_")
    }

    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        self.seen += events.len();
        println!("  [audit]   {} order event(s) so far", self.seen);
        Ok(())
    }
}

#[derive(Serialize)]
struct Order {
    id: u32,
    item: &'static str,
    qty: u32,
}

#[derive(Debug)]
enum RequestError {
    OutOfStock(&'static str),
    Emissions(emissions_core::Error),
}

impl From<emissions_core::Error> for RequestError {
    fn from(e: emissions_core::Error) -> Self {
        RequestError::Emissions(e)
    }
}

/// A request handler deep in an application: it emits with no handle in sight.
async fn place_order(id: u32, item: &'static str, qty: u32) -> Result<u32, RequestError> {
    let mut meta = Metadata::new();
    meta.insert("source".into(), "api".into());
    emissions_core::emit_with_metadata("order_created", &Order { id, item, qty }, meta)?;
    if item == "unobtainium" {
        return Err(RequestError::OutOfStock(item));
    }
    emissions_core::emit(
        "inventory_reserved",
        &serde_json::json!({"item": item, "qty": qty}),
    )?;
    Ok(id)
}

#[tokio::main]
async fn main() -> Result<(), emissions_core::Error> {
    let emissions = Emissions::builder()
        .adapter(Named::new("console", Console))?
        .adapter(Named::new("audit", OrderAudit::default()))?
        .start()
        .await?;

    let requests = [
        (1, "widget", 5),
        (2, "gadget", 1),
        (3, "unobtainium", 9),
        (4, "widget", 2),
    ];
    emissions_core::with_default(emissions.clone(), async {
        for (id, item, qty) in requests {
            println!("request {id}: {qty} × {item}");
            let result = emissions_core::transaction(place_order(id, item, qty)).await;
            // Wait for delivery so the output reads in order.
            emissions.settled().await;
            match result {
                Ok(_) => println!("  committed and delivered"),
                Err(RequestError::OutOfStock(item)) => {
                    println!("  failed ({item} is out of stock): its events were discarded")
                }
                Err(RequestError::Emissions(e)) => println!("  emissions error: {e}"),
            }
        }
    })
    .await;

    let receipt = emissions
        .emit_now("daily_summary_ready", &serde_json::json!({"orders": 3}))
        .await?;
    let outcome = receipt.settled().await;
    println!("emit_now delivered everywhere: {}", outcome.is_delivered());

    let report = emissions.shutdown(Duration::from_secs(5)).await;
    println!("\nshutdown report (committed = delivered + filtered + failed + dropped):");
    for adapter in &report.adapters {
        let c = adapter.counts;
        println!(
            "  {:<8} committed {:>2} = delivered {:>2} + filtered {:>2} + failed {} + dropped {}",
            adapter.name, c.committed, c.delivered, c.filtered, c.failed, c.dropped
        );
    }
    assert!(
        report.is_balanced(),
        "every committed event is accounted for"
    );
    Ok(())
}
