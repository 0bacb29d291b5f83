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
use emissions_core::{AdapterOptions, Emissions, Event, Metadata, OverflowPolicy};

/// One paired round, nanoseconds per iteration.
struct Round {
    baseline: f64,
    request: f64,
    adapter: f64,
    in_task: f64,
}

fn per_request(c: &mut Criterion) {
    let (rt, lines) = (runtime(), lines());
    let bare = rt.block_on(Emissions::builder().start()).unwrap();
    let one = rt
        .block_on(
            Emissions::builder()
                .adapter(
                    emissions_core::Named::new("noop", Noop)
                        .options(AdapterOptions::default().overflow(OverflowPolicy::Block)),
                )
                .unwrap()
                .start(),
        )
        .unwrap();

    let mut group = c.benchmark_group("per_request");
    group.bench_function("serde_json_to_vec_x5", |b| {
        b.iter(|| serialize_only(&lines))
    });
    // The events alone (serialize, id, clock, shared allocation), without buffer or commit.
    group.bench_function("event_new_x5", |b| {
        b.iter(|| {
            for line in &lines {
                std::hint::black_box(
                    Event::new("order_line_added", line, Metadata::new()).unwrap(),
                );
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

    // The ratio from paired rounds: criterion measures one function after the other, and on a
    // shared machine the speed drifts between them. Here each round times the baseline and
    // the request back to back; the table reports the median of the per-round ratios.
    const ROUNDS: usize = 41;
    const ITERATIONS: u32 = 5_000;
    let per_iteration =
        |started: std::time::Instant| started.elapsed().as_secs_f64() * 1e9 / f64::from(ITERATIONS);
    let requests = |emissions: &Emissions| {
        rt.block_on(async {
            let started = std::time::Instant::now();
            for _ in 0..ITERATIONS {
                one_request(emissions, &lines).await;
            }
            per_iteration(started)
        })
    };
    // The same loop inside a spawned task, where a server's request handler runs: the consumer
    // it wakes is scheduled from a worker rather than from outside the runtime.
    let requests_in_task = |emissions: &Emissions| {
        let emissions = emissions.clone();
        let lines = common::lines();
        rt.block_on(async move {
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                for _ in 0..ITERATIONS {
                    one_request(&emissions, &lines).await;
                }
                started.elapsed()
            })
            .await
            .unwrap()
        })
        .as_secs_f64()
            * 1e9
            / f64::from(ITERATIONS)
    };
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        for _ in 0..ITERATIONS {
            serialize_only(&lines);
        }
        let baseline = per_iteration(started);
        let (request, adapter) = (requests(&bare), requests(&one));
        // Let the consumer finish (untimed) so that its work does not overlap the next round.
        rt.block_on(one.settled());
        let in_task = requests_in_task(&one);
        rt.block_on(one.settled());
        rounds.push(Round {
            baseline,
            request,
            adapter,
            in_task,
        });
    }
    let median = |pick: &dyn Fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let report = format!(
        "{{\"rounds\": {ROUNDS}, \"baseline_ns\": {:.0}, \"no_adapter_ratio\": {:.2}, \"one_adapter_ratio\": {:.2}, \"one_adapter_in_task_ratio\": {:.2}}}",
        median(&|r| r.baseline),
        median(&|r| r.request / r.baseline),
        median(&|r| r.adapter / r.baseline),
        median(&|r| r.in_task / r.baseline),
    );
    println!("paired rounds: {report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&dir).expect("create target/bench-results");
    std::fs::write(dir.join("per_request.json"), report).expect("write per_request.json");
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
