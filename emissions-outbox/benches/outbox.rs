//! The outbox against hand-written sqlx code doing the same work, in the same run:
//!
//! 1. `commit_in` against bare sqlx INSERTs of the same rows (5 events, a delivery per event
//!    and destination) into tables of the same shape, in the same transaction as the order row
//!    (SQLite, and PostgreSQL when `EMISSIONS_DATABASE_URL` is set).
//! 2. Relay throughput on PostgreSQL against a hand-written `FOR UPDATE SKIP LOCKED`
//!    claim → deliver → delete loop, both draining the same preloaded backlog into the same
//!    no-op adapter; and the relay's drain rate on SQLite.
//! 3. Events per second end to end (requests committing while the relay delivers).
//! 4. Table size across rounds of commit → deliver → purge (does it stay bounded?).
//!
//! `cargo xtask bench` runs it with a throwaway PostgreSQL; the table goes to
//! `target/bench-results/outbox.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, Event, Metadata, async_trait,
};
use emissions_outbox::{CommitIn, DurableCommit, Outbox, OutboxConfig};
use serde_json::json;
use sqlx::SqlitePool;
use tokio::sync::Notify;

/// Events per request, and destinations per event (one keyed, one not).
const EVENTS: usize = 5;
const CUSTOMERS: usize = 100;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn customer(request: usize) -> String {
    format!("c-{}", request % CUSTOMERS)
}

fn payload(request: usize, step: usize) -> serde_json::Value {
    json!({"order": request, "step": step, "sku": "w-1", "qty": 2, "note": "deliver to the back door"})
}

