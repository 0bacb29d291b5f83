//! Per-request event buffering and fan-out delivery to pluggable adapters.
//!
//! Application code opens a [`Buffer`] per request, emits named events into it, and commits them
//! atomically when the request succeeds (or discards them when it fails). Committed events fan
//! out through the pipeline — one bounded queue and consumer task per [`Adapter`], batches of
//! up to `max_demand`, independent backpressure, per-event retries beside the queue — and every
//! event ends, for every adapter, in a counted state: delivered, filtered, failed or dropped.
//!
//! - [`Emissions`]: the instance; built with [`Emissions::builder`], stopped with
//!   [`Emissions::shutdown`].
//! - [`Buffer`]: the per-request lifecycle (see [`buffer`]).
//! - Ambient style: [`emit`], [`commit`], [`transaction`], … with a global default instance and
//!   scoped overrides (see [`ambient`]).
//! - [`Adapter`]: the destination trait; [`AdapterOptions`] for queue, batching, overflow and
//!   retry policy.
//! - [`Handler`]: in-process subscribers in supervised tasks, with cascading (see [`handler`]).
//! - [`Receipt`]: await a commit's delivery; [`DeliveryReport`]: per-adapter accounting.
//! - [`telemetry`]: the nine telemetry events, as `tracing` events and to observers.
//! - [`topic_router!`]: compile-time event → topic routing (see [`router`]).
//! - `layer` (feature `tower`): a buffer per HTTP request, committed on 2xx/3xx.
//!
//! # Delivery semantics
//!
//! These hold for every adapter, including the handler dispatcher; the tests pin each one down.
//!
//! ## Commits are all-or-nothing
//!
//! A commit ([`Buffer::commit`], [`Buffer::flush`], [`Emissions::emit_now`]) is recorded for
//! every adapter at once or not at all. Under the [block policy](OverflowPolicy::Block) it
//! waits for room in every blocking queue *before* anything is recorded; if it is cancelled
//! while waiting, nothing was committed and the buffer is still open and holds its events. A
//! commit made from inside an adapter's `handle_events` never waits (it could be waiting on
//! itself): it fails with [`Error::QueueFull`] and commits nothing.
//!
//! ## Accounting
//!
//! Each committed event ends, for each adapter, in exactly one state — delivered, filtered
//! (the adapter was not `interested`), failed (a permanent failure, or retries used up) or
//! dropped (queue or backlog overflow, or the shutdown deadline) — so that
//! `committed = delivered + filtered + failed + dropped` per adapter ([`DeliveryCounts`]).
//! Failed and dropped events both go to the adapter's dead-letter hook ([`DeadLetter`], with
//! their [`DeadLetterCause`]). Every state change goes through one internal ledger, which
//! also wakes [`Receipt::settled`] and [`Emissions::settled`].
//!
//! ## Ordering
//!
//! Commits reach every adapter in one global order, and the events of one commit reach each
//! adapter contiguously and in emit order — on the first attempt. Under retries, order is
//! opt-in and per key ([`AdapterOptions::ordered_by`]): without a key, a failed event waits
//! for its retry *beside* the queue while the events behind it go on (so a retried event may
//! arrive after later ones); with a key, at most one event of a key is in flight at a time and
//! a retrying event holds back only the later events of its own key.
//!
//! ## Retries
//!
//! Attempts belong to each event and count only real attempts: an event that was held back
//! behind its key, or dropped before it was tried, is charged nothing. The delay before the
//! next attempt follows the [`RetryPolicy`] (exponential with jitter, or an explicit
//! schedule), or the destination's own wait ([`Failure::retry_after`]) when that is longer;
//! events that failed together are retried together. Time is tokio's, so a paused clock runs
//! hour-long schedules in a test instantly. The backlog of waiting events is bounded
//! ([`AdapterOptions::backlog`]) and its overflow follows the adapter's overflow policy.
//!
//! ## Backpressure
//!
//! Each adapter has its own bounded queue and consumer task; a slow, failing or stalled
//! adapter never delays another. A full queue applies that adapter's [`OverflowPolicy`]:
//! drop the newest events (the default; a commit never waits), evict the oldest, or block the
//! committer.
//!
//! ## User code never stops the engine
//!
//! A panic in `handle_events` fails that batch (retryable); in `interested` or an ordering key
//! function, that one event (permanently, 0 attempts); in a handler, that run; in a telemetry
//! observer or a dead-letter hook, nothing but itself (logged). The consumer and every other
//! adapter and handler go on.
//!
//! ## Shutdown
//!
//! [`Emissions::shutdown`] stops accepting commits, drains every queue and every retry due
//! before the deadline, calls each adapter's `shutdown` (Kafka flushes there), waits for
//! handler runs, and returns a [`DeliveryReport`]. What is still queued, in flight or waiting
//! at the deadline is counted as dropped, dead-lettered, and the adapter marked
//! `deadline_exceeded`. The report is built only after all that work has ended or was
//! cancelled and joined, so it always balances. Shutdown is idempotent and cancel-safe: any
//! number of calls, concurrent, repeated or cancelled, end with the same report.
//!
//! ## Durability
//!
//! Delivery state lives in memory. If the process dies, events that are queued, in flight or
//! waiting for a retry are lost and reported nowhere (at-most-once across crashes); a graceful
//! shutdown counts them and hands them to the dead-letter hook. The `emissions-outbox` crate
//! persists them instead.
//!
//! # Features
//!
//! - `tower`: the per-request [`tower` layer](https://docs.rs/tower) for axum and hyper services.
//! - `opentelemetry`: metrics for the telemetry events, W3C trace context captured at emit time
//!   and continued in handlers (module `otel`).
//!
//! ```
//! use emissions_core::{async_trait, Adapter, BatchError, Emissions, Event};
//! use std::time::Duration;
//!
//! struct Print;
//!
//! #[async_trait]
//! impl Adapter for Print {
//!     async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
//!         for event in events {
//!             println!("{} {}", event.name(), String::from_utf8_lossy(event.payload()));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), emissions_core::Error> {
//! let emissions = Emissions::builder().adapter(emissions_core::Named::new("print", Print))?.start().await?;
//!
//! let buffer = emissions.start();
//! buffer.emit("order_created", &serde_json::json!({"id": 42, "item": "widget"}))?;
//! buffer.commit().await?.settled().await;
//!
//! let report = emissions.shutdown(Duration::from_secs(5)).await;
//! assert_eq!(report.adapter("print").unwrap().counts.delivered, 1);
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod adapter;
pub mod ambient;
pub mod buffer;
mod builder;
pub mod durable;
mod emissions;
pub mod envelope;
mod error;
mod event;
mod extension;
pub mod handler;
#[cfg(feature = "tower")]
pub mod layer;
mod ledger;
mod options;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod panic;
mod pipeline;
pub mod router;
mod shutdown;
pub mod telemetry;

pub use adapter::{Adapter, BatchError, Failure};
pub use ambient::{
    commit, current, current_buffer, emit, emit_with_metadata, flush, set_global_default, start,
    terminate, transaction, with_default,
};
pub use async_trait::async_trait;
pub use buffer::{Buffer, PendingCommit};
pub use builder::{EmissionsBuilder, IntoAdapter, Named, Registration};
pub use emissions::Emissions;
pub use envelope::{CloudEvents, Envelope};
pub use error::{BoxError, BufferState, Error};
pub use event::{Event, Metadata};
pub use extension::Extension;
pub use handler::{
    CASCADE_DEPTH, CAUSATION_ID, CORRELATION_ID, Handled, Handler, HandlerContext, HandlerOptions,
};
pub use ledger::{
    AdapterBacklog, AdapterReport, CommitOutcome, DeliveryCounts, DeliveryReport, HandlerCounts,
    HandlerReport, Receipt,
};
pub use options::{
    AdapterOptions, DeadLetter, DeadLetterCause, DeadLetterHook, OverflowPolicy, RetryPolicy,
};
pub use router::TopicRouter;

/// The examples of this crate's README, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
