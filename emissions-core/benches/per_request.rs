//! Per-request cost: `start` + 5 × `emit` (a small struct) + `commit`, against serializing the
//! same five payloads with `serde_json::to_vec` alone. Both run on the system allocator;
//! allocations are counted separately (`benches/allocations.rs`) so that the counting
//! allocator's own cost does not weigh on the side that allocates more.
//!
//! Run: `cargo bench -p emissions-core --bench per_request` (or `cargo xtask bench`).

mod common;

use std::time::Duration;

use common::{Noop, lines, one_request, runtime, serialize_only};
use criterion::{Criterion, criterion_group, criterion_main};
use emissions_core::{AdapterOptions, Emissions, OverflowPolicy};

fn per_request(c: &mut Criterion) {
    let (rt, lines) = (runtime(), lines());
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
        b.iter(|| serialize_only(&lines))
    });
    group.bench_function("start_emit5_commit_no_adapter", |b| {
        b.to_async(&rt).iter(|| one_request(&bare, &lines))
    });
    group.bench_function("start_emit5_commit_one_adapter", |b| {
        b.to_async(&rt).iter(|| one_request(&one, &lines))
    });
    group.finish();
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
