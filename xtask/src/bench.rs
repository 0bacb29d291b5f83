//! `cargo xtask bench`: every benchmark, then the tables between the markers of
//! BENCHMARKS.md.

use std::path::Path;

use crate::services::{BROKERS_VAR, brokers_for_run};
use crate::{cargo, postgres, step, workspace_root};

/// The point estimate (ns) criterion stored for one benchmark.
fn criterion_mean_ns(root: &Path, group: &str, id: &str) -> Result<f64, String> {
    let path = root
        .join("target/criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let estimates: Estimates =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(estimates.mean.point_estimate)
}

/// What `cargo xtask bench` reads of criterion's `estimates.json`.
#[derive(serde::Deserialize)]
struct Estimates {
    mean: Estimate,
}

#[derive(serde::Deserialize)]
struct Estimate {
    point_estimate: f64,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                })
        })
        .map_or_else(
            || "?".to_owned(),
            |kb| format!("{:.0} GiB", kb as f64 / 1_048_576.0),
        );
    // "2026-11-27T17:00:00Z" → "2026-11-27 17:00 UTC"
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let date = format!("{} {} UTC", &now[..10], &now[11..16]);
    format!("{cores} cores, {memory} memory, {date}")
}

pub(crate) fn bench() -> Result<(), String> {
    let root = workspace_root();
    let mut per_request = cargo();
    per_request.args(["bench", "-p", "emissions-core", "--bench", "per_request"]);
    step("bench: per-request cost (criterion)", per_request)?;
    let mut allocations = cargo();
    allocations.args(["bench", "-p", "emissions-core", "--bench", "allocations"]);
    step("bench: allocations per event", allocations)?;
    let mut fanout = cargo();
    fanout.args(["bench", "-p", "emissions-core", "--bench", "fanout"]);
    step("bench: pipeline fan-out", fanout)?;
    let mut latency = cargo();
    latency.args(["bench", "-p", "emissions-core", "--bench", "latency_memory"]);
    step("bench: latency and memory", latency)?;
    let mut webhook = cargo();
    webhook.args(["bench", "-p", "emissions-webhook", "--bench", "webhook"]);
    step("bench: webhook adapter vs bare reqwest", webhook)?;
    {
        // The Kafka comparison and the cross-instance feed latency need a broker: a local one
        // unless one is given.
        let (_broker, brokers) = brokers_for_run(&root)?;
        let mut websocket = cargo();
        websocket
            .args([
                "bench",
                "-p",
                "emissions-websocket",
                "--features",
                "kafka",
                "--bench",
                "websocket",
            ])
            .env(BROKERS_VAR, &brokers);
        step(
            "bench: live feed vs bare broadcast, 1 000 clients; cross-instance latency",
            websocket,
        )?;
        let mut kafka = cargo();
        kafka
            .args(["bench", "-p", "emissions-kafka", "--bench", "kafka"])
            .env(BROKERS_VAR, &brokers);
        step("bench: Kafka adapter vs bare FutureProducer", kafka)?;
    }
    {
        // The outbox against bare sqlx: SQLite, and a throwaway PostgreSQL unless one is given.
        let (_database, database) = postgres::for_run(&root)?;
        let mut outbox = cargo();
        outbox
            .args([
                "bench",
                "-p",
                "emissions-outbox",
                "--features",
                "postgres",
                "--bench",
                "outbox",
            ])
            .env(postgres::DATABASE_VAR, &database);
        step("bench: outbox vs bare sqlx (SQLite, PostgreSQL)", outbox)?;
    }

    let serialize = criterion_mean_ns(&root, "per_request", "serde_json_to_vec_x5")?;
    let events_only = criterion_mean_ns(&root, "per_request", "event_new_x5")?;
    let bare = criterion_mean_ns(&root, "per_request", "start_emit5_commit_no_adapter")?;
    let one = criterion_mean_ns(&root, "per_request", "start_emit5_commit_one_adapter")?;
    let results = root.join("target/bench-results");
    let allocations =
        std::fs::read_to_string(results.join("allocations.json")).map_err(|e| e.to_string())?;
    let paired =
        std::fs::read_to_string(results.join("per_request.json")).map_err(|e| e.to_string())?;
    let fanout = std::fs::read_to_string(results.join("fanout.md")).map_err(|e| e.to_string())?;
    let latency =
        std::fs::read_to_string(results.join("latency_memory.md")).map_err(|e| e.to_string())?;
    let webhook = std::fs::read_to_string(results.join("webhook.md")).map_err(|e| e.to_string())?;
    let kafka = std::fs::read_to_string(results.join("kafka.md")).map_err(|e| e.to_string())?;
    let websocket =
        std::fs::read_to_string(results.join("websocket.md")).map_err(|e| e.to_string())?;
    let outbox = std::fs::read_to_string(results.join("outbox.md")).map_err(|e| e.to_string())?;
    let tables = format!(
        "Machine: {machine}. Command: `cargo xtask bench`.\n\n\
         ### Per-request cost (criterion, mean)\n\n\
         | measurement | time | ratio to serializing alone (targets: ≤ 1.5 without an adapter, ≤ 2.5 with one) |\n|---|---:|---:|\n\
         | `serde_json::to_vec` × 5 (baseline) | {serialize:.0} ns | 1.00 |\n\
         | 5 × `Event::new` alone (serialize, id, clock, shared allocation) | {events_only:.0} ns | {:.2} |\n\
         | start + 5 × emit + commit, no adapter | {bare:.0} ns | {:.2} |\n\
         | start + 5 × emit + commit, one no-op adapter | {one:.0} ns | {:.2} |\n\n\
         Paired rounds (baseline and request timed back to back, median ratio): `{paired}`\n\n\
         Allocations: `{allocations}`\n\n\
         ### Pipeline fan-out (commits of 5, queue 10 000, max_demand 50; targets: ≥ 1.0 × the hand-wired flume loop and ≥ async-broadcast, 0 lost)\n\n{fanout}\n\
         ### Latency and memory\n\n{latency}\n\
         ### Webhook adapter vs a bare reqwest loop (same local receiver, same concurrency)\n\n{webhook}\n\
         ### Kafka adapter vs a bare `FutureProducer` (same broker, same records; block policy)\n\n{kafka}\n\
         ### Live feed (WebSocket, axum-mounted, every frame authorized) vs a bare tokio-tungstenite broadcast (target ≥ 1.0 × batched writes, 0 lost)\n\n{websocket}\n\
         ### Durable outbox vs bare sqlx (same database, same rows)\n\n{outbox}",
        events_only / serialize,
        bare / serialize,
        one / serialize,
        machine = machine(),
    );
    let path = root.join("BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let updated = match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{tables}\n{}", &existing[..b], &existing[e..])
        }
        _ => format!("# Benchmarks\n\n{begin}\n{tables}\n{end}\n"),
    };
    std::fs::write(&path, updated).map_err(|e| e.to_string())?;
    println!("\n{tables}\nwrote {}", path.display());
    Ok(())
}
