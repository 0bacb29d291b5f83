//! Emit → delivered latency (an upper bound of commit → delivered: the five emits of a
//! request precede its commit by about a microsecond) at half of peak throughput, peak RSS while an adapter never
//! returns (drop-newest policy), and bytes per open empty buffer.
//!
//! Run: `cargo bench -p emissions-core --bench latency_memory` (or `cargo xtask bench`).

use std::alloc::System;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, Event, OverflowPolicy, async_trait,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Records emit → delivery latency of every event.
struct Timing(Arc<Mutex<Vec<Duration>>>, Arc<AtomicU64>);

#[async_trait]
impl Adapter for Timing {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let now = SystemTime::now();
        let mut samples = self.0.lock().unwrap();
        for e in events {
            samples.push(now.duration_since(e.emitted_at()).unwrap_or_default());
        }
        self.1.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Never finishes a batch.
struct Stuck;

#[async_trait]
impl Adapter for Stuck {
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        std::future::pending().await
    }
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn start_timing() -> (Emissions, Arc<Mutex<Vec<Duration>>>, Arc<AtomicU64>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("timing", Timing(samples.clone(), count.clone()))
                .options(AdapterOptions::default().overflow(OverflowPolicy::Block)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    (emissions, samples, count)
}

async fn commit5(emissions: &Emissions, seq: u64) {
    let buffer = emissions.start();
    for i in 0..5 {
        buffer.emit("tick", &(seq + i)).unwrap();
    }
    buffer.commit().await.unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Memory: 1 M events committed to an adapter that never returns (drop newest).
    let stuck_events: u64 = if quick { 10_000 } else { 1_000_000 };
    let before = vm_hwm_kib();
    let dropped = rt.block_on(async {
        let emissions = Emissions::builder()
            .adapter(
                emissions_core::Named::new("stuck", Stuck)
                    .options(AdapterOptions::default().capacity(10_000)),
            )
            .unwrap()
            .start()
            .await
            .unwrap();
        let mut seq = 0;
        while seq < stuck_events {
            commit5(&emissions, seq).await;
            seq += 5;
        }
        emissions.stats().adapter("stuck").unwrap().counts.dropped
    });
    let after = vm_hwm_kib();

    let peak_events: u64 = if quick { 10_000 } else { 500_000 };
    let (peak, p50, p99, sent) = rt.block_on(async {
        // Peak: as fast as possible; the median of three runs.
        let mut peaks = Vec::new();
        for _ in 0..3 {
            let (emissions, _, count) = start_timing().await;
            let started = Instant::now();
            let mut seq = 0;
            while seq < peak_events {
                commit5(&emissions, seq).await;
                seq += 5;
            }
            emissions.settled().await;
            peaks.push(count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
            emissions.shutdown(Duration::from_secs(5)).await;
        }
        peaks.sort_by(f64::total_cmp);
        let peak = peaks[1];

        // Half of peak for two seconds, commits spaced evenly (the producer spins until each
        // commit is due: timer ticks would send millisecond bursts and measure their queueing).
        let (emissions, samples, _) = start_timing().await;
        let commits = ((peak / 2.0) / 5.0 * if quick { 0.05 } else { 2.0 }) as u64;
        let spacing_ns = 5.0 / (peak / 2.0) * 1e9;
        let mut seq = 0;
        let begun = Instant::now();
        for k in 0..commits {
            let due = begun + Duration::from_nanos((k as f64 * spacing_ns) as u64);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            commit5(&emissions, seq).await;
            seq += 5;
        }
        emissions.settled().await;
        let mut samples = samples.lock().unwrap().clone();
        samples.sort();
        emissions.shutdown(Duration::from_secs(5)).await;
        (
            peak,
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            seq,
        )
    });

    // Bytes per open, empty buffer.
    let (buffer_bytes, buffer_allocs) = rt.block_on(async {
        let emissions = Emissions::builder().start().await.unwrap();
        let region = Region::new(GLOBAL);
        let buffers: Vec<_> = (0..10_000).map(|_| emissions.start()).collect();
        let change = region.change();
        black_box(&buffers);
        let n = buffers.len() as f64;
        (
            (change.bytes_allocated - change.bytes_deallocated) as f64 / n,
            change.allocations as f64 / n,
        )
    });

    let table = format!(
        "| measurement | value |\n|---|---:|\n\
         | peak throughput, 1 adapter (block policy, commits of 5; median of 3) | {peak:.0} events/s |\n\
         | emit → delivered at 50 % of peak, evenly spaced ({sent} events): p50 | {:.1} µs |\n\
         | emit → delivered at 50 % of peak: p99 | {:.1} µs |\n\
         | peak RSS growth, {stuck_events} events to a never-returning adapter (capacity 10 000, drop newest) | {:.1} MiB ({dropped} dropped and counted) |\n\
         | bytes per open empty buffer | {buffer_bytes:.0} B in {buffer_allocs:.1} allocations |\n",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        after.saturating_sub(before) as f64 / 1024.0,
    );
    println!("{table}");
    if !quick {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("latency_memory.md"), table);
    }
}
