//! Kafka delivery for `emissions`, on rdkafka's `FutureProducer`.
//!
//! # Records
//!
//! The value is the event's payload bytes as serialized at emit time ([`ValueFormat::Payload`],
//! the default) or a JSON envelope ([`ValueFormat::Envelope`]). Headers: `event-name`,
//! `event-id`, `event-time` (RFC 3339), `content-type: application/json`, and W3C
//! `traceparent`/`tracestate` when the event carries them. The record timestamp is the emit time.
//! The key is the event id by default, or a metadata or payload field ([`KeyStrategy`]) so that
//! all events of one entity land on one partition, in order. With
//! [`KafkaEndpoint::cloudevents`] records are CloudEvents 1.0 instead (Kafka protocol binding):
//! binary mode (`ce_*` headers, the payload as the value) or structured mode
//! (`application/cloudevents+json`).
//!
//! # TLS, SASL, compression
//!
//! rdkafka's build features pass through — `ssl`, `ssl-vendored`, `sasl`, `gssapi`, `zstd`,
//! `dynamic-linking`, `cmake-build` — and [`rdkafka`] is re-exported; set
//! `security.protocol`, `sasl.*` and `ssl.*` with [`KafkaEndpoint::property`].
//!
//! # Delivery
//!
//! A batch is enqueued in order and every delivery report is awaited; the adapter reports
//! exactly which events failed and why. A full local queue makes it wait (backpressure, not
//! loss). Retriable broker errors are retried by librdkafka within `message.timeout.ms`
//! (idempotent producer: no duplicates, order kept); whatever still fails — message too large,
//! unknown topic, authorization, or a timeout ("may or may not have been written") — fails at
//! once and goes to the dead-letter hook with the reason. A fatal producer error recreates the
//! producer and is logged.
//!
//! # Order
//!
//! Per partition, in commit order: librdkafka keeps the order itself (idempotent producer), so
//! the endpoint registers with core retries off ([`RetryPolicy::none`](emissions_core::RetryPolicy::none))
//! and needs no ordering key in the core — a core retry would only reorder and duplicate what
//! librdkafka already retried.
//!
//! # Shutdown
//!
//! After the core drains the queue, the producer is flushed within the shutdown deadline; a
//! flush that cannot finish is reported with the number of messages still in flight (those
//! events were already counted by the core when their batch was cut off).
//!
//! # Pointing it at Kafka
//!
//! [`KafkaEndpoint::new`] takes the bootstrap servers. The tests and examples read
//! `EMISSIONS_KAFKA_BROKERS`; `cargo xtask broker start` runs a local Kafka-compatible broker.
//!
//! See [`KafkaEndpoint`] for configuration and defaults.
#![doc(test(attr(deny(warnings))))]

mod adapter;
mod config;
mod error;
mod request_builder;
mod service;

pub use adapter::KafkaAdapter;
pub use config::{DEFAULT_PROPERTIES, KafkaEndpoint, KeyStrategy, ValueFormat};
pub use error::Error;
pub use request_builder::headers;

/// The rdkafka crate this one is built on, for its types (`ClientConfig` properties are set
/// through [`KafkaEndpoint::property`]).
pub use rdkafka;

/// The examples of this crate's README, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
