//! A scriptable HTTP receiver on loopback, and endpoint helpers.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use emissions_core::DeadLetter;
use emissions_webhook::{AddressPolicy, Secret, Verifier, WebhookEndpoint};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    WithHeader(u16, &'static str, String),
    /// Never answers.
    Hang,
    /// 200 with a body that never ends.
    EndlessBody,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
    pub fn webhook_id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }
    /// The event's payload (`data` of the envelope).
    pub fn data(&self) -> serde_json::Value {
        self.json()["data"].clone()
    }
}

type Script = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Shared {
    requests: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    script: Script,
}

pub struct Receiver {
    pub url: String,
    shared: Shared,
}

impl Receiver {
    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        loop {
            let notified = self.shared.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            notified.await;
        }
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let received = Received {
        at: Instant::now(),
        headers,
        body,
    };
    let index = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(received.clone());
        requests.len() - 1
    };
    shared.arrived.notify_waiters();
    let status = |code: u16| StatusCode::from_u16(code).unwrap();
    match (shared.script)(index, &received) {
        Reply::Status(code) => Response::builder()
            .status(status(code))
            .body(Body::from("ok"))
            .unwrap(),
        Reply::WithHeader(code, name, value) => Response::builder()
            .status(status(code))
            .header(name, value)
            .body(Body::empty())
            .unwrap(),
        Reply::Hang => std::future::pending().await,
        Reply::EndlessBody => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::repeat(chunk).map(Ok::<_, Infallible>);
            Response::builder()
                .status(200)
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// Starts a receiver on 127.0.0.1 that answers request `n` with `script(n)`.
pub async fn receiver(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
    serve(Arc::new(move |index, _: &Received| script(index))).await
}

/// Starts a receiver that answers each request with `script(request, attempt)`, where
/// `attempt` counts the requests with the same `webhook-id` so far (1 for the first).
pub async fn receiver_per_event(
    script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
) -> Receiver {
    let attempts = Mutex::new(std::collections::HashMap::<String, usize>::new());
    serve(Arc::new(move |_, received: &Received| {
        let attempt = {
            let mut attempts = attempts.lock().unwrap();
            let n = attempts.entry(received.webhook_id()).or_default();
            *n += 1;
            *n
        };
        script(received, attempt)
    }))
    .await
}

async fn serve(script: Script) -> Receiver {
    let shared = Shared {
        requests: Arc::default(),
        arrived: Arc::new(Notify::new()),
        script,
    };
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/hooks"),
        shared,
    }
}

pub fn always(code: u16) -> impl Fn(usize) -> Reply + Send + Sync + 'static {
    move |_| Reply::Status(code)
}

/// Loopback is internal: tests allow it explicitly, as local development would.
pub fn loopback() -> AddressPolicy {
    AddressPolicy::default()
        .allow("127.0.0.0/8".parse().unwrap())
        .allow("::1/128".parse().unwrap())
}

pub fn endpoint(name: &str, url: &str) -> WebhookEndpoint {
    WebhookEndpoint::new(name, url)
        .secret(SECRET)
        .address_policy(loopback())
}

pub fn verifier() -> Verifier {
    Verifier::new([Secret::parse(SECRET).unwrap()])
}

pub type Dead = Arc<Mutex<Vec<(String, Vec<String>, String, u32)>>>;

/// Collects dead letters as (endpoint, event names, failure, attempts).
pub fn dead_letters() -> (Dead, impl Fn(DeadLetter) + Send + Sync + 'static) {
    let dead: Dead = Arc::default();
    let sink = dead.clone();
    let hook = move |d: DeadLetter| {
        sink.lock().unwrap().push((
            d.destination.to_string(),
            d.events.iter().map(|e| e.name().to_owned()).collect(),
            d.failure.to_string(),
            d.attempts,
        ))
    };
    (dead, hook)
}

/// A bare TCP listener on loopback that counts the connections it accepts.
pub async fn canary() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted)
}
