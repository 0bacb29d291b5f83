//! [`Store`]: the outbox tables on SQLite or PostgreSQL, and every statement the outbox runs
//! against them. No statement here runs while network I/O is in progress: claims and
//! acknowledgements are short transactions of their own.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emissions_core::{Event, Metadata};
use sqlx::Row;

use crate::schema::{self, Migrations};
use crate::{Error, sql};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    ms(SystemTime::now())
}

pub(crate) fn ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where the outbox tables live.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$q` to its SQL module.
macro_rules! on_store {
    ($store:expr, |$pool:ident, $q:ident| $body:expr) => {
        match $store {
            #[cfg(feature = "sqlite")]
            Store::Sqlite($pool) => {
                #[allow(unused_imports)]
                use sql::sqlite as $q;
                $body
            }
            #[cfg(feature = "postgres")]
            Store::Postgres($pool) => {
                #[allow(unused_imports)]
                use sql::postgres as $q;
                $body
            }
        }
    };
}

/// One delivery row to write at commit.
#[derive(Debug)]
pub(crate) struct NewDelivery {
    pub(crate) destination: String,
    pub(crate) key: Option<String>,
    /// `pending`, or `abandoned` when the ordering key could not be computed.
    pub(crate) state: &'static str,
    pub(crate) error: Option<String>,
}

/// A delivery claimed by this instance.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) event_seq: i64,
    pub(crate) attempts: u32,
    pub(crate) fence: i64,
    pub(crate) first_attempt_at_ms: Option<i64>,
    /// Taken over from an expired lease: the previous attempt may have reached the
    /// destination, so this one may be a duplicate.
    pub(crate) redelivery: bool,
    /// The event, read in the same statement or transaction as the claim: `None` if its row
    /// is missing, `Err` if it cannot be read back.
    pub(crate) event: Option<Result<Event, String>>,
}

/// Where one step of a claim looks (see [`Store::claim`]).
#[derive(Clone, Copy)]
enum ClaimStep {
    Oldest,
    Heads,
    Unordered,
}

/// The parameters every claim statement takes.
struct ClaimParams<'a> {
    owner: &'a str,
    lease_until: i64,
    now: i64,
    destination: &'a str,
    wanted: i64,
}

/// A JSON array of numbers (SQLite reads it with `json_each`).
#[cfg(feature = "sqlite")]
fn json_array(values: &[i64]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

/// What to write for one attempt's outcome (applied only if the fence still matches).
#[derive(Debug)]
pub(crate) enum AckKind {
    /// Delivered or filtered: done for this destination.
    Done,
    /// Retry at `next_at_ms`.
    Retry { next_at_ms: i64, error: String },
    /// `failed` (retries used up) or `abandoned` (permanent failure).
    GiveUp { state: &'static str, error: String },
    /// Not attempted to the end (shutdown): due again now.
    Release {
        /// An attempt may have reached the destination (cut off by a shutdown deadline).
        uncertain: bool,
    },
}

#[derive(Debug)]
pub(crate) struct Ack {
    pub(crate) id: i64,
    /// Its event (SQLite deletes the event with its last delivery by it; PostgreSQL finds it
    /// in the same statement).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) event_seq: i64,
    pub(crate) fence: i64,
    pub(crate) attempts: u32,
    /// When the first attempt was made, if this was it.
    pub(crate) first_attempt_at_ms: i64,
    pub(crate) kind: AckKind,
}

/// What to keep of delivered deliveries.
///
/// ```
/// use std::time::Duration;
/// let keep = emissions_outbox::Retention::Archive(Duration::from_secs(86_400));
/// assert_ne!(keep, emissions_outbox::Retention::Delete);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Delete a delivery once done, and an event with its last delivery (the default).
    #[default]
    Delete,
    /// Keep delivered deliveries (state `delivered`, replayable) for this long, then delete.
    Archive(Duration),
}

