//! Buffer lifecycle, both styles: every transition of the state diagram.

mod support;

use std::time::Duration;

use emissions_core::telemetry::names;
use emissions_core::{BufferState, Error, Metadata};
use emissions_testing::TestEmissions;
use serde::Serialize;
use serde_json::json;
use support::{names, observe};

struct Unserializable;
impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused"))
    }
}

#[tokio::test]
async fn start_emit_commit_delivers_in_emit_order_and_closes() {
    let t = TestEmissions::start().await;
    let buffer = t.emissions().start();
    assert_eq!(buffer.state(), BufferState::Open);
    buffer.emit("a", &1).unwrap();
    buffer.emit("b", &2).unwrap();
    buffer.emit("c", &3).unwrap();
    let receipt = buffer.commit().await.unwrap();
    assert_eq!(receipt.event_count(), 3);
    assert_eq!(buffer.state(), BufferState::Committed);
    let outcome = receipt.settled().await;
    assert_eq!(outcome.adapter("test").unwrap().delivered, 3);
    assert_eq!(names(&t.events().await), ["a", "b", "c"]);

    assert!(matches!(
        buffer.emit("late", &1),
        Err(Error::BufferClosed {
            state: BufferState::Committed
        })
    ));
    assert!(matches!(
        buffer.commit().await,
        Err(Error::BufferClosed { .. })
    ));
    assert!(matches!(
        buffer.flush().await,
        Err(Error::BufferClosed { .. })
    ));
    assert!(matches!(
        buffer.terminate(),
        Err(Error::BufferClosed { .. })
    ));
    assert_eq!(names(&t.events().await), ["a", "b", "c"]);
}

#[tokio::test]
async fn flush_delivers_so_far_and_keeps_buffering() {
    let t = TestEmissions::start().await;
    let buffer = t.emissions().start();
    buffer.emit("first", &1).unwrap();
    let r1 = buffer.flush().await.unwrap();
    assert_eq!(buffer.state(), BufferState::Open);
    assert!(buffer.events().is_empty());
    r1.settled().await;
    assert_eq!(names(&t.events().await), ["first"]);

    buffer.emit("second", &2).unwrap();
    buffer.emit("third", &3).unwrap();
    let r2 = buffer.commit().await.unwrap();
    assert_eq!((r1.event_count(), r2.event_count()), (1, 2));
    r2.settled().await;
    assert_eq!(names(&t.events().await), ["first", "second", "third"]);
}

#[tokio::test]
async fn terminate_discards_and_closes() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let buffer = t.emissions().start();
    buffer.emit("a", &1).unwrap();
    buffer.emit("b", &2).unwrap();
    assert_eq!(buffer.terminate().unwrap(), 2);
    assert_eq!(buffer.state(), BufferState::Terminated);
    assert!(matches!(
        buffer.emit("c", &3),
        Err(Error::BufferClosed {
            state: BufferState::Terminated
        })
    ));
    assert!(matches!(
        buffer.commit().await,
        Err(Error::BufferClosed { .. })
    ));
    assert!(t.events().await.is_empty());
    let terminated = seen.named(names::BUFFER_TERMINATED);
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].meta("event_count"), Some(&json!(2)));
    assert_eq!(terminated[0].meta("reason"), Some(&json!("terminate")));
}

#[tokio::test]
async fn dropped_buffer_is_discarded_and_reported() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    {
        let buffer = t.emissions().start();
        buffer.emit("lost", &1).unwrap();
        let clone = buffer.clone();
        drop(buffer);
        // Still alive through the clone: nothing reported yet.
        assert!(seen.named(names::BUFFER_TERMINATED).is_empty());
        drop(clone);
    }
    let terminated = seen.named(names::BUFFER_TERMINATED);
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].meta("reason"), Some(&json!("drop")));
    assert_eq!(terminated[0].meta("event_count"), Some(&json!(1)));
    assert!(t.events().await.is_empty());
}

