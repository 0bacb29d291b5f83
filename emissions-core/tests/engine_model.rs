//! Property test of the delivery engine against a model: random interleavings of buffer
//! operations, commits cancelled while they wait for room, time passing, repeated and
//! cancelled shutdowns, over adapters that fail, retry, panic (in `handle_events` and in
//! `interested`), keep per-key order, and block — with a telemetry observer that panics.
//!
//! After every step: each adapter's `committed` is exactly what the model committed, no
//! adapter has settled more than was committed, no event was attempted more than the policy
//! allows, every dead letter's `attempts` is exactly the attempts the adapter saw for its
//! events (never charged for an attempt it did not get), an ordered adapter never had two
//! events of one key in a batch and attempted each key's events one after the other in commit
//! order. At the end: the report balances, and how each event ended is exactly what the
//! adapter answered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::telemetry::TelemetryEvent;
use emissions_core::{
    Adapter, AdapterOptions, BatchError, Buffer, BufferState, DeadLetter, DeadLetterCause,
    DeliveryReport, Emissions, Error, Event, Failure, OverflowPolicy, RetryPolicy, async_trait,
};
use proptest::prelude::*;
use tokio::sync::Semaphore;

const SLOTS: usize = 3;
const ATTEMPTS: u32 = 3;
const KEYS: u64 = 3;

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Emit(usize),
    Flush(usize),
    Commit(usize),
    Terminate(usize),
    Drop(usize),
    /// Let the blocking adapter take this many more batches.
    Release(usize),
    /// Let this much (paused) time pass: retries come due.
    Advance(u64),
    Shutdown,
    /// A shutdown whose caller gives up after a millisecond.
    CancelledShutdown,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        5 => slot.clone().prop_map(Op::Start),
        50 => slot.clone().prop_map(Op::Emit),
        8 => slot.clone().prop_map(Op::Flush),
        8 => slot.clone().prop_map(Op::Commit),
        1 => slot.clone().prop_map(Op::Terminate),
        1 => slot.prop_map(Op::Drop),
        8 => (1..8usize).prop_map(Op::Release),
        6 => (0..4u64).prop_map(Op::Advance),
    ]
}

/// Buffer operations with up to two shutdowns (plain or cancelled) at random places in the
/// second half, so that most cases commit a good many events first.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        proptest::collection::vec(op(), 0..240),
        proptest::collection::vec((0..240usize, any::<bool>()), 0..3),
    )
        .prop_map(|(mut ops, shutdowns)| {
            for (at, cancelled) in shutdowns {
                let shutdown = if cancelled {
                    Op::CancelledShutdown
                } else {
                    Op::Shutdown
                };
                let half = ops.len() / 2;
                ops.insert(half + at % (ops.len() - half + 1), shutdown);
            }
            ops
        })
}

/// What the failing adapters answer for one event's `attempt` (1-based).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    Retry,
    Permanent,
}

fn answer(id: u64, attempt: u32) -> Answer {
    if id.is_multiple_of(11) {
        Answer::Permanent
    } else if id.is_multiple_of(7) || (id.is_multiple_of(5) && attempt <= 2) {
        Answer::Retry
    } else {
        Answer::Ok
    }
}

/// `interested` panics for these.
fn explodes_interest(id: u64) -> bool {
    id.is_multiple_of(17) && id > 0
}

/// `handle_events` panics when a batch holds one of these on its first attempt.
fn explodes_batch(id: u64) -> bool {
    id.is_multiple_of(13) && id > 0
}

#[derive(Debug, Default)]
struct Seen {
    /// Attempts per event.
    attempts: HashMap<u64, u32>,
    /// What the adapter answered last, per event (`Retry` for a panicking call).
    last: HashMap<u64, Answer>,
    /// Every event attempted, in call order.
    order: Vec<u64>,
    /// A batch with two events of one key, if there ever was one.
    shared_key: Option<Vec<u64>>,
}

/// Fails, retries and panics by [`answer`]; records what it saw.
struct Failing {
    seen: Arc<Mutex<Seen>>,
    keyed: bool,
}

