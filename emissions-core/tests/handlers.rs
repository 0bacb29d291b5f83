//! Handlers: outcomes and their telemetry, supervision, concurrency, ordering, cascades.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::telemetry::{keys, names};
use emissions_core::{
    AdapterOptions, BoxError, CASCADE_DEPTH, CAUSATION_ID, CORRELATION_ID, Emissions, Error, Event,
    Handled, Handler, HandlerContext, HandlerOptions, OverflowPolicy, RetryPolicy, async_trait,
};
use emissions_testing::TestEmissions;
use serde_json::json;
use support::{Scripted, names, observe};

type Behaviour = Box<dyn Fn(&Event, &HandlerContext) -> Result<Handled, BoxError> + Send + Sync>;

/// A handler whose behaviour is a closure, with an optional async delay before it.
struct FnHandler {
    events: Vec<&'static str>,
    delay: Option<Duration>,
    behaviour: Behaviour,
}

fn handler(
    events: &[&'static str],
    behaviour: impl Fn(&Event, &HandlerContext) -> Result<Handled, BoxError> + Send + Sync + 'static,
) -> FnHandler {
    FnHandler {
        events: events.to_vec(),
        delay: None,
        behaviour: Box::new(behaviour),
    }
}

#[async_trait]
impl Handler for FnHandler {
    fn events(&self) -> &[&str] {
        &self.events
    }
    async fn handle(&self, event: &Event, ctx: &HandlerContext) -> Result<Handled, BoxError> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        (self.behaviour)(event, ctx)
    }
}

fn once() -> HandlerOptions {
    HandlerOptions::default().retry(RetryPolicy::none())
}

#[tokio::test]
async fn success_is_reported_with_duration_handler_and_event() {
    let emissions = Emissions::builder()
        .handler(
            "index",
            handler(&["order_created"], |_, _| Ok(Handled::Done)),
        )
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    emissions.emit_now("order_created", &1).await.unwrap();
    emissions.emit_now("user_created", &1).await.unwrap();
    emissions.settled().await;
    let success = seen.named(names::HANDLER_SUCCESS);
    assert_eq!(success.len(), 1);
    assert!(success[0].measurement(keys::DURATION).is_some());
    assert_eq!(success[0].meta(keys::HANDLER), Some(&json!("index")));
    assert_eq!(success[0].meta(keys::EVENT), Some(&json!("order_created")));
    let report = emissions.stats();
    assert_eq!(report.handler("index").unwrap().counts.succeeded, 1);
    let dispatcher = report.adapter("handlers").unwrap().counts;
    assert_eq!((dispatcher.delivered, dispatcher.filtered), (1, 1));
}

#[tokio::test]
async fn ignored_is_reported_with_a_count() {
    let emissions = Emissions::builder()
        .handler("picky", handler(&["a"], |_, _| Ok(Handled::Ignored)))
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    emissions.emit_now("a", &1).await.unwrap();
    emissions.settled().await;
    let ignored = seen.named(names::HANDLER_IGNORED);
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0].measurements, vec![(keys::COUNT, 1)]);
    assert_eq!(ignored[0].meta(keys::HANDLER), Some(&json!("picky")));
    assert_eq!(ignored[0].meta(keys::EVENT), Some(&json!("a")));
    assert_eq!(
        emissions.stats().handler("picky").unwrap().counts.ignored,
        1
    );
}

#[tokio::test]
async fn errors_are_reported_then_dead_lettered() {
    let dead = Arc::new(Mutex::new(Vec::new()));
    let sink = dead.clone();
    let emissions = Emissions::builder()
        .handler_with(
            "mailer",
            handler(&["a"], |_, _| Err("smtp refused".into())),
            once().dead_letter(move |d| {
                sink.lock().unwrap().push((
                    d.destination.to_string(),
                    names(&d.events),
                    d.failure.to_string(),
                ))
            }),
        )
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    emissions.emit_now("a", &1).await.unwrap();
    emissions.settled().await;
    let errors = seen.named(names::HANDLER_ERROR);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].measurement(keys::DURATION).is_some());
    assert_eq!(errors[0].meta(keys::HANDLER), Some(&json!("mailer")));
    assert_eq!(errors[0].meta(keys::EVENT), Some(&json!("a")));
    assert_eq!(errors[0].meta(keys::REASON), Some(&json!("smtp refused")));
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(
            "mailer".to_owned(),
            vec!["a".to_owned()],
            "smtp refused".to_owned()
        )]
    );
    assert_eq!(
        emissions.stats().handler("mailer").unwrap().counts.failed,
        1
    );
}

