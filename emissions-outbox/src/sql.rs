//! The outbox's SQL, per backend. SQLite numbers its parameters `?N`, PostgreSQL `$N`; the
//! statements are otherwise the same but where a backend has a better tool (`FOR UPDATE SKIP
//! LOCKED` and `pg_notify` on PostgreSQL).
//!
//! A delivery's stored `state` is `pending` until it ends (`delivered`, `failed`,
//! `abandoned`). A claim does not change it: it sets a lease (`lease_owner`, `lease_until_ms`,
//! a new `fence`) — a delivery is *in flight* while it holds a lease, and claimable again
//! (taken over) once the lease has expired. A claim touches no indexed column: on PostgreSQL
//! it is a HOT update, which leaves the indexes alone.

/// The conditions a delivery must meet to be claimed, checked on the row itself (on
/// PostgreSQL, again on the locked row): of destination `$4`, pending, due at `$3`, not leased
/// (or the lease expired), and for an ordering key the first pending delivery of the key.
macro_rules! claimable {
    ($p:literal) => {
        concat!(
            "d.destination = ",
            $p,
            "4 AND d.state = 'pending' AND d.next_attempt_at_ms <= ",
            $p,
            "3
              AND (d.lease_until_ms IS NULL OR d.lease_until_ms <= ",
            $p,
            "3)
              AND (d.ordering_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM emissions_outbox_deliveries p
                    WHERE p.destination = d.destination AND p.ordering_key = d.ordering_key
                      AND p.event_seq < d.event_seq AND p.state = 'pending'))"
        )
    };
}

/// The claim statements of a backend (see [`Store::claim`](crate::store::Store)): which
/// deliveries to look at is decided first by a plain read (`OLDEST`, `HEADS`), then the claim
/// takes the claimable ones among exactly those ids (`CLAIM_AMONG`) — the planner never gets
/// the chance to test every pending delivery — or among the unordered ones longest due
/// (`CLAIM_UNORDERED`, an ordered read of the unordered index).
macro_rules! claim_statements {
    ($p:tt, $claim:ident, $among:literal) => {
        /// Ids of the `$2` oldest pending deliveries of destination `$1` (the queue index).
        pub(crate) const OLDEST: &str = concat!(
            "SELECT id FROM emissions_outbox_deliveries
             WHERE state = 'pending' AND destination = ",
            $p,
            "1
             ORDER BY event_seq LIMIT ",
            $p,
            "2"
        );
        /// Ids of the first pending delivery of each ordering key of destination `$1`, found
        /// by skipping from key to key through the lanes index: one read per key that has
        /// pending deliveries.
        pub(crate) const HEADS: &str = concat!(
            "WITH RECURSIVE keys(k) AS (
                SELECT (SELECT f.ordering_key FROM emissions_outbox_deliveries f
                        WHERE f.destination = ",
            $p,
            "1 AND f.state = 'pending'
                          AND f.ordering_key IS NOT NULL
                        ORDER BY f.ordering_key LIMIT 1)
                UNION ALL
                SELECT (SELECT n.ordering_key FROM emissions_outbox_deliveries n
                        WHERE n.destination = ",
            $p,
            "1 AND n.state = 'pending'
                          AND n.ordering_key IS NOT NULL AND n.ordering_key > keys.k
                        ORDER BY n.ordering_key LIMIT 1)
                FROM keys WHERE keys.k IS NOT NULL)
            SELECT (SELECT h.id FROM emissions_outbox_deliveries h
                    WHERE h.destination = ",
            $p,
            "1 AND h.state = 'pending'
                      AND h.ordering_key IS NOT NULL AND h.ordering_key = keys.k
                    ORDER BY h.event_seq LIMIT 1)
            FROM keys WHERE keys.k IS NOT NULL"
        );
        /// Claims the claimable deliveries among the ids `$6`, oldest first.
        pub(crate) const CLAIM_AMONG: &str =
            $claim!(concat!($among, " AND ", claimable!($p)), "d.event_seq");
        /// Claims the unordered deliveries longest due (the unordered index).
        pub(crate) const CLAIM_UNORDERED: &str = $claim!(
            concat!("d.ordering_key IS NULL AND ", claimable!($p)),
            "d.next_attempt_at_ms, d.event_seq"
        );
    };
}

