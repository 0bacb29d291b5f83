//! The per-request layer against a real axum server on loopback and a real HTTP client.
#![cfg(feature = "tower")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use emissions_core::Buffer;
use emissions_core::layer::EmissionsLayer;
use emissions_core::telemetry::{keys, names};
use emissions_testing::TestEmissions;
use serde_json::json;
use support::{names, observe};
use tower::ServiceExt;

fn emit(name: &'static str) {
    emissions_core::emit(name, &json!({"route": name})).expect("ambient buffer in handler");
}

async fn serve(t: &TestEmissions) -> String {
    let app = Router::new()
        .route(
            "/created",
            get(|| async {
                emit("created");
                StatusCode::CREATED
            }),
        )
        .route(
            "/redirect",
            get(|| async {
                emit("redirected");
                StatusCode::SEE_OTHER
            }),
        )
        .route(
            "/invalid",
            get(|| async {
                emit("invalid");
                StatusCode::UNPROCESSABLE_ENTITY
            }),
        )
        .route(
            "/broken",
            get(|| async {
                emit("broken");
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/panics",
            get(|| async {
                emit("before_panic");
                if std::hint::black_box(true) {
                    panic!("handler bug");
                }
                StatusCode::OK
            }),
        )
        .route(
            "/extension",
            get(|Extension(buffer): Extension<Buffer>| async move {
                buffer.emit("via_extension", &1).unwrap();
                "ok"
            }),
        )
        .route(
            "/deep",
            get(|| async {
                nested().await;
                "ok"
            }),
        )
        .layer(EmissionsLayer::new(t.emissions().clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn nested() {
    tokio::task::yield_now().await;
    emit("deep_in_the_stack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_commits_and_failures_discard() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let base = serve(&t).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let status = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(status("/created").await.unwrap(), 201);
    assert_eq!(status("/redirect").await.unwrap(), 303);
    assert_eq!(status("/invalid").await.unwrap(), 422);
    assert_eq!(status("/broken").await.unwrap(), 500);
    assert_eq!(status("/extension").await.unwrap(), 200);
    assert_eq!(status("/deep").await.unwrap(), 200);
    // The panic aborts the connection: the client sees an error, never a 2xx.
    assert!(status("/panics").await.is_err());

    let delivered = names(&t.events().await);
    assert_eq!(
        delivered,
        [
            "created",
            "redirected",
            "via_extension",
            "deep_in_the_stack"
        ]
    );

    let terminated = seen.named(names::BUFFER_TERMINATED);
    let reasons: Vec<_> = terminated
        .iter()
        .map(|r| r.meta(keys::REASON).unwrap().clone())
        .collect();
    assert_eq!(
        reasons,
        [json!("terminate"), json!("terminate"), json!("drop")]
    );
    assert!(
        terminated
            .iter()
            .all(|r| r.meta(keys::EVENT_COUNT) == Some(&json!(1)))
    );
    assert_eq!(seen.named(names::BUFFER_COMMITTED).len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_discards_its_buffer() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let service = tower::service_fn(|_req: axum::http::Request<()>| async {
        emit("never_finished");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, Infallible>(axum::http::Response::new(()))
    });
    let service = tower::Layer::layer(&EmissionsLayer::new(t.emissions().clone()), service);
    let call = service.oneshot(axum::http::Request::new(()));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err()
    );
    assert!(t.events().await.is_empty());
    let terminated = seen.named(names::BUFFER_TERMINATED);
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].meta(keys::REASON), Some(&json!("drop")));
}

#[tokio::test]
async fn an_inner_service_error_discards_the_buffer() {
    let t = TestEmissions::start().await;
    let service = tower::service_fn(|_req: axum::http::Request<()>| async {
        emit("failed_request");
        Err::<axum::http::Response<()>, _>("upstream unavailable")
    });
    let service = tower::Layer::layer(&EmissionsLayer::new(t.emissions().clone()), service);
    let result = service.oneshot(axum::http::Request::new(())).await;
    assert_eq!(result.unwrap_err(), "upstream unavailable");
    assert!(t.events().await.is_empty());
}

#[tokio::test]
async fn the_inner_services_synchronous_call_sees_the_buffer_too() {
    let t = TestEmissions::start().await;
    // A `service_fn` whose closure emits before it returns its future: that part runs inside
    // the layer's synchronous `call`.
    let service = tower::service_fn(|_request: axum::http::Request<String>| {
        let emitted = emissions_core::emit("in_call", &1);
        async move {
            emitted.map_err(|e| e.to_string())?;
            Ok::<_, String>(axum::http::Response::new(String::new()))
        }
    });
    let service = tower::Layer::layer(&EmissionsLayer::new(t.emissions().clone()), service);
    let response = service
        .oneshot(axum::http::Request::new(String::new()))
        .await
        .expect("emit inside call reached the request's buffer");
    assert_eq!(response.status(), StatusCode::OK);
    emissions_testing::assert_emitted!(t, "in_call");
}
