//! Faults and edges found by review, on real SQLite files: a commit cancelled or failing
//! half-way, commits over the databases' parameter limits, a delivery slower than its lease, a
//! slow destination beside a fast one, an attempt cut off by shutdown, a destination removed
//! between runs, an outbox attached twice, hostile ordering keys, and the testing crate's check
//! of an unknown destination.
#![cfg(feature = "sqlite")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::{
    Adapter, AdapterOptions, BatchError, BufferState, Emissions, Event, async_trait,
};
use emissions_outbox::{CommitIn, DurableCommit, Error, MAX_KEY_BYTES, Retention};
use emissions_testing::TestAdapter;
use emissions_testing::outbox::{OutboxCounts, expect_counts};
use serde_json::json;
use support::{Db, eventually, start, start_recorded};

const WAIT: Duration = Duration::from_secs(20);

async fn drained(outbox: &emissions_outbox::Outbox) {
    tokio::time::timeout(WAIT, outbox.drained())
        .await
        .expect("the outbox drains")
        .unwrap();
}

async fn count(db: &Db, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Records every attempt (payload `n`), taking `hold` per batch.
#[derive(Clone, Default)]
struct Slow {
    hold_ms: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<u64>>>,
    started: Arc<Mutex<Vec<u64>>>,
}

impl Slow {
    fn new(hold: Duration) -> Self {
        let slow = Slow::default();
        slow.hold_ms
            .store(hold.as_millis() as u64, Ordering::SeqCst);
        slow
    }
    fn seen(&self) -> Vec<u64> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl Adapter for Slow {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let ns: Vec<u64> = events
            .iter()
            .map(|e| e.payload_json()["n"].as_u64().unwrap_or(0))
            .collect();
        self.started.lock().unwrap().extend(&ns);
        let hold = self.hold_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(hold)).await;
        self.seen.lock().unwrap().extend(ns);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cancelled_half_way_leaves_nothing_in_the_callers_transaction() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let (emissions, recorder) = start_recorded(&outbox).await;
    let (mut cancelled, mut rolled_back) = (0, 0);
    for round in 0..60u64 {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO orders (item) VALUES ('widget')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let buffer = emissions.start();
        for n in 0..200u64 {
            buffer
                .emit(format!("e{round}"), &json!({ "n": round * 1000 + n }))
                .unwrap();
        }
        // Dropped at a different point of the writes each round.
        let budget = Duration::from_micros(50 * round);
        let finished = tokio::time::timeout(budget, buffer.commit_in(&mut tx)).await;
        match finished {
            Ok(result) => {
                result.unwrap();
                assert_eq!(buffer.state(), BufferState::Committed);
            }
            Err(_) => {
                cancelled += 1;
                // Either nothing of it is in the caller's transaction and the buffer is open
                // (cancelled while writing), or all of it is and the buffer is committed
                // (cancelled while releasing the savepoint) — never rows with an open buffer.
                let rows: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM emissions_outbox_events e
                     JOIN emissions_outbox_deliveries d ON d.event_seq = e.seq
                     WHERE e.name = ?1",
                )
                .bind(format!("e{round}"))
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                match buffer.state() {
                    BufferState::Open => {
                        rolled_back += 1;
                        assert_eq!(rows, 0, "round {round}: rows of a cancelled commit_in");
                        // Committing it again works (no duplicate id), in the same transaction.
                        assert_eq!(buffer.commit_in(&mut tx).await.unwrap(), 200);
                    }
                    state => {
                        assert_eq!(state, BufferState::Committed);
                        assert_eq!(rows, 200, "round {round}: a committed buffer's rows");
                    }
                }
            }
        }
        tx.commit().await.unwrap();
    }
    assert!(
        rolled_back > 0,
        "no round was cancelled while writing ({cancelled} cancelled): the test proves nothing"
    );
    drained(&outbox).await;
    emissions.settled().await;
    assert_eq!(
        recorder.events().len(),
        60 * 200,
        "every committed event delivered"
    );
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_half_way_rolls_its_rows_back_and_the_transaction_goes_on() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let (emissions, _) = start_recorded(&outbox).await;
    // The deliveries insert fails (a trigger refuses it) after the events insert succeeded.
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON emissions_outbox_deliveries
         BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let buffer = emissions.start();
    buffer.emit("e", &json!({"n": 1})).unwrap();
    let err = buffer.commit_in(&mut tx).await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err}");
    assert_eq!(buffer.state(), BufferState::Open);
    tx.commit().await.unwrap();
    // The caller's own row committed; none of the outbox's did.
    assert_eq!(count(&db, "orders").await, 1);
    assert_eq!(count(&db, "emissions_outbox_events").await, 0);
    sqlx::query("DROP TRIGGER refuse")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(buffer.commit_durably().await.unwrap(), 1);
    drained(&outbox).await;
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_over_the_databases_parameter_limits_are_written_in_parts() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let mut builder = Emissions::builder();
    let recorders: Vec<_> = (0..10)
        .map(|i| {
            let test = TestAdapter::new();
            let recorder = test.recorder();
            builder = std::mem::take(&mut builder)
                .adapter(emissions_core::Named::new(format!("d{i}"), test))
                .unwrap();
            recorder
        })
        .collect();
    let emissions = start(builder, &outbox).await;
    // 5 000 events × 10 destinations: 50 000 delivery rows, 350 000 parameters in one go.
    let mut tx = db.pool.begin().await.unwrap();
    let buffer = emissions.start();
    for n in 0..5000u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    assert_eq!(buffer.commit_in(&mut tx).await.unwrap(), 5000);
    tx.commit().await.unwrap();
    drained(&outbox).await;
    emissions.settled().await;
    for recorder in recorders {
        assert_eq!(recorder.events().len(), 5000);
    }
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_slower_than_its_lease_is_not_attempted_twice_nor_does_it_leak_room() {
    let db = Db::new().await;
    let outbox = db
        .config()
        .lease(Duration::from_secs(1))
        .batch_size(5)
        .max_in_flight(10)
        .retention(Retention::Archive(Duration::from_secs(3600)))
        .build()
        .await
        .unwrap();
    let slow = Slow::new(Duration::from_millis(1600));
    let emissions = start(
        Emissions::builder()
            .adapter(
                emissions_core::Named::new("slow", slow.clone()).options(AdapterOptions::default()),
            )
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    for n in 0..10u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    drained(&outbox).await;
    // This instance's relay claimed its own expired leases again: the attempt under way went
    // on, nothing was attempted twice, and the outcomes were recorded.
    let mut seen = slow.seen();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    let rows = outbox.deliveries(None, None, 100).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.attempts == 1),
        "{rows:?}"
    );
    // All the room is back: 200 quick deliveries go through at full speed.
    slow.hold_ms.store(0, Ordering::SeqCst);
    let buffer = emissions.start();
    for n in 100..300u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), outbox.drained())
        .await
        .expect("no claim room leaked")
        .unwrap();
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_destination_does_not_hold_back_another() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let slow = Slow::new(Duration::from_millis(100));
    let fast = TestAdapter::new();
    let fast_recorder = fast.recorder();
    let emissions = start(
        Emissions::builder()
            .adapter(
                emissions_core::Named::new("slow", slow.clone())
                    .options(AdapterOptions::default().capacity(10).max_demand(1)),
            )
            .unwrap()
            .adapter(emissions_core::Named::new("fast", fast))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    for n in 0..300u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    // The slow one needs 30 s for all of them; the fast one gets everything at once.
    eventually(5, "the fast destination gets every event", || {
        let n = fast_recorder.events().len();
        async move { n == 300 }
    })
    .await;
    assert!(slow.seen().len() < 300);
    emissions.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_off_by_shutdown_is_counted_as_a_possible_duplicate_when_sent_again() {
    let db = Db::new().await;
    let config = || {
        db.config()
            .retention(Retention::Archive(Duration::from_secs(3600)))
    };
    let first = config().build().await.unwrap();
    let slow = Slow::new(Duration::from_secs(10));
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", slow.clone()))
            .unwrap(),
        &first,
    )
    .await;
    let buffer = emissions.start();
    buffer.emit("e", &json!({"n": 1})).unwrap();
    buffer.commit_durably().await.unwrap();
    eventually(5, "the attempt started", || {
        let started = slow.started.lock().unwrap().len();
        async move { started == 1 }
    })
    .await;
    // The destination has the request; the deadline cuts the attempt off.
    let report = emissions.shutdown(Duration::from_millis(200)).await;
    assert!(report.is_balanced());
    assert_eq!(report.adapter("hook").unwrap().counts.dropped, 1);

    let second = config().build().await.unwrap();
    let again = TestAdapter::new();
    let recorder = again.recorder();
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", again))
            .unwrap(),
        &second,
    )
    .await;
    drained(&second).await;
    emissions.settled().await;
    assert_eq!(recorder.events().len(), 1);
    assert_eq!(second.redeliveries(), 1);
    let rows = second.deliveries(None, None, 10).await.unwrap();
    assert_eq!(rows[0].redeliveries, 1);
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_for_a_removed_destination_wait_without_blocking_drained() {
    let db = Db::new().await;
    let first = db.outbox().await;
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("a", TestAdapter::new()))
            .unwrap()
            .adapter(emissions_core::Named::new(
                "b",
                Slow::new(Duration::from_secs(30)),
            ))
            .unwrap(),
        &first,
    )
    .await;
    let buffer = emissions.start();
    buffer.emit("e", &json!({"n": 1})).unwrap();
    buffer.commit_durably().await.unwrap();
    emissions.shutdown(Duration::from_millis(100)).await;

    // Restarted without "b": its delivery stays, visible, and `drained` does not wait for it.
    let second = db.outbox().await;
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("a", TestAdapter::new()))
            .unwrap(),
        &second,
    )
    .await;
    drained(&second).await;
    let stats = second.stats().await.unwrap();
    let b = stats.iter().find(|s| s.destination == "b").unwrap();
    assert_eq!(b.pending, 1);
    assert_eq!(second.destinations(), ["a"]);
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_attached_to_a_second_instance_refuses_to_commit() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let first = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("a", TestAdapter::new()))
            .unwrap(),
        &outbox,
    )
    .await;
    first.shutdown(Duration::from_secs(1)).await;
    let second = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("b", TestAdapter::new()))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = second.start();
    buffer.emit("e", &json!({"n": 1})).unwrap();
    let err = buffer.commit_durably().await.unwrap_err();
    assert!(matches!(err, Error::AlreadyAttached), "{err}");
    assert_eq!(buffer.state(), BufferState::Open);
    second.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ordering_keys_are_stored_abandoned_with_the_reason() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let keyed = AdapterOptions::default()
        .ordered_by(|e| e.payload_json()["key"].as_str().map(str::to_owned));
    let test = TestAdapter::new();
    let recorder = test.recorder();
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", test).options(keyed))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let fine = "ключ-🔑-".repeat(20);
    for (n, key) in [(1, long.as_str()), (2, "nul\0key"), (3, fine.as_str())] {
        buffer.emit("e", &json!({ "n": n, "key": key })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    drained(&outbox).await;
    emissions.settled().await;
    assert_eq!(
        recorder.events().len(),
        1,
        "only the well-formed key is delivered"
    );
    let abandoned = outbox
        .deliveries(Some("hook"), Some("abandoned"), 10)
        .await
        .unwrap();
    let reasons: Vec<String> = abandoned
        .iter()
        .map(|d| d.last_error.clone().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("over the limit"), "{reasons:?}");
    assert!(reasons[1].contains("NUL"), "{reasons:?}");
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testing_check_refuses_a_destination_the_outbox_does_not_know() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("billing", TestAdapter::new()))
            .unwrap(),
        &outbox,
    )
    .await;
    // Nothing committed yet: "billing" reads as zeros, a typo is an error.
    expect_counts(
        &outbox,
        "billing",
        OutboxCounts {
            pending: Some(0),
            ..OutboxCounts::default()
        },
    )
    .await
    .unwrap();
    let err = expect_counts(&outbox, "biling", OutboxCounts::default())
        .await
        .unwrap_err();
    assert!(err.contains("not a destination"), "{err}");
    emissions.shutdown(Duration::from_secs(1)).await;
}