/// A SQLite claim: the update of up to `?5` deliveries picked by `$from_where` in `$order`.
#[cfg(feature = "sqlite")]
macro_rules! sqlite_claim {
    ($from_where:expr, $order:literal) => {
        concat!(
            "UPDATE emissions_outbox_deliveries
            SET lease_owner = ?1, lease_until_ms = ?2, fence = fence + 1, updated_at_ms = ?3,
                redeliveries = redeliveries
                    + (CASE WHEN lease_until_ms IS NOT NULL OR takeover = 2 THEN 1 ELSE 0 END),
                takeover = (CASE WHEN lease_until_ms IS NOT NULL OR takeover = 2 THEN 1 ELSE 0 END)
            WHERE id IN (
                SELECT d.id FROM emissions_outbox_deliveries d WHERE ",
            $from_where,
            " ORDER BY ",
            $order,
            " LIMIT ?5)
            RETURNING id, event_seq, attempts, fence, first_attempt_at_ms, takeover"
        )
    };
}

/// A PostgreSQL claim: up to `$5` deliveries picked by `$from_where` in `$order`, locked with
/// `SKIP LOCKED` (instances never claim the same row; the conditions are re-checked on the
/// locked row, and a delivery being claimed elsewhere still holds back its key), updated, and
/// read back with their events' columns (NULL if an event row is missing) — one statement, no
/// transaction held open around it.
#[cfg(feature = "postgres")]
macro_rules! postgres_claim {
    ($from_where:expr, $order:literal) => {
        concat!(
            "WITH picked AS (
                SELECT d.id FROM emissions_outbox_deliveries d WHERE ",
            $from_where,
            " ORDER BY ",
            $order,
            " LIMIT $5
                FOR UPDATE SKIP LOCKED),
            claimed AS (
                UPDATE emissions_outbox_deliveries t
                SET lease_owner = $1, lease_until_ms = $2, fence = t.fence + 1, updated_at_ms = $3,
                    redeliveries = t.redeliveries
                        + (CASE WHEN t.lease_until_ms IS NOT NULL OR t.takeover = 2
                           THEN 1 ELSE 0 END),
                    takeover = (CASE WHEN t.lease_until_ms IS NOT NULL OR t.takeover = 2
                                THEN 1 ELSE 0 END)
                WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
                RETURNING t.id, t.event_seq, t.attempts, t.fence, t.first_attempt_at_ms, t.takeover)
            SELECT c.id, c.event_seq, c.attempts, c.fence, c.first_attempt_at_ms, c.takeover,
                   e.id, e.name, e.payload, e.metadata, e.emitted_at_us
            FROM claimed c LEFT JOIN emissions_outbox_events e ON e.seq = c.event_seq
            ORDER BY c.event_seq"
        )
    };
}

