//! Push committed events to WebSocket clients.
//!
//! [`WebSocketServer`] listens on an address; each committed event becomes one JSON text frame
//! `{"type":"event","id","name","timestamp","metadata","payload"}`, serialized once and queued
//! for every client whose subscription matches.
//!
//! # Subscriptions
//!
//! At connect time in the query — `?events=order_created,order_*&topics=orders` (names, a
//! trailing `*` for a prefix, topics through the server's router; nothing means everything) —
//! and later with a control message `{"subscribe":{"events":[…],"topics":[…]}}`, answered by
//! `{"type":"subscribed",…}`. An invalid control message gets `{"type":"error","message":…}`,
//! not a disconnect.
//!
//! # Slow clients
//!
//! Each client has a bounded outgoing queue (events and bytes). A client that falls behind is
//! disconnected with close code **4000** ("slow consumer"); the adapter and every other client
//! keep flowing, and memory stays within the caps.
//!
//! # Liveness and limits
//!
//! The server pings at an interval and closes a client it has not heard from in time with
//! **4001** ("ping timeout"). Inbound messages over the limit close with **1009**. Connections
//! over the cap get HTTP 503, and a handshake must finish in time. On shutdown clients get
//! **1001**.
//!
//! # Security
//!
//! An authentication hook sees the handshake request (headers, query): a refusal is HTTP 401
//! before upgrading. An `Origin` allow-list answers 403 before upgrading. The server speaks
//! plain `ws://`; terminate TLS in front of it (a reverse proxy or load balancer).
//!
//! # Resume
//!
//! The last events are kept in a bounded ring. A client reconnecting with
//! `?last_event_id=<id>` first receives what it missed (as filtered by its subscription), or
//! `{"type":"resync","reason":"gap too large"}` when the id is no longer in the ring. A client
//! connecting with `?replay=N` first receives the last N matching events (a live page's recent
//! history).
//!
//! # Telemetry
//!
//! The core's adapter events, plus [`WebSocketHandle::stats`] (connected, accepted, rejected,
//! disconnects by reason, dropped frames) and `tracing` events under `emissions::websocket`.
#![doc(test(attr(deny(warnings))))]

mod error;
mod hub;
mod server;
mod subscription;

pub use error::Error;
pub use hub::{Disconnect, WebSocketStats};
pub use server::{WebSocketAdapter, WebSocketHandle, WebSocketServer};
pub use tokio_tungstenite::tungstenite::handshake::server::Request;
