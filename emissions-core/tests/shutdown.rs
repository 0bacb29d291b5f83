//! Shutdown: drain, adapter flush, deadline, and the per-adapter report.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use emissions_core::telemetry::names;
use emissions_core::{
    Adapter, AdapterOptions, BatchError, BoxError, Emissions, Error, Event, OverflowPolicy,
    RetryPolicy, async_trait,
};
use emissions_testing::TestAdapter;
use serde_json::json;
use support::{Scripted, gated, observe, start_gated};
use tokio::time::Instant;

/// Records whether `shutdown` ran, and whether it saw every event first.
struct Flushing {
    received: usize,
    flushed_after: Arc<std::sync::Mutex<Option<usize>>>,
}

#[async_trait]
impl Adapter for Flushing {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        self.received += events.len();
        Ok(())
    }
    async fn shutdown(&mut self, _deadline: Instant) -> Result<(), BoxError> {
        *self.flushed_after.lock().unwrap() = Some(self.received);
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_drains_queues_flushes_adapters_and_balances() {
    let flushed_after = Arc::new(std::sync::Mutex::new(None));
    let recorder_adapter = TestAdapter::new();
    let recorder = recorder_adapter.recorder();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new(
                "flushing",
                Flushing {
                    received: 0,
                    flushed_after: flushed_after.clone(),
                },
            )
            .options(AdapterOptions::default().max_demand(7)),
        )
        .unwrap()
        .adapter(emissions_core::Named::new("recorder", recorder_adapter))
        .unwrap()
        .adapter(emissions_core::Named::new(
            "odd_only",
            Scripted::ok().interested(|e| e.payload_as::<u32>().unwrap() % 2 == 1),
        ))
        .unwrap()
        .start()
        .await
        .unwrap();
    for i in 0..500u32 {
        let buffer = emissions.start();
        buffer.emit("e", &i).unwrap();
        buffer.commit().await.unwrap();
    }
    let report = emissions.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_balanced());
    assert_eq!(*flushed_after.lock().unwrap(), Some(500));
    let flushing = report.adapter("flushing").unwrap();
    assert_eq!(
        (flushing.counts.committed, flushing.counts.delivered),
        (500, 500)
    );
    assert_eq!(flushing.shutdown_error, None);
    assert!(!flushing.deadline_exceeded);
    let odd = report.adapter("odd_only").unwrap().counts;
    assert_eq!((odd.delivered, odd.filtered), (250, 250));
    assert_eq!(recorder.events().len(), 500);
    // A second call returns the same report.
    assert_eq!(emissions.shutdown(Duration::from_secs(1)).await, report);
    assert!(emissions.is_shut_down());
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_a_stalled_adapter_short_and_counts_what_is_left() {
    let (stalled, _gate) = gated();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("stalled", stalled)
                .options(AdapterOptions::default().max_demand(10)),
        )
        .unwrap()
        .adapter(emissions_core::Named::new("healthy", TestAdapter::new()))
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    let buffer = emissions.start();
    for i in 0..50 {
        buffer.emit("e", &i).unwrap();
    }
    let receipt = buffer.commit().await.unwrap();

    let started = Instant::now();
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(report.is_balanced());
    let stalled = report.adapter("stalled").unwrap();
    assert!(stalled.deadline_exceeded);
    assert!(stalled.shutdown_error.is_some());
    assert_eq!((stalled.counts.committed, stalled.counts.dropped), (50, 50));
    let healthy = report.adapter("healthy").unwrap();
    assert_eq!(healthy.counts.delivered, 50);
    assert!(!healthy.deadline_exceeded);

    // The receipt settles too: nothing is left hanging.
    let outcome = receipt.settled().await;
    assert_eq!(outcome.adapter("stalled").unwrap().dropped, 50);
    let shutdown_drops: Vec<_> = seen
        .named(names::EVENT_DROPPED)
        .into_iter()
        .filter(|d| d.meta("reason") == Some(&json!("shutdown")))
        .collect();
    assert_eq!(shutdown_drops.len(), 50);
    // Including the batch that was inside the adapter call when the deadline struck.
    assert!(
        shutdown_drops
            .iter()
            .all(|d| d.meta("event_name") == Some(&json!("e")))
    );
}

#[tokio::test(start_paused = true)]
async fn events_waiting_for_a_retry_at_the_deadline_are_dropped_not_lost() {
    let adapter = Scripted::new(|_, _| Err(BatchError::retryable("down")));
    let policy = RetryPolicy::default()
        .max_attempts(10)
        .backoff(Duration::from_secs(60), Duration::from_secs(60));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("retrying", adapter)
                .options(AdapterOptions::default().retry(policy)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.emit_now("a", &1).await.unwrap();
    emissions.emit_now("b", &2).await.unwrap();
    let report = emissions.shutdown(Duration::from_secs(10)).await;
    let counts = report.adapter("retrying").unwrap().counts;
    assert_eq!((counts.committed, counts.failed, counts.dropped), (2, 0, 2));
    assert!(report.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn a_committer_blocked_on_a_full_queue_is_released_by_shutdown() {
    let (emissions, mut gate) = start_gated("gated", 1, OverflowPolicy::Block).await;
    emissions.emit_now("in_flight", &0).await.unwrap();
    gate.next_batch().await;
    emissions.emit_now("queued", &1).await.unwrap();
    let blocked = tokio::spawn({
        let emissions = emissions.clone();
        async move { emissions.emit_now("blocked", &2).await }
    });
    tokio::task::yield_now().await;
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    // The blocked commit returns once shutdown begins, and commits nothing: it was waiting for
    // room, and a commit is recorded for every adapter at once or not at all.
    assert!(matches!(blocked.await.unwrap(), Err(Error::ShutDown)));
    let counts = report.adapter("gated").unwrap().counts;
    assert_eq!((counts.committed, counts.dropped), (2, 2));
    assert!(report.is_balanced());
}

#[tokio::test]
async fn adapter_shutdown_errors_are_reported() {
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new(
            "broken",
            Scripted::ok().failing_shutdown("flush failed: broker gone"),
        ))
        .unwrap()
        .start()
        .await
        .unwrap();
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        report.adapter("broken").unwrap().shutdown_error.as_deref(),
        Some("flush failed: broker gone")
    );
    assert!(matches!(
        emissions.start().emit("late", &1),
        Err(Error::ShutDown)
    ));
}

#[tokio::test]
async fn dropping_every_handle_still_flushes_adapters() {
    let flushed = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    #[async_trait]
    impl Adapter for Flag {
        async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
            Ok(())
        }
        async fn shutdown(&mut self, _: Instant) -> Result<(), BoxError> {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    struct Done(Option<tokio::sync::oneshot::Sender<()>>);
    #[async_trait]
    impl Adapter for Done {
        async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
            Ok(())
        }
        async fn shutdown(&mut self, _: Instant) -> Result<(), BoxError> {
            let _ = self.0.take().unwrap().send(());
            Ok(())
        }
    }
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("flag", Flag(flushed.clone())))
        .unwrap()
        .adapter(emissions_core::Named::new("done", Done(Some(tx))))
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.emit_now("a", &1).await.unwrap();
    drop(emissions);
    rx.await.unwrap();
    assert!(flushed.load(Ordering::SeqCst));
}
