//! The outbox's SQL, per backend. SQLite numbers its parameters `?N`, PostgreSQL `$N`; the
//! statements are otherwise the same but where a backend has a better tool (`FOR UPDATE SKIP
//! LOCKED` and `pg_notify` on PostgreSQL).

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
    pub(crate) const EVENTS_RETURNING: &str = " RETURNING seq, id";
    pub(crate) const DELIVERIES_INSERT: &str = "INSERT INTO emissions_outbox_deliveries \
         (event_seq, destination, ordering_key, state, next_attempt_at_ms, last_error, \
          updated_at_ms) VALUES ";
    /// Claims up to `?5` due deliveries of destination `?4` at time `?3` for owner `?1` until
    /// `?2`: pending and due, or in flight with an expired lease (taken over: a re-delivery),
    /// and for ordered keys only the first undone delivery of the key.
    pub(crate) const CLAIM: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'in_flight', lease_owner = ?1, lease_until_ms = ?2, fence = fence + 1,
            updated_at_ms = ?3,
            redeliveries = redeliveries + (CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END),
            takeover = (CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END)
        WHERE id IN (
            SELECT d.id FROM emissions_outbox_deliveries d
            WHERE d.destination = ?4
              AND ((d.state = 'pending' AND d.next_attempt_at_ms <= ?3)
                   OR (d.state = 'in_flight' AND d.lease_until_ms <= ?3))
              AND (d.ordering_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM emissions_outbox_deliveries p
                    WHERE p.destination = d.destination AND p.ordering_key = d.ordering_key
                      AND p.event_seq < d.event_seq AND p.state IN ('pending', 'in_flight')))
            ORDER BY d.event_seq LIMIT ?5)
        RETURNING id, event_seq, attempts, fence, first_attempt_at_ms, takeover";
    pub(crate) const EVENTS_BY_SEQ: &str = "SELECT seq, id, name, payload, metadata, \
         emitted_at_us FROM emissions_outbox_events WHERE seq IN ";
    pub(crate) const DONE_DELETE: &str =
        "DELETE FROM emissions_outbox_deliveries WHERE (id, fence) IN (VALUES ";
    pub(crate) const DONE_ARCHIVE: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'delivered', attempts = ?1, lease_owner = NULL, lease_until_ms = NULL,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, ?2), updated_at_ms = ?3
        WHERE id = ?4 AND fence = ?5";
    pub(crate) const SET_STATE: &str = "UPDATE emissions_outbox_deliveries
        SET state = ?1, attempts = ?2, next_attempt_at_ms = ?3, last_error = ?4,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, ?5),
            lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = ?6
        WHERE id = ?7 AND fence = ?8";
    pub(crate) const RELEASE_OWNER: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'pending', lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = ?2
        WHERE state = 'in_flight' AND lease_owner = ?1";
    pub(crate) const NEXT_DUE: &str = "SELECT MIN(next_attempt_at_ms) FROM \
         emissions_outbox_deliveries WHERE state = 'pending'";
    pub(crate) const NEXT_LEASE_END: &str = "SELECT MIN(lease_until_ms) FROM \
         emissions_outbox_deliveries WHERE state = 'in_flight'";
    pub(crate) const STATS: &str = "SELECT destination, state, COUNT(*), \
         MIN(d.updated_at_ms), MIN(e.committed_at_ms), SUM(redeliveries) \
         FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         GROUP BY destination, state";
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
         d.ordering_key, d.state, d.attempts, d.next_attempt_at_ms, d.last_error, \
         d.redeliveries FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         WHERE (?1 IS NULL OR d.destination = ?1) AND (?2 IS NULL OR d.state = ?2) \
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
    pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, '')";
    pub(crate) const EVENTS_INSERT: &str = "INSERT INTO emissions_outbox_events \
         (id, name, payload, metadata, emitted_at_us, committed_at_ms) VALUES ";
    pub(crate) const EVENTS_RETURNING: &str = " RETURNING seq, id";
    pub(crate) const DELIVERIES_INSERT: &str = "INSERT INTO emissions_outbox_deliveries \
         (event_seq, destination, ordering_key, state, next_attempt_at_ms, last_error, \
          updated_at_ms) VALUES ";
    /// As SQLite's, with `FOR UPDATE SKIP LOCKED`: instances never claim the same row, and a
    /// row being claimed elsewhere still counts as undone for the ordering check.
    pub(crate) const CLAIM: &str = "WITH picked AS (
            SELECT d.id FROM emissions_outbox_deliveries d
            WHERE d.destination = $4
              AND ((d.state = 'pending' AND d.next_attempt_at_ms <= $3)
                   OR (d.state = 'in_flight' AND d.lease_until_ms <= $3))
              AND (d.ordering_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM emissions_outbox_deliveries p
                    WHERE p.destination = d.destination AND p.ordering_key = d.ordering_key
                      AND p.event_seq < d.event_seq AND p.state IN ('pending', 'in_flight')))
            ORDER BY d.event_seq LIMIT $5
            FOR UPDATE SKIP LOCKED)
        UPDATE emissions_outbox_deliveries t
        SET state = 'in_flight', lease_owner = $1, lease_until_ms = $2, fence = t.fence + 1,
            updated_at_ms = $3,
            redeliveries = t.redeliveries + (CASE WHEN t.state = 'in_flight' THEN 1 ELSE 0 END),
            takeover = (CASE WHEN t.state = 'in_flight' THEN 1 ELSE 0 END)
        FROM picked WHERE t.id = picked.id
        RETURNING t.id, t.event_seq, t.attempts, t.fence, t.first_attempt_at_ms, t.takeover";
    pub(crate) const EVENTS_BY_SEQ: &str = "SELECT seq, id, name, payload, metadata, \
         emitted_at_us FROM emissions_outbox_events WHERE seq = ANY($1)";
    pub(crate) const DONE_DELETE: &str = "DELETE FROM emissions_outbox_deliveries t
        USING UNNEST($1::BIGINT[], $2::BIGINT[]) AS a(id, fence)
        WHERE t.id = a.id AND t.fence = a.fence";
    pub(crate) const DONE_ARCHIVE: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'delivered', attempts = $1, lease_owner = NULL, lease_until_ms = NULL,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, $2), updated_at_ms = $3
        WHERE id = $4 AND fence = $5";
    pub(crate) const SET_STATE: &str = "UPDATE emissions_outbox_deliveries
        SET state = $1, attempts = $2, next_attempt_at_ms = $3, last_error = $4,
            first_attempt_at_ms = COALESCE(first_attempt_at_ms, $5),
            lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $6
        WHERE id = $7 AND fence = $8";
    pub(crate) const RELEASE_OWNER: &str = "UPDATE emissions_outbox_deliveries
        SET state = 'pending', lease_owner = NULL, lease_until_ms = NULL, updated_at_ms = $2
        WHERE state = 'in_flight' AND lease_owner = $1";
    pub(crate) const NEXT_DUE: &str = "SELECT MIN(next_attempt_at_ms) FROM \
         emissions_outbox_deliveries WHERE state = 'pending'";
    pub(crate) const NEXT_LEASE_END: &str = "SELECT MIN(lease_until_ms) FROM \
         emissions_outbox_deliveries WHERE state = 'in_flight'";
    pub(crate) const STATS: &str = "SELECT destination, state, COUNT(*), \
         MIN(d.updated_at_ms), MIN(e.committed_at_ms), SUM(redeliveries)::BIGINT \
         FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         GROUP BY destination, state";
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
         d.ordering_key, d.state, d.attempts, d.next_attempt_at_ms, d.last_error, \
         d.redeliveries FROM emissions_outbox_deliveries d \
         JOIN emissions_outbox_events e ON e.seq = d.event_seq \
         WHERE ($1::TEXT IS NULL OR d.destination = $1) AND ($2::TEXT IS NULL OR d.state = $2) \
         ORDER BY d.event_seq, d.destination LIMIT $3";
}
