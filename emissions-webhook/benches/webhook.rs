//! The webhook adapter (signing on) against a bare reqwest loop posting the same bodies to the
//! same local receiver at the same concurrency.
//!
//! Each figure is the median of five rounds (on two shared cores, with the receiver in the same
//! process, single runs vary by ±30 % with where tokio places the tasks). The bare client has
//! the same request timeout as the adapter's.
//!
//! Run: `cargo bench -p emissions-webhook --bench webhook` (or `cargo xtask bench`).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use emissions_core::{AdapterOptions, CloudEvents, Emissions};
use emissions_webhook::{
    AddressPolicy, Secret, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, WebhookEndpoint, sign,
};
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

/// The bare loop: reqwest posting each body. With `signed`, it also sets the Standard Webhooks
/// headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`) as any compliant sender must.
async fn bare(url: &str, events: usize, concurrency: usize, signed: bool) -> f64 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let secrets = [Secret::parse(SECRET).unwrap()];
    let secrets = &secrets;
    let started = Instant::now();
    let sent = futures_util::stream::iter(0..events)
        .map(|i| {
            let client = client.clone();
            async move {
                let body = body(i);
                let mut request = client.post(url).header("content-type", "application/json");
                if signed {
                    let id = format!("evt-{i}");
                    let timestamp = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64;
                    let signature = sign(secrets, &id, timestamp, &body);
                    request = request
                        .header(WEBHOOK_ID, id)
                        .header(WEBHOOK_TIMESTAMP, timestamp.to_string())
                        .header(WEBHOOK_SIGNATURE, signature);
                }
                let response = request.body(body).send().await.unwrap();
                assert!(response.status().is_success());
                // Read to the end, as the adapter does: the connection then goes back to the
                // pool at once instead of after the dropped response is noticed.
                response.bytes().await.unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .count()
        .await;
    sent as f64 / started.elapsed().as_secs_f64()
}

async fn adapter(
    url: &str,
    events: usize,
    concurrency: usize,
    cloudevents: Option<CloudEvents>,
) -> f64 {
    let mut endpoint = WebhookEndpoint::new("bench", url)
        .secret(SECRET)
        .concurrency(concurrency)
        .address_policy(AddressPolicy::default().allow("127.0.0.0/8".parse().unwrap()))
        .queue(
            AdapterOptions::default()
                .capacity(events.max(50))
                .max_demand(400),
        );
    if let Some(ce) = cloudevents {
        endpoint = endpoint.cloudevents(ce);
    }
    let emissions = Emissions::builder()
        .adapter(endpoint)
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

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let events = if quick { 200 } else { 10_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table = String::from(
        "| concurrency | bare reqwest loop | bare loop, signed | webhook adapter (signed) | ratio to bare | ratio to bare signed (target ≥ 0.95) | adapter, CloudEvents structured (signed) | its ratio to bare signed (target ≥ 0.95) |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    // Profiling aid: `BENCH_ONLY=bare|adapter [BENCH_CONCURRENCY=n]` runs one side alone
    // (signed; concurrency 8 unless given).
    if let Ok(side) = std::env::var("BENCH_ONLY") {
        let concurrency = std::env::var("BENCH_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        rt.block_on(async {
            let url = receiver().await;
            let rate = match side.as_str() {
                "bare" => tokio::spawn(async move { bare(&url, 40_000, concurrency, true).await })
                    .await
                    .unwrap(),
                _ => adapter(&url, 40_000, concurrency, None).await,
            };
            println!("{side}: {rate:.0} req/s");
        });
        return;
    }
    rt.block_on(async {
        let url = receiver().await;
        for concurrency in [1, 8] {
            // Five rounds, the three loops back to back in each; the median of each.
            let mut rates: [Vec<f64>; 4] = Default::default();
            for _ in 0..5 {
                // The bare loops run on a runtime worker, as the adapter's consumer task does
                // (from `block_on`, every request would cross threads to reach the connection
                // task and back).
                for (side, signed) in [(0, false), (1, true)] {
                    let target = url.clone();
                    rates[side].push(
                        tokio::spawn(
                            async move { bare(&target, events, concurrency, signed).await },
                        )
                        .await
                        .unwrap(),
                    );
                }
                rates[2].push(adapter(&url, events, concurrency, None).await);
                let structured = CloudEvents::structured("/bench");
                rates[3].push(adapter(&url, events, concurrency, Some(structured)).await);
            }
            let [unsigned, signed, ours, cloudevents] = rates.map(median);
            table.push_str(&format!(
                "| {concurrency} | {unsigned:.0} req/s | {signed:.0} req/s | {ours:.0} req/s | {:.2} | {:.2} | {cloudevents:.0} req/s | {:.2} |\n",
                ours / unsigned,
                ours / signed,
                cloudevents / signed,
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
