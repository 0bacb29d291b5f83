//! Live feeds of committed events for browsers and other clients: WebSocket and Server-Sent
//! Events, mounted in the app's axum router, every frame authorized, drained on shutdown, and
//! across every instance of a service through Kafka.
//!
//! ```no_run
//! use axum::http::request::Parts;
//! use emissions_core::{Emissions, Event};
//! use emissions_websocket::{Authorize, LiveFeed, Refusal};
//!
//! /// Each user sees the events of their own orders.
//! struct Users;
//!
//! impl Authorize for Users {
//!     type Principal = String;
//!
//!     async fn authenticate(&self, request: &mut Parts) -> Result<String, Refusal> {
//!         // Look the session up (asynchronously), or run the app's own extractor here.
//!         let cookie = request.headers.get("cookie").and_then(|v| v.to_str().ok());
//!         match cookie.and_then(|c| c.strip_prefix("user=")) {
//!             Some(user) => Ok(user.to_owned()),
//!             None => Err(Refusal::unauthorized("log in first")),
//!         }
//!     }
//!
//!     fn may_see(&self, user: &String, event: &Event) -> bool {
//!         event.metadata().get("user_id").and_then(|v| v.as_str()) == Some(user.as_str())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let feed = LiveFeed::builder().events(["order_*"]).build(Users)?;
//! let emissions = Emissions::builder().adapter(emissions_core::Named::new("live", feed.adapter()?))?.start().await?;
//! let app = axum::Router::new().route("/live", feed.handler());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # let _ = emissions;
//! # Ok(()) }
//! ```
//!
//! # Who sees what
//!
//! Three gates, each only narrowing the one before:
//!
//! 1. **What the feed carries at all** — [`FeedBuilder::events`], [`FeedBuilder::topics`] or,
//!    explicitly, [`FeedBuilder::all_events`]. Nothing is carried by default: internal events
//!    never reach a browser unless chosen.
//! 2. **What the connection may see** — [`Authorize::may_see`] with the principal that
//!    [`Authorize::authenticate`] returned (401/403 before anything is upgraded). Asked for
//!    every frame: live, `replay`, `since` resume, after every subscription change. There is
//!    no default authorization: a feed without users says so with [`Public`].
//! 3. **What the connection subscribed to** — `?events=order_*,ping&topics=orders` at connect,
//!    `{"subscribe":{"events":[…],"topics":[…]}}` later (WebSocket), answered by
//!    `{"type":"subscribed",…}`. Empty means "all I may see", never more.
//!
//! # Transports
//!
//! The same handler answers a WebSocket upgrade (RFC 6455 over HTTP/1.1, checked and answered
//! like axum's `WebSocketUpgrade`) and a request with `Accept: text/event-stream` (SSE, over
//! any HTTP version). Event frames are the same JSON on both:
//! `{"type":"event","position","event"}`, where `event` is the envelope every adapter writes
//! (`{"id","type","time","metadata","data"}`, the payload exactly as emitted) or, with
//! [`FeedBuilder::cloudevents`], the structured CloudEvent. SSE sends the position as `id:`,
//! so a browser's `EventSource` resumes by itself (`Last-Event-ID`).
//! Control frames (`subscribed`, `error`, `resume`) are `event: control` on SSE. Anything
//! malformed — a query, a pattern, a control message, any UTF-8 — gets a 400 or an `error`
//! frame, never a panic; a WebSocket frame that breaks the protocol closes the connection
//! with **1002**, a text message that is not UTF-8 with **1007**; a connection task that ends
//! for any reason deregisters itself.
//!
//! # Positions and resume
//!
//! Every event frame carries the stream position after it: `EPOCH.O0.O1…`. A client that
//! reconnects with `?since=<position>` (or `Last-Event-ID`) first gets exactly the events it
//! missed and may see, then `{"type":"resume","recovered":true,"missed":N}`; when they cannot
//! be recovered it gets `{"recovered":false,"reason":…}` and continues live. `?replay=N`
//! starts with the last N events it may see. A `Last-Event-ID` header (what a reconnecting
//! `EventSource` sends) wins over `since` and `replay` in the URL. A Kafka source answers a
//! resume only once it has read its history (at most 30 s after start; until then positions
//! are refused with a reason, never half-served).
//!
//! | source | a position survives | it does not survive |
//! |---|---|---|
//! | in-process ([`LiveFeed::adapter`]) | reconnecting to the same process, within the history | a restart, another instance |
//! | Kafka (feature `kafka`) | reconnecting to any instance, restarts, within each instance's history (filled from Kafka at start) | history evicted, a change in the topics' partitions, a re-created topic (set a new epoch) |
//!
//! # Slow clients and shutdown
//!
//! Frames are serialized once and kept once, in a ring every connection reads at its own
//! pace (filtering and authorizing on its own task, so the fan-out scales with the cores).
//! An event's WebSocket frame is encoded once too: a connection copies the frames it may see
//! from the ring onto its socket's buffer and sends them in one write, and reads its client
//! between writes, so a busy connection still answers pings and takes subscription changes.
//! A client that falls further behind than its limit (frames and bytes) is cut off (close
//! code **4000**); the feed and every other client keep flowing. Idle WebSocket clients
//! are pinged and closed with **4001** when they do not answer, as are clients that take
//! no bytes of a write for a ping interval and timeout; oversized inbound messages close
//! with **1009**; over the connection cap, or during shutdown, requests get 503. A close is
//! answered, and sent after everything queued before it; the server then shuts its side
//! down and reads what the client still sends until it closes too, so that the close frame
//! is not lost to a reset. On shutdown each
//! connection first gets what was queued for it, then a **1001** close; what the deadline
//! cuts off is counted frame by frame in [`FeedStats::dropped_frames`]. Every frame meant for
//! a connection ends in exactly one of [`FeedStats::frames_sent`],
//! [`FeedStats::unconfirmed_frames`] (being written when the connection failed or was cut
//! off: the client may or may not have it) and [`FeedStats::dropped_frames`]. At the
//! deadline the feed counts every connection ended; an SSE response whose client stopped
//! reading is closed by the HTTP server when its socket is.
//!
//! # Telemetry
//!
//! The core's adapter events, [`LiveFeed::stats`], and `tracing` events under
//! `emissions::websocket`.
#![doc(test(attr(deny(warnings))))]

mod adapter;
mod config;
mod error;
mod feed;
mod hub;
#[cfg(feature = "kafka")]
mod kafka;
mod position;
mod request_builder;
mod selection;
mod service;
mod socket;

pub use adapter::FeedAdapter;
pub use config::{Authorize, FeedBuilder, Public, Refusal};
pub use error::Error;
pub use feed::LiveFeed;
pub use hub::{Disconnect, FeedStats};
#[cfg(feature = "kafka")]
pub use kafka::KafkaSource;
pub use service::FeedRequest;

/// The examples of this crate's README, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