#[async_trait]
impl Adapter for Failing {
    fn interested(&self, event: &Event) -> bool {
        let id: u64 = event.payload_as().unwrap();
        assert!(!explodes_interest(id), "interested exploded on {id}");
        true
    }

    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let ids: Vec<u64> = events.iter().map(|e| e.payload_as().unwrap()).collect();
        let mut seen = self.seen.lock().unwrap();
        if self.keyed {
            let keys: HashSet<u64> = ids.iter().map(|id| id % KEYS).collect();
            if keys.len() < ids.len() {
                seen.shared_key = Some(ids.clone());
            }
        }
        let mut panic = false;
        let mut failures = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let attempt = {
                let n = seen.attempts.entry(*id).or_default();
                *n += 1;
                *n
            };
            seen.order.push(*id);
            panic |= explodes_batch(*id) && attempt == 1;
            let answer = answer(*id, attempt);
            seen.last.insert(*id, answer);
            match answer {
                Answer::Ok => {}
                Answer::Retry => failures.push((i, Failure::retryable("try again"))),
                Answer::Permanent => failures.push((i, Failure::permanent("rejected"))),
            }
        }
        if panic {
            for id in &ids {
                seen.last.insert(*id, Answer::Retry);
            }
            drop(seen);
            panic!("batch exploded");
        }
        drop(seen);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BatchError::partial(failures))
        }
    }
}

/// Takes one batch per released permit (block policy, tiny queue), records what it got.
struct Gated {
    permits: Arc<Semaphore>,
    delivered: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl Adapter for Gated {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        self.permits.acquire().await.unwrap().forget();
        let mut delivered = self.delivered.lock().unwrap();
        delivered.extend(events.iter().map(|e| e.payload_as::<u64>().unwrap()));
        Ok(())
    }
}

type Dead = Arc<Mutex<Vec<(String, Vec<u64>, u32, DeadLetterCause)>>>;

