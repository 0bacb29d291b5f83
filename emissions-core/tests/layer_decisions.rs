//! What a response decides for its request's events, against a real axum server on loopback
//! and real HTTP and WebSocket clients: markers a handler sets after its database commit, a
//! custom classifier, a 101 upgrade that is neutral, and the `Buffer` extractor.
#![cfg(feature = "axum")]

mod support;

use axum::extract::WebSocketUpgrade;
use axum::extract::ws::Message;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use emissions_core::Buffer;
use emissions_core::layer::{
    CommitEvents, Decision, DiscardEvents, EmissionsLayer, default_decision,
};
use emissions_core::telemetry::names;
use emissions_testing::TestEmissions;
use futures_util::{SinkExt, StreamExt};
use support::{names, observe};

fn routes() -> Router {
    Router::new()
        // The database transaction committed, then something failed: the events still go.
        .route(
            "/committed-then-failed",
            get(|buffer: Buffer| async move {
                buffer.emit("order_created", &1).unwrap();
                (StatusCode::BAD_GATEWAY, Extension(CommitEvents))
            }),
        )
        .route(
            "/ok-but-rolled-back",
            get(|buffer: Buffer| async move {
                buffer.emit("order_created_then_rolled_back", &1).unwrap();
                (StatusCode::OK, Extension(DiscardEvents))
            }),
        )
        .route(
            "/conflict",
            get(|buffer: Buffer| async move {
                buffer.emit("replayed", &1).unwrap();
                StatusCode::CONFLICT
            }),
        )
        .route(
            "/teapot",
            get(|buffer: Buffer| async move {
                buffer.emit("teapot", &1).unwrap();
                StatusCode::IM_A_TEAPOT
            }),
        )
        // A WebSocket upgrade: what the handler emitted before it is committed; the socket
        // task takes the buffer along and commits what it emits later.
        .route(
            "/live",
            get(|ws: WebSocketUpgrade, buffer: Buffer| async move {
                buffer.emit("socket_opened", &1).unwrap();
                ws.on_upgrade(move |mut socket| async move {
                    if let Some(Ok(Message::Text(text))) = socket.recv().await {
                        buffer.emit("socket_said", &text.as_str()).unwrap();
                    }
                    buffer.commit().await.unwrap();
                    let _ = socket.send(Message::Text("bye".into())).await;
                })
            }),
        )
        // An upgrade whose handler does not keep the buffer.
        .route(
            "/live-plain",
            get(|ws: WebSocketUpgrade| async move {
                emissions_core::emit("plain_socket_opened", &1).unwrap();
                ws.on_upgrade(|mut socket| async move {
                    let _ = socket.send(Message::Text("hi".into())).await;
                })
            }),
        )
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_and_the_classifier_decide_and_an_upgrade_is_neutral() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let layer = EmissionsLayer::new(t.emissions().clone()).classify(|status, extensions| {
        if status == StatusCode::CONFLICT {
            Decision::Commit
        } else if status == StatusCode::IM_A_TEAPOT {
            panic!("classifier bug")
        } else {
            default_decision(status, extensions)
        }
    });
    let addr = serve(routes().layer(layer)).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
    assert_eq!(get("/committed-then-failed").await.unwrap().status(), 502);
    assert_eq!(get("/ok-but-rolled-back").await.unwrap().status(), 200);
    assert_eq!(get("/conflict").await.unwrap().status(), 409);
    // A classifier that panics: the response still goes out, the events do not.
    assert_eq!(get("/teapot").await.unwrap().status(), 418);

    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/live"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "hello".into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap().into_text().unwrap(),
        "bye"
    );
    let (mut plain, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/live-plain"))
        .await
        .unwrap();
    assert_eq!(
        plain.next().await.unwrap().unwrap().into_text().unwrap(),
        "hi"
    );

    let delivered = names(&t.events().await);
    assert_eq!(
        delivered,
        [
            "order_created",
            "replayed",
            "socket_opened",
            "socket_said",
            "plain_socket_opened"
        ]
    );
    // Only the discarded requests count as terminated; the upgrades never do.
    assert_eq!(seen.named(names::BUFFER_TERMINATED).len(), 2);
}

#[tokio::test]
async fn the_buffer_extractor_without_the_layer_is_a_clear_500() {
    let addr = serve(routes()).await;
    let response = reqwest::get(format!("http://{addr}/conflict"))
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.text().await.unwrap(),
        "no emissions buffer on this request: add EmissionsLayer to the router"
    );
}
