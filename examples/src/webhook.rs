//! The webhook example: simulated requests emit events; committed ones are POSTed, signed per
//! Standard Webhooks, to a local receiver that verifies every signature and prints each event.
//!
//! ```text
//! cargo run -p emissions-examples --bin webhook                       # receiver + sender, one process
//! cargo run -p emissions-examples --bin webhook -- --receiver         # terminal 1: receiver on 127.0.0.1:8787
//! cargo run -p emissions-examples --bin webhook -- --sender http://127.0.0.1:8787/hooks   # terminal 2
//! ```
//!
//! The signing secret is `EMISSIONS_WEBHOOK_SECRET` when set, else a fixed demo secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use emissions_core::{Emissions, Metadata, RetryPolicy};
use emissions_webhook::{AddressPolicy, Secret, Verifier, WebhookEndpoint};
use serde::Serialize;

const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DEFAULT_RECEIVER: &str = "127.0.0.1:8787";

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn secret() -> String {
    std::env::var("EMISSIONS_WEBHOOK_SECRET").unwrap_or_else(|_| DEMO_SECRET.to_owned())
}

// ---------------------------------------------------------------- receiver

struct Receiver {
    verifier: Verifier,
    seen: AtomicUsize,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = receiver.seen.fetch_add(1, Ordering::SeqCst);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    if let Err(err) = receiver.verifier.verify(&headers, &body) {
        println!("  [receiver] ✗ rejected {id}: {err}");
        return StatusCode::UNAUTHORIZED;
    }
    // Answer the very first request with 503 to show a retry: same webhook-id, new signature.
    if n == 0 {
        println!("  [receiver] ✓ signature ok for {id}, but answering 503 to show a retry");
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "  [receiver] ✓ verified {:<20} id={id} data={}",
        envelope["type"].as_str().unwrap_or("?"),
        envelope["data"]
    );
    StatusCode::NO_CONTENT
}

async fn start_receiver(addr: &str) -> Result<SocketAddr, AnyError> {
    let receiver = Arc::new(Receiver {
        verifier: Verifier::new([Secret::parse(&secret())?]),
        seen: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("receiver stopped: {err}");
        }
    });
    Ok(bound)
}

// ---------------------------------------------------------------- sender

#[derive(Serialize)]
struct Order {
    id: u32,
    item: &'static str,
    qty: u32,
}

#[derive(Debug)]
enum RequestError {
    OutOfStock,
    Emissions(emissions_core::Error),
}

impl From<emissions_core::Error> for RequestError {
    fn from(e: emissions_core::Error) -> Self {
        RequestError::Emissions(e)
    }
}

/// A request handler: emits without a handle; the events leave only if it succeeds.
async fn place_order(id: u32, item: &'static str, qty: u32) -> Result<(), RequestError> {
    let mut meta = Metadata::new();
    meta.insert("source".into(), "checkout-api".into());
    emissions_core::emit_with_metadata("order_created", &Order { id, item, qty }, meta)?;
    if item == "unobtainium" {
        return Err(RequestError::OutOfStock);
    }
    emissions_core::emit(
        "payment_captured",
        &serde_json::json!({"order": id, "cents": qty * 1999}),
    )?;
    Ok(())
}

async fn run_sender(url: &str) -> Result<(), AnyError> {
    let endpoint = WebhookEndpoint::new("receiver", url)
        .secret(secret())
        // The demo receiver is on loopback, which the SSRF guard refuses unless allowed.
        .address_policy(
            AddressPolicy::default()
                .allow("127.0.0.0/8".parse()?)
                .allow("::1/128".parse()?),
        )
        // A short schedule for the demo (the default is 5 s, 5 min, 30 min, … over a day).
        .retry(RetryPolicy::schedule([
            Duration::from_millis(300),
            Duration::from_secs(1),
        ]));
    let emissions = Emissions::builder().adapter(endpoint)?.start().await?;

    let requests = [
        (1, "widget", 5),
        (2, "gadget", 1),
        (3, "unobtainium", 9),
        (4, "widget", 2),
    ];
    emissions_core::with_default(emissions.clone(), async {
        for (id, item, qty) in requests {
            match emissions_core::transaction(place_order(id, item, qty)).await {
                Ok(()) => println!("[app] request {id}: {qty} × {item} → committed"),
                Err(RequestError::OutOfStock) => {
                    println!("[app] request {id}: {qty} × {item} → failed (out of stock), events discarded")
                }
                Err(RequestError::Emissions(e)) => println!("[app] request {id}: emissions error: {e}"),
            }
        }
    })
    .await;

    println!("[app] waiting for delivery…");
    emissions.settled().await;
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    let counts = report
        .adapter("receiver")
        .map(|a| a.counts)
        .unwrap_or_default();
    println!(
        "[app] summary: committed {} · delivered {} · failed {} · dropped {} (balanced: {})",
        counts.committed,
        counts.delivered,
        counts.failed,
        counts.dropped,
        report.is_balanced()
    );
    if counts.delivered != counts.committed {
        return Err("not every committed event was delivered".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--receiver") => {
            let addr = args.get(1).map_or(DEFAULT_RECEIVER, String::as_str);
            let bound = start_receiver(addr).await?;
            println!("receiver listening on http://{bound}/hooks (Ctrl-C to stop)");
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Some("--sender") => {
            let default = format!("http://{DEFAULT_RECEIVER}/hooks");
            let url = args.get(1).map_or(default.as_str(), String::as_str);
            run_sender(url).await
        }
        None => {
            let bound = start_receiver("127.0.0.1:0").await?;
            println!("receiver listening on http://{bound}/hooks");
            run_sender(&format!("http://{bound}/hooks")).await
        }
        Some(other) => {
            Err(format!("unknown argument {other}; use --receiver [ADDR] or --sender [URL]").into())
        }
    }
}
