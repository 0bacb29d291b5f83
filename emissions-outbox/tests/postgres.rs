//! The outbox on a real PostgreSQL (`EMISSIONS_DATABASE_URL`; `cargo xtask ci` starts one):
//! the caller's transaction, `NOTIFY` wake-ups, and several instances sharing one store —
//! claims never shared, each key one delivery at a time across the cluster, a dead instance's
//! leases taken over, and a late acknowledgement fenced off.
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::{Adapter, BatchError, Emissions, Event, async_trait};
use emissions_outbox::{CommitIn, DurableCommit, Outbox, OutboxConfig};
use serde_json::json;
use sqlx::PgPool;
use support::options;

const WAIT: Duration = Duration::from_secs(30);

/// A fresh database on the test server, or `None` offline (a failure under `cargo xtask ci`).
async fn database() -> Option<PgPool> {
    let url = match std::env::var("EMISSIONS_DATABASE_URL") {
        Ok(url) => url,
        Err(_) if std::env::var("EMISSIONS_REQUIRE_SERVICES").is_ok() => {
            panic!("EMISSIONS_DATABASE_URL is not set: `cargo xtask ci` starts PostgreSQL")
        }
        Err(_) => return None,
    };
    let admin = PgPool::connect(&url).await.expect("connect to PostgreSQL");
    let name = format!("outbox_{:016x}", fastrand::u64(..));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&format!("{base}/{name}"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, item TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Some(pool)
}

fn config(pool: &PgPool) -> OutboxConfig {
    OutboxConfig::postgres_pool(pool.clone())
        .poll_interval(Duration::from_secs(5))
        .purge_interval(Duration::from_secs(3600))
}

async fn drained(outbox: &Outbox) {
    tokio::time::timeout(WAIT, outbox.drained())
        .await
        .expect("the outbox drains")
        .unwrap();
}

/// Records deliveries, and how many deliveries of one key were in progress at once.
#[derive(Clone, Default)]
struct Receiver {
    delivered: Arc<Mutex<Vec<(String, u64, uuid::Uuid)>>>,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
    overlaps: Arc<Mutex<Vec<String>>>,
}

struct Recording {
    instance: String,
    receiver: Receiver,
    /// Holds each delivery a moment, so that overlapping ones would be seen.
    hold: Duration,
    /// Never returns (a dead instance).
    stalled: Arc<AtomicBool>,
}

#[async_trait]
impl Adapter for Recording {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let keys: Vec<String> = events
            .iter()
            .map(|e| e.payload_json()["key"].as_str().unwrap_or("").to_owned())
            .collect();
        {
            let mut in_progress = self.receiver.in_progress.lock().unwrap();
            for key in keys.iter().filter(|k| !k.is_empty()) {
                let n = in_progress.entry(key.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    self.receiver.overlaps.lock().unwrap().push(key.clone());
                }
            }
        }
        tokio::time::sleep(self.hold).await;
        let mut delivered = self.receiver.delivered.lock().unwrap();
        let mut in_progress = self.receiver.in_progress.lock().unwrap();
        for (event, key) in events.iter().zip(&keys) {
            delivered.push((
                self.instance.clone(),
                event.payload_json()["n"].as_u64().unwrap(),
                event.id(),
            ));
            if let Some(n) = in_progress.get_mut(key) {
                *n -= 1;
            }
        }
        Ok(())
    }
}

