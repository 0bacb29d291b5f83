//! The outbox's tables, and the migrations that create them: embedded in the crate, tracked in
//! a table of their own (`emissions_outbox_schema`, so they never mix with the application's
//! own migrations), run at start by default or explicitly ([`Migrations`]).
//!
//! ```text
//! emissions_outbox_events      one row per committed event: id, name, payload bytes as
//!                              emitted, metadata, emit time; `seq` is the commit order
//! emissions_outbox_deliveries  one row per (event, destination): state (pending, in_flight,
//!                              delivered, failed, abandoned), attempts, next attempt time,
//!                              first attempt time, last error, lease owner and expiry, fence,
//!                              re-deliveries (claims taken over from an expired lease; the
//!                              last claim's in `takeover`), ordering key
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
        event_seq INTEGER NOT NULL REFERENCES emissions_outbox_events (seq),
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
        ON emissions_outbox_deliveries (destination, state, event_seq)",
    "CREATE INDEX emissions_outbox_due
        ON emissions_outbox_deliveries (destination, state, next_attempt_at_ms)",
    "CREATE INDEX emissions_outbox_lanes
        ON emissions_outbox_deliveries (destination, ordering_key, event_seq)
        WHERE ordering_key IS NOT NULL",
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
        event_seq BIGINT NOT NULL REFERENCES emissions_outbox_events (seq),
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
    )",
    "CREATE INDEX emissions_outbox_queue
        ON emissions_outbox_deliveries (destination, state, event_seq)",
    "CREATE INDEX emissions_outbox_due
        ON emissions_outbox_deliveries (destination, state, next_attempt_at_ms)",
    "CREATE INDEX emissions_outbox_lanes
        ON emissions_outbox_deliveries (destination, ordering_key, event_seq)
        WHERE ordering_key IS NOT NULL",
    "CREATE INDEX emissions_outbox_by_event ON emissions_outbox_deliveries (event_seq)",
]];