#[tokio::test]
async fn a_panicking_handler_affects_no_other_handler_or_event() {
    let calm_runs = Arc::new(AtomicUsize::new(0));
    let calm = calm_runs.clone();
    let emissions = Emissions::builder()
        .handler_with(
            "volatile",
            handler(&["a"], |event, _| {
                if event.payload_as::<u32>().unwrap() == 1 {
                    panic!("index out of bounds");
                }
                Ok(Handled::Done)
            }),
            once(),
        )
        .handler(
            "calm",
            handler(&["a"], move |_, _| {
                calm.fetch_add(1, Ordering::SeqCst);
                Ok(Handled::Done)
            }),
        )
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    for i in 0..3u32 {
        emissions.emit_now("a", &i).await.unwrap();
    }
    emissions.settled().await;
    let errors = seen.named(names::HANDLER_ERROR);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].meta(keys::REASON),
        Some(&json!("panicked: index out of bounds"))
    );
    assert_eq!(calm_runs.load(Ordering::SeqCst), 3);
    let report = emissions.stats();
    let volatile = report.handler("volatile").unwrap().counts;
    assert_eq!((volatile.succeeded, volatile.failed), (2, 1));
    assert!(report.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_fails() {
    let slow = FnHandler {
        delay: Some(Duration::from_secs(3600)),
        ..handler(&["a"], |_, _| Ok(Handled::Done))
    };
    let emissions = Emissions::builder()
        .handler_with("slow", slow, once().timeout(Duration::from_secs(2)))
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    emissions.emit_now("a", &1).await.unwrap();
    emissions.settled().await;
    let errors = seen.named(names::HANDLER_ERROR);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].meta(keys::REASON),
        Some(&json!("timed out after 2s"))
    );
    assert_eq!(emissions.stats().handler("slow").unwrap().counts.failed, 1);
}

#[tokio::test(start_paused = true)]
async fn retries_start_a_fresh_child_buffer_each_time() {
    let t = TestEmissions::start_with(Emissions::builder().handler_with(
        "flaky",
        handler(&["order_created"], |_, ctx| {
            ctx.emit("attempt_made", &ctx.attempt())?;
            if ctx.attempt() < 3 {
                return Err(format!("attempt {} failed", ctx.attempt()).into());
            }
            Ok(Handled::Done)
        }),
        HandlerOptions::default().retry(RetryPolicy::default().max_attempts(5)),
    ))
    .await
    .unwrap();
    let seen = observe(t.emissions());
    t.emissions().emit_now("order_created", &1).await.unwrap();
    let attempts: Vec<u32> = t
        .emitted("attempt_made")
        .await
        .iter()
        .map(|e| e.payload_as().unwrap())
        .collect();
    // Only the successful attempt's follow-up was committed.
    assert_eq!(attempts, [3]);
    assert_eq!(seen.named(names::HANDLER_ERROR).len(), 2);
    assert_eq!(seen.named(names::HANDLER_SUCCESS).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_limited_per_handler() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    struct Counting {
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }
    #[async_trait]
    impl Handler for Counting {
        fn events(&self) -> &[&str] {
            &["job"]
        }
        async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Handled::Done)
        }
    }
    let emissions = Emissions::builder()
        .handler_with(
            "workers",
            Counting {
                running: running.clone(),
                peak: peak.clone(),
            },
            HandlerOptions::default().concurrency(3),
        )
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for i in 0..20 {
        buffer.emit("job", &i).unwrap();
    }
    buffer.commit().await.unwrap();
    emissions.settled().await;
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    assert_eq!(
        emissions
            .stats()
            .handler("workers")
            .unwrap()
            .counts
            .succeeded,
        20
    );
}

/// Handles `step` events whose payload is `[key, seq]`; earlier events take longer, so without
/// ordering they finish in reverse.
struct Steps {
    finished: Arc<Mutex<Vec<(u32, u32)>>>,
}

#[async_trait]
impl Handler for Steps {
    fn events(&self) -> &[&str] {
        &["step"]
    }
    async fn handle(&self, event: &Event, _: &HandlerContext) -> Result<Handled, BoxError> {
        let (key, seq): (u32, u32) = event.payload_as()?;
        tokio::time::sleep(Duration::from_millis(u64::from(100 - seq * 10))).await;
        self.finished.lock().unwrap().push((key, seq));
        Ok(Handled::Done)
    }
}

