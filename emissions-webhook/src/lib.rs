//! Webhook delivery for `emissions`: every committed event is POSTed, signed per the
//! [Standard Webhooks](https://www.standardwebhooks.com/) specification, to each interested
//! endpoint — retried, SSRF-safe, and accounted for. Also a [`Verifier`] for receivers.
//!
//! Because the adapter runs inside the application's emissions pipeline, a webhook is only ever
//! sent for a request that committed.
//!
//! # Request
//!
//! `POST` with `content-type: application/json` and the envelope every adapter writes,
//! `{"id", "type", "time", "metadata", "data"}` ([`emissions_core::Envelope`]; `data` is the
//! event's payload, embedded as serialized at emit time) — or, with
//! [`WebhookEndpoint::cloudevents`], a CloudEvent in structured mode (the signature covers
//! every attribute) or binary mode (percent-encoded `ce-*` headers). Headers: `webhook-id` (the event id, the same on every attempt, for
//! deduplication), `webhook-timestamp` (seconds, per attempt), `webhook-signature` (`v1,` +
//! base64 HMAC-SHA256 of `id.timestamp.body`, one per secret), `traceparent`/`tracestate` when the
//! event carries them, and the endpoint's static headers. The body is built once per event and
//! the signature covers exactly those bytes.
//!
//! # Delivery policy
//!
//! - **2xx** delivered. **3xx** never followed: a permanent failure. **410** disables the
//!   endpoint: that event and every later one fail at once ([`Error::Disabled`]), reported.
//! - **408, 429, 5xx**, connect errors and timeouts are retried on the endpoint's schedule
//!   ([`default_retry_schedule`]: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, jittered),
//!   honouring `Retry-After` on 429 and 503 (capped, default 1 hour). **Other 4xx** are permanent
//!   and go to the dead-letter hook at once, as does an event whose body exceeds the payload cap
//!   ([`Error::PayloadTooLarge`], default 1 MiB) or whose address the SSRF guard refuses.
//! - **Order and isolation.** Each event is sent and retried on its own: a failing event
//!   waits for its retry beside the queue and never delays or fails another event to the
//!   endpoint. With the default concurrency of 1, first attempts reach the endpoint in commit
//!   order, but a retried event arrives after later ones — an endpoint is unordered under
//!   retries unless it is keyed: with [`WebhookEndpoint::ordered_by`], at most one event of a
//!   key is in flight and a retrying event holds back only the later events of its own key.
//! - **Timeouts**: connect 5 s, whole request 15 s; at most 64 KiB of a response body is read.
//! - After the schedule, the event goes to the dead-letter hook with the last status or error.
//!
//! # SSRF guard
//!
//! On by default ([`AddressPolicy`]): internal addresses are refused on the address actually
//! connected to (a guarded DNS resolver; literal IPs are checked at build time), no proxy from
//! the environment is used, redirects are never followed. Allow networks explicitly for local
//! development. A host name that does not resolve is asked again for a few seconds, then fails
//! at once ([`Error::Unresolvable`]) instead of waiting out the schedule. With
//! [`WebhookEndpoint::proxy`] an egress proxy resolves and polices destinations instead; with
//! [`WebhookEndpoint::client`] endpoints share one client (and its connection pool).
//!
//! # Many tenants
//!
//! [`Tenants`] takes endpoints while the service runs — one per customer, each its own
//! instance with its own queue, retries and counts — and reports how the events queued for
//! an endpoint ended when it is removed.
//!
//! # Telemetry
//!
//! The core's `emissions.adapter.success` / `.error` per batch, and a `tracing` event (target
//! `emissions::webhook`) per attempt with the status and duration.
//!
//! # Example
//!
//! ```no_run
//! use emissions_core::Emissions;
//! use emissions_webhook::WebhookEndpoint;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emissions = Emissions::builder()
//!     .adapter(
//!         WebhookEndpoint::new("billing", "https://billing.example.com/hooks")
//!             .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
//!             .events(["order_created"]),
//!     )?
//!     .start()
//!     .await?;
//! emissions.emit_now("order_created", &serde_json::json!({"id": 1})).await?.settled().await;
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings))))]

mod adapter;
mod config;
mod error;
mod request_builder;
mod service;
mod signature;
mod ssrf;
mod tenants;

pub use adapter::WebhookAdapter;
pub use config::{WebhookEndpoint, default_retry_schedule};
pub use error::Error;
pub use ipnet::IpNet;
pub use signature::{Secret, Verifier, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP, sign};
pub use ssrf::AddressPolicy;
pub use tenants::Tenants;

/// The examples of this crate's README, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
