//! The outbox on real SQLite files: in the caller's transaction, retries as rows, failed versus
//! abandoned, replay, restart recovery, and the faults a commit can meet.
#![cfg(feature = "sqlite")]

mod support;

use std::time::Duration;

use emissions_core::{BufferState, Emissions, Error as CoreError};
use emissions_outbox::{CommitIn, DurableCommit, Error, Migrations, Replay, Retention};
use emissions_testing::TestAdapter;
use emissions_testing::assert_outbox;
use emissions_testing::outbox::{OutboxCounts, expect_counts, expect_drained};
use serde_json::json;
use support::{Answer, Db, Scripted, options, quick_retries, start, start_recorded};

const WAIT: Duration = Duration::from_secs(20);

async fn drained(outbox: &emissions_outbox::Outbox) {
    tokio::time::timeout(WAIT, outbox.drained())
        .await
        .expect("the outbox drains")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_commit_with_the_callers_transaction_and_are_delivered() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let (emissions, recorder) = start_recorded(&outbox).await;

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (item) VALUES ('widget')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let buffer = emissions.start();
    buffer.emit("order_created", &json!({"n": 1})).unwrap();
    buffer.emit("order_priced", &json!({"n": 2})).unwrap();
    assert_eq!(buffer.commit_in(&mut tx).await.unwrap(), 2);
    assert_eq!(buffer.state(), BufferState::Committed);
    // Not visible, not delivered, until the transaction commits.
    assert_eq!(outbox.stats().await.unwrap().len(), 0);
    tx.commit().await.unwrap();

    drained(&outbox).await;
    emissions.settled().await;
    let names: Vec<String> = recorder
        .events()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(names, ["order_created", "order_priced"]);
    // Delivered rows are deleted, and each event with its last delivery: nothing is left for
    // the cleanup.
    assert!(outbox.deliveries(None, None, 100).await.unwrap().is_empty());
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM emissions_outbox_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    assert_eq!(outbox.purge().await.unwrap(), 0);
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.adapter("test").unwrap().counts.delivered, 2);
    assert!(report.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_delivers_nothing_ever() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let (emissions, recorder) = start_recorded(&outbox).await;
    let mut tx = db.pool.begin().await.unwrap();
    let buffer = emissions.start();
    buffer.emit("order_created", &json!({"n": 1})).unwrap();
    buffer.commit_in(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();
    // A commit afterwards proves the relay ran since.
    let later = emissions.start();
    later.emit("later", &json!({"n": 2})).unwrap();
    later.commit_durably().await.unwrap();
    drained(&outbox).await;
    emissions.settled().await;
    let names: Vec<String> = recorder
        .events()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(names, ["later"]);
    // The rolled-back event was never stored; the delivered one went with its delivery.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM emissions_outbox_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    assert!(outbox.stats().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_rows_failed_and_abandoned_are_distinct_and_replay_requeues() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    // 1: fails twice then succeeds; 2: fails forever (4 attempts → failed);
    // 3: rejected permanently (→ abandoned).
    let (adapter, seen, _) = Scripted::new(|id, attempt| match (id, attempt) {
        (1, 1..=2) | (2, _) => Answer::Retry,
        (3, _) => Answer::Permanent,
        _ => Answer::Ok,
    });
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", adapter).options(options(quick_retries(4))))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    for n in 1..=3u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    drained(&outbox).await;

    assert_eq!(seen.attempts_of(1), 3);
    assert_eq!(seen.attempts_of(2), 4);
    assert_eq!(seen.attempts_of(3), 1);
    let failed = outbox
        .deliveries(Some("hook"), Some("failed"), 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].attempts, failed[0].last_error.as_deref()),
        (4, Some("try again"))
    );
    let abandoned = outbox
        .deliveries(Some("hook"), Some("abandoned"), 10)
        .await
        .unwrap();
    assert_eq!(abandoned.len(), 1);
    assert_eq!(
        (abandoned[0].attempts, abandoned[0].last_error.as_deref()),
        (1, Some("rejected"))
    );
    let stats = &outbox.stats().await.unwrap()[0];
    assert_eq!((stats.pending, stats.failed, stats.abandoned), (0, 1, 1));
    // The same through the testing crate's assertions, which also say what is wrong.
    expect_drained(&outbox).await.unwrap();
    assert_outbox!(
        outbox,
        "hook",
        pending = 0,
        in_flight = 0,
        failed = 1,
        abandoned = 1
    );
    let wrong = OutboxCounts {
        failed: Some(2),
        abandoned: Some(1),
        ..OutboxCounts::default()
    };
    let message = expect_counts(&outbox, "hook", wrong).await.unwrap_err();
    assert!(
        message.contains("failed: expected 2, found 1") && !message.contains("abandoned: expected"),
        "{message}"
    );
    // The engine saw every attempt: each retryable failure went back to the store (which
    // decided that event 2's fourth was the last), the permanent one failed.
    let counts = emissions.stats().adapter("hook").unwrap().counts;
    assert_eq!(
        (
            counts.committed,
            counts.delivered,
            counts.deferred,
            counts.failed
        ),
        (8, 1, 6, 1)
    );

    // Replay the failed one only: four more attempts (it still fails).
    assert_eq!(
        outbox
            .replay(Replay::failed().event_id(failed[0].event_id))
            .await
            .unwrap(),
        1
    );
    drained(&outbox).await;
    assert_eq!(seen.attempts_of(2), 8);
    assert_eq!(seen.attempts_of(3), 1, "not selected");
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_key_holds_back_only_its_own_key_and_replay_delivers_it_once_fixed() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let fixed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver_fixed = fixed.clone();
    // Key = n / 10. Event 10 (key 1) fails until fixed.
    let (adapter, seen, _) = Scripted::new(move |id, _| {
        if id == 10 && !receiver_fixed.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Retry
        } else {
            Answer::Ok
        }
    });
    let keyed = options(quick_retries(3))
        .ordered_by(|e| e.payload_json()["n"].as_u64().map(|n| (n / 10).to_string()));
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", adapter).options(keyed))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    for n in [10u64, 11, 12, 20, 21, 22] {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    drained(&outbox).await;

    // Key 2 went through; key 1 waited behind its poison event until it failed for good.
    let order: Vec<u64> = seen.all().iter().map(|(id, _, _)| *id).collect();
    assert_eq!(order.iter().filter(|id| **id == 10).count(), 3);
    let pos = |id: u64| order.iter().position(|x| *x == id).unwrap();
    assert!(
        pos(11) > order.iter().rposition(|x| *x == 10).unwrap(),
        "{order:?}"
    );
    assert!(pos(11) < pos(12));
    assert!(pos(20) < pos(21) && pos(21) < pos(22));
    assert_eq!(
        outbox
            .deliveries(Some("hook"), Some("failed"), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        outbox
            .replay(Replay::failed().destination("hook"))
            .await
            .unwrap(),
        1
    );
    drained(&outbox).await;
    assert_eq!(seen.attempts_of(10), 4);
    assert!(
        outbox
            .deliveries(Some("hook"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    emissions.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_instance_could_not_deliver_the_next_one_does() {
    let db = Db::new().await;
    // First instance: its destination never answers; shut down with a short deadline.
    let outbox = db.outbox().await;
    let (stalled, _gate) = stalled();
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", stalled))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    for n in 1..=5u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();
    tokio::time::timeout(WAIT, async {
        while outbox
            .stats()
            .await
            .unwrap()
            .first()
            .is_none_or(|s| s.in_flight == 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let report = emissions.shutdown(Duration::from_millis(200)).await;
    assert_eq!(report.adapter("hook").unwrap().counts.dropped, 5);
    // Released at shutdown: pending again, nothing lost.
    let stats = &outbox.stats().await.unwrap()[0];
    assert_eq!((stats.pending, stats.in_flight), (5, 0));

    // The next instance (a restart, a deploy) delivers them.
    let outbox = db.outbox().await;
    let test = TestAdapter::new();
    let recorder = test.recorder();
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", test))
            .unwrap(),
        &outbox,
    )
    .await;
    drained(&outbox).await;
    emissions.settled().await;
    assert_eq!(recorder.events().len(), 5);
    emissions.shutdown(Duration::from_secs(5)).await;
}

/// An adapter that never finishes a batch.
fn stalled() -> (
    impl emissions_core::Adapter,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    struct Stalled(tokio::sync::mpsc::UnboundedSender<()>);
    #[emissions_core::async_trait]
    impl emissions_core::Adapter for Stalled {
        async fn handle_events(
            &mut self,
            _: &[emissions_core::Event],
        ) -> Result<(), emissions_core::BatchError> {
            let _ = self.0.send(());
            std::future::pending().await
        }
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Stalled(tx), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_the_commit_is_a_typed_error_and_the_buffer_keeps_its_events() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let (emissions, _) = start_recorded(&outbox).await;
    let buffer = emissions.start();
    buffer.emit("order_created", &json!({"n": 1})).unwrap();
    // The store's tables are gone from under it.
    sqlx::query("DROP TABLE emissions_outbox_deliveries")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let err = buffer.commit_in(&mut tx).await.unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err}");
    assert_eq!(buffer.state(), BufferState::Open);
    assert_eq!(buffer.events().len(), 1);
    emissions.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_payload_is_refused_at_commit_and_nothing_is_written() {
    let db = Db::new().await;
    let outbox = db.config().max_payload_bytes(100).build().await.unwrap();
    let (emissions, _) = start_recorded(&outbox).await;
    let buffer = emissions.start();
    buffer.emit("small", &json!({"n": 1})).unwrap();
    buffer.emit("large", &"x".repeat(200)).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let err = buffer.commit_in(&mut tx).await.unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { ref name, size: 202, limit: 100 } if name == "large"),
        "{err}"
    );
    tx.commit().await.unwrap();
    assert_eq!(buffer.events().len(), 2, "the buffer keeps its events");
    assert!(outbox.stats().await.unwrap().is_empty());
    emissions.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused_and_explicit_migrations_wait_to_be_run() {
    let db = Db::new().await;
    let explicit = db.config().migrations(Migrations::Explicit).build().await;
    assert!(
        matches!(
            explicit,
            Err(Error::SchemaTooOld {
                found: 0,
                supported: 1
            })
        ),
        "{explicit:?}"
    );
    db.outbox().await; // migrates at start
    db.config()
        .migrations(Migrations::Explicit)
        .build()
        .await
        .unwrap();
    sqlx::query("INSERT INTO emissions_outbox_schema (version) VALUES (99)")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = db.config().build().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 99,
                supported: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade emissions-outbox"));
}

#[tokio::test]
async fn committing_without_an_outbox_attached_says_so() {
    let db = Db::new().await;
    let emissions = Emissions::builder().start().await.unwrap();
    let buffer = emissions.start();
    buffer.emit("e", &1).unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    assert!(matches!(
        buffer.commit_in(&mut tx).await,
        Err(Error::NoOutbox)
    ));
    assert!(matches!(
        buffer.commit_durably().await,
        Err(Error::NoOutbox)
    ));
    assert_eq!(buffer.events().len(), 1);
    // A closed buffer is refused as such.
    buffer.terminate().unwrap();
    let outbox = db.outbox().await;
    let with_outbox = start(Emissions::builder(), &outbox).await;
    let closed = with_outbox.start();
    closed.terminate().unwrap();
    assert!(matches!(
        closed.commit_durably().await,
        Err(Error::Emissions(CoreError::BufferClosed { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_deliveries_are_kept_for_the_retention_then_purged() {
    let db = Db::new().await;
    let outbox = db
        .config()
        .retention(Retention::Archive(Duration::from_millis(200)))
        .build()
        .await
        .unwrap();
    let (emissions, _) = start_recorded(&outbox).await;
    let buffer = emissions.start();
    buffer.emit("e", &json!({"n": 1})).unwrap();
    buffer.commit_durably().await.unwrap();
    drained(&outbox).await;
    let kept = outbox
        .deliveries(None, Some("delivered"), 10)
        .await
        .unwrap();
    assert_eq!((kept.len(), kept[0].attempts), (1, 1));
    assert_eq!(outbox.purge().await.unwrap(), 0, "within the retention");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        outbox.purge().await.unwrap(),
        2,
        "the delivery, then its event"
    );
    emissions.shutdown(Duration::from_secs(1)).await;
}
