//! Allocations per emitted event: 10 000 requests of start + 5 × emit + commit (no adapter)
//! under a counting global allocator, against serializing the same payloads alone.
//! Writes `target/bench-results/allocations.json`.
//!
//! Run: `cargo bench -p emissions-core --bench allocations` (or `cargo xtask bench`).

#[allow(dead_code)] // this bench uses part of the shared module
mod common;

use std::alloc::System;

use common::{lines, one_request, runtime, serialize_only};
use emissions_core::Emissions;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    const REQUESTS: usize = 10_000;
    let (rt, lines) = (runtime(), lines());
    let emissions = rt.block_on(Emissions::builder().start()).unwrap();
    // Warm up (thread-locals, runtime structures) before counting.
    rt.block_on(one_request(&emissions, &lines));

    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for _ in 0..REQUESTS {
            one_request(&emissions, &lines).await;
        }
    });
    let emitted = region.change();
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        serialize_only(&lines);
    }
    let serialized = region.change();
    let events = (REQUESTS * lines.len()) as f64;
    let report = format!(
        "{{\"allocations_per_event\": {:.2}, \"reallocations_per_event\": {:.2}, \"bytes_per_event\": {:.1}, \"serialize_allocations_per_event\": {:.2}}}",
        emitted.allocations as f64 / events,
        emitted.reallocations as f64 / events,
        emitted.bytes_allocated as f64 / events,
        serialized.allocations as f64 / events,
    );
    println!("allocations: {report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&dir).expect("create target/bench-results");
    std::fs::write(dir.join("allocations.json"), report).expect("write allocations.json");
}
