//! The delivery engine's guarantees, one test per way the earlier, batch-scoped engine broke
//! them: per-event retries beside the queue, all-or-nothing commits, a shutdown report that is
//! true and cancel-safe, contained user callbacks, and commits that cannot deadlock.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use emissions_core::telemetry::TelemetryEvent;
use emissions_core::{
    Adapter, AdapterOptions, BatchError, BoxError, BufferState, DeadLetter, DeadLetterCause,
    Emissions, Error, Event, Failure, Handled, Handler, HandlerContext, HandlerOptions,
    OverflowPolicy, RetryPolicy, async_trait,
};
use emissions_testing::TestAdapter;
use support::{Scripted, start_gated};
use tokio::time::Instant;

type Dead = Arc<Mutex<Vec<(Vec<u64>, u32, DeadLetterCause)>>>;

/// A dead-letter hook recording (payloads, attempts, cause).
fn dead_letters(options: AdapterOptions) -> (AdapterOptions, Dead) {
    let dead: Dead = Arc::default();
    let sink = dead.clone();
    let options = options.dead_letter(move |d: DeadLetter| {
        let ids = d.events.iter().map(|e| e.payload_as().unwrap()).collect();
        sink.lock().unwrap().push((ids, d.attempts, d.cause));
    });
    (options, dead)
}

/// Every payload (a number) the adapter was called with, how many times.
fn attempts_per_event(calls: &support::Calls) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for (_, batch) in calls.lock().unwrap().iter() {
        for event in batch {
            *seen.entry(event.payload_as::<u64>().unwrap()).or_default() += 1;
        }
    }
    seen
}

/// An adapter that fails the events for which `fails(payload, attempt)` is true (retryable),
/// and records every call.
fn failing_when(fails: impl Fn(u64, usize) -> bool + Send + 'static) -> Scripted {
    let mut attempts: HashMap<u64, usize> = HashMap::new();
    Scripted::new(move |_, events| {
        let failures: Vec<(usize, Failure)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let id: u64 = e.payload_as().unwrap();
                let attempt = attempts.entry(id).or_default();
                *attempt += 1;
                fails(id, *attempt).then(|| (i, Failure::retryable("receiver said 500")))
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BatchError::partial(failures))
        }
    })
}

async fn commit_ids(emissions: &Emissions, ids: impl IntoIterator<Item = u64>) {
    let buffer = emissions.start();
    for id in ids {
        buffer.emit("e", &id).unwrap();
    }
    buffer.commit().await.unwrap();
}

// 1. A failing event takes nobody down with it.

