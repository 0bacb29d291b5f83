//! End-to-end fan-out: commits of 5 events through emissions to 1, 3 and 8 no-op adapters,
//! against a hand-wired flume fan-out with the same batching (the practical limit),
//! `tokio::sync::broadcast` (counting what it loses to lag) and `async-broadcast`.
//!
//! Run: `cargo bench -p emissions-core --bench fanout` (or `cargo xtask bench`).
//! `BENCH_EVENTS` sets the events per run (default 1 000 000). Every figure is the median of
//! five runs. `BENCH_ONLY_EMISSIONS=<adapters>` (or `BENCH_ONLY_FLUME`) runs one side alone
//! (for `perf`, or `valgrind --tool=callgrind` to count instructions).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, Event, Failure, Metadata, OverflowPolicy,
    RetryPolicy, async_trait,
};
use serde::Serialize;

const COMMIT: usize = 5;
const CAPACITY: usize = 10_000;
const MAX_DEMAND: usize = 50;
/// Runs per measurement; tables show the median.
const ROUNDS: usize = 5;

#[derive(Serialize)]
struct Tick {
    seq: u64,
    sku: &'static str,
    pad: &'static str,
}

struct Counting(Arc<AtomicU64>);

#[async_trait]
impl Adapter for Counting {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

struct Run {
    secs: f64,
    lost: u64,
}

async fn emissions(adapters: usize, events: u64, pad: &'static str) -> Run {
    let counters: Vec<Arc<AtomicU64>> = (0..adapters).map(|_| Arc::default()).collect();
    let mut builder = Emissions::builder();
    for (i, counter) in counters.iter().enumerate() {
        builder = builder
            .adapter(
                emissions_core::Named::new(format!("a{i}"), Counting(counter.clone())).options(
                    AdapterOptions::default()
                        .capacity(CAPACITY)
                        .max_demand(MAX_DEMAND)
                        .overflow(OverflowPolicy::Block),
                ),
            )
            .unwrap();
    }
    let emissions = builder.start().await.unwrap();
    let started = Instant::now();
    let mut seq = 0;
    while seq < events {
        let buffer = emissions.start();
        for _ in 0..COMMIT {
            buffer
                .emit(
                    "tick",
                    &Tick {
                        seq,
                        sku: "w-1",
                        pad,
                    },
                )
                .unwrap();
            seq += 1;
        }
        buffer.commit().await.unwrap();
    }
    emissions.settled().await;
    let secs = started.elapsed().as_secs_f64();
    let report = emissions.shutdown(Duration::from_secs(10)).await;
    let delivered: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert!(report.is_balanced());
    Run {
        secs,
        lost: events * adapters as u64 - delivered,
    }
}

/// Counts what it delivers; fails the event with `seq` 0 every time when poisoned.
struct Poisoned {
    delivered: Arc<AtomicU64>,
    poisoned: bool,
}

#[async_trait]
impl Adapter for Poisoned {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let poison = if self.poisoned {
            events
                .iter()
                .position(|e| e.payload().starts_with(br#"{"seq":0,"#))
        } else {
            None
        };
        let delivered = events.len() - usize::from(poison.is_some());
        self.delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        match poison {
            None => Ok(()),
            Some(index) => Err(BatchError::partial([(index, Failure::retryable("poison"))])),
        }
    }
}

/// One adapter; with `poisoned`, event 0 fails forever on a 1 s schedule. Measures how fast
/// every other event is delivered.
async fn poison(events: u64, poisoned: bool) -> Run {
    let delivered = Arc::new(AtomicU64::new(0));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new(
                "webhook",
                Poisoned {
                    delivered: delivered.clone(),
                    poisoned,
                },
            )
            .options(
                AdapterOptions::default()
                    .capacity(CAPACITY)
                    .max_demand(MAX_DEMAND)
                    .overflow(OverflowPolicy::Block)
                    .retry(RetryPolicy::schedule([Duration::from_secs(1); 1000])),
            ),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let target = if poisoned { events - 1 } else { events };
    let started = Instant::now();
    let mut seq = 0;
    while seq < events {
        let buffer = emissions.start();
        for _ in 0..COMMIT {
            let tick = Tick {
                seq,
                sku: "w-1",
                pad: "",
            };
            buffer.emit("tick", &tick).unwrap();
            seq += 1;
        }
        buffer.commit().await.unwrap();
    }
    while delivered.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let report = emissions.shutdown(Duration::ZERO).await;
    assert!(report.is_balanced());
    let counts = report.adapters[0].counts;
    Run {
        secs,
        lost: target - counts.delivered,
    }
}

fn event(seq: u64, pad: &'static str) -> Event {
    Event::new(
        "tick",
        &Tick {
            seq,
            sku: "w-1",
            pad,
        },
        Metadata::new(),
    )
    .unwrap()
}

async fn flume(adapters: usize, events: u64, pad: &'static str) -> Run {
    let mut senders = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..adapters {
        let (tx, rx) = flume::bounded::<Event>(CAPACITY);
        senders.push(tx);
        consumers.push(tokio::spawn(async move {
            let mut seen = 0u64;
            let mut batch = Vec::with_capacity(MAX_DEMAND);
            while let Ok(first) = rx.recv_async().await {
                batch.push(first);
                while batch.len() < MAX_DEMAND {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                seen += batch.len() as u64;
                black_box(&batch);
                batch.clear();
            }
            seen
        }));
    }
    let started = Instant::now();
    let mut seq = 0;
    while seq < events {
        let commit: Vec<Event> = (0..COMMIT as u64).map(|i| event(seq + i, pad)).collect();
        seq += COMMIT as u64;
        for tx in &senders {
            for e in &commit {
                // As the pipeline does: a plain push while there is room, wait when full.
                if let Err(flume::TrySendError::Full(e)) = tx.try_send(e.clone()) {
                    tx.send_async(e).await.unwrap();
                }
            }
        }
    }
    drop(senders);
    let mut delivered = 0;
    for c in consumers {
        delivered += c.await.unwrap();
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        lost: events * adapters as u64 - delivered,
    }
}

async fn tokio_broadcast(adapters: usize, events: u64, pad: &'static str) -> Run {
    let (tx, _) = tokio::sync::broadcast::channel::<Event>(CAPACITY);
    let mut consumers = Vec::new();
    for _ in 0..adapters {
        let mut rx = tx.subscribe();
        consumers.push(tokio::spawn(async move {
            let mut seen = 0u64;
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        black_box(&e);
                        seen += 1;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            seen
        }));
    }
    let started = Instant::now();
    let mut seq = 0;
    while seq < events {
        for i in 0..COMMIT as u64 {
            let _ = tx.send(event(seq + i, pad));
        }
        seq += COMMIT as u64;
        // Let receivers run now and then, as a request handler would.
        if seq % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(tx);
    let mut delivered = 0;
    for c in consumers {
        delivered += c.await.unwrap();
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        lost: events * adapters as u64 - delivered,
    }
}

async fn async_broadcast(adapters: usize, events: u64, pad: &'static str) -> Run {
    let (tx, rx) = async_broadcast::broadcast::<Event>(CAPACITY);
    let mut consumers = Vec::new();
    for _ in 0..adapters {
        let mut rx = rx.clone();
        consumers.push(tokio::spawn(async move {
            let mut seen = 0u64;
            while let Ok(e) = rx.recv().await {
                black_box(&e);
                seen += 1;
            }
            seen
        }));
    }
    drop(rx);
    let started = Instant::now();
    let mut seq = 0;
    while seq < events {
        for i in 0..COMMIT as u64 {
            tx.broadcast(event(seq + i, pad)).await.unwrap();
        }
        seq += COMMIT as u64;
    }
    drop(tx);
    let mut delivered = 0;
    for c in consumers {
        delivered += c.await.unwrap();
    }
    Run {
        secs: started.elapsed().as_secs_f64(),
        lost: events * adapters as u64 - delivered,
    }
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    // `cargo test --benches` runs bench targets with `--test`-like args; do a tiny run then.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 1_000_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Profiling aids: `BENCH_ONLY_EMISSIONS=<adapters>` / `BENCH_ONLY_FLUME=<adapters>` run
    // one side alone (for `perf`, or `valgrind --tool=callgrind` to count instructions).
    if let Some(adapters) = std::env::var("BENCH_ONLY_FLUME")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let run = rt.block_on(flume(adapters, events, ""));
        println!("{:.0} events/s per adapter", events as f64 / run.secs);
        return;
    }
    // Profiling aid: `BENCH_ONLY_EMISSIONS=<adapters>` runs only the emissions side.
    if let Some(adapters) = std::env::var("BENCH_ONLY_EMISSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let run = rt.block_on(emissions(adapters, events, ""));
        println!("{:.0} events/s per adapter", events as f64 / run.secs);
        return;
    }
    let mut table = String::from(
        "| adapters | implementation | events/s per adapter | ratio to hand-wired flume | events lost |\n|---:|---|---:|---:|---:|\n",
    );
    for adapters in [1usize, 3, 8] {
        // Three rounds, the implementations interleaved within each; each row reports its
        // median round (by delivered events per second per adapter; lag losses do not count).
        let rate_of =
            |run: &Run| (events * adapters as u64 - run.lost) as f64 / adapters as f64 / run.secs;
        let mut rounds: [Vec<Run>; 4] = Default::default();
        for _ in 0..ROUNDS {
            rounds[0].push(rt.block_on(flume(adapters, events, "")));
            rounds[1].push(rt.block_on(emissions(adapters, events, "")));
            rounds[2].push(rt.block_on(tokio_broadcast(adapters, events, "")));
            rounds[3].push(rt.block_on(async_broadcast(adapters, events, "")));
        }
        let medians: Vec<Run> = rounds
            .into_iter()
            .map(|mut runs| {
                runs.sort_by(|a, b| rate_of(a).total_cmp(&rate_of(b)));
                runs.swap_remove(runs.len() / 2)
            })
            .collect();
        let names = [
            "hand-wired flume fan-out",
            "**emissions** (block policy)",
            "tokio::sync::broadcast",
            "async-broadcast",
        ];
        let limit_rate = rate_of(&medians[0]);
        for (name, run) in names.iter().zip(&medians) {
            let rate = rate_of(run);
            table.push_str(&format!(
                "| {adapters} | {name} | {:.0} | {:.2} | {} |\n",
                rate,
                rate / limit_rate,
                run.lost
            ));
        }
    }
    // Payload size scaling, one adapter: emissions against the hand-wired limit.
    let mut sizes = String::from(
        "| payload | hand-wired flume events/s | emissions events/s | ratio |\n|---:|---:|---:|---:|\n",
    );
    for size in [100usize, 1_000, 10_000] {
        // Tick without padding serializes to ~40 bytes; pad up to the target size.
        let padding = "p".repeat(size.saturating_sub(40));
        // Spawned tasks need 'static data: leak one string per size (three in all).
        let padding: &'static str = Box::leak(padding.into_boxed_str());
        let n = events / 4;
        let (mut limit, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            limit.push(n as f64 / rt.block_on(flume(1, n, padding)).secs);
            ours.push(n as f64 / rt.block_on(emissions(1, n, padding)).secs);
        }
        let (a, b) = (median(limit), median(ours));
        sizes.push_str(&format!("| {size} B | {a:.0} | {b:.0} | {:.2} |\n", b / a));
    }
    // A poison event: one event failing forever on a 1 s schedule, against the same run
    // without it.
    let (mut clean, mut poisoned) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let run = rt.block_on(poison(events, false));
        assert_eq!(run.lost, 0);
        clean.push(events as f64 / run.secs);
        let run = rt.block_on(poison(events, true));
        assert_eq!(run.lost, 0);
        poisoned.push((events - 1) as f64 / run.secs);
    }
    let (a, b) = (median(clean), median(poisoned));
    let poison_table = format!(
        "| run (1 adapter, block policy) | events/s delivered | ratio |\n|---|---:|---:|\n\
         | no failing event | {a:.0} | 1.00 |\n\
         | event 0 fails forever (1 s schedule); the others | {b:.0} | {:.2} |\n",
        b / a
    );
    let table = format!(
        "{table}\n**Payload size (1 adapter):**\n\n{sizes}\n**A poison event (target: the same rate):**\n\n{poison_table}"
    );
    println!("{table}");
    if !quick {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join("fanout.md"),
            format!("{events} events per run.\n\n{table}"),
        );
    }
}
