//! [`OutboxConfig`]: where the store is and how the relay behaves; plain data with documented
//! defaults, checked by [`validate`](OutboxConfig::validate), turned into an [`Outbox`] by one
//! [`build`](OutboxConfig::build).

use std::fmt;
#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::time::Duration;

use crate::schema::Migrations;
use crate::store::{Retention, Store};
use crate::{Error, Outbox};

/// Where the outbox tables live.
#[derive(Clone)]
enum StoreSpec {
    #[cfg(feature = "sqlite")]
    SqliteFile(PathBuf),
    #[cfg(feature = "sqlite")]
    SqlitePool(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    PostgresUrl(String),
    #[cfg(feature = "postgres")]
    PostgresPool(sqlx::PgPool),
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "sqlite")]
            StoreSpec::SqliteFile(path) => write!(f, "SqliteFile({})", path.display()),
            #[cfg(feature = "sqlite")]
            StoreSpec::SqlitePool(_) => f.write_str("SqlitePool(..)"),
            #[cfg(feature = "postgres")]
            StoreSpec::PostgresUrl(_) => f.write_str("PostgresUrl(..)"),
            #[cfg(feature = "postgres")]
            StoreSpec::PostgresPool(_) => f.write_str("PostgresPool(..)"),
        }
    }
}

/// The outbox's configuration.
///
/// Defaults: lease 5 minutes; poll every second (the fallback behind in-process wake-ups and
/// PostgreSQL `LISTEN/NOTIFY`); claims of up to 100 deliveries; at most 500 deliveries in flight
/// per destination per instance; delivered deliveries deleted ([`Retention::Delete`]); payloads up
/// to 1 MiB; migrations at start; `NOTIFY` channel `emissions_outbox`; cleanup every minute.
///
/// ```
/// use std::time::Duration;
/// use emissions_outbox::{OutboxConfig, Retention};
///
/// let config = OutboxConfig::sqlite("data/app.db")
///     .lease(Duration::from_secs(120))
///     .retention(Retention::Archive(Duration::from_secs(7 * 86_400)));
/// assert!(config.validate().is_ok());
///
/// let err = OutboxConfig::sqlite("data/app.db").batch_size(0).validate().unwrap_err();
/// assert_eq!(err.to_string(), "outbox: invalid `batch_size`: must be at least 1");
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct OutboxConfig {
    store: StoreSpec,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) batch_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) retention: Retention,
    pub(crate) max_payload_bytes: usize,
    pub(crate) migrations: Migrations,
    pub(crate) channel: String,
    pub(crate) purge_interval: Duration,
}

impl OutboxConfig {
    fn with_store(store: StoreSpec) -> Self {
        OutboxConfig {
            store,
            lease: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            max_in_flight: 500,
            retention: Retention::Delete,
            max_payload_bytes: 1024 * 1024,
            migrations: Migrations::AtStart,
            channel: "emissions_outbox".to_owned(),
            purge_interval: Duration::from_secs(60),
        }
    }

