//! Per-request event buffering and fan-out delivery to pluggable adapters.
//!
//! Application code opens a [`Buffer`] per request, emits named events into it, and commits them
//! atomically when the request succeeds (or discards them when it fails). Committed events fan
//! out through a flume-backed pipeline — one bounded queue and consumer task per [`Adapter`],
//! batches of up to `max_demand`, independent backpressure — and every event ends, for every
//! adapter, in a counted state: delivered, filtered, failed or dropped.
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
//! let emissions = Emissions::builder().adapter("print", Print).start().await?;
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
mod emissions;
mod error;
mod event;
pub mod handler;
#[cfg(feature = "tower")]
pub mod layer;
mod options;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod pipeline;
mod receipt;
pub mod router;
pub mod telemetry;

pub use adapter::{Adapter, BatchError, Failure};
pub use ambient::{
    commit, current, current_buffer, emit, emit_with_metadata, flush, set_global_default, start,
    terminate, transaction, with_default,
};
pub use async_trait::async_trait;
pub use buffer::Buffer;
pub use emissions::{Emissions, EmissionsBuilder};
pub use error::{BoxError, BufferState, Error};
pub use event::{Event, Metadata};
pub use handler::{
    CASCADE_DEPTH, CAUSATION_ID, CORRELATION_ID, Handled, Handler, HandlerContext, HandlerCounts,
    HandlerOptions, HandlerReport,
};
pub use options::{AdapterOptions, DeadLetter, DeadLetterHook, OverflowPolicy, RetryPolicy};
pub use receipt::{AdapterReport, CommitOutcome, DeliveryCounts, DeliveryReport, Receipt};
pub use router::TopicRouter;
