//! The webhook adapter (signing on) against a bare reqwest loop posting the same bodies to the
//! same local receiver at the same concurrency.
//!
//! Run: `cargo bench -p emissions-webhook --bench webhook` (or `cargo xtask bench`).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use emissions_core::{AdapterOptions, Emissions};
use emissions_webhook::{AddressPolicy, WebhookBuilderExt, WebhookEndpoint};
use futures_util::StreamExt;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn receiver() -> String {
    let app = axum::Router::new().fallback(|| async { StatusCode::NO_CONTENT });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hooks")
}

fn body(i: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": format!("evt-{i}"), "type": "order_created",
        "timestamp": "2026-11-27T00:00:00Z", "data": {"order": i, "qty": 2}, "metadata": {}
    }))
    .unwrap()
}

async fn bare(url: &str, events: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let sent = futures_util::stream::iter(0..events)
        .map(|i| {
            let client = client.clone();
            async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body(i))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
            }
        })
        .buffer_unordered(concurrency)
        .count()
        .await;
    sent as f64 / started.elapsed().as_secs_f64()
}

async fn adapter(url: &str, events: usize, concurrency: usize) -> f64 {
    let endpoint = WebhookEndpoint::new("bench", url)
        .secret(SECRET)
        .concurrency(concurrency)
        .address_policy(AddressPolicy::default().allow("127.0.0.0/8".parse().unwrap()))
        .queue(AdapterOptions::default().capacity(events.max(50)));
    let emissions = Emissions::builder()
        .webhook(endpoint)
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < events {
        let buffer = emissions.start();
        for _ in 0..5 {
            buffer
                .emit("order_created", &serde_json::json!({"order": i, "qty": 2}))
                .unwrap();
            i += 1;
        }
        buffer.commit().await.unwrap();
    }
    emissions.settled().await;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let report = emissions.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        report.adapter("bench").unwrap().counts.delivered,
        events as u64
    );
    rate
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let events = if quick { 200 } else { 5_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table = String::from(
        "| concurrency | bare reqwest loop | webhook adapter (signed) | ratio (target ≥ 0.9) |\n|---:|---:|---:|---:|\n",
    );
    rt.block_on(async {
        let url = receiver().await;
        for concurrency in [1, 8] {
            let baseline = bare(&url, events, concurrency).await;
            let ours = adapter(&url, events, concurrency).await;
            table.push_str(&format!(
                "| {concurrency} | {baseline:.0} req/s | {ours:.0} req/s | {:.2} |\n",
                ours / baseline
            ));
        }
    });
    println!("{events} events per run.\n\n{table}");
    if !quick {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join("webhook.md"),
            format!("{events} events per run.\n\n{table}"),
        );
    }
}