async fn run_steps(options: HandlerOptions) -> Vec<(u32, u32)> {
    let finished = Arc::new(Mutex::new(Vec::new()));
    let emissions = Emissions::builder()
        .handler_with(
            "steps",
            Steps {
                finished: finished.clone(),
            },
            options,
        )
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for seq in 0..5u32 {
        for key in 0..3u32 {
            buffer.emit("step", &(key, seq)).unwrap();
        }
    }
    buffer.commit().await.unwrap();
    emissions.settled().await;
    finished.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn ordered_by_keeps_each_keys_events_in_order() {
    let ordered = run_steps(
        HandlerOptions::default()
            .ordered_by(|e| Some(e.payload_as::<(u32, u32)>().ok()?.0.to_string())),
    )
    .await;
    for key in 0..3 {
        let seqs: Vec<u32> = ordered
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4], "key {key}");
    }
    // The default is unordered: the same events then finish out of order.
    let unordered = run_steps(HandlerOptions::default()).await;
    let key0: Vec<u32> = unordered
        .iter()
        .filter(|(k, _)| *k == 0)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(key0, [4, 3, 2, 1, 0]);
}

struct Invoicing;

#[async_trait]
impl Handler for Invoicing {
    fn events(&self) -> &[&str] {
        &["order_created", "invoice_requested"]
    }
    async fn handle(&self, event: &Event, ctx: &HandlerContext) -> Result<Handled, BoxError> {
        match event.name() {
            "order_created" => ctx.emit("invoice_requested", &event.payload_json())?,
            // The ambient style reaches the same child buffer.
            _ => emissions_core::emit("invoice_sent", &event.payload_json())?,
        }
        Ok(Handled::Done)
    }
}

#[tokio::test]
async fn cascades_carry_causation_and_correlation_ids() {
    let t = TestEmissions::start_with(Emissions::builder().handler("invoicing", Invoicing))
        .await
        .unwrap();
    t.emissions()
        .emit_now("order_created", &json!({"id": 9}))
        .await
        .unwrap();
    let events = t.events().await;
    assert_eq!(
        names(&events),
        ["order_created", "invoice_requested", "invoice_sent"]
    );
    let (root, child, grandchild) = (&events[0], &events[1], &events[2]);
    assert!(root.metadata().get(CAUSATION_ID).is_none());
    assert_eq!(child.metadata()[CAUSATION_ID], json!(root.id().to_string()));
    assert_eq!(
        child.metadata()[CORRELATION_ID],
        json!(root.id().to_string())
    );
    assert_eq!(child.metadata()[CASCADE_DEPTH], json!(1));
    assert_eq!(
        grandchild.metadata()[CAUSATION_ID],
        json!(child.id().to_string())
    );
    assert_eq!(
        grandchild.metadata()[CORRELATION_ID],
        json!(root.id().to_string())
    );
    assert_eq!(grandchild.metadata()[CASCADE_DEPTH], json!(2));
    assert_eq!(grandchild.payload_json(), json!({"id": 9}));
}

#[tokio::test]
async fn a_roots_own_correlation_id_flows_into_the_cascade() {
    let t = TestEmissions::start_with(Emissions::builder().handler("invoicing", Invoicing))
        .await
        .unwrap();
    let buffer = t.emissions().start();
    let mut meta = emissions_core::Metadata::new();
    meta.insert(CORRELATION_ID.into(), json!("req-42"));
    buffer
        .emit_with_metadata("order_created", &1, meta)
        .unwrap();
    buffer.commit().await.unwrap();
    let events = t.events().await;
    assert!(
        events
            .iter()
            .all(|e| e.metadata()[CORRELATION_ID] == "req-42")
    );
}

#[tokio::test]
async fn follow_ups_of_a_failed_run_are_discarded() {
    let t = TestEmissions::start_with(Emissions::builder().handler_with(
        "half_done",
        handler(&["order_created"], |_, ctx| {
            ctx.emit("invoice_requested", &1)?;
            Err("database down".into())
        }),
        once(),
    ))
    .await
    .unwrap();
    let seen = observe(t.emissions());
    t.emissions().emit_now("order_created", &1).await.unwrap();
    assert_eq!(names(&t.events().await), ["order_created"]);
    let terminated = seen.named(names::BUFFER_TERMINATED);
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].meta(keys::EVENT_COUNT), Some(&json!(1)));
}

#[tokio::test]
async fn follow_ups_of_a_panicking_run_are_discarded() {
    let t = TestEmissions::start_with(Emissions::builder().handler_with(
        "explodes",
        handler(&["order_created"], |_, ctx| {
            ctx.emit("invoice_requested", &1).unwrap();
            panic!("after emitting");
        }),
        once(),
    ))
    .await
    .unwrap();
    t.emissions().emit_now("order_created", &1).await.unwrap();
    t.emissions().emit_now("order_created", &2).await.unwrap();
    assert_eq!(names(&t.events().await), ["order_created", "order_created"]);
    let counts = t.emissions().stats().handler("explodes").unwrap().counts;
    assert_eq!((counts.dispatched, counts.failed), (2, 2));
}

