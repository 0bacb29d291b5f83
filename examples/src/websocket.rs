//! The live page example: two users sign in and each watches the events of their own orders,
//! live, from the app's own axum router — over WebSocket (`/`) or Server-Sent Events (`/sse`).
//! A simulated order flow commits orders for both users (and an internal audit event that the
//! feed does not carry).
//!
//! ```text
//! cargo run -p emissions-examples --bin websocket      # then open the printed URL
//! cargo run -p emissions-examples --bin websocket -- --for 5   # stop after 5 seconds
//! ```
//!
//! Signing in is a demo (`/login?user=alice` creates a session); a real app verifies a
//! password or an identity provider, and the feed's `authenticate` looks the session up the
//! same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use emissions_core::{AdapterOptions, Emissions, Event, Metadata, Named, RetryPolicy};
use emissions_websocket::{Authorize, LiveFeed, Refusal};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Session token → user name.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, String>>>);

impl Sessions {
    fn user(&self, headers: &axum::http::HeaderMap) -> Option<String> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let token = cookies
            .split(';')
            .find_map(|c| c.trim().strip_prefix("session="))?;
        self.0.lock().ok()?.get(token).cloned()
    }
}

/// The feed's authorization: the session's user, who sees the events of their own orders.
struct OwnOrders(Sessions);

impl Authorize for OwnOrders {
    type Principal = String;

    async fn authenticate(&self, request: &mut Parts) -> Result<String, Refusal> {
        self.0
            .user(&request.headers)
            .ok_or_else(|| Refusal::unauthorized("sign in first"))
    }

    fn may_see(&self, user: &String, event: &Event) -> bool {
        event.metadata().get("user_id").and_then(|v| v.as_str()) == Some(user.as_str())
    }
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    next: Option<String>,
}

async fn login(State(sessions): State<Sessions>, Query(login): Query<Login>) -> Response {
    if !matches!(login.user.as_str(), "alice" | "bob") {
        return (
            axum::http::StatusCode::FORBIDDEN,
            "this demo knows alice and bob",
        )
            .into_response();
    }
    let token = uuid::Uuid::now_v7().simple().to_string();
    if let Ok(mut map) = sessions.0.lock() {
        map.insert(token.clone(), login.user);
    }
    // A path of this site only (no `//host` or `http:` redirect).
    let next = match login.next.as_deref() {
        Some(next) if next.starts_with('/') && !next.starts_with("//") => next.to_owned(),
        _ => "/".to_owned(),
    };
    (
        [(
            header::SET_COOKIE,
            format!("session={token}; Path=/; HttpOnly; SameSite=Strict"),
        )],
        Redirect::to(&next),
    )
        .into_response()
}

/// A page for the signed-in user, or the sign-in links.
fn page(sessions: &Sessions, headers: &axum::http::HeaderMap, html: &'static str) -> Html<String> {
    match sessions.user(headers) {
        Some(user) => Html(html.replace("__USER__", &user)),
        None => Html(
            "<p>Sign in as <a href=\"/login?user=alice\">alice</a> or \
             <a href=\"/login?user=bob\">bob</a>.</p>"
                .to_owned(),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run_for = match args.as_slice() {
        [flag, seconds] if flag == "--for" => Some(Duration::from_secs(seconds.parse()?)),
        [] => None,
        _ => return Err("usage: websocket [--for SECONDS]".into()),
    };

    let sessions = Sessions::default();
    // The feed carries order and payment events only; each user sees their own.
    let feed = LiveFeed::builder()
        .events(["order_*", "payment_*"])
        .build(OwnOrders(sessions.clone()))?;
    let emissions = Emissions::builder()
        .adapter(
            Named::new("live", feed.adapter()?)
                .options(AdapterOptions::default().retry(RetryPolicy::none())),
        )?
        .start()
        .await?;

    let app = axum::Router::new()
        .route(
            "/",
            get(
                |State(s): State<Sessions>, headers: axum::http::HeaderMap| async move {
                    page(&s, &headers, include_str!("../static/live.html"))
                },
            ),
        )
        .route(
            "/sse",
            get(
                |State(s): State<Sessions>, headers: axum::http::HeaderMap| async move {
                    page(&s, &headers, include_str!("../static/sse.html"))
                },
            ),
        )
        .route("/login", get(login))
        .route("/live", feed.handler())
        .with_state(sessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("live page: {url}  (sign in at {url}login?user=alice or bob; SSE page at {url}sse)");

    // A simulated order flow: orders of alice and bob in turn, each a few events.
    let flow = async {
        for order in 1u32.. {
            let user = if order % 2 == 0 { "bob" } else { "alice" };
            let mut metadata = Metadata::new();
            metadata.insert("user_id".into(), user.into());
            let buffer = emissions.start();
            let id = format!("order-{order}");
            let qty = order % 5 + 1;
            buffer.emit_with_metadata(
                "order_created",
                &serde_json::json!({"order": id, "user": user, "qty": qty}),
                metadata.clone(),
            )?;
            buffer.emit_with_metadata(
                "payment_captured",
                &serde_json::json!({"order": id, "user": user, "cents": 1999 * qty}),
                metadata.clone(),
            )?;
            buffer.emit_with_metadata(
                "audit_logged",
                &serde_json::json!({"order": id, "by": "checkout"}),
                metadata.clone(),
            )?;
            if order % 3 == 0 {
                buffer.emit_with_metadata(
                    "order_shipped",
                    &serde_json::json!({"order": id, "user": user, "carrier": "dhl"}),
                    metadata,
                )?;
            }
            buffer.commit().await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
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
    println!("feed: {:?}", feed.stats());
    println!("balanced: {}", report.is_balanced());
    Ok(())
}