#[tokio::test(start_paused = true)]
async fn events_failing_their_first_attempts_are_each_retried_on_their_own() {
    // Every event fails its first three attempts; four are allowed. All 50 get there, each
    // attempted exactly four times, none dead-lettered.
    let adapter = failing_when(|_, attempt| attempt <= 3);
    let calls = adapter.calls();
    let policy = RetryPolicy::default().max_attempts(4);
    let (options, dead) = dead_letters(AdapterOptions::default().retry(policy));
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("flaky", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_ids(&emissions, 0..50).await;
    emissions.settled().await;
    let counts = emissions.stats().adapters[0].counts;
    assert_eq!((counts.delivered, counts.failed), (50, 0));
    assert!(dead.lock().unwrap().is_empty());
    let attempts = attempts_per_event(&calls);
    assert_eq!(attempts.len(), 50);
    assert!(attempts.values().all(|n| *n == 4), "{attempts:?}");
}

#[tokio::test(start_paused = true)]
async fn an_event_that_always_fails_costs_its_batch_mates_nothing() {
    let adapter = failing_when(|id, _| id == 7);
    let calls = adapter.calls();
    let policy = RetryPolicy::default().max_attempts(4);
    let (options, dead) = dead_letters(AdapterOptions::default().retry(policy));
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("poisoned", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_ids(&emissions, 0..50).await;
    emissions.settled().await;
    let counts = emissions.stats().adapters[0].counts;
    assert_eq!((counts.delivered, counts.failed), (49, 1));
    let attempts = attempts_per_event(&calls);
    assert_eq!(attempts[&7], 4);
    assert!(attempts.iter().all(|(id, n)| *id == 7 || *n == 1));
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(vec![7], 4, DeadLetterCause::Failed)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retrying_event_waits_beside_the_queue_not_in_front_of_it() {
    // The poison's retries are an hour apart; the events committed after it must not wait.
    let adapter = failing_when(|id, _| id == 0);
    let calls = adapter.calls();
    let policy = RetryPolicy::schedule([Duration::from_secs(3600); 3]);
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("webhook", adapter)
                .options(AdapterOptions::default().max_demand(1).retry(policy)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    commit_ids(&emissions, [0]).await;
    for id in 1..=20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        commit_ids(&emissions, [id]).await;
    }
    emissions.settled().await;
    let calls = calls.lock().unwrap();
    for (at, batch) in calls.iter() {
        let id: u64 = batch[0].payload_as().unwrap();
        if id != 0 {
            assert!(
                *at - started <= Duration::from_secs(21),
                "event {id} waited behind the poison: delivered at {:?}",
                *at - started
            );
        }
    }
    assert_eq!(calls.len(), 20 + 4);
}

#[tokio::test(start_paused = true)]
async fn with_a_key_a_retrying_event_holds_back_only_its_own_key() {
    // Key = id % 2. Event 0 (key 0) fails twice then succeeds; later key-0 events wait for it
    // and are attempted once each, in order; key-1 events flow at once.
    let adapter = failing_when(|id, attempt| id == 0 && attempt <= 2);
    let calls = adapter.calls();
    let options = AdapterOptions::default()
        .retry(RetryPolicy::schedule([Duration::from_secs(60); 3]))
        .ordered_by(|e| Some((e.payload_as::<u64>().unwrap() % 2).to_string()));
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("ordered", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    commit_ids(&emissions, 0..10).await;
    emissions.settled().await;
    let attempts = attempts_per_event(&calls);
    let calls = calls.lock().unwrap();
    let mut deliveries: Vec<(Duration, u64)> = Vec::new();
    for (at, batch) in calls.iter() {
        let mut keys = std::collections::HashSet::new();
        for event in batch {
            let id: u64 = event.payload_as().unwrap();
            assert!(keys.insert(id % 2), "two events of one key in one batch");
            deliveries.push((*at - started, id));
        }
    }
    assert_eq!(attempts[&0], 3);
    assert!(
        attempts.iter().all(|(id, n)| *id == 0 || *n == 1),
        "{attempts:?}"
    );
    let odd: Vec<_> = deliveries.iter().filter(|(_, id)| id % 2 == 1).collect();
    assert!(
        odd.iter().all(|(at, _)| *at < Duration::from_secs(1)),
        "{odd:?}"
    );
    let even: Vec<u64> = deliveries
        .iter()
        .filter(|(_, id)| id % 2 == 0)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(even, [0, 0, 0, 2, 4, 6, 8]);
    let first_after_poison = deliveries.iter().find(|(_, id)| *id == 2).unwrap().0;
    assert!(first_after_poison >= Duration::from_secs(60));
}

// 2. A commit cancelled while it waits for room commits nothing.

#[tokio::test(start_paused = true)]
async fn a_cancelled_blocking_commit_commits_nothing_and_keeps_its_events() {
    let (gated, mut gate) = support::gated();
    let other = TestAdapter::new();
    let recorder = other.recorder();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("gated", gated).options(
                AdapterOptions::default()
                    .capacity(1)
                    .max_demand(1)
                    .overflow(OverflowPolicy::Block),
            ),
        )
        .unwrap()
        .adapter(emissions_core::Named::new("other", other))
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.emit_now("in_flight", &0u64).await.unwrap();
    gate.next_batch().await;
    emissions.emit_now("queued", &1u64).await.unwrap();

    let buffer = emissions.start();
    buffer.emit("waits", &2u64).unwrap();
    let commit = tokio::time::timeout(Duration::from_millis(50), buffer.commit()).await;
    assert!(
        commit.is_err(),
        "the commit should still be waiting for room"
    );
    assert_eq!(buffer.state(), BufferState::Open);
    assert_eq!(buffer.events().len(), 1);
    let stats = emissions.stats();
    assert!(stats.adapters.iter().all(|a| a.counts.committed == 2));

    gate.release(100);
    let receipt = buffer.commit().await.unwrap();
    assert!(receipt.settled().await.is_delivered());
    tokio::time::timeout(Duration::from_secs(5), emissions.settled())
        .await
        .expect("everything settles");
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_balanced(), "{report:?}");
    assert!(report.adapters.iter().all(|a| a.counts.delivered == 3));
    assert_eq!(recorder.events().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_commit_larger_than_a_blocking_queue_waits_for_it_to_empty_then_goes_in_whole() {
    let (emissions, mut gate) = start_gated("small", 4, OverflowPolicy::Block).await;
    emissions.emit_now("first", &0u64).await.unwrap();
    gate.next_batch().await; // in flight: the queue is empty, but a batch is outstanding
    emissions.emit_now("queued", &1u64).await.unwrap();
    let buffer = emissions.start();
    for i in 2..12u64 {
        buffer.emit("e", &i).unwrap();
    }
    let waiting = tokio::time::timeout(Duration::from_millis(10), buffer.commit()).await;
    assert!(
        waiting.is_err(),
        "one event is still queued: the big commit waits"
    );
    assert_eq!(buffer.events().len(), 10);
    gate.release(1); // "first" done; "queued" goes out as the next batch
    assert_eq!(gate.next_batch().await.len(), 1);
    let receipt = buffer.commit().await.unwrap();
    assert_eq!(receipt.event_count(), 10);
    gate.release(4); // "queued", then the big commit in batches of 4, 4 and 2
    assert!(receipt.settled().await.is_delivered());
    let batches = [
        gate.next_batch().await,
        gate.next_batch().await,
        gate.next_batch().await,
    ];
    assert_eq!(batches.map(|b| b.len()), [4, 4, 2]);
    // Places were given back exactly: the queue holds four again, not more, not fewer.
    commit_ids(&emissions, 20..24).await; // taken as one batch, in flight
    assert_eq!(gate.next_batch().await.len(), 4);
    commit_ids(&emissions, 24..28).await; // fills the queue
    let buffer = emissions.start();
    buffer.emit("one_too_many", &28u64).unwrap();
    let full = tokio::time::timeout(Duration::from_millis(10), buffer.commit()).await;
    assert!(full.is_err(), "the queue should be full at four");
    gate.release(100);
    buffer.commit().await.unwrap().settled().await;
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    let counts = report.adapter("small").unwrap().counts;
    assert_eq!((counts.committed, counts.delivered), (21, 21));
    assert!(report.is_balanced());
}

// 3. Shutdown is idempotent and cancel-safe.

/// Delivers slowly, and records that its own `shutdown` ran (as Kafka's flush must).
struct Slow {
    flushed: Arc<AtomicBool>,
}

#[async_trait]
impl Adapter for Slow {
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    async fn shutdown(&mut self, _: Instant) -> Result<(), BoxError> {
        self.flushed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_shutdown_goes_on_and_every_call_gets_the_same_true_report() {
    let flushed = Arc::new(AtomicBool::new(false));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new(
                "slow",
                Slow {
                    flushed: flushed.clone(),
                },
            )
            .options(AdapterOptions::default().max_demand(1)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    for i in 0..5u64 {
        emissions.emit_now("e", &i).await.unwrap();
    }
    let first = tokio::time::timeout(
        Duration::from_millis(150),
        emissions.shutdown(Duration::from_secs(10)),
    )
    .await;
    assert!(
        first.is_err(),
        "the first shutdown was cut off by the timeout"
    );
    assert!(emissions.is_shut_down());

    let (a, b) = tokio::join!(
        emissions.shutdown(Duration::from_secs(10)),
        emissions.shutdown(Duration::from_secs(10))
    );
    assert_eq!(a, b);
    assert!(a.is_balanced(), "{a:?}");
    let slow = a.adapter("slow").unwrap();
    assert_eq!(
        slow.counts.delivered, 5,
        "the drain went on after the cancel"
    );
    assert!(!slow.deadline_exceeded);
    assert!(
        flushed.load(Ordering::SeqCst),
        "the adapter's own shutdown ran"
    );
    assert_eq!(emissions.shutdown(Duration::ZERO).await, a);
}

#[tokio::test(start_paused = true)]
async fn a_later_shutdown_call_brings_the_deadline_forward() {
    let (emissions, _gate) = start_gated("stalled", 10, OverflowPolicy::DropNewest).await;
    emissions.emit_now("stuck", &0u64).await.unwrap();
    let started = Instant::now();
    let long = tokio::spawn({
        let emissions = emissions.clone();
        async move { emissions.shutdown(Duration::from_secs(3600)).await }
    });
    tokio::task::yield_now().await;
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(long.await.unwrap(), report);
    assert!(report.adapter("stalled").unwrap().deadline_exceeded);
    assert!(report.is_balanced());
}

// 4. The report is read only after the work it describes has ended.

struct Forever;

#[async_trait]
impl Handler for Forever {
    fn events(&self) -> &[&str] {
        &["e"]
    }

    async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_runs_cancelled_at_the_deadline_are_counted_before_the_report() {
    for round in 0..20 {
        let emissions = Emissions::builder()
            .handler("forever", Forever)
            .start()
            .await
            .unwrap();
        for i in 0..10u64 {
            emissions.emit_now("e", &i).await.unwrap();
        }
        let report = emissions.shutdown(Duration::from_millis(20)).await;
        let counts = report.handler("forever").unwrap().counts;
        assert!(report.is_balanced(), "round {round}: {report:?}");
        assert_eq!(
            counts.dispatched, counts.dropped,
            "round {round}: {counts:?}"
        );
    }
}

/// Blocks its thread (no await) for `block` on the first call.
struct Blocking {
    block: Duration,
    started: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Adapter for Blocking {
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        self.started.notify_one();
        std::thread::sleep(self.block);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_blocks_its_thread_is_fenced_and_counted_at_the_deadline() {
    let started = Arc::new(tokio::sync::Notify::new());
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new(
            "blocking",
            Blocking {
                block: Duration::from_millis(2500),
                started: started.clone(),
            },
        ))
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for i in 0..3u64 {
        buffer.emit("e", &i).unwrap();
    }
    buffer.commit().await.unwrap();
    started.notified().await;
    let begun = std::time::Instant::now();
    let report = emissions.shutdown(Duration::from_millis(100)).await;
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "{:?}",
        begun.elapsed()
    );
    let blocking = report.adapter("blocking").unwrap();
    assert!(report.is_balanced(), "{report:?}");
    assert_eq!((blocking.counts.committed, blocking.counts.dropped), (3, 3));
    assert!(blocking.deadline_exceeded);
    assert!(
        blocking
            .shutdown_error
            .as_deref()
            .is_some_and(|e| e.contains("did not return")),
        "{blocking:?}"
    );
    // When the call finally returns, nothing it reports changes the report.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(emissions.stats(), report);
}

// 5. User callbacks cannot kill a consumer.

#[tokio::test]
async fn a_panicking_observer_stops_nothing() {
    let test = TestAdapter::new();
    let recorder = test.recorder();
    let (gated, gate) = support::gated();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("test", test))
        .unwrap()
        .adapter(
            emissions_core::Named::new("tiny", gated)
                .options(AdapterOptions::default().capacity(1).max_demand(1)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.attach_observer(|event| {
        if matches!(
            event,
            TelemetryEvent::AdapterSuccess { .. } | TelemetryEvent::EventDropped { .. }
        ) {
            panic!("observer exploded on {}", event.name());
        }
    });
    for i in 0..20u64 {
        // The tiny queue overflows: drops are reported (to the panicking observer) too.
        emissions.emit_now("e", &i).await.unwrap();
    }
    gate.release(100);
    tokio::time::timeout(Duration::from_secs(5), emissions.settled())
        .await
        .expect("every receipt settles");
    assert_eq!(recorder.events().len(), 20);
    let later = emissions.emit_now("later", &99u64).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), later.settled())
        .await
        .expect("the consumer is still alive");
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_balanced(), "{report:?}");
    assert_eq!(report.adapter("test").unwrap().counts.delivered, 21);
}

struct Counting {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Counting {
    fn events(&self) -> &[&str] {
        &["e"]
    }

    async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Handled::Done)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_key_function_fails_only_that_handlers_run() {
    let exploding = Arc::new(AtomicUsize::new(0));
    let bystander = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let sink = dead.clone();
    let emissions = Emissions::builder()
        .handler_with(
            "exploding",
            Counting {
                runs: exploding.clone(),
            },
            HandlerOptions::default()
                .ordered_by(|_| panic!("no key for you"))
                .dead_letter(move |d| {
                    sink.lock()
                        .unwrap()
                        .push((d.attempts, d.failure.to_string()))
                }),
        )
        .handler(
            "bystander",
            Counting {
                runs: bystander.clone(),
            },
        )
        .start()
        .await
        .unwrap();
    emissions.emit_now("e", &1u64).await.unwrap();
    emissions.settled().await;
    assert_eq!(
        bystander.load(Ordering::SeqCst),
        1,
        "ran once, not once per retry"
    );
    assert_eq!(exploding.load(Ordering::SeqCst), 0);
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.handler("exploding").unwrap().counts.failed, 1);
    assert_eq!(report.handler("bystander").unwrap().counts.succeeded, 1);
    assert_eq!(report.adapter("handlers").unwrap().counts.delivered, 1);
    let dead = dead.lock().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, 0, "never attempted");
    assert!(dead[0].1.contains("no key for you"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_adapter_key_function_fails_only_that_event() {
    let adapter = Scripted::ok();
    let calls = adapter.calls();
    let (options, dead) = dead_letters(AdapterOptions::default().ordered_by(|e| {
        let id: u64 = e.payload_as().unwrap();
        assert!(id != 3, "cannot key event 3");
        Some(id.to_string())
    }));
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("keyed", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_ids(&emissions, 0..6).await;
    emissions.settled().await;
    let counts = emissions.stats().adapters[0].counts;
    assert_eq!((counts.delivered, counts.failed), (5, 1));
    assert_eq!(attempts_per_event(&calls).len(), 5);
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(vec![3], 0, DeadLetterCause::Failed)]
    );
}

#[tokio::test]
async fn a_panicking_dead_letter_hook_stops_nothing() {
    let adapter = Scripted::new(|_, events| {
        if events[0].name() == "bad" {
            Err(BatchError::permanent("rejected"))
        } else {
            Ok(())
        }
    });
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("a", adapter).options(
                AdapterOptions::default()
                    .max_demand(1)
                    .dead_letter(|_| panic!("hook exploded")),
            ),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.emit_now("bad", &1u64).await.unwrap();
    let after = emissions.emit_now("good", &2u64).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), after.settled())
        .await
        .unwrap();
    assert!(outcome.is_delivered());
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.adapters[0].counts.failed, 1);
    assert!(report.is_balanced());
}

// 6. A wait too long to represent gives up instead of overflowing.

#[tokio::test(start_paused = true)]
async fn retry_after_duration_max_with_max_elapsed_gives_up_and_the_consumer_lives() {
    /// Takes a moment (so time has elapsed since the first attempt), then asks to come back
    /// after `Duration::MAX`.
    struct ComeBackNever;

    #[async_trait]
    impl Adapter for ComeBackNever {
        async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if events[0].name() == "limited" {
                return Err(BatchError::Batch(Failure::retry_after(
                    "come back never",
                    Duration::MAX,
                )));
            }
            Ok(())
        }
    }
    let adapter = ComeBackNever;
    let (options, dead) = dead_letters(
        AdapterOptions::default()
            .max_demand(1)
            .retry(RetryPolicy::default().max_elapsed(Duration::from_secs(3600))),
    );
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("a", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.emit_now("limited", &1u64).await.unwrap();
    let after = emissions.emit_now("fine", &2u64).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), after.settled())
        .await
        .expect("the consumer survived");
    assert!(outcome.is_delivered());
    emissions.settled().await;
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(vec![1], 1, DeadLetterCause::Failed)]
    );
}