fn collecting(options: AdapterOptions, dead: &Dead) -> AdapterOptions {
    let sink = dead.clone();
    options.dead_letter(move |d: DeadLetter| {
        let ids = d.events.iter().map(|e| e.payload_as().unwrap()).collect();
        sink.lock()
            .unwrap()
            .push((d.destination.to_string(), ids, d.attempts, d.cause));
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Empty,
    Open(Vec<u64>),
    Closed,
}

struct World {
    emissions: Emissions,
    flaky: Arc<Mutex<Seen>>,
    keyed: Arc<Mutex<Seen>>,
    gate: Arc<Semaphore>,
    gated: Arc<Mutex<Vec<u64>>>,
    dead: Dead,
    /// Every event committed, in commit order.
    committed: Vec<u64>,
    reports: Vec<DeliveryReport>,
    shut_down: bool,
}

async fn world() -> World {
    let flaky = Arc::new(Mutex::new(Seen::default()));
    let keyed = Arc::new(Mutex::new(Seen::default()));
    let gate = Arc::new(Semaphore::new(0));
    let gated = Arc::new(Mutex::new(Vec::new()));
    let dead: Dead = Arc::default();
    let retry = RetryPolicy::default()
        .max_attempts(ATTEMPTS)
        .backoff(Duration::from_secs(1), Duration::from_secs(2));
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new(
                "flaky",
                Failing {
                    seen: flaky.clone(),
                    keyed: false,
                },
            )
            .options(collecting(
                AdapterOptions::default().max_demand(4).retry(retry.clone()),
                &dead,
            )),
        )
        .unwrap()
        .adapter(
            emissions_core::Named::new(
                "keyed",
                Failing {
                    seen: keyed.clone(),
                    keyed: true,
                },
            )
            .options(collecting(
                AdapterOptions::default()
                    .max_demand(4)
                    .retry(retry)
                    .ordered_by(|e| Some((e.payload_as::<u64>().unwrap() % KEYS).to_string())),
                &dead,
            )),
        )
        .unwrap()
        .adapter(
            emissions_core::Named::new(
                "gated",
                Gated {
                    permits: gate.clone(),
                    delivered: gated.clone(),
                },
            )
            .options(collecting(
                AdapterOptions::default()
                    .capacity(12)
                    .max_demand(3)
                    .overflow(OverflowPolicy::Block),
                &dead,
            )),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    emissions.attach_observer(|event| {
        if matches!(event, TelemetryEvent::AdapterError { .. }) {
            panic!("observer exploded");
        }
    });
    World {
        emissions,
        flaky,
        keyed,
        gate,
        gated,
        dead,
        committed: Vec::new(),
        reports: Vec::new(),
        shut_down: false,
    }
}

/// A commit or flush that gives up after a millisecond of waiting for room.
async fn hand_over(buffer: &Buffer, commit: bool) -> Option<Result<usize, Error>> {
    let wait = Duration::from_millis(1);
    let result = if commit {
        tokio::time::timeout(wait, buffer.commit()).await
    } else {
        tokio::time::timeout(wait, buffer.flush()).await
    };
    result.ok().map(|r| r.map(|receipt| receipt.event_count()))
}

impl World {
    fn check_step(&self) -> Result<(), TestCaseError> {
        let stats = self.emissions.stats();
        for adapter in &stats.adapters {
            prop_assert_eq!(adapter.counts.committed, self.committed.len() as u64);
            prop_assert!(
                adapter.counts.settled() <= adapter.counts.committed,
                "{:?}",
                adapter
            );
        }
        for (name, seen) in [("flaky", &self.flaky), ("keyed", &self.keyed)] {
            let seen = seen.lock().unwrap();
            prop_assert!(
                seen.attempts.values().all(|n| *n <= ATTEMPTS),
                "{}: {:?}",
                name,
                seen.attempts
            );
            prop_assert!(seen.shared_key.is_none(), "{}: {:?}", name, seen.shared_key);
            for (destination, ids, attempts, _) in self.dead.lock().unwrap().iter() {
                if destination == name {
                    for id in ids {
                        let got = seen.attempts.get(id).copied().unwrap_or(0);
                        prop_assert_eq!(got, *attempts, "{} charged event {} wrongly", name, id);
                    }
                }
            }
        }
        // Ordered: per key, each event's attempts are contiguous and in commit order.
        let position: HashMap<u64, usize> = self
            .committed
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        let order = self.keyed.lock().unwrap().order.clone();
        for key in 0..KEYS {
            let mut done: HashSet<u64> = HashSet::new();
            let mut current: Option<u64> = None;
            for id in order.iter().filter(|id| *id % KEYS == key) {
                if current != Some(*id) {
                    prop_assert!(
                        !done.contains(id),
                        "key {}: {} attempted again after a later event ({:?})",
                        key,
                        id,
                        order
                    );
                    if let Some(previous) = current {
                        prop_assert!(
                            position[&previous] < position[id],
                            "key {}: {} before {} ({:?})",
                            key,
                            previous,
                            id,
                            order
                        );
                        done.insert(previous);
                    }
                    current = Some(*id);
                }
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self, cancelled: bool) -> Result<(), TestCaseError> {
        self.shut_down = true;
        let report = if cancelled {
            tokio::time::timeout(
                Duration::from_millis(1),
                self.emissions.shutdown(Duration::from_secs(3600)),
            )
            .await
            .ok()
        } else {
            Some(self.emissions.shutdown(Duration::from_secs(3600)).await)
        };
        if let Some(report) = report {
            if let Some(first) = self.reports.first() {
                prop_assert_eq!(first, &report, "every shutdown returns the same report");
            }
            prop_assert!(report.is_balanced(), "{:?}", report);
            self.reports.push(report);
        }
        Ok(())
    }

    fn check_end(&self, report: &DeliveryReport) -> Result<(), TestCaseError> {
        prop_assert!(report.is_balanced(), "{:?}", report);
        let dead = self.dead.lock().unwrap().clone();
        for (name, seen) in [("flaky", &self.flaky), ("keyed", &self.keyed)] {
            let seen = seen.lock().unwrap();
            let counts = report.adapter(name).unwrap().counts;
            let mut failed = HashSet::new();
            let mut dropped = HashSet::new();
            for (destination, ids, _, cause) in &dead {
                if destination == name {
                    for id in ids {
                        match cause {
                            DeadLetterCause::Failed => failed.insert(*id),
                            _ => dropped.insert(*id),
                        };
                    }
                }
            }
            prop_assert_eq!(counts.failed, failed.len() as u64);
            // Retries take seconds and the deadline is an hour: nothing may be left over.
            prop_assert_eq!(counts.dropped, 0, "{}: {:?}", name, counts);
            prop_assert!(dropped.is_empty());
            for id in &self.committed {
                let attempts = seen.attempts.get(id).copied().unwrap_or(0);
                let last = seen.last.get(id).copied();
                if failed.contains(id) {
                    // Failed: refused by `interested`, a permanent answer, or retries used up.
                    let why = if explodes_interest(*id) {
                        attempts == 0
                    } else {
                        last == Some(Answer::Permanent)
                            || (last == Some(Answer::Retry) && attempts == ATTEMPTS)
                    };
                    prop_assert!(
                        why,
                        "{}: event {} failed after {} attempts, last {:?}",
                        name,
                        id,
                        attempts,
                        last
                    );
                } else if !dropped.contains(id) {
                    prop_assert_eq!(
                        last,
                        Some(Answer::Ok),
                        "{}: event {} counted delivered",
                        name,
                        id
                    );
                }
            }
            let delivered = self.committed.len() - failed.len() - dropped.len();
            prop_assert_eq!(counts.delivered, delivered as u64);
        }
        // The blocking adapter got a prefix of the commits, in order; the rest was dropped.
        let gated = self.gated.lock().unwrap().clone();
        prop_assert_eq!(&gated[..], &self.committed[..gated.len()]);
        let counts = report.adapter("gated").unwrap().counts;
        prop_assert_eq!(counts.delivered, gated.len() as u64);
        Ok(())
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = world().await;
    let mut buffers: Vec<Option<Buffer>> = vec![None; SLOTS];
    let mut model = vec![Slot::Empty; SLOTS];
    let mut next = 1u64;
    for op in ops {
        match op {
            Op::Start(s) => {
                buffers[s] = Some(w.emissions.start());
                model[s] = Slot::Open(Vec::new());
            }
            Op::Drop(s) => {
                buffers[s] = None;
                model[s] = Slot::Empty;
            }
            Op::Emit(s) => {
                let Some(buffer) = &buffers[s] else { continue };
                let id = next;
                next += 1;
                let result = buffer.emit("e", &id);
                match (&mut model[s], result) {
                    (_, Err(Error::ShutDown)) => prop_assert!(w.shut_down),
                    (Slot::Open(pending), Ok(())) => pending.push(id),
                    (Slot::Closed, Err(Error::BufferClosed { .. })) => {}
                    (slot, result) => prop_assert!(false, "emit into {:?}: {:?}", slot, result),
                }
            }
            Op::Flush(s) | Op::Commit(s) => {
                let Some(buffer) = &buffers[s] else { continue };
                let commit = matches!(op, Op::Commit(_));
                let result = hand_over(buffer, commit).await;
                let Slot::Open(pending) = model[s].clone() else {
                    let refused = matches!(result, Some(Err(Error::BufferClosed { .. })));
                    prop_assert!(refused, "a closed buffer must refuse: {:?}", result);
                    continue;
                };
                match result {
                    Some(Ok(n)) => {
                        prop_assert_eq!(n, pending.len());
                        w.committed.extend(&pending);
                        model[s] = if commit {
                            Slot::Closed
                        } else {
                            Slot::Open(Vec::new())
                        };
                    }
                    Some(Err(Error::ShutDown)) => prop_assert!(w.shut_down),
                    // Cancelled while waiting for room: nothing committed, events kept.
                    None => {}
                    Some(Err(err)) => prop_assert!(false, "unexpected {:?}", err),
                }
                if let Slot::Open(pending) = &model[s] {
                    let kept: Vec<u64> = buffer
                        .events()
                        .iter()
                        .map(|e| e.payload_as().unwrap())
                        .collect();
                    prop_assert_eq!(&kept, pending);
                    prop_assert_eq!(buffer.state(), BufferState::Open);
                }
            }
            Op::Terminate(s) => {
                let Some(buffer) = &buffers[s] else { continue };
                let result = buffer.terminate();
                match model[s] {
                    Slot::Open(_) => prop_assert!(result.is_ok()),
                    _ => prop_assert!(result.is_err()),
                }
                model[s] = Slot::Closed;
            }
            Op::Release(n) => w.gate.add_permits(n),
            Op::Advance(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            Op::Shutdown => w.shutdown(false).await?,
            Op::CancelledShutdown => w.shutdown(true).await?,
        }
        w.check_step()?;
    }
    drop(buffers);
    w.gate.add_permits(10_000);
    let report = w.emissions.shutdown(Duration::from_secs(3600)).await;
    for earlier in &w.reports {
        prop_assert_eq!(earlier, &report);
    }
    w.check_step()?;
    w.check_end(&report)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn the_engine_settles_every_event_as_its_adapter_answered(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
