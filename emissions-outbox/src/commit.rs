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

/// Confirms the buffer's commit, then releases the savepoint its rows were written in. In
/// this order: once the release has been sent the rows are part of the caller's transaction
/// whether or not this future lives to see the answer, so the buffer must already say
/// committed. (A release that fails means the caller's transaction is broken and cannot
/// commit: its events go with it, as with any rolled-back transaction.)
async fn release<DB: sqlx::Database>(
    savepoint: sqlx::Transaction<'_, DB>,
    pending: emissions_core::PendingCommit,
) -> Result<usize, sqlx::Error> {
    let count = pending.confirm();
    savepoint.commit().await?;
    Ok(count)
}

/// Commits a buffer's events in the caller's database transaction: the events and one delivery
/// per destination are written with the caller's own rows, so they commit — and are delivered,
/// at least once — exactly when the transaction commits, and vanish if it rolls back.
///
/// The rows are written in a savepoint of `tx`. On an error (the database refused, a payload
/// too large, no outbox attached) the savepoint is rolled back: nothing was written, `tx` can
/// go on (and commit its own rows), and the buffer is open again with its events — so it is if
/// the future is dropped while writing (the rollback then runs before `tx`'s next statement).
/// Once the rows are written the buffer is committed (closed), and whether its events are
/// delivered is the transaction's to decide — also if the future is dropped while the
/// savepoint is being released.
///
/// On PostgreSQL, two transactions that write deliveries with the same ordering key write them
/// one after the other: the second waits in `commit_in` until the first has ended (a
/// transaction-scoped advisory lock), so that each key's deliveries keep commit order and
/// never overlap. (The locks are 1 024 slots that keys hash to, so that a commit of any size
/// takes at most 1 024 locks; two keys of one slot also take turns.)
///
/// On PostgreSQL the rows are written by one statement; a future dropped while that
/// statement runs cannot know whether it was written, and leaves the buffer open. Its events
/// are then written at most once all the same: event ids are unique, and committing the
/// buffer again (in the same transaction or a later one) writes only events not yet written.
/// Commit it again or roll the transaction back.
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
        // Wake the relay when this transaction commits (and never if it rolls back). The hook
        // stays on the connection; waking the relay more often than needed is harmless. Set
        // first: nothing may be awaited between writing the rows and confirming the commit.
        let wake = outbox.inner().wake.clone();
        tx.lock_handle().await?.set_commit_hook(move || {
            wake.notify_one();
            true
        });
        // In a savepoint: if this fails, or the future is dropped, what it wrote is rolled
        // back and the caller's transaction goes on as before.
        let mut savepoint = sqlx::Acquire::begin(&mut **tx).await?;
        store::insert_sqlite(&mut savepoint, &rows).await?;
        Ok(release(savepoint, pending).await?)
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
        // The savepoint is taken and ended with plain statements, not sqlx's nested
        // transaction: sqlx's `begin` dropped before the SAVEPOINT's answer rolls back the
        // caller's whole transaction. Dropped here, this leaves at most an empty savepoint.
        let conn: &mut sqlx::PgConnection = tx;
        sqlx::Executor::execute(&mut *conn, "SAVEPOINT emissions_outbox").await?;
        // One statement (the rows and the `pg_notify` every instance's relay receives on
        // commit). Dropped while it runs, its rows may be written while the buffer is open
        // again: committing the buffer again writes nothing twice (see the trait's docs).
        match store::insert_postgres(conn, &rows, &outbox.inner().config.channel).await {
            Ok(()) => {
                let count = pending.confirm();
                // Dropped here, the savepoint stays open and its rows commit with `tx`.
                sqlx::Executor::execute(conn, "RELEASE SAVEPOINT emissions_outbox").await?;
                Ok(count)
            }
            Err(err) => {
                // The statement failed: back to before it, so that `tx` can go on.
                sqlx::Executor::execute(
                    conn,
                    "ROLLBACK TO SAVEPOINT emissions_outbox; RELEASE SAVEPOINT emissions_outbox",
                )
                .await?;
                Err(err)
            }
        }
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
