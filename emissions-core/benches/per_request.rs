//! Per-request cost: `start` + 5 × `emit` (a small struct) + `commit`, against serializing the
//! same five payloads with `serde_json::to_vec` alone; and allocations per emitted event.
//!
//! Run: `cargo bench -p emissions-core --bench per_request` (or `cargo xtask bench`).

use std::alloc::System;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, Event, OverflowPolicy, async_trait,
};
use serde::Serialize;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Serialize)]
struct OrderLine {
    order_id: u64,
    sku: &'static str,
    qty: u32,
    price_cents: u64,
    gift: bool,
}

fn lines() -> Vec<OrderLine> {
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

struct Noop;

#[async_trait]
impl Adapter for Noop {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        black_box(events.len());
        Ok(())
    }
}

async fn one_request(emissions: &Emissions, lines: &[OrderLine]) {
    let buffer = emissions.start();
    for line in lines {
        buffer.emit("order_line_added", line).unwrap();
    }
    black_box(buffer.commit().await.unwrap());
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lines = lines();
    let bare = rt.block_on(Emissions::builder().start()).unwrap();
    let one = rt
        .block_on(
            Emissions::builder()
                .adapter_with(
                    "noop",
                    Noop,
                    AdapterOptions::default().overflow(OverflowPolicy::Block),
                )
                .start(),
        )
        .unwrap();

    let mut group = c.benchmark_group("per_request");
    group.bench_function("serde_json_to_vec_x5", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(serde_json::to_vec(black_box(line)).unwrap());
            }
        })
    });
    group.bench_function("start_emit5_commit_no_adapter", |b| {
        b.to_async(&rt).iter(|| one_request(&bare, &lines))
    });
    group.bench_function("start_emit5_commit_one_adapter", |b| {
        b.to_async(&rt).iter(|| one_request(&one, &lines))
    });
    group.finish();

    // Allocations per emitted event (buffer + event + commit, no adapter), and for comparison
    // the serialization alone.
    const REQUESTS: usize = 10_000;
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for _ in 0..REQUESTS {
            one_request(&bare, &lines).await;
        }
    });
    let emitted = region.change();
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        for line in &lines {
            black_box(serde_json::to_vec(line).unwrap());
        }
    }
    let serialized = region.change();
    let events = (REQUESTS * lines.len()) as f64;
    let report = format!(
        "{{\"allocations_per_event\": {:.2}, \"bytes_per_event\": {:.1}, \"serialize_allocations_per_event\": {:.2}}}",
        emitted.allocations as f64 / events,
        emitted.bytes_allocated as f64 / events,
        serialized.allocations as f64 / events,
    );
    println!("allocations: {report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("allocations.json"), report);
}

// The macro generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = per_request
    }
}
criterion_main!(group::benches);
