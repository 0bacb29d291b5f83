//! The outbox's tables, and the migrations that create them: embedded in the crate, tracked in
//! a table of their own (`emissions_outbox_schema`, so they never mix with the application's
//! own migrations), run at start by default or explicitly ([`Migrations`]).
//!
//! ```text
//! emissions_outbox_events      one row per committed event: id, name, payload bytes as
//!                              emitted, metadata, emit time; `seq` is the commit order
//! emissions_outbox_deliveries  one row per (event, destination): state (pending, delivered,
//!                              failed, abandoned — a pending delivery holding a lease is in
//!                              flight), attempts, next attempt time, first attempt time, last
//!                              error, lease owner and expiry, fence, re-deliveries, ordering
//!                              key; `takeover` is 0 (last claim was a first claim), 1 (last
//!                              claim took over an expired lease or a cut-off attempt: a
//!                              re-delivery) or 2 (released by a shutdown after an attempt
//!                              that may have reached the destination); `event_seq` names
//!                              its event
//!                              (no foreign key: the outbox deletes an event only once no
//!                              delivery names it, and a per-row constraint check would cost
//!                              every commit and every acknowledgement)
//! ```

/// The schema version this crate writes and reads.
pub(crate) const VERSION: i64 = 1;

/// When the outbox creates or upgrades its tables.
///
/// ```
/// assert_eq!(emissions_outbox::Migrations::default(), emissions_outbox::Migrations::AtStart);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Migrations {
    /// When the outbox is built (the default).
    #[default]
    AtStart,
    /// Only when [`Outbox::migrate`](crate::Outbox::migrate) is called; building an outbox on
    /// an older schema fails with [`Error::SchemaTooOld`](crate::Error::SchemaTooOld).
    Explicit,
}

/// Migration `i` (from version `i` to `i + 1`), as statements, per backend.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: &[&[&str]] = &[&[
    "CREATE TABLE emissions_outbox_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        metadata TEXT NOT NULL,
        emitted_at_us INTEGER NOT NULL,
        committed_at_ms INTEGER NOT NULL
    )",
    "CREATE TABLE emissions_outbox_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq INTEGER NOT NULL,
        destination TEXT NOT NULL,
        ordering_key TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER NOT NULL,
        first_attempt_at_ms INTEGER,
        last_error TEXT,
        lease_owner TEXT,
        lease_until_ms INTEGER,
        fence INTEGER NOT NULL DEFAULT 0,
        redeliveries INTEGER NOT NULL DEFAULT 0,
        takeover INTEGER NOT NULL DEFAULT 0,
        updated_at_ms INTEGER NOT NULL
    )",
    "CREATE INDEX emissions_outbox_queue
        ON emissions_outbox_deliveries (destination, event_seq) WHERE state = 'pending'",
    "CREATE INDEX emissions_outbox_lanes
        ON emissions_outbox_deliveries (destination, ordering_key, event_seq)
        WHERE ordering_key IS NOT NULL AND state = 'pending'",
    "CREATE INDEX emissions_outbox_unordered
        ON emissions_outbox_deliveries (destination, next_attempt_at_ms, event_seq)
        WHERE ordering_key IS NULL AND state = 'pending'",
    "CREATE INDEX emissions_outbox_by_event ON emissions_outbox_deliveries (event_seq)",
]];

/// Migration `i` (from version `i` to `i + 1`), as statements, per backend.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: &[&[&str]] = &[&[
    "CREATE TABLE emissions_outbox_events (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        payload BYTEA NOT NULL,
        metadata TEXT NOT NULL,
        emitted_at_us BIGINT NOT NULL,
        committed_at_ms BIGINT NOT NULL
    )",
    "CREATE TABLE emissions_outbox_deliveries (
        id BIGSERIAL PRIMARY KEY,
        event_seq BIGINT NOT NULL,
        destination TEXT NOT NULL,
        ordering_key TEXT,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at_ms BIGINT NOT NULL,
        first_attempt_at_ms BIGINT,
        last_error TEXT,
        lease_owner TEXT,
        lease_until_ms BIGINT,
        fence BIGINT NOT NULL DEFAULT 0,
        redeliveries BIGINT NOT NULL DEFAULT 0,
        takeover BIGINT NOT NULL DEFAULT 0,
        updated_at_ms BIGINT NOT NULL
    ) WITH (fillfactor = 80)",
    "CREATE INDEX emissions_outbox_queue
        ON emissions_outbox_deliveries (destination, event_seq) WHERE state = 'pending'",
    "CREATE INDEX emissions_outbox_lanes
        ON emissions_outbox_deliveries (destination, ordering_key, event_seq)
        WHERE ordering_key IS NOT NULL AND state = 'pending'",
    "CREATE INDEX emissions_outbox_unordered
        ON emissions_outbox_deliveries (destination, next_attempt_at_ms, event_seq)
        WHERE ordering_key IS NULL AND state = 'pending'",
    "CREATE INDEX emissions_outbox_by_event ON emissions_outbox_deliveries (event_seq)",
    // Rows come and go all the time: vacuum after 1 % of a table changed (the default 20 %
    // lets a large outbox carry a lot of dead rows between runs).
    "ALTER TABLE emissions_outbox_events SET (autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000)",
    "ALTER TABLE emissions_outbox_deliveries SET (autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000)",
]];
