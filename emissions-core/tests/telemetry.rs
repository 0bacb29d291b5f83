//! Telemetry is a contract: each event with its measurements and metadata, to observers and to
//! `tracing` under target `emissions`.

mod support;

use std::sync::{Arc, Mutex};

use emissions_core::telemetry::{keys, names};
use emissions_core::{AdapterOptions, BatchError, Emissions, OverflowPolicy, RetryPolicy};
use serde_json::json;
use support::{Scripted, observe, start_gated};

#[tokio::test]
async fn buffer_events_carry_the_seed_measurements_and_metadata() {
    let emissions = Emissions::builder().start().await.unwrap();
    let seen = observe(&emissions);
    let buffer = emissions.start();
    buffer.emit("a", &1).unwrap();
    buffer.emit("b", &2).unwrap();
    buffer.commit().await.unwrap();
    let discarded = emissions.start();
    discarded.emit("c", &3).unwrap();
    discarded.terminate().unwrap();

    let started = seen.named(names::BUFFER_STARTED);
    assert_eq!(started.len(), 2);
    assert_eq!(started[0].measurements, vec![(keys::COUNT, 1)]);
    assert!(started[0].metadata.is_empty());

    let committed = seen.named(names::BUFFER_COMMITTED);
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].measurements, vec![(keys::COUNT, 2)]);
    assert_eq!(committed[0].metadata, vec![(keys::EVENT_COUNT, json!(2))]);

    let terminated = seen.named(names::BUFFER_TERMINATED);
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].measurements, vec![(keys::COUNT, 1)]);
    assert_eq!(terminated[0].meta(keys::EVENT_COUNT), Some(&json!(1)));
}

#[tokio::test]
async fn adapter_success_and_error_carry_duration_adapter_reason_and_count() {
    let adapter = Scripted::new(|call, _| {
        if call == 0 {
            Err(BatchError::permanent("rejected by receiver"))
        } else {
            Ok(())
        }
    });
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("webhook", adapter)
                .options(AdapterOptions::default().retry(RetryPolicy::none())),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    let first = emissions.start();
    first.emit("a", &1).unwrap();
    first.emit("b", &1).unwrap();
    first.commit().await.unwrap().settled().await;
    emissions.emit_now("c", &1).await.unwrap().settled().await;

    let errors = seen.named(names::ADAPTER_ERROR);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].measurement(keys::DURATION).is_some());
    assert_eq!(errors[0].meta(keys::ADAPTER), Some(&json!("webhook")));
    assert_eq!(
        errors[0].meta(keys::REASON),
        Some(&json!("rejected by receiver"))
    );
    assert_eq!(errors[0].meta(keys::EVENT_COUNT), Some(&json!(2)));

    let successes = seen.named(names::ADAPTER_SUCCESS);
    assert_eq!(successes.len(), 1);
    assert!(successes[0].measurement(keys::DURATION).is_some());
    assert_eq!(successes[0].meta(keys::ADAPTER), Some(&json!("webhook")));
    assert_eq!(successes[0].meta(keys::EVENT_COUNT), Some(&json!(1)));
}

#[tokio::test]
async fn event_dropped_names_event_reason_and_adapter() {
    let (emissions, mut gate) = start_gated("ws", 1, OverflowPolicy::DropNewest).await;
    let seen = observe(&emissions);
    emissions.emit_now("first", &1).await.unwrap();
    gate.next_batch().await;
    emissions.emit_now("second", &1).await.unwrap();
    emissions.emit_now("third", &1).await.unwrap();
    let dropped = seen.named(names::EVENT_DROPPED);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].measurements, vec![(keys::COUNT, 1)]);
    assert_eq!(dropped[0].meta(keys::EVENT_NAME), Some(&json!("third")));
    assert_eq!(dropped[0].meta(keys::REASON), Some(&json!("queue_full")));
    assert_eq!(dropped[0].meta(keys::ADAPTER), Some(&json!("ws")));
    gate.release(10);
}

#[tokio::test]
async fn detached_observers_see_nothing_more() {
    let emissions = Emissions::builder().start().await.unwrap();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    let id = emissions.attach_observer(move |_| *c.lock().unwrap() += 1);
    let _a = emissions.start();
    assert!(emissions.detach_observer(id));
    let _b = emissions.start();
    assert_eq!(*count.lock().unwrap(), 1);
}
