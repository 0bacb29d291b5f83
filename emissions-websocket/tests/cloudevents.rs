//! Frames carrying structured CloudEvents, over a real WebSocket and a real SSE stream, each
//! event parsed by the official Python `cloudevents` SDK (installed by `cargo xtask ci`).

#[path = "../../xtask/python/independent.rs"]
mod independent;
mod support;

use emissions_core::{CloudEvents, Event};
use emissions_websocket::LiveFeed;
use serde_json::{Value, json};
use support::*;

fn check(parsed: &Value, event: &Event) {
    independent::assert_cloudevent(parsed, event, "https://shop.example.com/live");
    let attributes = &parsed["attributes"];
    // The metadata's `user_id` is not a CloudEvents attribute name: it travels in `metadata`.
    assert_eq!(
        attributes["metadata"],
        json!(event.metadata()).to_string().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_sse_frames_carry_cloudevents_the_sdk_reads() {
    let app = app(LiveFeed::builder()
        .events(["order_*"])
        .cloudevents(CloudEvents::structured("https://shop.example.com/live")))
    .await;
    let mut socket = ws(&app, "alice", "").await;
    let mut sse = Sse::open(app.addr, "alice", "", None).await.unwrap();
    let sent = commit(
        &app.emissions,
        &[
            ("order_created", "alice"),
            ("order_created", "bob"),
            ("order_paid", "alice"),
        ],
    )
    .await;
    let alices: Vec<&Event> = sent
        .iter()
        .filter(|e| e.payload_json()["user"] == "alice")
        .collect();
    let mut frames = events(&mut socket, 2).await;
    for _ in 0..2 {
        frames.push(sse.next().await.unwrap().2);
    }
    for frame in &frames {
        assert_eq!(frame["type"], "event");
        assert!(frame["position"].is_string());
        assert_eq!(frame["event"]["specversion"], "1.0");
    }
    let messages = frames
        .iter()
        .map(|f| json!({"binding": "json", "body": independent::b64(f["event"].to_string().as_bytes())}))
        .collect();
    let Some(parsed) = independent::cloudevents(messages) else {
        return;
    };
    for (parsed, event) in parsed.iter().zip(alices.iter().chain(alices.iter())) {
        check(parsed, event);
    }
}
