//! Durable, at-least-once delivery for `emissions`: committed means delivered.
//!
//! The outbox writes a buffer's events, and one delivery per destination (every registered
//! adapter, and the handler dispatcher), **in the application's own database transaction**
//! ([`CommitIn`]) — or in a transaction of its own ([`DurableCommit`]). A relay then delivers
//! them through the instance's own adapters and ledger, and records every attempt in the store.
//! SQLite (a file, embedded) is the default; PostgreSQL serves several instances.
//!
//! # Guarantees
//!
//! - **Rolled back ⇒ never delivered. Committed ⇒ delivered at least once** to every
//!   destination — across crashes, restarts and deploys — or ended `failed` (retries used up) or
//!   `abandoned` (a permanent failure) in the store, where it can be inspected
//!   ([`Outbox::deliveries`], [`Outbox::stats`]) and re-queued ([`Outbox::replay`]).
//! - **Retries are rows with a due time**, on the adapter's own [`RetryPolicy`](emissions_core::RetryPolicy)
//!   (`Retry-After` honoured), never in-memory sleeps: a redeploy does not reset a day-long
//!   schedule.
//! - **Per-key order**: for an adapter with `ordered_by`, each key's deliveries go one at a time
//!   in commit order, across every instance; a retrying delivery holds back only its own key.
//!   On PostgreSQL, two transactions writing the same key take turns (the second waits in
//!   `commit_in` until the first ends), so that commit order and the order the relay sees are
//!   the same. "One at a time" holds within the lease: a delivery that outlives its lease may
//!   be taken over while it is still under way.
//! - **Duplicates are visible, never silent.** A delivery is at least once: if a process dies
//!   after sending and before recording the outcome, its lease expires mid-delivery, or a
//!   shutdown deadline cuts an attempt off, another attempt follows. The event id is the
//!   idempotency key on every wire (`webhook-id`, the Kafka `event-id` header, the WebSocket
//!   frame id); every such attempt is counted as a possible duplicate
//!   ([`Outbox::redeliveries`], [`DeliveryRecord::redeliveries`]).
//!
//! # Relay
//!
//! Woken in-process when a caller's transaction commits (SQLite: a commit hook on its
//! connection; PostgreSQL: `pg_notify` inside the transaction, which also wakes every other
//! instance's `LISTEN`), and otherwise polling ([`OutboxConfig::poll_interval`], which works
//! behind a transaction-mode pooler where `LISTEN` does not). Deliveries are **claimed** — never
//! read past an id cursor, so an event whose transaction committed after a newer one is not
//! skipped — with `FOR UPDATE SKIP LOCKED` on PostgreSQL, under a **lease**: a dead instance's
//! claims expire and others take over. Every claim bumps a **fence**; an outcome is written only
//! where the fence still matches, so a late acknowledgement from a lost lease never overwrites
//! newer state. No database transaction stays open across a delivery.
//!
//! # Faults and bad input
//!
//! A commit writes in a savepoint of the caller's transaction: a database that is down or
//! refuses at commit is a typed error ([`Error::Database`]), the caller's transaction goes on,
//! and the buffer keeps its events (an event id already written is never written twice, so
//! committing the buffer again after a cancelled commit is safe); so does a payload over
//! [`OutboxConfig::max_payload_bytes`] ([`Error::PayloadTooLarge`]). A commit of any size is
//! written (in parts, under the databases' parameter limits). An ordering key longer than
//! [`MAX_KEY_BYTES`] or holding a NUL character stores that delivery `abandoned`, with the
//! reason. A schema from a newer version of this crate is refused
//! ([`Error::SchemaTooNew`]). Migrations are embedded and run when the outbox is built, or only
//! by [`Outbox::migrate`] ([`Migrations::Explicit`]).
//!
//! # Example
//!
//! ```no_run
//! use emissions_core::Emissions;
//! use emissions_outbox::{CommitIn, OutboxConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::SqlitePool::connect("sqlite://data/app.db?mode=rwc").await?;
//! let outbox = OutboxConfig::sqlite_pool(pool.clone()).build().await?;
//! let emissions = Emissions::builder()
//!     // .adapter(...)? / .adapter(...)? / .adapter(...)
//!     .extension(outbox.clone())
//!     .start()
//!     .await?;
//!
//! // In a request: the order and its event commit together, or not at all.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (item) VALUES (?)").bind("widget").execute(&mut *tx).await?;
//! let buffer = emissions.start();
//! buffer.emit("order_created", &serde_json::json!({"item": "widget"}))?;
//! buffer.commit_in(&mut tx).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings), allow(dead_code))))]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("emissions-outbox needs a store: enable the `sqlite` or `postgres` feature");

mod commit;
mod config;
mod error;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod outbox;
mod relay;
mod schema;
mod sql;
mod store;

pub use commit::{CommitIn, DurableCommit};
pub use config::OutboxConfig;
pub use error::Error;
pub use outbox::{MAX_KEY_BYTES, Outbox};
pub use schema::Migrations;
pub use store::{DeliveryRecord, DestinationStats, Replay, Retention};
