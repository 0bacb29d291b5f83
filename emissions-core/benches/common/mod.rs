//! The request shape shared by the per-request timing and allocation benchmarks.

use std::hint::black_box;

use emissions_core::{Adapter, BatchError, Emissions, Event, async_trait};
use serde::Serialize;

/// A small struct payload, like an order line a request would emit.
#[derive(Serialize)]
pub(crate) struct OrderLine {
    order_id: u64,
    sku: &'static str,
    qty: u32,
    price_cents: u64,
    gift: bool,
}

/// The five payloads of one request.
pub(crate) fn lines() -> Vec<OrderLine> {
    (0..5)
        .map(|i| OrderLine {
            order_id: 42,
            sku: "widget-blue-xl",
            qty: i + 1,
            price_cents: 1999,
            gift: i % 2 == 0,
        })
        .collect()
}

/// A two-worker runtime, like the machine the figures come from.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An adapter that accepts every batch.
pub(crate) struct Noop;

#[async_trait]
impl Adapter for Noop {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        black_box(events.len());
        Ok(())
    }
}

/// One request: start, emit each line, commit.
pub(crate) async fn one_request(emissions: &Emissions, lines: &[OrderLine]) {
    let buffer = emissions.start();
    for line in lines {
        buffer.emit("order_line_added", line).unwrap();
    }
    black_box(buffer.commit().await.unwrap());
}

/// Serializing the same payloads alone: the baseline.
pub(crate) fn serialize_only(lines: &[OrderLine]) {
    for line in lines {
        black_box(serde_json::to_vec(black_box(line)).unwrap());
    }
}