/// Which deliveries [`Outbox::replay`](crate::Outbox::replay) re-queues.
///
/// ```
/// use emissions_outbox::Replay;
/// let replay = Replay::failed().destination("billing").event_name("order_created");
/// # let _ = replay;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Replay {
    states: Vec<&'static str>,
    destination: Option<String>,
    event_name: Option<String>,
    event_id: Option<uuid::Uuid>,
    from: Option<SystemTime>,
    until: Option<SystemTime>,
}

impl Replay {
    /// Deliveries that ended `failed` or `abandoned`.
    ///
    /// See [`Replay`].
    pub fn failed() -> Self {
        Replay {
            states: vec!["failed", "abandoned"],
            destination: None,
            event_name: None,
            event_id: None,
            from: None,
            until: None,
        }
    }

    /// Delivered deliveries still kept by [`Retention::Archive`] (to send them again).
    ///
    /// ```
    /// let replay = emissions_outbox::Replay::delivered().destination("search");
    /// # let _ = replay;
    /// ```
    pub fn delivered() -> Self {
        Replay {
            states: vec!["delivered"],
            ..Replay::failed()
        }
    }

    /// Only to this destination (adapter name).
    ///
    /// See [`Replay`].
    pub fn destination(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// Only events with this name.
    ///
    /// See [`Replay`].
    pub fn event_name(mut self, name: impl Into<String>) -> Self {
        self.event_name = Some(name.into());
        self
    }

    /// Only this event.
    ///
    /// ```
    /// let replay = emissions_outbox::Replay::failed().event_id(uuid::Uuid::nil());
    /// # let _ = replay;
    /// ```
    pub fn event_id(mut self, id: uuid::Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    /// Only events committed in `[from, until)`.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let now = SystemTime::now();
    /// let replay = emissions_outbox::Replay::failed().committed_between(now - Duration::from_secs(3600), now);
    /// # let _ = replay;
    /// ```
    pub fn committed_between(mut self, from: SystemTime, until: SystemTime) -> Self {
        self.from = Some(from);
        self.until = Some(until);
        self
    }
}

/// One delivery as the store holds it (for inspection and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryRecord {
    /// The event id.
    pub event_id: uuid::Uuid,
    /// The event name.
    pub event_name: String,
    /// The destination (adapter name).
    pub destination: String,
    /// The ordering key at that destination, if it is ordered.
    pub ordering_key: Option<String>,
    /// `pending`, `in_flight`, `delivered`, `failed` or `abandoned`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: SystemTime,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Times it was taken over from an instance whose lease expired (possible duplicates).
    pub redeliveries: u32,
}

/// The deliveries of one destination, by state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestinationStats {
    /// The destination (adapter name).
    pub destination: String,
    /// Waiting for their first attempt or a retry.
    pub pending: u64,
    /// Claimed by an instance, being attempted.
    pub in_flight: u64,
    /// Kept after delivery ([`Retention::Archive`]).
    pub delivered: u64,
    /// Retries used up.
    pub failed: u64,
    /// Failed permanently.
    pub abandoned: u64,
    /// How long the oldest pending or in-flight delivery has waited since its commit.
    pub oldest_pending_age: Option<Duration>,
    /// Deliveries taken over from an expired lease, over the rows still stored.
    pub redeliveries: u64,
}

/// `rows` groups of `cols` `?` placeholders; with `numbered`, each group ends with its index
/// as a literal (to order by).
#[cfg(feature = "sqlite")]
fn placeholders(rows: usize, cols: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(rows * (cols * 2 + 8));
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for col in 0..cols {
            if col > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        if numbered {
            sql.push_str(&format!(",{row}"));
        }
        sql.push(')');
    }
    sql
}

fn metadata_json(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).expect("a JSON map always serializes")
}