// 7. `transaction` returns the body's own result.

#[derive(Debug, PartialEq)]
enum AppError {
    Invalid,
    Emissions(String),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Emissions(e.to_string())
    }
}

#[tokio::test]
async fn transaction_returns_the_bodys_result_when_the_body_closed_its_buffer() {
    let t = emissions_testing::TestEmissions::start().await;
    let committed_itself: Result<u32, AppError> = t
        .run(emissions_core::transaction(async {
            emissions_core::emit("early", &1)?;
            emissions_core::commit().await?;
            Ok(7)
        }))
        .await;
    assert_eq!(committed_itself, Ok(7));

    let terminated_itself: Result<u32, AppError> = t
        .run(emissions_core::transaction(async {
            emissions_core::emit("discarded", &1)?;
            emissions_core::terminate()?;
            Ok(8)
        }))
        .await;
    assert_eq!(terminated_itself, Ok(8));

    let failed_after_commit: Result<u32, AppError> = t
        .run(emissions_core::transaction(async {
            emissions_core::emit("kept", &1)?;
            emissions_core::commit().await?;
            Err(AppError::Invalid)
        }))
        .await;
    assert_eq!(failed_after_commit, Err(AppError::Invalid));

    let names: Vec<String> = t
        .events()
        .await
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(names, ["early", "kept"]);
}