/// SQLite (the embedded store). Writers are serialized by SQLite itself; claims run in a
/// `BEGIN IMMEDIATE` transaction.
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    pub(crate) const SCHEMA_TABLE: &str =
        "CREATE TABLE IF NOT EXISTS emissions_outbox_schema (version INTEGER NOT NULL)";
    pub(crate) const SCHEMA_VERSION: &str = "SELECT MAX(version) FROM emissions_outbox_schema";
    pub(crate) const SCHEMA_SET: &str = "INSERT INTO emissions_outbox_schema (version) VALUES (?1)";
    pub(crate) const EVENTS_INSERT: &str = "INSERT INTO emissions_outbox_events \
         (id, name, payload, metadata, emitted_at_us, committed_at_ms) VALUES ";
    /// Followed by rows (event id, destination, key, state, next attempt, error, update time,
    /// position) and [`DELIVERIES_OF_EVENTS`]: each row's event number is found by its id.
    pub(crate) const DELIVERIES_INSERT: &str = "INSERT INTO emissions_outbox_deliveries \
         (event_seq, destination, ordering_key, state, next_attempt_at_ms, last_error, \
          updated_at_ms) SELECT e.seq, v.column2, v.column3, v.column4, v.column5, v.column6, \
          v.column7 FROM (VALUES ";
    pub(crate) const DELIVERIES_OF_EVENTS: &str = ") AS v \
         JOIN emissions_outbox_events e ON e.id = v.column1 ORDER BY v.column8";
    // Claims: up to `?5` deliveries of destination `?4` at time `?3` for owner `?1` until `?2`.
    claim_statements!(
        "?",
        sqlite_claim,
        "d.id IN (SELECT value FROM json_each(?6))"
    );
    pub(crate) const EVENTS_BY_SEQ: &str = "SELECT seq, id, name, payload, metadata, \
         emitted_at_us FROM emissions_outbox_events \
         WHERE seq IN (SELECT value FROM json_each(?1))";
    pub(crate) const DONE_DELETE: &str =
        "DELETE FROM emissions_outbox_deliveries WHERE (id, fence) IN (VALUES ";
    /// Deletes the events among `?1` (a JSON array of sequence numbers) that have no delivery
    /// left (retention `Delete`; the periodic purge catches any other).
    pub(crate) const EVENTS_DONE: &str = "DELETE FROM emissions_outbox_events
        WHERE seq IN (SELECT value FROM json_each(?1))
          AND NOT EXISTS (SELECT 1 FROM emissions_outbox_deliveries d
                          WHERE d.event_seq = emissions_outbox_events.seq)";
    pub(crate) const DONE_ARCHIVE: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'delivered', attempts = ?1, lease_owner = NULL, lease_until_ms = NULL,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, ?2), updated_at_ms = ?3
        WHERE id = ?4 AND fence = ?5";
    /// Writes an outcome; `takeover` `?9` is 2 for a delivery released with its outcome
    /// unknown (the next claim counts it as a re-delivery), else 0.
    pub(crate) const SET_STATE: &str = "UPDATE emissions_outbox_deliveries
        SET state = ?1, attempts = ?2, next_attempt_at_ms = ?3, last_error = ?4,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, ?5),
            lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = ?6, takeover = ?9
        WHERE id = ?7 AND fence = ?8";
    /// Releases this instance's (`?1`) claims `?4`: due again now; `?3` is the
    /// `takeover` mark (2: an attempt may have been made).
    pub(crate) const RELEASE: &str = "UPDATE emissions_outbox_deliveries
        SET lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = ?2, takeover = ?3
        WHERE state = 'pending' AND lease_owner = ?1 AND id IN (SELECT value FROM json_each(?4))";
    /// Extends this instance's (`?1`) leases of `?3` to `?2` (the fence stays).
    pub(crate) const RENEW: &str = "UPDATE emissions_outbox_deliveries
        SET lease_until_ms = ?2
        WHERE state = 'pending' AND lease_owner = ?1 AND id IN (SELECT value FROM json_each(?3))";
    pub(crate) const STATS: &str = "SELECT destination, \
         CASE WHEN lease_until_ms IS NULL THEN state ELSE 'in_flight' END AS shown, COUNT(*), \
         MIN(d.updated_at_ms), MIN(e.committed_at_ms), SUM(redeliveries) \
         FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         GROUP BY destination, shown";
    pub(crate) const PURGE_DELIVERED: &str = "DELETE FROM emissions_outbox_deliveries
        WHERE id IN (SELECT id FROM emissions_outbox_deliveries
                     WHERE state = 'delivered' AND updated_at_ms < ?1 LIMIT ?2)";
    pub(crate) const PURGE_EVENTS: &str = "DELETE FROM emissions_outbox_events
        WHERE seq IN (SELECT e.seq FROM emissions_outbox_events e
                      WHERE NOT EXISTS (SELECT 1 FROM emissions_outbox_deliveries d
                                        WHERE d.event_seq = e.seq)
                      LIMIT ?1)";
    pub(crate) const REPLAY: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'pending', attempts = 0, next_attempt_at_ms = ?1, first_attempt_at_ms = NULL,
            lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = ?1
        WHERE id IN (
            SELECT d.id FROM emissions_outbox_deliveries d
            JOIN emissions_outbox_events e ON e.seq = d.event_seq
            WHERE d.state IN (SELECT value FROM json_each(?2))
              AND (?3 IS NULL OR d.destination = ?3)
              AND (?4 IS NULL OR e.name = ?4)
              AND (?5 IS NULL OR e.id = ?5)
              AND (?6 IS NULL OR e.committed_at_ms >= ?6)
              AND (?7 IS NULL OR e.committed_at_ms < ?7))";
    pub(crate) const DELIVERIES_OF: &str = "SELECT d.id, e.id, e.name, d.destination, \
         d.ordering_key, CASE WHEN d.lease_until_ms IS NULL THEN d.state ELSE 'in_flight' END, \
         d.attempts, d.next_attempt_at_ms, d.last_error, \
         d.redeliveries FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         WHERE (?1 IS NULL OR d.destination = ?1) AND (?2 IS NULL OR ?2 = \
         CASE WHEN d.lease_until_ms IS NULL THEN d.state ELSE 'in_flight' END) \
         ORDER BY d.event_seq, d.destination LIMIT ?3";
}

