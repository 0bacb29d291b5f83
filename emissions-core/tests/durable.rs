//! The durable seam: attempts handed over by a store get exactly one attempt through the
//! adapter's own queue and consumer, and every outcome goes back to the store.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::durable::{Attempt, AttemptOutcome, AttemptSink};
use emissions_core::telemetry::DropReason;
use emissions_core::{
    AdapterOptions, BatchError, Emissions, Error, Event, Failure, Metadata, OverflowPolicy,
};
use support::{Scripted, gated};

#[derive(Default)]
struct Outcomes(Mutex<Vec<(u64, u32, AttemptOutcome)>>);

impl AttemptSink for Outcomes {
    fn outcome(&self, id: u64, attempts: u32, outcome: &AttemptOutcome) {
        self.0.lock().unwrap().push((id, attempts, outcome.clone()));
    }
}

impl Outcomes {
    fn sorted(&self) -> Vec<(u64, u32, AttemptOutcome)> {
        let mut all = self.0.lock().unwrap().clone();
        all.sort_by_key(|(id, _, _)| *id);
        all
    }
}

fn attempt(id: u64, attempts: u32) -> Attempt {
    Attempt::new(id, Event::new("e", &id, Metadata::new()).unwrap(), attempts)
}

#[tokio::test(start_paused = true)]
async fn each_attempt_is_made_once_and_its_outcome_goes_back_to_the_store() {
    let adapter = Scripted::new(|_, events| {
        let failures: Vec<(usize, Failure)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.payload_as::<u64>().unwrap() {
                2 => Some((
                    i,
                    Failure::retry_after("rate limited", Duration::from_secs(30)),
                )),
                3 => Some((i, Failure::permanent("rejected"))),
                _ => None,
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BatchError::partial(failures))
        }
    })
    .interested(|e| e.payload_as::<u64>().unwrap() != 4);
    let calls = adapter.calls();
    let dead = Arc::new(AtomicUsize::new(0));
    let counted = dead.clone();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("webhook", adapter).options(
            AdapterOptions::default().dead_letter(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        ))
        .unwrap()
        .start()
        .await
        .unwrap();
    let lane = emissions.durable_lane("webhook").unwrap();
    let outcomes = Arc::new(Outcomes::default());
    lane.submit(
        vec![attempt(1, 0), attempt(2, 4), attempt(3, 0), attempt(4, 0)],
        outcomes.clone(),
    )
    .await
    .unwrap();
    emissions.settled().await;
    assert_eq!(
        outcomes.sorted(),
        [
            (1, 1, AttemptOutcome::Delivered),
            (
                2,
                5,
                AttemptOutcome::Retry {
                    error: "rate limited".into(),
                    retry_after: Some(Duration::from_secs(30))
                }
            ),
            (
                3,
                1,
                AttemptOutcome::Failed {
                    error: "rejected".into()
                }
            ),
            (4, 0, AttemptOutcome::Filtered),
        ]
    );
    assert_eq!(calls.lock().unwrap().len(), 1, "no in-memory retry");
    assert_eq!(
        dead.load(Ordering::SeqCst),
        0,
        "the store decides, not the hook"
    );
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    let counts = report.adapter("webhook").unwrap().counts;
    assert_eq!(
        (
            counts.committed,
            counts.delivered,
            counts.deferred,
            counts.failed,
            counts.filtered
        ),
        (4, 1, 1, 1, 1)
    );
    assert!(report.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn durable_attempts_ignore_the_adapters_ordering_key_the_store_orders_them() {
    let adapter = Scripted::ok();
    let calls = adapter.calls();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("keyed", adapter)
                .options(AdapterOptions::default().ordered_by(|_| Some("same".into()))),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let outcomes = Arc::new(Outcomes::default());
    emissions
        .durable_lane("keyed")
        .unwrap()
        .submit(vec![attempt(1, 0), attempt(2, 0)], outcomes.clone())
        .await
        .unwrap();
    emissions.settled().await;
    assert_eq!(calls.lock().unwrap()[0].1.len(), 2, "one batch of both");
    assert_eq!(outcomes.sorted().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_the_store_wait_never_drops_and_a_cancelled_submit_hands_over_nothing() {
    let (adapter, mut gate) = gated();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("gated", adapter).options(
                AdapterOptions::default()
                    .capacity(2)
                    .max_demand(1)
                    .overflow(OverflowPolicy::DropNewest),
            ),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let lane = emissions.durable_lane("gated").unwrap();
    let outcomes = Arc::new(Outcomes::default());
    lane.submit(vec![attempt(1, 0)], outcomes.clone())
        .await
        .unwrap();
    gate.next_batch().await; // in flight
    lane.submit(vec![attempt(2, 0), attempt(3, 0)], outcomes.clone())
        .await
        .unwrap(); // the queue is full now
    let waiting = tokio::time::timeout(
        Duration::from_millis(10),
        lane.submit(vec![attempt(4, 0)], outcomes.clone()),
    )
    .await;
    assert!(waiting.is_err(), "waits for room instead of dropping");
    assert_eq!(emissions.stats().adapters[0].counts.committed, 3);
    gate.release(100);
    lane.submit(vec![attempt(4, 0)], outcomes.clone())
        .await
        .unwrap();
    emissions.settled().await;
    assert_eq!(
        outcomes
            .sorted()
            .iter()
            .map(|(id, _, o)| (*id, o.clone()))
            .collect::<Vec<_>>(),
        (1..=4)
            .map(|id| (id, AttemptOutcome::Delivered))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_cut_off_by_the_shutdown_deadline_go_back_to_the_store_as_dropped() {
    let (adapter, mut gate) = gated();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("stalled", adapter)
                .options(AdapterOptions::default().max_demand(1)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let lane = emissions.durable_lane("stalled").unwrap();
    let outcomes = Arc::new(Outcomes::default());
    lane.submit(vec![attempt(1, 2), attempt(2, 0)], outcomes.clone())
        .await
        .unwrap();
    gate.next_batch().await; // event 1 in flight, event 2 queued; never released
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    let dropped = AttemptOutcome::Dropped {
        reason: DropReason::Shutdown,
    };
    // Event 1 was attempted (a third time) but its outcome is unknown; 2 never was.
    assert_eq!(
        outcomes.sorted(),
        [(1, 3, dropped.clone()), (2, 0, dropped)]
    );
    let counts = report.adapter("stalled").unwrap().counts;
    assert_eq!((counts.committed, counts.dropped), (2, 2));
    assert!(report.is_balanced());
    assert!(matches!(
        lane.submit(vec![attempt(3, 0)], outcomes.clone()).await,
        Err(Error::ShutDown)
    ));
}

#[tokio::test]
async fn a_panicking_outcome_callback_stops_nothing() {
    struct Exploding;
    impl AttemptSink for Exploding {
        fn outcome(&self, _: u64, _: u32, _: &AttemptOutcome) {
            panic!("store exploded");
        }
    }
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("a", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap();
    let lane = emissions.durable_lane("a").unwrap();
    lane.submit(vec![attempt(1, 0)], Arc::new(Exploding))
        .await
        .unwrap();
    let later = emissions.emit_now("e", &2u64).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), later.settled())
        .await
        .expect("the consumer lives");
    assert!(outcome.is_delivered());
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.adapters[0].counts.delivered, 2);
}