// 8. A failed handler run's follow-ups are never delivered.

struct CommitsItself;

#[async_trait]
impl Handler for CommitsItself {
    fn events(&self) -> &[&str] {
        &["order_created"]
    }

    async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> {
        emissions_core::emit("follow_up", &1)?;
        let flushed = emissions_core::flush().await;
        let committed = emissions_core::commit().await;
        let terminated = emissions_core::terminate();
        assert!(matches!(flushed, Err(Error::HandlerBuffer)), "{flushed:?}");
        assert!(
            matches!(committed, Err(Error::HandlerBuffer)),
            "{committed:?}"
        );
        assert!(matches!(terminated, Err(Error::HandlerBuffer)));
        Err("the run fails after trying to commit".into())
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_cannot_commit_the_follow_ups_of_its_own_failing_run() {
    let test = TestAdapter::new();
    let recorder = test.recorder();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("test", test))
        .unwrap()
        .handler_with(
            "commits_itself",
            CommitsItself,
            HandlerOptions::default().retry(RetryPolicy::none()),
        )
        .start()
        .await
        .unwrap();
    emissions.emit_now("order_created", &1u64).await.unwrap();
    emissions.settled().await;
    let names: Vec<String> = recorder
        .events()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(names, ["order_created"]);
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.handler("commits_itself").unwrap().counts.failed, 1);
}

