//! Retries with backoff on tokio's paused clock, partial failures, dead letters, panics.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::telemetry::names;
use emissions_core::{
    AdapterOptions, BatchError, DeadLetter, Emissions, Failure, OverflowPolicy, RetryPolicy,
};
use serde_json::json;
use support::{Scripted, names, observe};

type DeadLetters = Arc<Mutex<Vec<(Vec<String>, String, u32, bool)>>>;

fn collect_dead_letters(options: AdapterOptions) -> (AdapterOptions, DeadLetters) {
    let dead: DeadLetters = Arc::default();
    let sink = dead.clone();
    let options = options.dead_letter(move |d: DeadLetter| {
        sink.lock().unwrap().push((
            names(&d.events),
            d.failure.to_string(),
            d.attempts,
            d.failure.is_retryable(),
        ))
    });
    (options, dead)
}

async fn commit_all(
    emissions: &Emissions,
    events: &[&'static str],
) -> emissions_core::CommitOutcome {
    let buffer = emissions.start();
    for (i, name) in events.iter().enumerate() {
        buffer.emit(*name, &i).unwrap();
    }
    buffer.commit().await.unwrap().settled().await
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_growing_jittered_backoff() {
    let adapter = Scripted::new(|call, _| {
        if call < 3 {
            Err(BatchError::retryable("unavailable"))
        } else {
            Ok(())
        }
    });
    let calls = adapter.calls();
    let policy = RetryPolicy::default().backoff(Duration::from_secs(1), Duration::from_secs(60));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("flaky", adapter)
                .options(AdapterOptions::default().retry(policy)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    let outcome = commit_all(&emissions, &["a", "b"]).await;
    assert_eq!(outcome.adapter("flaky").unwrap().delivered, 2);

    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|(_, batch)| names(batch) == ["a", "b"]));
    // Delays after attempts 1, 2, 3: base 1 s, 2 s, 4 s, each jittered into [base/2, base].
    for (i, pair) in calls.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let base = Duration::from_secs(1 << i);
        assert!(gap >= base / 2 && gap <= base, "gap {i}: {gap:?}");
    }
    assert_eq!(seen.named(names::ADAPTER_ERROR).len(), 3);
    assert_eq!(seen.named(names::ADAPTER_SUCCESS).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn hour_long_schedules_run_on_the_paused_clock_then_dead_letter() {
    let adapter = Scripted::new(|_, _| Err(BatchError::retryable("receiver down")));
    let calls = adapter.calls();
    let policy = RetryPolicy::default()
        .max_attempts(6)
        .backoff(Duration::from_secs(600), Duration::from_secs(3600));
    let (options, dead) = collect_dead_letters(AdapterOptions::default().retry(policy));
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("slow", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = commit_all(&emissions, &["a"]).await;
    assert_eq!(outcome.adapter("slow").unwrap().failed, 1);
    assert_eq!(calls.lock().unwrap().len(), 6);
    // Five delays: base 600, 1200, 2400, 3600 (capped), 3600 s; at least half of each elapsed.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5700) && elapsed <= Duration::from_secs(11_400),
        "{elapsed:?}"
    );
    let dead = dead.lock().unwrap();
    assert_eq!(
        *dead,
        vec![(vec!["a".to_owned()], "receiver down".to_owned(), 6, true)]
    );
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_retrying_early() {
    let adapter = Scripted::new(|_, _| Err(BatchError::retryable("down")));
    let calls = adapter.calls();
    let policy = RetryPolicy::default()
        .max_attempts(100)
        .backoff(Duration::from_secs(10), Duration::from_secs(10))
        .multiplier(1.0)
        .max_elapsed(Duration::from_secs(35));
    let (options, dead) = collect_dead_letters(AdapterOptions::default().retry(policy));
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("a", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_all(&emissions, &["x"]).await;
    let n = calls.lock().unwrap().len();
    // Delays of 5–10 s within 35 s: between 4 and 8 attempts, far fewer than 100.
    assert!((4..=8).contains(&n), "{n} attempts");
    assert_eq!(dead.lock().unwrap()[0].2 as usize, n);
}

#[tokio::test(start_paused = true)]
async fn partial_failures_retry_only_the_failed_events_in_order() {
    let adapter = Scripted::new(|call, _| match call {
        0 => Err(BatchError::partial([
            (3, Failure::retryable("timeout")),
            (1, Failure::retryable("timeout")),
            (2, Failure::permanent("rejected")),
            (99, Failure::retryable("out of range: ignored")),
        ])),
        _ => Ok(()),
    });
    let calls = adapter.calls();
    let (options, dead) = collect_dead_letters(AdapterOptions::default());
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("kafka", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    let outcome = commit_all(&emissions, &["e0", "e1", "e2", "e3", "e4"]).await;
    let counts = outcome.adapter("kafka").unwrap();
    assert_eq!((counts.delivered, counts.failed), (4, 1));

    let calls = calls.lock().unwrap();
    let batches: Vec<Vec<String>> = calls.iter().map(|(_, b)| names(b)).collect();
    assert_eq!(
        batches,
        [vec!["e0", "e1", "e2", "e3", "e4"], vec!["e1", "e3"]]
    );
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(vec!["e2".to_owned()], "rejected".to_owned(), 1, false)]
    );

    let errors = seen.named(names::ADAPTER_ERROR);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].meta("event_count"), Some(&json!(3)));
    let successes: Vec<_> = seen
        .named(names::ADAPTER_SUCCESS)
        .iter()
        .map(|s| s.meta("event_count").unwrap().clone())
        .collect();
    assert_eq!(successes, [json!(2), json!(2)]);
}

#[tokio::test(start_paused = true)]
async fn permanent_batch_failure_dead_letters_at_once() {
    let adapter = Scripted::new(|_, _| Err(BatchError::permanent("unknown topic")));
    let calls = adapter.calls();
    let (options, dead) = collect_dead_letters(AdapterOptions::default());
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("k", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    let outcome = commit_all(&emissions, &["a", "b"]).await;
    assert_eq!(outcome.adapter("k").unwrap().failed, 2);
    assert!(!outcome.is_delivered());
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(
            vec!["a".to_owned(), "b".to_owned()],
            "unknown topic".to_owned(),
            1,
            false
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_adapter_is_caught_retried_and_the_pipeline_survives() {
    let adapter = Scripted::new(|call, events| {
        if events[0].name() == "poison" {
            panic!("cannot handle poison");
        }
        if call == 0 {
            panic!("boom");
        }
        Ok(())
    });
    let policy = RetryPolicy::default().max_attempts(3);
    let (options, dead) = collect_dead_letters(
        AdapterOptions::default()
            .retry(policy)
            .overflow(OverflowPolicy::Block),
    );
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("p", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);

    let first = commit_all(&emissions, &["ok"]).await;
    assert_eq!(first.adapter("p").unwrap().delivered, 1);
    let errors = seen.named(names::ADAPTER_ERROR);
    assert_eq!(errors[0].meta("reason"), Some(&json!("panicked: boom")));

    let poisoned = commit_all(&emissions, &["poison"]).await;
    assert_eq!(poisoned.adapter("p").unwrap().failed, 1);
    assert_eq!(dead.lock().unwrap()[0].1, "panicked: cannot handle poison");

    let after = commit_all(&emissions, &["still_running"]).await;
    assert_eq!(after.adapter("p").unwrap().delivered, 1);
    assert!(emissions.stats().is_balanced());
}

#[tokio::test]
async fn a_panic_in_interested_fails_only_that_event() {
    let adapter = Scripted::ok().interested(|e| {
        assert!(e.name() != "bad", "interested exploded");
        true
    });
    let (options, dead) = collect_dead_letters(AdapterOptions::default());
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("f", adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    let outcome = commit_all(&emissions, &["good", "bad", "good_too"]).await;
    let counts = outcome.adapter("f").unwrap();
    assert_eq!((counts.delivered, counts.failed), (2, 1));
    assert!(dead.lock().unwrap()[0].1.starts_with("interested panicked"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_hint_longer_than_the_policy_delay_wins() {
    let adapter = Scripted::new(|call, _| {
        if call == 0 {
            Err(BatchError::Batch(Failure::retry_after(
                "rate limited",
                Duration::from_secs(60),
            )))
        } else {
            Ok(())
        }
    });
    let calls = adapter.calls();
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("limited", adapter))
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_all(&emissions, &["a"]).await;
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].0 - calls[0].0;
    assert!(
        gap >= Duration::from_secs(60) && gap < Duration::from_secs(61),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_explicit_schedule_sets_each_delay() {
    let adapter = Scripted::new(|call, _| {
        if call < 3 {
            Err(BatchError::retryable("down"))
        } else {
            Ok(())
        }
    });
    let calls = adapter.calls();
    let schedule = [5, 300, 1800].map(Duration::from_secs);
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("scheduled", adapter)
                .options(AdapterOptions::default().retry(RetryPolicy::schedule(schedule))),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    commit_all(&emissions, &["a"]).await;
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 4);
    for (pair, base) in calls.windows(2).zip(schedule) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= base / 2 && gap <= base, "{gap:?} vs {base:?}");
    }
}