#[tokio::test]
async fn an_endless_cascade_stops_at_the_depth_limit() {
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let sink = refusals.clone();
    let t = TestEmissions::start_with(
        Emissions::builder()
            .handler(
                "echo",
                handler(&["ping"], move |_, ctx| {
                    // Re-emit forever; at the limit the emit is refused and reported.
                    if let Err(err) = ctx.emit("ping", &1) {
                        sink.lock().unwrap().push(err.to_string());
                    }
                    Ok(Handled::Done)
                }),
            )
            .cascade_depth_limit(8),
    )
    .await
    .unwrap();
    let seen = observe(t.emissions());
    t.emissions().emit_now("ping", &0).await.unwrap();
    let pings = t.emitted("ping").await;
    // The root plus eight generations of follow-ups.
    assert_eq!(pings.len(), 9);
    let depths: Vec<u64> = pings
        .iter()
        .map(|e| {
            e.metadata()
                .get(CASCADE_DEPTH)
                .and_then(|d| d.as_u64())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(depths, (0..=8).collect::<Vec<_>>());
    assert_eq!(
        *refusals.lock().unwrap(),
        ["cascade depth 9 exceeds the limit of 8; event dropped"]
    );
    let dropped = seen.named(names::EVENT_DROPPED);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].meta(keys::REASON), Some(&json!("cascade_depth")));
    assert_eq!(dropped[0].meta(keys::EVENT_NAME), Some(&json!("ping")));
    assert_eq!(dropped[0].meta(keys::HANDLER), Some(&json!("echo")));
    assert_eq!(
        t.emissions()
            .stats()
            .handler("echo")
            .unwrap()
            .counts
            .succeeded,
        9
    );
}

#[tokio::test]
async fn a_loop_that_propagates_the_depth_error_fails_at_the_limit() {
    let t = TestEmissions::start_with(
        Emissions::builder()
            .handler_with(
                "echo",
                handler(&["ping"], |_, ctx| {
                    ctx.emit("ping", &1)?;
                    Ok(Handled::Done)
                }),
                once(),
            )
            .cascade_depth_limit(2),
    )
    .await
    .unwrap();
    t.emissions().emit_now("ping", &0).await.unwrap();
    assert_eq!(t.emitted("ping").await.len(), 3);
    let counts = t.emissions().stats().handler("echo").unwrap().counts;
    assert_eq!((counts.succeeded, counts.failed), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_runs_still_going_at_the_deadline() {
    let stuck = FnHandler {
        delay: Some(Duration::from_secs(86_400)),
        ..handler(&["a"], |_, _| Ok(Handled::Done))
    };
    let emissions = Emissions::builder()
        .handler_with(
            "stuck",
            stuck,
            HandlerOptions::default().timeout(Duration::from_secs(172_800)),
        )
        .adapter(emissions_core::Named::new("other", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap();
    let seen = observe(&emissions);
    emissions.emit_now("a", &1).await.unwrap();
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_balanced(), "{report:?}");
    assert_eq!(report.handler("stuck").unwrap().counts.dropped, 1);
    assert!(report.adapter("handlers").unwrap().shutdown_error.is_some());
    assert_eq!(report.adapter("other").unwrap().counts.delivered, 1);
    let dropped = seen.named(names::EVENT_DROPPED);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].meta(keys::HANDLER), Some(&json!("stuck")));
}

#[tokio::test]
async fn handler_configuration_is_validated_at_start() {
    let err = Emissions::builder()
        .handler_with(
            "h",
            handler(&["a"], |_, _| Ok(Handled::Done)),
            HandlerOptions::default().concurrency(0),
        )
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config { ref adapter, field: "concurrency", .. } if adapter == "h")
    );

    let err = Emissions::builder()
        .handler("h", handler(&["a"], |_, _| Ok(Handled::Done)))
        .handler_queue(AdapterOptions::default().overflow(OverflowPolicy::Block))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config { ref adapter, field: "overflow", .. } if adapter == "handlers")
    );

    let err = Emissions::builder()
        .handler("kafka", handler(&["a"], |_, _| Ok(Handled::Done)))
        .adapter(emissions_core::Named::new("kafka", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { field: "name", .. }));

    let err = Emissions::builder()
        .handler("h", handler(&["a"], |_, _| Ok(Handled::Done)))
        .adapter(emissions_core::Named::new("handlers", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config { ref adapter, field: "name", .. } if adapter == "handlers")
    );
}
