//! Backpressure: independent queues, and each overflow policy with its drop accounting.

mod support;

use std::time::Duration;

use emissions_core::telemetry::names;
use emissions_core::{AdapterOptions, Emissions, OverflowPolicy};
use emissions_testing::TestAdapter;
use serde_json::json;
use support::{gated, names, observe, start_gated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_adapter_never_delays_another_or_the_committer() {
    let (stalled, _gate) = gated(); // never released
    let live = TestAdapter::new();
    let recorder = live.recorder();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("stalled", stalled)
                .options(AdapterOptions::default().capacity(10).max_demand(5)),
        )
        .unwrap()
        .adapter(emissions_core::Named::new("live", live))
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);

    let mut receipts = Vec::new();
    for i in 0..1000u32 {
        let buffer = emissions.start();
        buffer.emit("tick", &i).unwrap();
        receipts.push(buffer.commit().await.unwrap());
    }
    // Every commit returned although one adapter never finishes a batch. Shutdown drains the
    // live adapter and cuts the stalled one off at the deadline.
    let report = emissions.shutdown(Duration::from_secs(2)).await;
    assert!(report.is_balanced());
    let got: Vec<u32> = recorder
        .events()
        .iter()
        .map(|e| e.payload_as().unwrap())
        .collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    let live = report.adapter("live").unwrap();
    assert_eq!(live.counts.delivered, 1000);
    assert!(!live.deadline_exceeded);

    let stalled = report.adapter("stalled").unwrap();
    assert!(stalled.deadline_exceeded);
    assert_eq!(
        (
            stalled.counts.committed,
            stalled.counts.delivered,
            stalled.counts.dropped
        ),
        (1000, 0, 1000)
    );
    let drops = seen.named(names::EVENT_DROPPED);
    assert_eq!(drops.len(), 1000);
    assert!(
        drops
            .iter()
            .all(|d| d.meta("adapter") == Some(&json!("stalled")))
    );
    let overflowed = drops
        .iter()
        .filter(|d| d.meta("reason") == Some(&json!("queue_full")))
        .count();
    let at_shutdown = drops
        .iter()
        .filter(|d| d.meta("reason") == Some(&json!("shutdown")))
        .count();
    // At most one in-flight batch (5) plus a full queue (10) was held; the rest overflowed.
    assert!(overflowed >= 985, "{overflowed}");
    assert_eq!(overflowed + at_shutdown, 1000);
    assert_eq!(receipts.len(), 1000);
}

/// Commits `first` alone and waits until the gated adapter holds it in flight, then commits
/// `rest` one event per commit; returns the events the adapter finally receives once released.
async fn overflow_scenario(policy: OverflowPolicy) -> (Vec<String>, Vec<String>, u64) {
    let (emissions, mut gate) = start_gated("gated", 5, policy).await;
    let seen = observe(&emissions);
    emissions.emit_now("e0", &0).await.unwrap();
    assert_eq!(names(&gate.next_batch().await), ["e0"]);
    for i in 1..20 {
        emissions.emit_now(format!("e{i}"), &i).await.unwrap();
    }
    gate.release(100);
    let mut received = vec!["e0".to_owned()];
    while received.len() < 6 {
        received.extend(names(&gate.next_batch().await));
    }
    emissions.settled().await;
    let dropped: Vec<String> = seen
        .named(names::EVENT_DROPPED)
        .iter()
        .map(|d| {
            format!(
                "{}:{}",
                d.meta("event_name").unwrap().as_str().unwrap(),
                d.meta("reason").unwrap().as_str().unwrap()
            )
        })
        .collect();
    let counts = emissions.stats().adapter("gated").unwrap().counts;
    assert!(counts.is_balanced());
    assert_eq!(counts.delivered, 6);
    (received, dropped, counts.dropped)
}

#[tokio::test]
async fn drop_newest_keeps_the_queue_and_drops_incoming() {
    let (received, dropped, count) = overflow_scenario(OverflowPolicy::DropNewest).await;
    assert_eq!(received, ["e0", "e1", "e2", "e3", "e4", "e5"]);
    let expected: Vec<String> = (6..20).map(|i| format!("e{i}:queue_full")).collect();
    assert_eq!(dropped, expected);
    assert_eq!(count, 14);
}

#[tokio::test]
async fn drop_oldest_evicts_queued_events_for_new_ones() {
    let (received, dropped, count) = overflow_scenario(OverflowPolicy::DropOldest).await;
    assert_eq!(received, ["e0", "e15", "e16", "e17", "e18", "e19"]);
    let expected: Vec<String> = (1..15).map(|i| format!("e{i}:queue_evicted")).collect();
    assert_eq!(dropped, expected);
    assert_eq!(count, 14);
}

#[tokio::test(start_paused = true)]
async fn block_makes_the_committer_wait_and_drops_nothing() {
    let (emissions, mut gate) = start_gated("gated", 2, OverflowPolicy::Block).await;
    let seen = observe(&emissions);
    emissions.emit_now("e0", &0).await.unwrap();
    assert_eq!(names(&gate.next_batch().await), ["e0"]);
    emissions.emit_now("e1", &1).await.unwrap();
    emissions.emit_now("e2", &2).await.unwrap();

    let blocked = emissions.emit_now("e3", &3);
    tokio::pin!(blocked);
    // With the clock paused, time only advances when every task is idle: the commit is stuck.
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), &mut blocked)
            .await
            .is_err()
    );

    gate.release(100);
    let receipt = blocked.await.unwrap();
    receipt.settled().await;
    emissions.settled().await;
    let mut received = Vec::new();
    while let Ok(batch) = gate.received.try_recv() {
        received.extend(names(&batch));
    }
    assert_eq!(received, ["e1", "e2", "e3"]);
    assert!(seen.named(names::EVENT_DROPPED).is_empty());
    let counts = emissions.stats().adapter("gated").unwrap().counts;
    assert_eq!(
        (counts.committed, counts.delivered, counts.dropped),
        (4, 4, 0)
    );
}

#[tokio::test]
async fn filtered_events_are_counted_not_delivered() {
    let orders = support::Scripted::ok().interested(|e| e.name().starts_with("order_"));
    let calls = orders.calls();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("orders", orders))
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    buffer.emit("order_created", &1).unwrap();
    buffer.emit("user_created", &2).unwrap();
    buffer.emit("order_shipped", &3).unwrap();
    let outcome = buffer.commit().await.unwrap().settled().await;
    let counts = outcome.adapter("orders").unwrap();
    assert_eq!((counts.delivered, counts.filtered), (2, 1));
    let delivered: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, b)| names(b))
        .collect();
    assert_eq!(delivered, ["order_created", "order_shipped"]);
}