async fn instance(
    pool: &PgPool,
    name: &str,
    receiver: &Receiver,
    config: OutboxConfig,
) -> (Emissions, Outbox, Arc<AtomicBool>) {
    let outbox = config.build().await.unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    let adapter = Recording {
        instance: name.to_owned(),
        receiver: receiver.clone(),
        hold: Duration::from_millis(5),
        stalled: stalled.clone(),
    };
    let keyed = options(support::quick_retries(5))
        .max_demand(10)
        .ordered_by(|e| {
            e.payload_json()["key"]
                .as_str()
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
        });
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("hook", adapter).options(keyed))
        .unwrap()
        .extension(outbox.clone())
        .start()
        .await
        .unwrap();
    let _ = pool;
    (emissions, outbox, stalled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_transaction_decides_and_notify_wakes_the_relay() {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    // A long poll: only NOTIFY can make this fast.
    let (emissions, outbox, _) = instance(
        &pool,
        "a",
        &receiver,
        config(&pool).poll_interval(Duration::from_secs(30)),
    )
    .await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('widget')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let buffer = emissions.start();
    buffer
        .emit("order_created", &json!({"n": 1, "key": "o1"}))
        .unwrap();
    buffer.commit_in(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let mut rolled_back = pool.begin().await.unwrap();
    let buffer = emissions.start();
    buffer
        .emit("order_created", &json!({"n": 2, "key": "o2"}))
        .unwrap();
    buffer.commit_in(&mut rolled_back).await.unwrap();
    rolled_back.rollback().await.unwrap();

    let started = std::time::Instant::now();
    drained(&outbox).await;
    emissions.settled().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by NOTIFY, not the 30 s poll"
    );
    let delivered: Vec<u64> = receiver
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.1)
        .collect();
    assert_eq!(delivered, [1]);
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_store_each_key_in_order_one_at_a_time() {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        // A small claim size and in-flight cap, so that no instance can take everything.
        let config = config(&pool)
            .poll_interval(Duration::from_millis(20))
            .batch_size(5)
            .max_in_flight(10);
        instances.push(instance(&pool, name, &receiver, config).await);
    }
    // 300 events, committed at once so that the three relays compete for them: the even ones
    // over 10 keys (ordered), the odd ones unkeyed (any instance, any order, never twice).
    let buffer = instances[0].0.start();
    for n in 0..300u64 {
        let key = if n % 2 == 0 {
            format!("k{}", n % 10)
        } else {
            String::new()
        };
        buffer.emit("e", &json!({"n": n, "key": key})).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    for (_, outbox, _) in &instances {
        drained(outbox).await;
    }
    let delivered = receiver.delivered.lock().unwrap().clone();
    let mut seen = std::collections::HashSet::new();
    for (_, n, _) in &delivered {
        assert!(seen.insert(*n), "event {n} delivered twice");
    }
    assert_eq!(seen.len(), 300);
    // Per key, in commit order.
    for key in (0..10u64).step_by(2) {
        let order: Vec<u64> = delivered
            .iter()
            .map(|d| d.1)
            .filter(|n| n % 2 == 0 && n % 10 == key)
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "key k{key} out of order");
    }
    assert!(
        receiver.overlaps.lock().unwrap().is_empty(),
        "a key had two deliveries in flight at once"
    );
    let by_instance: std::collections::HashSet<&str> =
        delivered.iter().map(|d| d.0.as_str()).collect();
    assert!(
        by_instance.len() > 1,
        "every instance should have taken a share: {by_instance:?}"
    );
    for (emissions, _, _) in instances {
        let report = emissions.shutdown(Duration::from_secs(5)).await;
        assert!(report.is_balanced());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_leases_are_taken_over_and_its_late_outcomes_fenced_off() {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    let lease = Duration::from_secs(2);
    // Delivered rows are kept, so that a late write over them would show.
    let config = |pool: &PgPool| {
        config(pool)
            .lease(lease)
            .poll_interval(Duration::from_millis(100))
            .retention(emissions_outbox::Retention::Archive(Duration::from_secs(
                3600,
            )))
    };
    // Instance A claims the first event of each of the four keys, then "dies": its
    // deliveries never return, and with no room left it claims nothing more (a dead process
    // claims nothing; a live relay would race B for every expired lease, its own included).
    let (a, a_outbox, a_stalled) = instance(
        &pool,
        "a",
        &receiver,
        config(&pool).batch_size(4).max_in_flight(4),
    )
    .await;
    a_stalled.store(true, Ordering::SeqCst);
    let buffer = a.start();
    for n in 0..20u64 {
        buffer
            .emit("e", &json!({"n": n, "key": format!("k{}", n % 4)}))
            .unwrap();
    }
    buffer.commit_durably().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while a_outbox
            .stats()
            .await
            .unwrap()
            .first()
            .is_none_or(|s| s.in_flight == 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    // Instance B takes the expired leases over and delivers every event.
    let (b, b_outbox, _) = instance(&pool, "b", &receiver, config(&pool)).await;
    drained(&b_outbox).await;
    let delivered: Vec<u64> = receiver
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.1)
        .collect();
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    assert!(b_outbox.redeliveries() > 0, "takeovers are counted");

    // A's late outcomes: its shutdown reports its stalled deliveries dropped — fenced off,
    // they change nothing B recorded, and nothing is delivered again.
    let report = a.shutdown(Duration::from_millis(300)).await;
    assert!(report.is_balanced());
    let count = receiver.delivered.lock().unwrap().len();
    b_outbox.wake();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = b_outbox.deliveries(None, None, 100).await.unwrap();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:?}");
    assert_eq!(
        receiver.delivered.lock().unwrap().len(),
        count,
        "nothing delivered again"
    );
    b.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_writing_one_key_take_turns_so_it_stays_in_order() {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    let (emissions, outbox, _) = instance(&pool, "a", &receiver, config(&pool)).await;
    // A writes key k first and keeps its transaction open.
    let mut a = pool.begin().await.unwrap();
    let first = emissions.start();
    first.emit("e", &json!({"n": 1, "key": "k"})).unwrap();
    first.commit_in(&mut a).await.unwrap();
    // B writes the same key: it waits for A to end, not racing past it.
    let b_pool = pool.clone();
    let b_emissions = emissions.clone();
    let b = tokio::spawn(async move {
        let mut b = b_pool.begin().await.unwrap();
        let second = b_emissions.start();
        second.emit("e", &json!({"n": 2, "key": "k"})).unwrap();
        second.commit_in(&mut b).await.unwrap();
        b.commit().await.unwrap();
    });
    // Another key is not held up.
    let mut c = pool.begin().await.unwrap();
    let other = emissions.start();
    other.emit("e", &json!({"n": 3, "key": "other"})).unwrap();
    tokio::time::timeout(Duration::from_secs(5), other.commit_in(&mut c))
        .await
        .expect("another key does not wait")
        .unwrap();
    c.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_finished(), "B wrote key k while A still held it");
    a.commit().await.unwrap();
    tokio::time::timeout(WAIT, b).await.unwrap().unwrap();
    drained(&outbox).await;
    let order: Vec<u64> = receiver
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.1)
        .filter(|n| *n != 3)
        .collect();
    assert_eq!(order, [1, 2]);
    assert!(receiver.overlaps.lock().unwrap().is_empty());
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_leaves_the_callers_transaction_usable_and_large_ones_are_written_in_order()
 {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    let (emissions, outbox, _) = instance(&pool, "a", &receiver, config(&pool)).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The database refuses the event's row (a trigger of the application's, say).
    sqlx::query(
        "CREATE FUNCTION refuse_event() RETURNS trigger AS $$ BEGIN \
         IF NEW.name = 'refused' THEN RAISE EXCEPTION 'refused by a trigger'; END IF; \
         RETURN NEW; END $$ LANGUAGE plpgsql",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_event BEFORE INSERT ON emissions_outbox_events \
         FOR EACH ROW EXECUTE FUNCTION refuse_event()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let refused = emissions.start();
    refused.emit("refused", &json!({"n": 0})).unwrap();
    let err = refused.commit_in(&mut tx).await.unwrap_err();
    assert!(matches!(err, emissions_outbox::Error::Database(_)), "{err}");
    assert_eq!(refused.state(), emissions_core::BufferState::Open);
    // The transaction goes on: more rows, and 11 000 events (66 000 parameters in one go).
    let buffer = emissions.start();
    for n in 0..11_000u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    assert_eq!(buffer.commit_in(&mut tx).await.unwrap(), 11_000);
    // Numbered in emit order (one statement writes them all).
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT convert_from(payload, 'UTF8') FROM emissions_outbox_events ORDER BY seq",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let numbered: Vec<u64> = payloads
        .iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(numbered, (0..11_000).collect::<Vec<_>>());
    tx.commit().await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    drained(&outbox).await;
    assert_eq!(receiver.delivered.lock().unwrap().len(), 11_000);
    emissions.shutdown(Duration::from_secs(5)).await;
}

/// Polls a future `polls` times (each poll sends what it can), then drops it.
async fn poll_then_drop<F: std::future::Future>(future: F, polls: usize) -> bool {
    let mut future = std::pin::pin!(future);
    for _ in 0..polls {
        let ready =
            std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_ready()))
                .await;
        if ready {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_dropped_anywhere_keeps_the_callers_rows_and_writes_its_events_once() {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    let (emissions, outbox, _) = instance(&pool, "a", &receiver, config(&pool)).await;
    let rounds = 60u64;
    let (mut dropped, mut reopened) = (0, 0);
    for round in 0..rounds {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(format!("before-{round}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let buffer = emissions.start();
        for n in 0..3 {
            buffer
                .emit(
                    "e",
                    &json!({"n": round * 10 + n, "key": format!("k{}", round % 4)}),
                )
                .unwrap();
        }
        // Dropped after 1, 2, … polls: while the savepoint opens, while the rows are
        // written, while the savepoint is released — or not at all.
        if !poll_then_drop(buffer.commit_in(&mut tx), 1 + (round as usize % 12)).await {
            dropped += 1;
        }
        // The caller's transaction is intact: its own row is still there, in it.
        let own: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE item = $1")
            .bind(format!("before-{round}"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(
            own, 1,
            "round {round}: the caller's row is gone from its transaction"
        );
        if buffer.state() == emissions_core::BufferState::Open {
            reopened += 1;
            // Committed again: nothing written twice.
            assert_eq!(buffer.commit_in(&mut tx).await.unwrap(), 3);
        }
        sqlx::query("INSERT INTO orders (item) VALUES ($1)")
            .bind(format!("after-{round}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert!(
        dropped > 0 && reopened > 0,
        "no commit_in was dropped mid-way: the test proves nothing"
    );
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 2 * rounds as i64, "every row the caller committed");
    drained(&outbox).await;
    let mut delivered: Vec<u64> = receiver
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.1)
        .collect();
    delivered.sort_unstable();
    let expected: Vec<u64> = (0..rounds)
        .flat_map(|r| (0..3).map(move |n| r * 10 + n))
        .collect();
    assert_eq!(delivered, expected, "every event delivered exactly once");
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_tens_of_thousands_of_keys_takes_a_bounded_number_of_locks() {
    let Some(pool) = database().await else { return };
    let receiver = Receiver::default();
    let (emissions, outbox, _) = instance(&pool, "a", &receiver, config(&pool)).await;
    let buffer = emissions.start();
    for n in 0..30_000u64 {
        buffer
            .emit("e", &json!({"n": n, "key": format!("order-{n}")}))
            .unwrap();
    }
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(buffer.commit_in(&mut tx).await.unwrap(), 30_000);
    let locks: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(locks <= 1024, "{locks} advisory locks held");
    tx.commit().await.unwrap();
    drained(&outbox).await;
    assert_eq!(receiver.delivered.lock().unwrap().len(), 30_000);
    emissions.shutdown(Duration::from_secs(10)).await;
}