fn emitted_us(event: &Event) -> i64 {
    event
        .emitted_at()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Most parameters one SQLite statement binds (SQLite caps them at 32 766).
#[cfg(feature = "sqlite")]
const SQLITE_PARAMETERS: usize = 30_000;

/// Writes `events` and their deliveries in the caller's SQLite transaction: one call to the
/// connection per part (the events' INSERT and the deliveries' INSERT, which finds each
/// event's number by its id, sent together), a part being as many events as the parameter
/// cap allows.
#[cfg(feature = "sqlite")]
pub(crate) async fn insert_sqlite(
    conn: &mut sqlx::SqliteConnection,
    events: &[(&Event, Vec<NewDelivery>)],
) -> Result<(), Error> {
    use sql::sqlite;
    let now = now_ms();
    let mut rest = events;
    while !rest.is_empty() {
        // As many events as fit, at least one.
        let (mut taken, mut deliveries) = (0, 0);
        while let Some((_, of_event)) = rest.get(taken) {
            let fits = (taken + 1) * 6 <= SQLITE_PARAMETERS
                && (deliveries + of_event.len()) * 7 <= SQLITE_PARAMETERS;
            if taken > 0 && !fits {
                break;
            }
            taken += 1;
            deliveries += of_event.len();
        }
        let (part, later) = rest.split_at(taken);
        rest = later;
        let mut statement = format!(
            "{}{}",
            sqlite::EVENTS_INSERT,
            placeholders(part.len(), 6, false)
        );
        if deliveries > 0 {
            statement.push_str(&format!(
                "; {}{}{}",
                sqlite::DELIVERIES_INSERT,
                placeholders(deliveries, 7, true),
                sqlite::DELIVERIES_OF_EVENTS
            ));
        }
        let ids: Vec<String> = part.iter().map(|(e, _)| e.id().to_string()).collect();
        let mut query = sqlx::query(&statement);
        for ((event, _), id) in part.iter().zip(&ids) {
            query = query
                .bind(id.as_str())
                .bind(event.name())
                .bind(event.payload())
                .bind(metadata_json(event.metadata()))
                .bind(emitted_us(event))
                .bind(now);
        }
        for ((_, of_event), id) in part.iter().zip(&ids) {
            for delivery in of_event {
                query = query
                    .bind(id.as_str())
                    .bind(delivery.destination.as_str())
                    .bind(delivery.key.as_deref())
                    .bind(delivery.state)
                    .bind(now)
                    .bind(delivery.error.as_deref())
                    .bind(now);
            }
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes `events` and their deliveries in the caller's PostgreSQL transaction, and notifies
/// every instance's relay (delivered when the transaction commits, never if it rolls back).
///
/// First it takes a transaction-scoped advisory lock per (destination, ordering key) written:
/// two transactions writing the same key then write it one after the other, the second only
/// once the first has ended — so a key's deliveries are numbered in the order they become
/// visible, and a later one can never be delivered while an earlier one is still to come.
#[cfg(feature = "postgres")]
pub(crate) async fn insert_postgres(
    conn: &mut sqlx::PgConnection,
    events: &[(&Event, Vec<NewDelivery>)],
    channel: &str,
) -> Result<(), Error> {
    let ids: Vec<String> = events.iter().map(|(e, _)| e.id().to_string()).collect();
    let deliveries = events
        .iter()
        .zip(&ids)
        .flat_map(|((_, deliveries), id)| deliveries.iter().map(move |d| (id, d)));
    let mut of_event = Vec::new();
    let mut destinations = Vec::new();
    let mut keys = Vec::new();
    let mut states = Vec::new();
    let mut errors = Vec::new();
    for (id, delivery) in deliveries {
        of_event.push(id.as_str());
        destinations.push(delivery.destination.as_str());
        keys.push(delivery.key.as_deref());
        states.push(delivery.state);
        errors.push(delivery.error.as_deref());
    }
    sqlx::query(sql::postgres::INSERT)
        .bind(&ids)
        .bind(events.iter().map(|(e, _)| e.name()).collect::<Vec<_>>())
        .bind(events.iter().map(|(e, _)| e.payload()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|(e, _)| metadata_json(e.metadata()))
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|(e, _)| emitted_us(e))
                .collect::<Vec<_>>(),
        )
        .bind(of_event)
        .bind(destinations)
        .bind(keys)
        .bind(states)
        .bind(errors)
        .bind(now_ms())
        .bind(channel)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The event in columns `at..at + 5` of `row` (id, name, payload, metadata, emit time);
/// `None` when the id is NULL (no event row joined).
fn event_at<R: Row>(row: &R, at: usize) -> Result<Option<Result<Event, String>>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(id): Option<String> = row.try_get(at)? else {
        return Ok(None);
    };
    let name: String = row.try_get(at + 1)?;
    let payload: Vec<u8> = row.try_get(at + 2)?;
    let metadata: String = row.try_get(at + 3)?;
    let emitted_at_us: i64 = row.try_get(at + 4)?;
    let restored = (|| {
        let id = uuid::Uuid::parse_str(&id).map_err(|e| format!("bad event id `{id}`: {e}"))?;
        let metadata: Metadata =
            serde_json::from_str(&metadata).map_err(|e| format!("bad metadata: {e}"))?;
        let emitted_at =
            UNIX_EPOCH + Duration::from_micros(u64::try_from(emitted_at_us).unwrap_or(0));
        Event::restore(id, name, payload, metadata, emitted_at).map_err(|e| e.to_string())
    })();
    Ok(Some(restored))
}

/// A claimed delivery from the first six columns of a claim's row (its event not yet read).
fn claimed_from_row<R: Row>(row: &R) -> Result<Claimed, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let takeover: i64 = row.try_get(5)?;
    Ok(Claimed {
        id: row.try_get(0)?,
        event_seq: row.try_get(1)?,
        attempts: u32::try_from(row.try_get::<i64, _>(2)?).unwrap_or(u32::MAX),
        fence: row.try_get(3)?,
        first_attempt_at_ms: row.try_get(4)?,
        redelivery: takeover > 0,
        event: None,
    })
}

impl Store {
    /// Creates or upgrades the tables (in one transaction per migration).
    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        on_store!(self, |pool, q| {
            sqlx::query(q::SCHEMA_TABLE).execute(pool).await?;
            #[cfg(feature = "postgres")]
            let is_postgres = matches!(self, Store::Postgres(_));
            #[cfg(not(feature = "postgres"))]
            let is_postgres = false;
            let migrations: &[&[&str]] = match self {
                #[cfg(feature = "sqlite")]
                Store::Sqlite(_) => schema::SQLITE,
                #[cfg(feature = "postgres")]
                Store::Postgres(_) => schema::POSTGRES,
            };
            let mut tx = if is_postgres {
                pool.begin().await?
            } else {
                pool.begin_with("BEGIN IMMEDIATE").await?
            };
            #[cfg(feature = "postgres")]
            if is_postgres {
                sqlx::query(sql::postgres::MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            let found: Option<i64> = sqlx::query_scalar(q::SCHEMA_VERSION)
                .fetch_one(&mut *tx)
                .await?;
            let found = found.unwrap_or(0);
            if found > schema::VERSION {
                return Err(Error::SchemaTooNew {
                    found,
                    supported: schema::VERSION,
                });
            }
            for (index, statements) in migrations.iter().enumerate().skip(found as usize) {
                for statement in statements.iter() {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                sqlx::query(q::SCHEMA_SET)
                    .bind(index as i64 + 1)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Checks the schema without changing it.
    pub(crate) async fn check(&self, migrations: Migrations) -> Result<(), Error> {
        if migrations == Migrations::AtStart {
            return self.migrate().await;
        }
        let found: Option<i64> = on_store!(self, |pool, q| {
            sqlx::query(q::SCHEMA_TABLE).execute(pool).await?;
            sqlx::query_scalar(q::SCHEMA_VERSION)
                .fetch_one(pool)
                .await?
        });
        let found = found.unwrap_or(0);
        if found > schema::VERSION {
            return Err(Error::SchemaTooNew {
                found,
                supported: schema::VERSION,
            });
        }
        if found < schema::VERSION {
            return Err(Error::SchemaTooOld {
                found,
                supported: schema::VERSION,
            });
        }
        Ok(())
    }

    /// Writes `events` and their deliveries in a transaction of the store's own.
    pub(crate) async fn insert_own(
        &self,
        events: &[(&Event, Vec<NewDelivery>)],
        channel: &str,
    ) -> Result<(), Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                insert_sqlite(&mut tx, events).await?;
                tx.commit().await?;
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                insert_postgres(&mut tx, events, channel).await?;
                tx.commit().await?;
            }
        }
        let _ = channel;
        Ok(())
    }

    /// Claims up to `limit` due deliveries of `destination` for `owner` until `lease_until`,
    /// with their events, in up to three steps, each bounded by an index:
    ///
    /// - an ordered destination looks at its `window` oldest pending deliveries, then (unless
    ///   that window held every pending delivery, or it found enough) at each key's first
    ///   pending delivery (the oldest are held back behind their keys or waiting for a
    ///   retry), then at the unordered ones longest due;
    /// - an unordered destination looks at the deliveries longest due, then, when none was
    ///   left, at key heads (left from when it was ordered).
    ///
    /// Which ids to look at is read first, without a lock; each claim then re-checks every
    /// condition on the rows themselves. On SQLite a claim is one short `BEGIN IMMEDIATE`
    /// transaction (it reads the newest commits, and holds the write lock only for the
    /// update); on PostgreSQL one statement, which also returns the events.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn claim(
        &self,
        destination: &str,
        ordered: bool,
        limit: usize,
        window: usize,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>, Error> {
        let steps: &[ClaimStep] = if ordered {
            &[ClaimStep::Oldest, ClaimStep::Heads, ClaimStep::Unordered]
        } else {
            &[ClaimStep::Unordered, ClaimStep::Heads]
        };
        let now = now_ms();
        let lease_until = now.saturating_add(duration_ms(lease));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let window = i64::try_from(window).unwrap_or(i64::MAX);
        let mut claims: Vec<Claimed> = Vec::new();
        for step in steps {
            let wanted = limit - claims.len() as i64;
            if wanted <= 0 {
                break;
            }
            if matches!(step, ClaimStep::Heads) && !ordered && !claims.is_empty() {
                // An unordered destination has key heads only if it was ordered before:
                // looked for once its unordered deliveries are all claimed.
                break;
            }
            let ids: Option<Vec<i64>> = match step {
                ClaimStep::Oldest => Some(on_store!(self, |pool, q| sqlx::query_scalar(q::OLDEST)
                    .bind(destination)
                    .bind(window)
                    .fetch_all(pool)
                    .await?)),
                ClaimStep::Heads => Some(on_store!(self, |pool, q| sqlx::query_scalar(q::HEADS)
                    .bind(destination)
                    .fetch_all(pool)
                    .await?)),
                ClaimStep::Unordered => None,
            };
            // Fewer than the window: every pending delivery was looked at.
            let seen_all = matches!(step, ClaimStep::Oldest)
                && ids.as_ref().is_some_and(|ids| (ids.len() as i64) < window);
            if ids.as_ref().is_none_or(|ids| !ids.is_empty()) {
                let params = ClaimParams {
                    owner,
                    lease_until,
                    now,
                    destination,
                    wanted,
                };
                claims.extend(self.claim_among(&params, ids).await?);
            }
            if seen_all {
                break;
            }
        }
        #[cfg(feature = "sqlite")]
        #[allow(irrefutable_let_patterns)] // without the `postgres` feature
        if let Store::Sqlite(pool) = self {
            // Stored events never change: read them after the claim, without a lock.
            if !claims.is_empty() {
                let seqs: Vec<i64> = claims.iter().map(|c| c.event_seq).collect();
                let mut events = HashMap::with_capacity(claims.len());
                for row in sqlx::query(sql::sqlite::EVENTS_BY_SEQ)
                    .bind(json_array(&seqs))
                    .fetch_all(pool)
                    .await?
                {
                    events.insert(row.try_get::<i64, _>(0)?, event_at(&row, 1)?);
                }
                for claim in &mut claims {
                    claim.event = events.remove(&claim.event_seq).flatten();
                }
            }
        }
        claims.sort_by_key(|c| c.event_seq);
        Ok(claims)
    }

    /// One claim: among `ids` (`CLAIM_AMONG`), or the unordered deliveries longest due
    /// (`CLAIM_UNORDERED`).
    async fn claim_among(
        &self,
        params: &ClaimParams<'_>,
        ids: Option<Vec<i64>>,
    ) -> Result<Vec<Claimed>, Error> {
        macro_rules! query {
            ($q:ident) => {
                sqlx::query(if ids.is_some() {
                    $q::CLAIM_AMONG
                } else {
                    $q::CLAIM_UNORDERED
                })
                .bind(params.owner)
                .bind(params.lease_until)
                .bind(params.now)
                .bind(params.destination)
                .bind(params.wanted)
            };
        }
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                use sql::sqlite;
                let query = query!(sqlite);
                let query = match &ids {
                    Some(ids) => query.bind(json_array(ids)),
                    None => query,
                };
                let rows = query.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows.iter()
                    .map(claimed_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                use sql::postgres;
                let query = query!(postgres);
                let query = match ids {
                    // Planned for these ids every time: a plan cached for any ids may test
                    // every pending delivery instead of looking these up.
                    Some(ids) => query.bind(ids).persistent(false),
                    None => query,
                };
                query
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| {
                        let mut claim = claimed_from_row(row)?;
                        claim.event = event_at(row, 6)?;
                        Ok(claim)
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        })
    }

    /// Applies outcomes in one transaction; each only if its fence still matches (a late
    /// acknowledgement from a lost lease changes nothing).
    pub(crate) async fn acknowledge(
        &self,
        acks: &[Ack],
        retention: Retention,
    ) -> Result<(), Error> {
        if acks.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let done: Vec<&Ack> = acks
            .iter()
            .filter(|a| matches!(a.kind, AckKind::Done))
            .collect();
        // Every outcome but "done" is one UPDATE; "done" is one statement for the batch.
        macro_rules! apply {
            ($tx:expr, $q:ident, $delete_done:expr) => {{
                if !done.is_empty() {
                    match retention {
                        Retention::Delete => $delete_done,
                        Retention::Archive(_) => {
                            for ack in &done {
                                sqlx::query($q::DONE_ARCHIVE)
                                    .bind(i64::from(ack.attempts))
                                    .bind(ack.first_attempt_at_ms)
                                    .bind(now)
                                    .bind(ack.id)
                                    .bind(ack.fence)
                                    .execute(&mut *$tx)
                                    .await?;
                            }
                        }
                    }
                }
                for ack in acks {
                    let (state, next_at, error, mark) = match &ack.kind {
                        AckKind::Done => continue,
                        AckKind::Retry { next_at_ms, error } => {
                            ("pending", *next_at_ms, Some(error.as_str()), 0_i64)
                        }
                        AckKind::GiveUp { state, error } => (*state, now, Some(error.as_str()), 0),
                        AckKind::Release { uncertain } => {
                            ("pending", now, None, if *uncertain { 2 } else { 0 })
                        }
                    };
                    sqlx::query($q::SET_STATE)
                        .bind(state)
                        .bind(i64::from(ack.attempts))
                        .bind(next_at)
                        .bind(error)
                        .bind(ack.first_attempt_at_ms)
                        .bind(now)
                        .bind(ack.id)
                        .bind(ack.fence)
                        .bind(mark)
                        .execute(&mut *$tx)
                        .await?;
                }
            }};
        }
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                use sql::sqlite;
                let sql = format!(
                    "{}{})",
                    sqlite::DONE_DELETE,
                    placeholders(done.len(), 2, false)
                );
                let seqs: Vec<i64> = done.iter().map(|a| a.event_seq).collect();
                let seqs = json_array(&seqs);
                let mut tx = pool.begin().await?;
                apply!(tx, sqlite, {
                    let mut query = sqlx::query(&sql);
                    for ack in &done {
                        query = query.bind(ack.id).bind(ack.fence);
                    }
                    query.execute(&mut *tx).await?;
                    // Their events, once no delivery of theirs is left.
                    sqlx::query(sqlite::EVENTS_DONE)
                        .bind(&seqs)
                        .execute(&mut *tx)
                        .await?;
                });
                tx.commit().await?;
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                use sql::postgres;
                let ids: Vec<i64> = done.iter().map(|a| a.id).collect();
                let fences: Vec<i64> = done.iter().map(|a| a.fence).collect();
                let delete_done = sqlx::query(postgres::DONE_DELETE).bind(&ids).bind(&fences);
                if done.len() == acks.len() && matches!(retention, Retention::Delete) {
                    // One statement: its own transaction.
                    delete_done.execute(pool).await?;
                } else {
                    let mut tx = pool.begin().await?;
                    apply!(tx, postgres, {
                        delete_done.execute(&mut *tx).await?;
                    });
                    tx.commit().await?;
                }
            }
        }
        Ok(())
    }

    /// Releases these deliveries this instance holds (shutting down): due again now.
    /// `uncertain`: an attempt may have reached the destination, so the next claim counts a
    /// re-delivery.
    pub(crate) async fn release(
        &self,
        owner: &str,
        ids: &[i64],
        uncertain: bool,
    ) -> Result<u64, Error> {
        let now = now_ms();
        let mark = if uncertain { 2_i64 } else { 0 };
        Ok(match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => sqlx::query(sql::sqlite::RELEASE)
                .bind(owner)
                .bind(now)
                .bind(mark)
                .bind(json_array(ids))
                .execute(pool)
                .await?
                .rows_affected(),
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => sqlx::query(sql::postgres::RELEASE)
                .bind(owner)
                .bind(now)
                .bind(mark)
                .bind(ids)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }

    /// Extends the leases this instance holds on `ids` by `lease` from now.
    pub(crate) async fn renew(
        &self,
        owner: &str,
        ids: &[i64],
        lease: Duration,
    ) -> Result<(), Error> {
        let until = now_ms().saturating_add(duration_ms(lease));
        match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                sqlx::query(sql::sqlite::RENEW)
                    .bind(owner)
                    .bind(until)
                    .bind(json_array(ids))
                    .execute(pool)
                    .await?;
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                sqlx::query(sql::postgres::RENEW)
                    .bind(owner)
                    .bind(until)
                    .bind(ids)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Per destination, how many deliveries are in each state.
    pub(crate) async fn stats(&self) -> Result<Vec<DestinationStats>, Error> {
        let now = now_ms();
        let rows = on_store!(self, |pool, q| sqlx::query(q::STATS)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<i64, _>(2)?,
                    row.try_get::<Option<i64>, _>(4)?,
                    row.try_get::<Option<i64>, _>(5)?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?);
        let mut by_destination: Vec<DestinationStats> = Vec::new();
        for (destination, state, count, oldest_commit, redeliveries) in rows {
            let index = match by_destination
                .iter()
                .position(|s| s.destination == destination)
            {
                Some(index) => index,
                None => {
                    by_destination.push(DestinationStats {
                        destination: destination.clone(),
                        ..DestinationStats::default()
                    });
                    by_destination.len() - 1
                }
            };
            let stats = &mut by_destination[index];
            let count = u64::try_from(count).unwrap_or(0);
            stats.redeliveries += u64::try_from(redeliveries.unwrap_or(0)).unwrap_or(0);
            match state.as_str() {
                "pending" | "in_flight" => {
                    if state == "pending" {
                        stats.pending += count;
                    } else {
                        stats.in_flight += count;
                    }
                    if let Some(at) = oldest_commit {
                        let age = Duration::from_millis(u64::try_from(now - at).unwrap_or(0));
                        stats.oldest_pending_age =
                            Some(stats.oldest_pending_age.map_or(age, |a| a.max(age)));
                    }
                }
                "delivered" => stats.delivered += count,
                "failed" => stats.failed += count,
                "abandoned" => stats.abandoned += count,
                _ => {}
            }
        }
        by_destination.sort_by(|a, b| a.destination.cmp(&b.destination));
        Ok(by_destination)
    }

    /// Deliveries, optionally of one destination and state, in commit order (at most `limit`).
    pub(crate) async fn deliveries(
        &self,
        destination: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let records = on_store!(self, |pool, q| sqlx::query(q::DELIVERIES_OF)
            .bind(destination)
            .bind(state)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                let id: String = row.try_get(1)?;
                let next_at: i64 = row.try_get(7)?;
                Ok(DeliveryRecord {
                    event_id: uuid::Uuid::parse_str(&id).unwrap_or_default(),
                    event_name: row.try_get(2)?,
                    destination: row.try_get(3)?,
                    ordering_key: row.try_get(4)?,
                    state: row.try_get(5)?,
                    attempts: u32::try_from(row.try_get::<i64, _>(6)?).unwrap_or(u32::MAX),
                    next_attempt_at: UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(next_at).unwrap_or(0)),
                    last_error: row.try_get(8)?,
                    redeliveries: u32::try_from(row.try_get::<i64, _>(9)?).unwrap_or(u32::MAX),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?);
        Ok(records)
    }

    /// Re-queues the deliveries `replay` selects; returns how many.
    pub(crate) async fn replay(&self, replay: &Replay) -> Result<u64, Error> {
        let now = now_ms();
        let id = replay.event_id.map(|id| id.to_string());
        let from = replay.from.map(ms);
        let until = replay.until.map(ms);
        let count = match self {
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                let states = serde_json::to_string(&replay.states).unwrap_or_default();
                sqlx::query(sql::sqlite::REPLAY)
                    .bind(now)
                    .bind(states)
                    .bind(replay.destination.as_deref())
                    .bind(replay.event_name.as_deref())
                    .bind(id)
                    .bind(from)
                    .bind(until)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                let states: Vec<String> = replay.states.iter().map(|s| (*s).to_owned()).collect();
                sqlx::query(sql::postgres::REPLAY)
                    .bind(now)
                    .bind(states)
                    .bind(replay.destination.as_deref())
                    .bind(replay.event_name.as_deref())
                    .bind(id)
                    .bind(from)
                    .bind(until)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        };
        Ok(count)
    }

    /// Deletes archived deliveries older than the retention, then events with no delivery
    /// left, in batches of `batch`; returns how many rows went.
    pub(crate) async fn purge(&self, retention: Retention, batch: usize) -> Result<u64, Error> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let mut removed = 0;
        on_store!(self, |pool, q| {
            if let Retention::Archive(keep) = retention {
                let before = now_ms().saturating_sub(duration_ms(keep));
                loop {
                    let n = sqlx::query(q::PURGE_DELIVERED)
                        .bind(before)
                        .bind(batch)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    removed += n;
                    if n < batch as u64 {
                        break;
                    }
                }
            }
            loop {
                let n = sqlx::query(q::PURGE_EVENTS)
                    .bind(batch)
                    .execute(pool)
                    .await?
                    .rows_affected();
                removed += n;
                if n < batch as u64 {
                    break;
                }
            }
        });
        Ok(removed)
    }
}
