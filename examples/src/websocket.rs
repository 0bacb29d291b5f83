//! The live page example: a simulated order flow emits events; a small HTML page connects to
//! the WebSocket adapter and shows them as they are committed, with a subscription filter that
//! can be changed on the page.
//!
//! ```text
//! cargo run -p emissions-examples --bin websocket      # then open the printed URL
//! cargo run -p emissions-examples --bin websocket -- --for 5   # stop after 5 seconds
//! ```

use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use emissions_core::{Emissions, RetryPolicy};
use emissions_websocket::WebSocketServer;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The page, with the WebSocket address filled in.
fn page(ws_url: &str) -> String {
    include_str!("../static/live.html").replace("__WS_URL__", ws_url)
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run_for = match args.as_slice() {
        [flag, seconds] if flag == "--for" => Some(Duration::from_secs(seconds.parse()?)),
        [] => None,
        _ => return Err("usage: websocket [--for SECONDS]".into()),
    };

    let adapter = WebSocketServer::new("live", "127.0.0.1:0").bind().await?;
    let ws = adapter.handle();
    let emissions = Emissions::builder()
        .adapter_with(
            "live",
            adapter,
            emissions_core::AdapterOptions::default().retry(RetryPolicy::none()),
        )
        .start()
        .await?;

    let html = page(&format!("ws://{}/", ws.local_addr()));
    let app = axum::Router::new().route("/", get(move || async move { Html(html) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("live page: {url}  (WebSocket on ws://{}/)", ws.local_addr());

    // A simulated order flow: each order commits a few events.
    let flow = async {
        for order in 1u32.. {
            let buffer = emissions.start();
            let id = format!("order-{order}");
            buffer.emit(
                "order_created",
                &serde_json::json!({"order": id, "qty": order % 5 + 1}),
            )?;
            buffer.emit(
                "payment_captured",
                &serde_json::json!({"order": id, "cents": 1999 * (order % 5 + 1)}),
            )?;
            if order % 3 == 0 {
                buffer.emit(
                    "order_shipped",
                    &serde_json::json!({"order": id, "carrier": "dhl"}),
                )?;
            }
            buffer.commit().await?;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        Ok::<(), AnyError>(())
    };
    match run_for {
        Some(limit) => {
            let _ = tokio::time::timeout(limit, flow).await;
        }
        None => {
            tokio::select! {
                result = flow => result?,
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    println!("clients: {:?}", ws.stats());
    println!("balanced: {}", report.is_balanced());
    Ok(())
}
