//! Committing into the outbox: [`CommitIn`] (the caller's own database transaction) and
//! [`DurableCommit`] (a transaction of the store's own).

use emissions_core::{Buffer, async_trait};

use crate::{Error, Outbox, store};

fn outbox_of(buffer: &Buffer) -> Result<Outbox, Error> {
    buffer
        .emissions()
        .extension::<Outbox>()
        .map(|outbox| (*outbox).clone())
        .ok_or(Error::NoOutbox)
}

/// Commits a buffer's events in the caller's database transaction: the events and one delivery
/// per destination are written with the caller's own rows, so they commit — and are delivered,
/// at least once — exactly when the transaction commits, and vanish if it rolls back.
///
/// On an error (the database refused, a payload too large, no outbox attached) nothing was
/// written and the buffer is open again with its events; so it is if the future is dropped.
/// Once it returns `Ok`, the buffer is committed (closed): whether its events are delivered is
/// now the transaction's to decide.
///
/// ```no_run
/// use emissions_outbox::CommitIn;
///
/// # async fn create_order(pool: sqlx::SqlitePool, emissions: emissions_core::Emissions) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (item) VALUES (?)").bind("widget").execute(&mut *tx).await?;
/// let buffer = emissions.start();
/// buffer.emit("order_created", &serde_json::json!({"item": "widget"}))?;
/// buffer.commit_in(&mut tx).await?;
/// tx.commit().await?; // the relay is woken now, and delivers
/// # Ok(()) }
/// ```
#[async_trait]
pub trait CommitIn<Tx: Send> {
    /// Writes the events in `tx`; returns how many.
    async fn commit_in(&self, tx: &mut Tx) -> Result<usize, Error>;
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl<'c> CommitIn<sqlx::Transaction<'c, sqlx::Sqlite>> for Buffer {
    async fn commit_in(
        &self,
        tx: &mut sqlx::Transaction<'c, sqlx::Sqlite>,
    ) -> Result<usize, Error> {
        let outbox = outbox_of(self)?;
        let pending = self.begin_commit()?;
        let rows = outbox.rows(pending.events())?;
        store::insert_sqlite(tx, &rows).await?;
        // Wake the relay when this transaction commits (and never if it rolls back). The hook
        // stays on the connection; waking the relay more often than needed is harmless.
        let wake = outbox.inner().wake.clone();
        tx.lock_handle().await?.set_commit_hook(move || {
            wake.notify_one();
            true
        });
        Ok(pending.confirm())
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl<'c> CommitIn<sqlx::Transaction<'c, sqlx::Postgres>> for Buffer {
    async fn commit_in(
        &self,
        tx: &mut sqlx::Transaction<'c, sqlx::Postgres>,
    ) -> Result<usize, Error> {
        let outbox = outbox_of(self)?;
        let pending = self.begin_commit()?;
        let rows = outbox.rows(pending.events())?;
        // `pg_notify` in the transaction: delivered to every instance's relay on commit.
        store::insert_postgres(tx, &rows, &outbox.inner().config.channel).await?;
        Ok(pending.confirm())
    }
}

/// Commits a buffer's events durably in a transaction of the store's own, for code that has no
/// database transaction to join. Delivered at least once, across crashes and restarts.
///
/// ```no_run
/// use emissions_outbox::DurableCommit;
/// # async fn f(emissions: emissions_core::Emissions) -> Result<(), emissions_outbox::Error> {
/// let buffer = emissions.start();
/// buffer.emit("report_ready", &serde_json::json!({"rows": 10}))?;
/// buffer.commit_durably().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait DurableCommit {
    /// Writes the events in the store's own transaction; returns how many.
    async fn commit_durably(&self) -> Result<usize, Error>;
}

#[async_trait]
impl DurableCommit for Buffer {
    async fn commit_durably(&self) -> Result<usize, Error> {
        let outbox = outbox_of(self)?;
        let pending = self.begin_commit()?;
        let rows = outbox.rows(pending.events())?;
        let inner = outbox.inner();
        inner.store.insert_own(&rows, &inner.config.channel).await?;
        outbox.wake();
        Ok(pending.confirm())
    }
}