/// The no-op destination: counts what it is handed.
#[derive(Clone, Default)]
struct Noop {
    seen: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

#[async_trait]
impl Adapter for Noop {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        std::hint::black_box(events);
        self.seen.fetch_add(events.len(), Ordering::Relaxed);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Noop {
    async fn wait_for(&self, count: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.seen.load(Ordering::Relaxed) >= count {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
        }
    }
}

fn keyed() -> AdapterOptions {
    AdapterOptions::default().ordered_by(|event| {
        event
            .metadata()
            .get("customer")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    })
}

/// An instance with two destinations, `webhook` (keyed by customer) and `kafka`.
async fn two_destinations(outbox: &Outbox) -> Emissions {
    Emissions::builder()
        .adapter(emissions_core::Named::new("webhook", Noop::default()).options(keyed()))
        .unwrap()
        .adapter(emissions_core::Named::new("kafka", Noop::default()))
        .unwrap()
        .extension(outbox.clone())
        .start()
        .await
        .unwrap()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One request's rows as a hand-written outbox writes them: ids, payloads and metadata made
/// here, as emissions makes them at emit.
struct BareRows {
    events: Vec<(String, Vec<u8>, String, i64)>,
    key: String,
}

fn bare_rows(request: usize) -> BareRows {
    let key = customer(request);
    let metadata = serde_json::to_string(&json!({ "customer": key })).unwrap();
    let emitted = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    BareRows {
        events: (0..EVENTS)
            .map(|step| {
                (
                    uuid::Uuid::now_v7().to_string(),
                    serde_json::to_vec(&payload(request, step)).unwrap(),
                    metadata.clone(),
                    emitted,
                )
            })
            .collect(),
        key,
    }
}

fn emit_request(emissions: &Emissions, request: usize) -> emissions_core::Buffer {
    let buffer = emissions.start();
    for step in 0..EVENTS {
        let mut metadata = Metadata::new();
        metadata.insert("customer".into(), customer(request).into());
        buffer
            .emit_with_metadata("order_step", &payload(request, step), metadata)
            .unwrap();
    }
    buffer
}

fn placeholders(rows: usize, cols: usize, numbered: bool) -> String {
    let mut n = 0;
    (0..rows)
        .map(|_| {
            let row: Vec<String> = (0..cols)
                .map(|_| {
                    n += 1;
                    if numbered {
                        format!("${n}")
                    } else {
                        "?".to_owned()
                    }
                })
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same writes as the outbox's, into the `bare_` copies of its tables.
macro_rules! bare_insert {
    ($tx:expr, $numbered:expr, $rows:expr) => {{
        let rows: &BareRows = $rows;
        let now = now_ms();
        let sql = format!(
            "INSERT INTO bare_events (id, name, payload, metadata, emitted_at_us, committed_at_ms) \
             VALUES {} RETURNING seq, id",
            placeholders(rows.events.len(), 6, $numbered)
        );
        let mut query = sqlx::query(&sql);
        for (id, payload, metadata, emitted) in &rows.events {
            query = query
                .bind(id.clone())
                .bind("order_step")
                .bind(payload.clone())
                .bind(metadata.clone())
                .bind(*emitted)
                .bind(now);
        }
        let returned = query.fetch_all(&mut *$tx).await.unwrap();
        let seqs: Vec<i64> = returned
            .iter()
            .map(|r| sqlx::Row::get::<i64, _>(r, 0))
            .collect();
        let sql = format!(
            "INSERT INTO bare_deliveries (event_seq, destination, ordering_key, state, \
             next_attempt_at_ms, last_error, updated_at_ms) VALUES {}",
            placeholders(seqs.len() * 2, 7, $numbered)
        );
        let mut query = sqlx::query(&sql);
        for seq in &seqs {
            for (destination, key) in [("webhook", Some(rows.key.clone())), ("kafka", None)] {
                query = query
                    .bind(*seq)
                    .bind(destination)
                    .bind(key)
                    .bind("pending")
                    .bind(now)
                    .bind(None::<String>)
                    .bind(now);
            }
        }
        query.execute(&mut *$tx).await.unwrap();
    }};
}

/// Paired rounds of `requests` requests each: the outbox's, then the bare code's, both in a
/// transaction with the order row, both rolled back (the writes only) or committed.
macro_rules! commit_rounds {
    ($pool:expr, $emissions:expr, $order_sql:expr, $numbered:expr, $rounds:expr, $requests:expr, $commit:expr) => {{
        let (mut ours, mut bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut request = 0;
        for _ in 0..$rounds {
            let started = Instant::now();
            for _ in 0..$requests {
                request += 1;
                let mut tx = $pool.begin().await.unwrap();
                sqlx::query($order_sql)
                    .bind(customer(request))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let buffer = emit_request(&$emissions, request);
                buffer.commit_in(&mut tx).await.unwrap();
                if $commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }
            let a = started.elapsed().as_secs_f64() / $requests as f64;
            let started = Instant::now();
            for _ in 0..$requests {
                request += 1;
                let mut tx = $pool.begin().await.unwrap();
                sqlx::query($order_sql)
                    .bind(customer(request))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let rows = bare_rows(request);
                bare_insert!(tx, $numbered, &rows);
                if $commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }
            let b = started.elapsed().as_secs_f64() / $requests as f64;
            ours.push(a);
            bare.push(b);
            ratios.push(a / b);
        }
        (median(ours), median(bare), median(ratios))
    }};
}

struct CommitRow {
    store: &'static str,
    mode: &'static str,
    ours_us: f64,
    bare_us: f64,
    ratio: f64,
}

async fn sqlite_pool(dir: &tempfile::TempDir, name: &str) -> SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join(name))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap()
}

/// `bare_` copies of the outbox's tables and indexes, from SQLite's own schema text.
async fn sqlite_bare_tables(pool: &SqlitePool) {
    let ddl: Vec<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE name LIKE 'emissions_outbox_%' AND sql IS NOT NULL \
         AND name NOT LIKE '%schema%' ORDER BY type DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for statement in ddl {
        let statement = statement
            .replace("emissions_outbox_events", "bare_events")
            .replace("emissions_outbox_deliveries", "bare_deliveries")
            .replace("emissions_outbox_", "bare_");
        sqlx::query(&statement).execute(pool).await.unwrap();
    }
}

async fn commit_sqlite(rounds: usize, requests: usize) -> Vec<CommitRow> {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir, "app.db").await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let outbox = OutboxConfig::sqlite_pool(pool.clone())
        .build()
        .await
        .unwrap();
    sqlite_bare_tables(&pool).await;
    let emissions = two_destinations(&outbox).await;
    let order = "INSERT INTO orders (customer) VALUES (?)";
    let mut rows = Vec::new();
    for (mode, commit) in [("writes (rolled back)", false), ("committed", true)] {
        let (ours_us, bare_us, ratio) =
            commit_rounds!(pool, emissions, order, false, rounds, requests, commit);
        rows.push(CommitRow {
            store: "SQLite",
            mode,
            ours_us: ours_us * 1e6,
            bare_us: bare_us * 1e6,
            ratio,
        });
    }
    emissions.shutdown(Duration::from_secs(30)).await;
    rows
}

/// Drains `events` preloaded deliveries to one no-op destination (`keys` ordering keys, or
/// none) through the relay; events per second, the purge of finished events included.
async fn relay_drain(
    outbox: Outbox,
    pool_count: impl AsyncCount,
    events: usize,
    keys: usize,
) -> f64 {
    let noop = Noop::default();
    let options = if keys > 0 {
        AdapterOptions::default().ordered_by(|e| Some(e.payload_json()["k"].to_string()))
    } else {
        AdapterOptions::default()
    };
    let started = Instant::now();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("sink", noop.clone()).options(options))
        .unwrap()
        .extension(outbox.clone())
        .start()
        .await
        .unwrap();
    noop.wait_for(events).await;
    while pool_count.count().await > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outbox.purge().await.unwrap();
    let rate = events as f64 / started.elapsed().as_secs_f64();
    emissions.shutdown(Duration::from_secs(30)).await;
    assert_eq!(noop.seen.load(Ordering::Relaxed), events);
    rate
}

/// Undone deliveries left in a store.
#[async_trait]
trait AsyncCount {
    async fn count(&self) -> i64;
}

#[async_trait]
impl AsyncCount for SqlitePool {
    async fn count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM emissions_outbox_deliveries")
            .fetch_one(self)
            .await
            .unwrap()
    }
}

/// Preloads `events` pending deliveries to `sink` (SQLite), as a commit would have written them.
async fn sqlite_preload(pool: &SqlitePool, events: usize, keys: usize) {
    let mut tx = pool.begin().await.unwrap();
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let sql = format!(
            "INSERT INTO emissions_outbox_events (id, name, payload, metadata, emitted_at_us, \
             committed_at_ms) VALUES {} RETURNING seq",
            placeholders(chunk.len(), 6, false)
        );
        let mut query = sqlx::query_scalar::<_, i64>(&sql);
        for i in chunk {
            query = query
                .bind(uuid::Uuid::now_v7().to_string())
                .bind("order_created")
                .bind(
                    serde_json::to_vec(&json!({"n": i, "k": i % keys.max(1), "sku": "w-1"}))
                        .unwrap(),
                )
                .bind("{}")
                .bind(0_i64)
                .bind(now_ms());
        }
        let seqs = query.fetch_all(&mut *tx).await.unwrap();
        let sql = format!(
            "INSERT INTO emissions_outbox_deliveries (event_seq, destination, ordering_key, state, \
             next_attempt_at_ms, updated_at_ms) VALUES {}",
            placeholders(seqs.len(), 6, false)
        );
        let mut query = sqlx::query(&sql);
        for (seq, i) in seqs.iter().zip(chunk) {
            query = query
                .bind(*seq)
                .bind("sink")
                .bind((keys > 0).then(|| (i % keys).to_string()))
                .bind("pending")
                .bind(0_i64)
                .bind(0_i64);
        }
        query.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn drain_sqlite(events: usize, keys: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir, "drain.db").await;
    let outbox = OutboxConfig::sqlite_pool(pool.clone())
        .build()
        .await
        .unwrap();
    sqlite_preload(&pool, events, keys).await;
    relay_drain(outbox, pool, events, keys).await
}

/// Requests of five events committed durably by `producers` tasks while the relay delivers to
/// one no-op destination; delivered events per second, from the first commit to the last
/// outcome written.
async fn end_to_end(
    outbox: Outbox,
    count: impl AsyncCount,
    events: usize,
    producers: usize,
) -> f64 {
    let noop = Noop::default();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("sink", noop.clone()))
        .unwrap()
        .extension(outbox.clone())
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let per_producer = events / producers / EVENTS;
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let emissions = emissions.clone();
            tokio::spawn(async move {
                for r in 0..per_producer {
                    let buffer = emit_request(&emissions, p * per_producer + r);
                    buffer.commit_durably().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = per_producer * producers * EVENTS;
    noop.wait_for(total).await;
    while count.count().await > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    emissions.shutdown(Duration::from_secs(30)).await;
    rate
}

async fn sqlite_file_size(pool: &SqlitePool) -> (i64, i64) {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await
        .unwrap();
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(pool)
        .await
        .unwrap();
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await
        .unwrap();
    (pages * size, (pages - free) * size)
}

/// Rounds of `events` events committed, delivered and purged; the store's size after each.
macro_rules! bloat_rounds {
    ($outbox:expr, $count:expr, $size:expr, $rounds:expr, $events:expr) => {{
        let noop = Noop::default();
        let emissions = Emissions::builder()
            .adapter(emissions_core::Named::new("sink", noop.clone()))
            .unwrap()
            .extension($outbox.clone())
            .start()
            .await
            .unwrap();
        let mut sizes = Vec::new();
        for round in 0..$rounds {
            for r in 0..$events / EVENTS {
                emit_request(&emissions, r).commit_durably().await.unwrap();
            }
            noop.wait_for((round + 1) * $events).await;
            while $count.count().await > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            $outbox.purge().await.unwrap();
            sizes.push($size);
        }
        emissions.shutdown(Duration::from_secs(30)).await;
        sizes
    }};
}

fn mib(bytes: i64) -> String {
    format!("{:.2}", bytes as f64 / 1_048_576.0)
}

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use sqlx::PgPool;

    #[async_trait]
    impl AsyncCount for PgPool {
        async fn count(&self) -> i64 {
            sqlx::query_scalar("SELECT count(*) FROM emissions_outbox_deliveries")
                .fetch_one(self)
                .await
                .unwrap()
        }
    }

    pub(crate) struct Database {
        admin: PgPool,
        pub(crate) name: String,
        pub(crate) pool: PgPool,
    }

    impl Database {
        pub(crate) async fn new(url: &str) -> Database {
            let admin = PgPool::connect(url).await.unwrap();
            let name = format!("outbox_bench_{:016x}", fastrand::u64(..));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .unwrap();
            let (base, _) = url.rsplit_once('/').unwrap();
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&format!("{base}/{name}"))
                .await
                .unwrap();
            Database { admin, name, pool }
        }

        pub(crate) async fn outbox(&self) -> Outbox {
            OutboxConfig::postgres_pool(self.pool.clone())
                .build()
                .await
                .unwrap()
        }

        pub(crate) async fn drop(self) {
            self.pool.close().await;
            let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                .execute(&self.admin)
                .await;
        }
    }

    pub(crate) async fn commit(url: &str, rounds: usize, requests: usize) -> Vec<CommitRow> {
        let db = Database::new(url).await;
        let pool = db.pool.clone();
        sqlx::query("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        let outbox = db.outbox().await;
        for statement in [
            "CREATE TABLE bare_events (LIKE emissions_outbox_events INCLUDING ALL)",
            "CREATE TABLE bare_deliveries (LIKE emissions_outbox_deliveries INCLUDING ALL)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        let emissions = two_destinations(&outbox).await;
        let order = "INSERT INTO orders (customer) VALUES ($1)";
        let mut rows = Vec::new();
        for (mode, commit) in [("writes (rolled back)", false), ("committed", true)] {
            let (ours_us, bare_us, ratio) =
                commit_rounds!(pool, emissions, order, true, rounds, requests, commit);
            rows.push(CommitRow {
                store: "PostgreSQL",
                mode,
                ours_us: ours_us * 1e6,
                bare_us: bare_us * 1e6,
                ratio,
            });
        }
        emissions.shutdown(Duration::from_secs(30)).await;
        db.drop().await;
        rows
    }

    /// Preloads `events` pending deliveries to `sink`, as commits would have written them.
    async fn preload(pool: &PgPool, events: usize, keys: usize) {
        sqlx::query(
            "WITH ev AS (
                INSERT INTO emissions_outbox_events
                    (id, name, payload, metadata, emitted_at_us, committed_at_ms)
                SELECT gen_random_uuid()::text, 'order_created',
                       convert_to(json_build_object('n', g, 'k', g % greatest($2, 1), 'sku', 'w-1')::text, 'UTF8'),
                       '{}', 0, $3
                FROM generate_series(1, $1) g
                RETURNING seq, payload
            )
            INSERT INTO emissions_outbox_deliveries
                (event_seq, destination, ordering_key, state, next_attempt_at_ms, updated_at_ms)
            SELECT seq, 'sink',
                   CASE WHEN $2 > 0 THEN (convert_from(payload, 'UTF8')::json->>'k') END,
                   'pending', 0, 0
            FROM ev ORDER BY seq",
        )
        .bind(events as i64)
        .bind(keys as i64)
        .bind(now_ms())
        .execute(pool)
        .await
        .unwrap();
    }

    pub(crate) async fn drain(url: &str, events: usize, keys: usize) -> f64 {
        let db = Database::new(url).await;
        let outbox = db.outbox().await;
        preload(&db.pool, events, keys).await;
        let rate = relay_drain(outbox, db.pool.clone(), events, keys).await;
        db.drop().await;
        rate
    }

    /// The hand-written relay: claim a batch with `FOR UPDATE SKIP LOCKED` under a lease (its
    /// own short transaction), deliver it to the same no-op adapter, delete what was delivered.
    pub(crate) async fn bare_drain(url: &str, events: usize) -> f64 {
        let db = Database::new(url).await;
        let pool = db.pool.clone();
        sqlx::query(
            "CREATE TABLE jobs (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, name TEXT NOT NULL,
                payload BYTEA NOT NULL, lease_until TIMESTAMPTZ)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO jobs (event_id, name, payload)
             SELECT gen_random_uuid()::text, 'order_created',
                    convert_to(json_build_object('n', g, 'k', 0, 'sku', 'w-1')::text, 'UTF8')
             FROM generate_series(1, $1) g",
        )
        .bind(events as i64)
        .execute(&pool)
        .await
        .unwrap();
        let mut adapter = Noop::default();
        let started = Instant::now();
        loop {
            let claimed: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
                "UPDATE jobs SET lease_until = now() + interval '5 minutes'
                 WHERE id IN (SELECT id FROM jobs
                              WHERE lease_until IS NULL OR lease_until < now()
                              ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
                 RETURNING id, event_id, name, payload",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            if claimed.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(claimed.len());
            let batch: Vec<Event> = claimed
                .into_iter()
                .map(|(id, event_id, name, payload)| {
                    ids.push(id);
                    Event::restore(
                        uuid::Uuid::parse_str(&event_id).unwrap(),
                        name,
                        payload,
                        Metadata::new(),
                        UNIX_EPOCH,
                    )
                    .unwrap()
                })
                .collect();
            adapter.handle_events(&batch).await.unwrap();
            sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&pool)
                .await
                .unwrap();
        }
        let rate = events as f64 / started.elapsed().as_secs_f64();
        assert_eq!(adapter.seen.load(Ordering::Relaxed), events);
        db.drop().await;
        rate
    }

    pub(crate) async fn end_to_end_rate(url: &str, events: usize, producers: usize) -> f64 {
        let db = Database::new(url).await;
        let outbox = db.outbox().await;
        let rate = end_to_end(outbox, db.pool.clone(), events, producers).await;
        db.drop().await;
        rate
    }

    /// Sizes after each round: first as autovacuum leaves them within a few seconds (it
    /// wakes once a minute by default), then with a `VACUUM` after each round standing in for
    /// it.
    pub(crate) async fn bloat(url: &str, rounds: usize, events: usize) -> (Vec<i64>, Vec<i64>) {
        let db = Database::new(url).await;
        let pool = db.pool.clone();
        let size = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT pg_total_relation_size('emissions_outbox_events')
                      + pg_total_relation_size('emissions_outbox_deliveries')",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let vacuum = || async {
            for table in ["emissions_outbox_events", "emissions_outbox_deliveries"] {
                sqlx::query(&format!("VACUUM {table}"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        };
        let outbox = db.outbox().await;
        let unvacuumed = bloat_rounds!(outbox, pool, size().await, rounds, events);
        let outbox = db.outbox().await;
        let vacuumed = bloat_rounds!(
            outbox,
            pool,
            {
                vacuum().await;
                size().await
            },
            rounds,
            events
        );
        db.drop().await;
        (unvacuumed, vacuumed)
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (rounds, requests, drain, e2e, bloat_rounds, bloat_events) = if quick {
        (2, 20, 500, 500, 2, 200)
    } else {
        (15, 200, 20_000, 20_000, 8, 5_000)
    };
    let url = std::env::var("EMISSIONS_DATABASE_URL").ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = String::new();
    rt.block_on(async {
        // 1. commit_in against bare INSERTs.
        let mut rows = commit_sqlite(rounds, requests).await;
        #[cfg(feature = "postgres")]
        if let Some(url) = &url {
            rows.extend(pg::commit(url, rounds, requests).await);
        }
        out.push_str(&format!(
            "**`commit_in` vs bare sqlx INSERTs of the same rows in the same transaction** \
             (an order row + 5 events + 10 deliveries — two destinations, one keyed by customer; \
             median of {rounds} paired rounds of {requests} requests; target ≤ 1.3 ×).\n\n\
             | store | transaction | `commit_in` | bare INSERTs | ratio |\n|---|---|---:|---:|---:|\n"
        ));
        for row in &rows {
            out.push_str(&format!(
                "| {} | {} | {:.0} µs | {:.0} µs | {:.2} |\n",
                row.store, row.mode, row.ours_us, row.bare_us, row.ratio
            ));
        }

        // 2. Relay throughput.
        let sqlite_drain = drain_sqlite(drain, 0).await;
        let sqlite_keyed = drain_sqlite(drain, 100).await;
        out.push_str(&format!(
            "\n**Relay throughput**: a preloaded backlog of {drain} deliveries drained into one \
             no-op adapter (claim → deliver → record, finished events purged; batches of 100).\n\n\
             | store | implementation | events/s | ratio (target ≥ 0.8 on PostgreSQL) |\n|---|---|---:|---:|\n"
        ));
        #[cfg(feature = "postgres")]
        if let Some(url) = &url {
            let (mut bare, mut ours, mut keyed) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..3 {
                bare.push(pg::bare_drain(url, drain).await);
                ours.push(pg::drain(url, drain, 0).await);
                keyed.push(pg::drain(url, drain, 100).await);
            }
            let (bare, ours, keyed) = (median(bare), median(ours), median(keyed));
            out.push_str(&format!(
                "| PostgreSQL | hand-written `SKIP LOCKED` claim → deliver → delete loop | {bare:.0} | 1.00 |\n\
                 | PostgreSQL | outbox relay | {ours:.0} | {:.2} |\n\
                 | PostgreSQL | outbox relay, 100 ordered keys | {keyed:.0} | {:.2} |\n",
                ours / bare,
                keyed / bare
            ));
        }
        out.push_str(&format!(
            "| SQLite | outbox relay | {sqlite_drain:.0} | — |\n\
             | SQLite | outbox relay, 100 ordered keys | {sqlite_keyed:.0} | — |\n"
        ));

        // 3. End to end.
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_pool(&dir, "e2e.db").await;
        let outbox = OutboxConfig::sqlite_pool(pool.clone()).build().await.unwrap();
        let sqlite_e2e = end_to_end(outbox, pool, e2e, 4).await;
        out.push_str(&format!(
            "\n**End to end**: 4 tasks committing requests of 5 events (`commit_durably`, one \
             transaction each) while the relay delivers them to one no-op adapter; {e2e} events, \
             first commit to last outcome recorded.\n\n\
             | store | events/s |\n|---|---:|\n| SQLite | {sqlite_e2e:.0} |\n"
        ));
        #[cfg(feature = "postgres")]
        if let Some(url) = &url {
            let pg_e2e = pg::end_to_end_rate(url, e2e, 4).await;
            out.push_str(&format!("| PostgreSQL | {pg_e2e:.0} |\n"));
        }

        // 4. Table size across rounds.
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_pool(&dir, "bloat.db").await;
        let outbox = OutboxConfig::sqlite_pool(pool.clone()).build().await.unwrap();
        let sqlite_sizes = bloat_rounds!(
            outbox,
            pool,
            sqlite_file_size(&pool).await,
            bloat_rounds,
            bloat_events
        );
        out.push_str(&format!(
            "\n**Table size** after each of {bloat_rounds} rounds of {bloat_events} events \
             committed, delivered and purged (`Retention::Delete`).\n\n\
             | store | size after each round (MiB) |\n|---|---|\n\
             | SQLite file (pages in use) | {} |\n\
             | SQLite file (total, incl. free pages kept for reuse) | {} |\n",
            sqlite_sizes.iter().map(|s| mib(s.1)).collect::<Vec<_>>().join(" · "),
            sqlite_sizes.iter().map(|s| mib(s.0)).collect::<Vec<_>>().join(" · "),
        ));
        #[cfg(feature = "postgres")]
        if let Some(url) = &url {
            let (unvacuumed, vacuumed) = pg::bloat(url, bloat_rounds, bloat_events).await;
            out.push_str(&format!(
                "| PostgreSQL (tables + indexes), before autovacuum's next run | {} |\n\
                 | PostgreSQL (tables + indexes), vacuumed after each round (as autovacuum does) | {} |\n",
                unvacuumed.iter().map(|s| mib(*s)).collect::<Vec<_>>().join(" · "),
                vacuumed.iter().map(|s| mib(*s)).collect::<Vec<_>>().join(" · "),
            ));
        }
    });
    if url.is_none() {
        out.push_str(
            "\n(PostgreSQL rows need `EMISSIONS_DATABASE_URL`; `cargo xtask bench` starts one.)\n",
        );
    }
    println!("{out}");
    if !quick {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("outbox.md"), out);
    }
}