/// PostgreSQL (several instances on one store). Claims use `FOR UPDATE SKIP LOCKED`; a commit
/// also `pg_notify`s the relays of every instance, delivered when (and only if) it commits.
#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    pub(crate) const SCHEMA_TABLE: &str =
        "CREATE TABLE IF NOT EXISTS emissions_outbox_schema (version BIGINT NOT NULL)";
    pub(crate) const SCHEMA_VERSION: &str = "SELECT MAX(version) FROM emissions_outbox_schema";
    pub(crate) const SCHEMA_SET: &str = "INSERT INTO emissions_outbox_schema (version) VALUES ($1)";
    /// Serializes concurrent migrations of one database (several instances starting at once).
    pub(crate) const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7365126482017263)";
    /// A commit's writes in one statement (one round trip, one prepared statement whatever
    /// the number of events): the events (`$1`–`$5`: id, name, payload, metadata, emit time,
    /// one array element per event, numbered in this order), their deliveries (`$6`–`$10`: the event's id,
    /// destination, ordering key, state, error, one element per delivery), all at time `$11`,
    /// then a `pg_notify` on channel `$12`, delivered to every instance's relay when (and
    /// only if) the transaction commits.
    ///
    /// Before any row is written (`locked` is the events' filter, evaluated first), it takes a
    /// transaction-scoped advisory lock per slot that its (destination, ordering key) pairs
    /// hash to — 1 024 slots, so that no commit needs more locks than the server's lock table
    /// holds —, in a fixed order (no deadlock between two commits); the two-number lock space
    /// keeps clear of an application's one-number locks. An event already written (its id
    /// exists: a commit retried after a cancelled one) is skipped with its deliveries.
    pub(crate) const INSERT: &str = "WITH locked AS (
            SELECT count(*) AS n FROM (
                SELECT pg_advisory_xact_lock(1701930093, h)
                FROM (SELECT DISTINCT hashtext(d || '/' || k) & 1023 AS h
                      FROM UNNEST($7::TEXT[], $8::TEXT[]) AS t(d, k)
                      WHERE k IS NOT NULL) AS keys
                ORDER BY h) AS taken
        ), events AS (
            INSERT INTO emissions_outbox_events
                (id, name, payload, metadata, emitted_at_us, committed_at_ms)
            SELECT id, name, payload, metadata, at, $11
            FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::TEXT[], $5::BIGINT[])
                WITH ORDINALITY AS t(id, name, payload, metadata, at, i)
            WHERE (SELECT n FROM locked) >= 0
            ORDER BY i
            ON CONFLICT (id) DO NOTHING
            RETURNING seq, id
        ), deliveries AS (
            INSERT INTO emissions_outbox_deliveries
                (event_seq, destination, ordering_key, state, next_attempt_at_ms, last_error,
                 updated_at_ms)
            SELECT events.seq, t.destination, t.k, t.state, $11, t.error, $11
            FROM UNNEST($6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[])
                WITH ORDINALITY AS t(event_id, destination, k, state, error, i)
            JOIN events ON events.id = t.event_id
            ORDER BY t.i
        )
        SELECT pg_notify($12, '')";
    // Claims, as SQLite's, returning the events too.
    claim_statements!("$", postgres_claim, "d.id = ANY($6::BIGINT[])");
    /// Deletes the delivered deliveries `($1[i], $2[i])` (id, fence), and their events once no
    /// delivery of theirs is left — as far as this statement can see: an event whose last
    /// two deliveries are deleted by two instances at the same moment stays for the periodic
    /// purge.
    pub(crate) const DONE_DELETE: &str = "WITH gone AS (
            DELETE FROM emissions_outbox_deliveries t
            USING UNNEST($1::BIGINT[], $2::BIGINT[]) AS a(id, fence)
            WHERE t.id = a.id AND t.fence = a.fence
            RETURNING t.id, t.event_seq)
        DELETE FROM emissions_outbox_events e
        WHERE e.seq IN (SELECT event_seq FROM gone)
          AND NOT EXISTS (SELECT 1 FROM emissions_outbox_deliveries d
                          WHERE d.event_seq = e.seq
                            AND d.id NOT IN (SELECT id FROM gone))";
    pub(crate) const DONE_ARCHIVE: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'delivered', attempts = $1, lease_owner = NULL, lease_until_ms = NULL,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, $2), updated_at_ms = $3
        WHERE id = $4 AND fence = $5";
    /// Writes an outcome; `takeover` `$9` is 2 for a delivery released with its outcome
    /// unknown (the next claim counts it as a re-delivery), else 0.
    pub(crate) const SET_STATE: &str = "UPDATE emissions_outbox_deliveries
        SET state = $1, attempts = $2, next_attempt_at_ms = $3, last_error = $4,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, $5),
            lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $6, takeover = $9
        WHERE id = $7 AND fence = $8";
    /// Releases this instance's (`$1`) claims `$4`: due again now; `$3` is the
    /// `takeover` mark (2: an attempt may have been made).
    pub(crate) const RELEASE: &str = "UPDATE emissions_outbox_deliveries
        SET lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $2, takeover = $3
        WHERE state = 'pending' AND lease_owner = $1 AND id = ANY($4::BIGINT[])";
    /// Extends this instance's (`$1`) leases of `$3` to `$2` (the fence stays).
    pub(crate) const RENEW: &str = "UPDATE emissions_outbox_deliveries
        SET lease_until_ms = $2
        WHERE state = 'pending' AND lease_owner = $1 AND id = ANY($3::BIGINT[])";
    pub(crate) const STATS: &str = "SELECT destination, \
         CASE WHEN lease_until_ms IS NULL THEN state ELSE 'in_flight' END AS shown, COUNT(*), \
         MIN(d.updated_at_ms), MIN(e.committed_at_ms), SUM(redeliveries)::BIGINT \
         FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         GROUP BY destination, shown";
    pub(crate) const PURGE_DELIVERED: &str = "DELETE FROM emissions_outbox_deliveries
        WHERE id IN (SELECT id FROM emissions_outbox_deliveries
                     WHERE state = 'delivered' AND updated_at_ms < $1 LIMIT $2)";
    pub(crate) const PURGE_EVENTS: &str = "DELETE FROM emissions_outbox_events
        WHERE seq IN (SELECT e.seq FROM emissions_outbox_events e
                      WHERE NOT EXISTS (SELECT 1 FROM emissions_outbox_deliveries d
                                        WHERE d.event_seq = e.seq)
                      LIMIT $1)";
    pub(crate) const REPLAY: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'pending', attempts = 0, next_attempt_at_ms = $1, first_attempt_at_ms = NULL,
            lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $1
        WHERE id IN (
            SELECT d.id FROM emissions_outbox_deliveries d
            JOIN emissions_outbox_events e ON e.seq = d.event_seq
            WHERE d.state = ANY($2)
              AND ($3::TEXT IS NULL OR d.destination = $3)
              AND ($4::TEXT IS NULL OR e.name = $4)
              AND ($5::TEXT IS NULL OR e.id = $5)
              AND ($6::BIGINT IS NULL OR e.committed_at_ms >= $6)
              AND ($7::BIGINT IS NULL OR e.committed_at_ms < $7))";
    pub(crate) const DELIVERIES_OF: &str = "SELECT d.id, e.id, e.name, d.destination, \
         d.ordering_key, CASE WHEN d.lease_until_ms IS NULL THEN d.state ELSE 'in_flight' END, \
         d.attempts, d.next_attempt_at_ms, d.last_error, \
         d.redeliveries FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         WHERE ($1::TEXT IS NULL OR d.destination = $1) AND ($2::TEXT IS NULL OR $2 = \
         CASE WHEN d.lease_until_ms IS NULL THEN d.state ELSE 'in_flight' END) \
         ORDER BY d.event_seq, d.destination LIMIT $3";
}