// 10. An adapter that commits from `handle_events` under the block policy never deadlocks.

struct Echo {
    emissions: Arc<OnceLock<Emissions>>,
    refusals: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Adapter for Echo {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let emissions = self.emissions.get().expect("set after start");
        for event in events {
            if event.name() == "ping"
                && let Err(err) = emissions.emit_now("echo", &1u64).await
            {
                self.refusals.lock().unwrap().push(err.to_string());
            }
        }
        // Slow enough for the queue to be full when the next echo is committed.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_committing_into_its_own_full_blocking_queue_is_refused_not_deadlocked() {
    let handle = Arc::new(OnceLock::new());
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new(
                "echo",
                Echo {
                    emissions: handle.clone(),
                    refusals: refusals.clone(),
                },
            )
            .options(
                AdapterOptions::default()
                    .capacity(2)
                    .max_demand(1)
                    .overflow(OverflowPolicy::Block),
            ),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    handle.set(emissions.clone()).unwrap();
    let run = async {
        for i in 0..20u64 {
            emissions.emit_now("ping", &i).await.unwrap();
        }
        emissions.settled().await;
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("no deadlock");
    let refusals = refusals.lock().unwrap().clone();
    assert!(
        !refusals.is_empty(),
        "the queue was never full: test proves nothing"
    );
    assert!(
        refusals.iter().all(|r| r.contains("does not wait")),
        "{refusals:?}"
    );
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    let counts = report.adapter("echo").unwrap().counts;
    assert_eq!(counts.committed, 20 + 20 - refusals.len() as u64);
    assert!(report.is_balanced());
}

// Dead letters carry dropped events too.

#[tokio::test(start_paused = true)]
async fn overflow_and_shutdown_drops_reach_the_dead_letter_hook() {
    let (gated, mut gate) = support::gated();
    let (options, dead) = dead_letters(
        AdapterOptions::default()
            .capacity(2)
            .max_demand(1)
            .overflow(OverflowPolicy::DropNewest),
    );
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("gated", gated).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.emit_now("e", &0u64).await.unwrap();
    gate.next_batch().await; // 0 in flight
    commit_ids(&emissions, [1, 2, 3, 4]).await; // 1, 2 queued; 3, 4 do not fit
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    assert!(report.is_balanced());
    let mut dead = dead.lock().unwrap().clone();
    dead.sort_by_key(|(ids, _, _)| ids[0]);
    use emissions_core::telemetry::DropReason;
    assert_eq!(
        dead,
        [
            // In flight at the deadline: one attempt made, outcome unknown.
            (vec![0], 1, DeadLetterCause::Dropped(DropReason::Shutdown)),
            (
                vec![1, 2],
                0,
                DeadLetterCause::Dropped(DropReason::Shutdown)
            ),
            (
                vec![3, 4],
                0,
                DeadLetterCause::Dropped(DropReason::QueueFull)
            ),
        ]
    );
}

// Found by review: a round whose new events all drop out of the batch (filtered, refused by a
// panicking `interested`, held behind their key) must not send the consumer to sleep with
// deliverable events still queued.

#[tokio::test]
async fn events_behind_a_run_of_filtered_ones_are_delivered_without_another_commit() {
    let adapter = Scripted::ok().interested(|e| e.name() != "skip");
    let calls = adapter.calls();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("a", adapter)
                .options(AdapterOptions::default().max_demand(2)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    // The consumer is idle when the commit arrives, as in any running service.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let buffer = emissions.start();
    for _ in 0..60 {
        buffer.emit("skip", &1u64).unwrap();
    }
    buffer.emit("want", &2u64).unwrap();
    let receipt = buffer.commit().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), receipt.settled())
        .await
        .expect("the wanted event is delivered without a nudge");
    let counts = outcome.adapter("a").unwrap();
    assert_eq!((counts.delivered, counts.filtered), (1, 60));
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn events_behind_a_panicking_interested_are_delivered_without_another_commit() {
    let adapter = Scripted::ok().interested(|e| {
        assert!(e.name() != "boom", "interested exploded");
        true
    });
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("a", adapter)
                .options(AdapterOptions::default().max_demand(1)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let buffer = emissions.start();
    buffer.emit("boom", &1u64).unwrap();
    buffer.emit("want", &2u64).unwrap();
    let receipt = buffer.commit().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), receipt.settled())
        .await
        .expect("delivered without a nudge");
    let counts = outcome.adapter("a").unwrap();
    assert_eq!((counts.delivered, counts.failed), (1, 1));
}

#[tokio::test]
async fn a_graceful_shutdown_drains_behind_filtered_events_and_flushes() {
    let flushed = Arc::new(AtomicBool::new(false));
    struct Picky(Arc<AtomicBool>);
    #[async_trait]
    impl Adapter for Picky {
        fn interested(&self, event: &Event) -> bool {
            event.name() == "want"
        }
        async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
            Ok(())
        }
        async fn shutdown(&mut self, _: Instant) -> Result<(), BoxError> {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        }
    }
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("picky", Picky(flushed.clone()))
                .options(AdapterOptions::default().max_demand(2)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let buffer = emissions.start();
    for _ in 0..10 {
        buffer.emit("skip", &1u64).unwrap();
    }
    buffer.emit("want", &2u64).unwrap();
    buffer.commit().await.unwrap();
    let started = std::time::Instant::now();
    let report = emissions.shutdown(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the drain waited for the deadline"
    );
    let picky = report.adapter("picky").unwrap();
    assert_eq!((picky.counts.delivered, picky.counts.dropped), (1, 0));
    assert!(!picky.deadline_exceeded);
    assert!(flushed.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_held_keyed_event_does_not_hold_other_keys_until_the_retry() {
    // max_demand 1: a1 (key A) fails once, an hour-long retry; a2 (key A) is held; b1 (key B)
    // must go at once.
    let adapter = failing_when(|id, attempt| id == 1 && attempt == 1);
    let calls = adapter.calls();
    let options = AdapterOptions::default()
        .max_demand(1)
        .retry(RetryPolicy::schedule([Duration::from_secs(3600)]))
        .ordered_by(|e| {
            Some(
                if e.payload_as::<u64>().unwrap() < 10 {
                    "A"
                } else {
                    "B"
                }
                .to_owned(),
            )
        });
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("keyed", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    // The consumer is idle when the commit arrives, as in any running service.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    commit_ids(&emissions, [1, 2, 10]).await;
    emissions.settled().await;
    let calls = calls.lock().unwrap();
    let b1 = calls
        .iter()
        .find(|(_, batch)| batch[0].payload_as::<u64>().unwrap() == 10)
        .unwrap()
        .0;
    assert!(
        b1 - started < Duration::from_secs(1),
        "key B waited {:?}",
        b1 - started
    );
}

// Found by review: an ordered handler whose run fails must not deadlock its key (a run waiting
// behind its key held the only slot the retry needed) nor stall other handlers.

struct FailsFirstAttemptOfOne {
    runs: Arc<Mutex<Vec<(u64, u32)>>>,
}

#[async_trait]
impl Handler for FailsFirstAttemptOfOne {
    fn events(&self) -> &[&str] {
        &["e"]
    }

    async fn handle(&self, event: &Event, ctx: &HandlerContext) -> Result<Handled, BoxError> {
        let id: u64 = event.payload_as().unwrap();
        self.runs.lock().unwrap().push((id, ctx.attempt()));
        if id == 1 && ctx.attempt() == 1 {
            return Err("first attempt of event 1 fails".into());
        }
        Ok(Handled::Done)
    }
}

#[tokio::test(start_paused = true)]
async fn an_ordered_handler_retries_without_deadlocking_its_key_or_other_handlers() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let other = Arc::new(AtomicUsize::new(0));
    let emissions = Emissions::builder()
        .handler_with(
            "ordered",
            FailsFirstAttemptOfOne { runs: runs.clone() },
            HandlerOptions::default()
                .concurrency(1)
                .retry(RetryPolicy::schedule([Duration::from_secs(10)]))
                .ordered_by(|_| Some("same".to_owned())),
        )
        .handler(
            "other",
            Counting {
                runs: other.clone(),
            },
        )
        .start()
        .await
        .unwrap();
    commit_ids(&emissions, [1, 2, 3]).await;
    tokio::time::timeout(Duration::from_secs(60), emissions.settled())
        .await
        .expect("no deadlock");
    assert_eq!(*runs.lock().unwrap(), [(1, 1), (1, 2), (2, 1), (3, 1)]);
    assert_eq!(other.load(Ordering::SeqCst), 3);
}

// Found by review: huge backoff values must not panic inside the engine.

#[tokio::test(start_paused = true)]
async fn huge_backoffs_give_up_instead_of_panicking() {
    for policy in [
        RetryPolicy::default().backoff(Duration::MAX, Duration::MAX),
        RetryPolicy::default()
            .backoff(Duration::from_millis(1), Duration::MAX)
            .multiplier(1e300),
    ] {
        let adapter = failing_when(|id, attempt| id == 1 && attempt == 1);
        let (options, dead) = dead_letters(AdapterOptions::default().retry(policy));
        let emissions = Emissions::builder()
            .adapter(emissions_core::Named::new("a", adapter).options(options))
            .unwrap()
            .start()
            .await
            .unwrap();
        commit_ids(&emissions, [1]).await;
        let after = emissions.emit_now("e", &2u64).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), after.settled())
            .await
            .expect("the consumer lives");
        assert!(outcome.is_delivered());
        emissions.settled().await;
        // On the paused clock even an astronomically long (representable) delay passes, so the
        // event may end delivered or failed — but never dropped, and the consumer never dies.
        let report = emissions.shutdown(Duration::from_secs(1)).await;
        let counts = report.adapters[0].counts;
        assert_eq!(counts.delivered + counts.failed, 2, "{counts:?}");
        assert_eq!(counts.dropped, 0, "{counts:?}");
        assert!(report.adapters[0].shutdown_error.is_none(), "{report:?}");
        assert!(
            dead.lock()
                .unwrap()
                .iter()
                .all(|(_, _, cause)| *cause == DeadLetterCause::Failed)
        );
    }
}

// Found by review: drop-oldest must keep the backlog within its bound, however many events
// fail together.

#[tokio::test(start_paused = true)]
async fn drop_oldest_keeps_the_backlog_within_its_bound() {
    // The first three calls fail whole; the backlog holds 3. Events 1 and 2 wait; then 3, 4
    // and 5 fail together: the two oldest must make room for them.
    let adapter = Scripted::new(|call, _| {
        if call < 3 {
            Err(BatchError::retryable("down"))
        } else {
            Ok(())
        }
    });
    let (options, dead) = dead_letters(
        AdapterOptions::default()
            .max_demand(3)
            .backlog(3)
            .overflow(OverflowPolicy::DropOldest)
            .retry(RetryPolicy::schedule([Duration::from_secs(60)])),
    );
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("a", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_ids(&emissions, [1]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    commit_ids(&emissions, [2]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    commit_ids(&emissions, [3, 4, 5]).await;
    emissions.settled().await;
    let report = emissions.shutdown(Duration::from_secs(1)).await;
    let counts = report.adapters[0].counts;
    assert_eq!((counts.delivered, counts.dropped), (3, 2), "{counts:?}");
    let mut evicted: Vec<u64> = dead
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(ids, _, cause)| {
            assert_eq!(
                *cause,
                DeadLetterCause::Dropped(emissions_core::telemetry::DropReason::BacklogFull)
            );
            ids.clone()
        })
        .collect();
    evicted.sort_unstable();
    assert_eq!(evicted, [1, 2]);
}