    /// The embedded store: a SQLite file (created if missing; WAL journal, 5 s busy timeout).
    /// Commit with [`CommitIn`](crate::CommitIn) in a transaction of a pool on the same file —
    /// better, hand the outbox that pool with [`sqlite_pool`](Self::sqlite_pool).
    ///
    /// See [`OutboxConfig`].
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self::with_store(StoreSpec::SqliteFile(path.into()))
    }

    /// The application's own SQLite pool (the events are written in its transactions).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite://data/app.db?mode=rwc").await?;
    /// let outbox = emissions_outbox::OutboxConfig::sqlite_pool(pool).build().await?;
    /// # let _ = outbox; Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn sqlite_pool(pool: sqlx::SqlitePool) -> Self {
        Self::with_store(StoreSpec::SqlitePool(pool))
    }

    /// A PostgreSQL database, by URL (several instances may share it).
    ///
    /// ```
    /// let config = emissions_outbox::OutboxConfig::postgres("postgres://app@db/app");
    /// # let _ = config;
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::with_store(StoreSpec::PostgresUrl(url.into()))
    }

    /// The application's own PostgreSQL pool (the events are written in its transactions).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://app@db/app").await?;
    /// let outbox = emissions_outbox::OutboxConfig::postgres_pool(pool).build().await?;
    /// # let _ = outbox; Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(pool: sqlx::PgPool) -> Self {
        Self::with_store(StoreSpec::PostgresPool(pool))
    }

    /// How long another instance waits before taking over a delivery this one claimed. The
    /// lease is extended while a claimed delivery waits in this instance for room in its
    /// adapter's queue; once handed to the adapter it has at least two thirds of the lease
    /// left. Longer than the slowest attempt: a takeover is a re-delivery. Defaults to
    /// 5 minutes.
    ///
    /// See [`OutboxConfig`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The longest the relay sleeps without looking at the store (the fallback when no
    /// wake-up arrives, e.g. behind a transaction-mode pooler). It also bounds how late a
    /// retry scheduled by another instance (or before a restart) and an expired lease are
    /// picked up; this instance's own retries wake it on time. Defaults to 1 second.
    ///
    /// See [`OutboxConfig`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Most deliveries claimed at once per destination. Defaults to 100.
    ///
    /// See [`OutboxConfig`].
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Most deliveries one instance holds claimed per destination. Defaults to 500.
    ///
    /// See [`OutboxConfig`].
    pub fn max_in_flight(mut self, deliveries: usize) -> Self {
        self.max_in_flight = deliveries;
        self
    }

    /// What to keep of delivered deliveries. Defaults to [`Retention::Delete`].
    ///
    /// See [`OutboxConfig`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The largest payload accepted at commit (larger: [`Error::PayloadTooLarge`], nothing
    /// committed). Defaults to 1 MiB.
    ///
    /// See [`OutboxConfig`].
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// When to create or upgrade the tables. Defaults to [`Migrations::AtStart`].
    ///
    /// See [`OutboxConfig`].
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// The PostgreSQL `NOTIFY` channel. Defaults to `emissions_outbox`.
    ///
    /// See [`OutboxConfig`].
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How often delivered rows and finished events are cleaned up. Defaults to 1 minute.
    ///
    /// See [`OutboxConfig`].
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval;
        self
    }

    /// Checks the configuration; the error names the field and says how to fix it.
    ///
    /// See [`OutboxConfig`].
    pub fn validate(&self) -> Result<(), Error> {
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.max_in_flight < self.batch_size {
            return Err(Error::config(
                "max_in_flight",
                format!(
                    "{} is smaller than batch_size {}; raise max_in_flight or lower batch_size",
                    self.max_in_flight, self.batch_size
                ),
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(Error::config("lease", "must be at least 1 second"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config("poll_interval", "must be longer than zero"));
        }
        if self.purge_interval.is_zero() {
            return Err(Error::config("purge_interval", "must be longer than zero"));
        }
        if self.max_payload_bytes == 0 {
            return Err(Error::config("max_payload_bytes", "must be at least 1"));
        }
        if self.channel.is_empty()
            || !self
                .channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::config(
                "channel",
                "must be a non-empty name of ASCII letters, digits and underscores",
            ));
        }
        Ok(())
    }

    /// Connects, creates or checks the tables, and returns the outbox — attach it with
    /// `EmissionsBuilder::extension`, which starts its relay with the instance.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let outbox = emissions_outbox::OutboxConfig::sqlite("data/app.db").build().await?;
    /// let emissions = emissions_core::Emissions::builder().extension(outbox.clone()).start().await?;
    /// # let _ = emissions; Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Outbox, Error> {
        self.validate()?;
        let store = match &self.store {
            #[cfg(feature = "sqlite")]
            StoreSpec::SqliteFile(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Database(e.into()))?;
                }
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                Store::Sqlite(sqlx::SqlitePool::connect_with(options).await?)
            }
            #[cfg(feature = "sqlite")]
            StoreSpec::SqlitePool(pool) => Store::Sqlite(pool.clone()),
            #[cfg(feature = "postgres")]
            StoreSpec::PostgresUrl(url) => Store::Postgres(sqlx::PgPool::connect(url).await?),
            #[cfg(feature = "postgres")]
            StoreSpec::PostgresPool(pool) => Store::Postgres(pool.clone()),
        };
        store.check(self.migrations).await?;
        Ok(Outbox::new(store, self))
    }
}