#[tokio::test]
async fn panicking_request_discards_its_buffer() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let emissions = t.emissions().clone();
    let task = tokio::spawn(async move {
        let buffer = emissions.start();
        buffer.emit("half_done", &1).unwrap();
        panic!("request failed");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(seen.named(names::BUFFER_TERMINATED).len(), 1);
    assert!(t.events().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancelled_request_discards_its_buffer() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let emissions = t.emissions().clone();
    let request = async move {
        let buffer = emissions.start();
        buffer.emit("never_committed", &1).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        buffer.commit().await.unwrap();
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(1), request)
            .await
            .is_err()
    );
    let terminated = seen.named(names::BUFFER_TERMINATED);
    assert_eq!(terminated.len(), 1);
    assert_eq!(terminated[0].meta("reason"), Some(&json!("drop")));
    assert!(t.events().await.is_empty());
}

#[tokio::test]
async fn serialization_failure_leaves_buffer_unchanged() {
    let t = TestEmissions::start().await;
    let buffer = t.emissions().start();
    buffer.emit("ok", &1).unwrap();
    let err = buffer.emit("bad", &Unserializable).unwrap_err();
    assert!(matches!(err, Error::Serialize { ref name, .. } if name == "bad"));
    assert!(matches!(buffer.emit("", &1), Err(Error::EmptyName)));
    assert_eq!(names(&buffer.events()), ["ok"]);
    assert_eq!(buffer.state(), BufferState::Open);
    buffer.commit().await.unwrap();
    assert_eq!(names(&t.events().await), ["ok"]);
}

#[tokio::test]
async fn metadata_and_payload_bytes_reach_the_adapter() {
    let t = TestEmissions::start().await;
    let buffer = t.emissions().start();
    let mut meta = Metadata::new();
    meta.insert("source".into(), json!("api"));
    buffer
        .emit_with_metadata("order_created", &json!({"item": "widget", "qty": 5}), meta)
        .unwrap();
    let emitted = buffer.events()[0].clone();
    buffer.commit().await.unwrap();
    let got = &t.events().await[0];
    assert_eq!(got.id(), emitted.id());
    assert_eq!(got.payload(), br#"{"item":"widget","qty":5}"#);
    // Shared, not re-serialized: the adapter sees the very bytes created at emit time.
    assert_eq!(got.payload().as_ptr(), emitted.payload().as_ptr());
    assert_eq!(got.metadata()["source"], "api");
}

#[tokio::test]
async fn clones_in_spawned_tasks_emit_into_the_same_buffer() {
    let t = TestEmissions::start().await;
    let buffer = t.emissions().start();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let b = buffer.clone();
        tasks.push(tokio::spawn(async move { b.emit("part", &i) }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(buffer.commit().await.unwrap().event_count(), 8);
    assert_eq!(t.emitted("part").await.len(), 8);
}

#[tokio::test]
async fn emit_now_commits_a_single_event() {
    let t = TestEmissions::start().await;
    let receipt = t
        .emissions()
        .emit_now("tick", &json!({"n": 1}))
        .await
        .unwrap();
    assert!(receipt.settled().await.is_delivered());
    assert_eq!(names(&t.events().await), ["tick"]);
}

#[tokio::test]
async fn shutdown_refuses_new_events_and_hands_pending_ones_back() {
    let t = TestEmissions::start().await;
    let buffer = t.emissions().start();
    buffer.emit("pending", &1).unwrap();
    let committed = t.emissions().start();
    committed.commit().await.unwrap();
    t.emissions().shutdown(Duration::from_secs(5)).await;
    assert!(matches!(buffer.emit("late", &1), Err(Error::ShutDown)));
    assert!(matches!(buffer.commit().await, Err(Error::ShutDown)));
    // A closed buffer still says so after shutdown.
    assert!(matches!(
        committed.commit().await,
        Err(Error::BufferClosed {
            state: BufferState::Committed
        })
    ));
    assert_eq!(buffer.state(), BufferState::Open);
    assert_eq!(names(&buffer.events()), ["pending"]);
    assert!(matches!(
        t.emissions().emit_now("x", &1).await,
        Err(Error::ShutDown)
    ));
}

// ---- ambient style ----

#[derive(Debug)]
enum AppError {
    Rejected,
    Emissions(#[allow(dead_code)] Error),
}
impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Emissions(e)
    }
}

async fn handler(fail: bool) -> Result<u32, AppError> {
    emissions_core::emit("step", &1)?;
    deeper().await?;
    if fail {
        return Err(AppError::Rejected);
    }
    Ok(7)
}

async fn deeper() -> Result<(), Error> {
    emissions_core::emit_with_metadata("deep_step", &2, Metadata::new())
}

#[tokio::test]
async fn ambient_transaction_commits_on_ok_and_terminates_on_err() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let ok = t.run(emissions_core::transaction(handler(false))).await;
    assert_eq!(ok.unwrap(), 7);
    let err = t.run(emissions_core::transaction(handler(true))).await;
    assert!(matches!(err, Err(AppError::Rejected)));
    assert_eq!(names(&t.events().await), ["step", "deep_step"]);
    assert_eq!(seen.named(names::BUFFER_STARTED).len(), 2);
    assert_eq!(seen.named(names::BUFFER_COMMITTED).len(), 1);
    assert_eq!(seen.named(names::BUFFER_TERMINATED).len(), 1);
}

#[tokio::test]
async fn ambient_start_emit_flush_commit_terminate() {
    let t = TestEmissions::start().await;
    t.run(async {
        let buffer = emissions_core::start().unwrap();
        buffer
            .scope(async {
                emissions_core::emit("a", &1).unwrap();
                assert_eq!(emissions_core::flush().await.unwrap().event_count(), 1);
                emissions_core::emit("b", &2).unwrap();
                assert_eq!(emissions_core::commit().await.unwrap().event_count(), 1);
                assert!(matches!(
                    emissions_core::emit("c", &3),
                    Err(Error::BufferClosed {
                        state: BufferState::Committed
                    })
                ));
            })
            .await;

        let discarded = emissions_core::start().unwrap();
        discarded
            .scope(async {
                emissions_core::emit("never", &1).unwrap();
                assert_eq!(emissions_core::terminate().unwrap(), 1);
                assert!(matches!(
                    emissions_core::emit("never", &2),
                    Err(Error::BufferClosed {
                        state: BufferState::Terminated
                    })
                ));
            })
            .await;
    })
    .await;
    assert_eq!(names(&t.events().await), ["a", "b"]);
}

#[tokio::test]
async fn ambient_emit_without_buffer_is_a_typed_error_and_reported() {
    let t = TestEmissions::start().await;
    let seen = observe(t.emissions());
    let result = t.run(async { emissions_core::emit("orphan", &1) }).await;
    assert!(matches!(result, Err(Error::NoBuffer)));
    let dropped = seen.named(names::EVENT_DROPPED);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].meta("event_name"), Some(&json!("orphan")));
    assert_eq!(dropped[0].meta("reason"), Some(&json!("no_buffer")));
    assert!(matches!(
        t.run(emissions_core::commit()).await,
        Err(Error::NoBuffer)
    ));
    assert!(matches!(emissions_core::terminate(), Err(Error::NoBuffer)));
}

#[tokio::test]
async fn scoped_defaults_isolate_instances() {
    let a = TestEmissions::start().await;
    let b = TestEmissions::start().await;
    let (ra, rb) = tokio::join!(
        a.run(emissions_core::transaction(async {
            emissions_core::emit("from_a", &1)?;
            Ok::<_, Error>(())
        })),
        b.run(emissions_core::transaction(async {
            emissions_core::emit("from_b", &1)?;
            Ok::<_, Error>(())
        })),
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(names(&a.events().await), ["from_a"]);
    assert_eq!(names(&b.events().await), ["from_b"]);
}
