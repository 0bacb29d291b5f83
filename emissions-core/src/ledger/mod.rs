//! The ledger: the one place where an event's delivery state changes.
//!
//! A commit is recorded here for every adapter at once ([`Ledger::open_commit`]); from then on
//! each of its events ends, for each adapter, in exactly one final state — delivered, filtered,
//! failed or dropped — recorded through [`Commit::settle`]. The ledger owns the counters, wakes
//! receipts and [`Emissions::settled`](crate::Emissions::settled) waiters, runs the dead-letter
//! step (for adapters and handlers alike) and builds the reports. Nothing else writes a counter.
//!
//! Handler runs are booked here too: dispatched, then succeeded, ignored, failed or dropped.
//! When shutdown has to give up on work it cannot join (an adapter or handler that blocks its
//! thread past the deadline), it *fences* that work: what was outstanding is counted as dropped
//! now, and whatever the abandoned work reports later is ignored, so a report never changes
//! after it was returned.

mod receipt;
mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::durable::{Attempt, AttemptOutcome, AttemptSink};
use crate::options::{DeadLetter, DeadLetterCause, DeadLetterHook};
use crate::panic;
use crate::telemetry::{DropReason, Telemetry, TelemetryEvent};
use crate::{Event, Failure};

pub use receipt::{CommitOutcome, Receipt};
pub use report::{
    AdapterBacklog, AdapterReport, DeliveryCounts, DeliveryReport, HandlerCounts, HandlerReport,
};

/// A final state of one event at one adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Final {
    Delivered,
    Filtered,
    Failed,
    Dropped,
    /// A durable attempt that failed retryably: handed back to the store for a later attempt.
    Deferred,
}

/// Settled counts, indexed by [`Final`].
#[derive(Debug, Default)]
struct Tally([AtomicU64; 5]);

impl Tally {
    fn add(&self, state: Final, n: u64) {
        self.0[state as usize].fetch_add(n, Ordering::AcqRel);
    }

    fn get(&self, state: Final) -> u64 {
        self.0[state as usize].load(Ordering::Acquire)
    }

    fn counts(&self, committed: u64) -> DeliveryCounts {
        DeliveryCounts {
            committed,
            delivered: self.get(Final::Delivered),
            filtered: self.get(Final::Filtered),
            failed: self.get(Final::Failed),
            dropped: self.get(Final::Dropped),
            deferred: self.get(Final::Deferred),
        }
    }
}

/// One adapter's page of the ledger. Aligned to its own cache lines: the committing thread
/// and each adapter's consumer update different lanes' counters at once.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct LaneBook {
    name: Arc<str>,
    committed: AtomicU64,
    settled: Tally,
    dead_letter: Option<DeadLetterHook>,
    shutdown_error: Mutex<Option<String>>,
    deadline_exceeded: AtomicBool,
}

impl LaneBook {
    pub(crate) fn new(name: Arc<str>, dead_letter: Option<DeadLetterHook>) -> Self {
        LaneBook {
            name,
            committed: AtomicU64::new(0),
            settled: Tally::default(),
            dead_letter,
            shutdown_error: Mutex::new(None),
            deadline_exceeded: AtomicBool::new(false),
        }
    }

    fn counts(&self) -> DeliveryCounts {
        // Settled first: a reader never sees more settled than committed.
        let settled = self.settled.counts(0);
        DeliveryCounts {
            committed: self.committed.load(Ordering::Acquire),
            ..settled
        }
    }
}

/// How one handler run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunEnd {
    Succeeded,
    Ignored,
    Failed,
    Dropped,
}

#[derive(Debug, Default)]
struct HandlerTally {
    counts: HandlerCounts,
    fenced: bool,
}

/// One handler's page of the ledger.
#[derive(Debug)]
pub(crate) struct HandlerBook {
    name: Arc<str>,
    tally: Mutex<HandlerTally>,
    dead_letter: Option<DeadLetterHook>,
}

impl HandlerBook {
    pub(crate) fn new(name: Arc<str>, dead_letter: Option<DeadLetterHook>) -> Self {
        HandlerBook {
            name,
            tally: Mutex::new(HandlerTally::default()),
            dead_letter,
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, HandlerTally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whose events a dead letter or a drop concerns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Destination {
    Adapter(usize),
    Handler(usize),
}

/// The accounts of one instance.
#[derive(Debug)]
pub(crate) struct Ledger {
    lanes: Box<[LaneBook]>,
    handlers: Box<[HandlerBook]>,
    telemetry: Telemetry,
    /// Woken whenever something settles, for `Emissions::settled`.
    progress: Notify,
    /// How many `Emissions::settled` calls wait: with none, settling skips the wake-up.
    watchers: AtomicUsize,
    /// Handler runs dispatched and not yet ended.
    runs: AtomicUsize,
    /// Set once shutdown has built its report: nothing is outstanding any more.
    closed: AtomicBool,
}

impl Ledger {
    pub(crate) fn new(lanes: Vec<LaneBook>, handlers: Vec<HandlerBook>) -> Self {
        Ledger {
            lanes: lanes.into_boxed_slice(),
            handlers: handlers.into_boxed_slice(),
            telemetry: Telemetry::default(),
            progress: Notify::new(),
            watchers: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub(crate) fn lane_name(&self, lane: usize) -> &Arc<str> {
        &self.lanes[lane].name
    }

    pub(crate) fn lane_names(&self) -> impl Iterator<Item = &str> {
        self.lanes.iter().map(|l| &*l.name)
    }

    /// Records durable attempts of `attempts` (from a store) for one adapter: counted there as
    /// committed, settled through `sink` (no receipt).
    pub(crate) fn open_durable(
        self: &Arc<Self>,
        lane: usize,
        attempts: Vec<Attempt>,
        sink: Arc<dyn AttemptSink>,
    ) -> Arc<Commit> {
        let n = attempts.len();
        self.lanes[lane]
            .committed
            .fetch_add(n as u64, Ordering::AcqRel);
        let mut events = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        for attempt in attempts {
            events.push(attempt.event);
            tokens.push((attempt.id, attempt.attempts));
        }
        Arc::new(Commit {
            receipts: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            tallies: OnceLock::new(),
            ledger: self.clone(),
            events,
            awaited: AtomicBool::new(false),
            done: Notify::new(),
            durable: Some(Durable { tokens, sink }),
            opened: std::time::Instant::now(),
        })
    }

    /// Records a commit of `events` for every adapter at once. Cannot fail and does not wait,
    /// so a commit is recorded whole or (if the caller never gets here) not at all.
    pub(crate) fn open_commit(self: &Arc<Self>, events: Vec<Event>) -> Arc<Commit> {
        let n = events.len();
        for lane in self.lanes.iter() {
            lane.committed.fetch_add(n as u64, Ordering::AcqRel);
        }
        Arc::new(Commit {
            receipts: AtomicUsize::new(1),
            remaining: AtomicUsize::new(n * self.lanes.len()),
            tallies: OnceLock::new(),
            ledger: self.clone(),
            events,
            awaited: AtomicBool::new(false),
            done: Notify::new(),
            durable: None,
            opened: std::time::Instant::now(),
        })
    }

    /// Reports each event as dropped (telemetry) and hands them to the dead-letter hook.
    /// The caller settles them afterwards, so a settled receipt implies the hook has run.
    pub(crate) fn report_dropped(
        &self,
        whose: Destination,
        events: &[Event],
        reason: DropReason,
        attempts: u32,
    ) {
        let (adapter, handler) = match whose {
            Destination::Adapter(i) => (Some(&*self.lanes[i].name), None),
            Destination::Handler(i) => (None, Some(&*self.handlers[i].name)),
        };
        for event in events {
            self.telemetry.emit(&TelemetryEvent::EventDropped {
                event_name: event.name(),
                reason,
                adapter,
                handler,
            });
        }
        self.dead_letter(
            whose,
            events.to_vec(),
            Failure::permanent(format!("dropped: {reason}")),
            attempts,
            DeadLetterCause::Dropped(reason),
        );
    }

    /// The dead-letter step, shared by adapters and handlers: log, then call the hook
    /// (contained: a panicking hook is logged and changes nothing else).
    pub(crate) fn dead_letter(
        &self,
        whose: Destination,
        events: Vec<Event>,
        failure: Failure,
        attempts: u32,
        cause: DeadLetterCause,
    ) {
        let (destination, hook) = match whose {
            Destination::Adapter(i) => (&self.lanes[i].name, &self.lanes[i].dead_letter),
            Destination::Handler(i) => (&self.handlers[i].name, &self.handlers[i].dead_letter),
        };
        if matches!(cause, DeadLetterCause::Failed) {
            tracing::warn!(
                target: "emissions",
                destination = &**destination,
                events = events.len(),
                attempts,
                error = %failure,
                "giving up on events; handing them to the dead-letter hook"
            );
        }
        let Some(hook) = hook else { return };
        let dead = DeadLetter {
            destination: destination.clone(),
            events,
            failure,
            attempts,
            cause,
        };
        if let Err(panic) = panic::contain(|| hook.call(dead)) {
            tracing::error!(target: "emissions", destination = &**destination, panic, "dead-letter hook panicked");
        }
    }

    /// Wakes `Emissions::settled` callers, if any.
    pub(crate) fn progressed(&self) {
        // Pairs with the fence in `watch`: either the watcher sees the counters this thread
        // updated, or this thread sees the watcher.
        fence(Ordering::SeqCst);
        if self.watchers.load(Ordering::Relaxed) > 0 {
            self.progress.notify_waiters();
        }
    }

    /// Waits until every committed event has settled at every adapter and no handler run is
    /// going (or shutdown has closed the books).
    pub(crate) async fn idle(&self) {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let _unwatch = Unwatch(&self.watchers);
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            fence(Ordering::SeqCst);
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    fn is_idle(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let lanes_idle = self.lanes.iter().all(|lane| {
            let counts = lane.counts();
            counts.settled() >= counts.committed
        });
        lanes_idle && self.runs.load(Ordering::Acquire) == 0
    }

    // --- handlers -------------------------------------------------------------------------

    /// Books a run of `handler` as dispatched.
    pub(crate) fn run_dispatched(&self, handler: usize) {
        self.runs.fetch_add(1, Ordering::AcqRel);
        let mut tally = self.handlers[handler].tally();
        if !tally.fenced {
            tally.counts.dispatched += 1;
        }
    }

    /// Books how a run ended (ignored once the handler was fenced by shutdown).
    pub(crate) fn run_ended(&self, handler: usize, end: RunEnd) {
        {
            let mut tally = self.handlers[handler].tally();
            if !tally.fenced {
                let counts = &mut tally.counts;
                match end {
                    RunEnd::Succeeded => counts.succeeded += 1,
                    RunEnd::Ignored => counts.ignored += 1,
                    RunEnd::Failed => counts.failed += 1,
                    RunEnd::Dropped => counts.dropped += 1,
                }
            }
        }
        self.runs.fetch_sub(1, Ordering::AcqRel);
        self.progressed();
    }

    /// Counts every run still outstanding as dropped and ignores what they report later.
    /// Returns how many runs that was.
    pub(crate) fn fence_handlers(&self) -> u64 {
        let mut fenced = 0;
        for book in self.handlers.iter() {
            let mut tally = book.tally();
            let counts = &mut tally.counts;
            let ended = counts.succeeded + counts.ignored + counts.failed + counts.dropped;
            let open = counts.dispatched.saturating_sub(ended);
            counts.dropped += open;
            fenced += open;
            tally.fenced = true;
        }
        fenced
    }

    // --- shutdown and reports ---------------------------------------------------------------

    pub(crate) fn set_shutdown_error(&self, lane: usize, error: &str) {
        let book = &self.lanes[lane];
        tracing::warn!(target: "emissions", adapter = &*book.name, error, "adapter shutdown incomplete");
        let mut slot = book
            .shutdown_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(error.to_owned());
        }
    }

    pub(crate) fn set_deadline_exceeded(&self, lane: usize) {
        self.lanes[lane]
            .deadline_exceeded
            .store(true, Ordering::Release);
    }

    /// Marks the books closed: `Emissions::settled` no longer waits.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.progressed();
    }

    pub(crate) fn report(&self) -> DeliveryReport {
        DeliveryReport {
            adapters: self
                .lanes
                .iter()
                .map(|lane| AdapterReport {
                    name: lane.name.to_string(),
                    counts: lane.counts(),
                    shutdown_error: lane
                        .shutdown_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                    deadline_exceeded: lane.deadline_exceeded.load(Ordering::Acquire),
                })
                .collect(),
            handlers: self
                .handlers
                .iter()
                .map(|book| HandlerReport {
                    name: book.name.to_string(),
                    counts: book.tally().counts,
                })
                .collect(),
        }
    }
}

struct Unwatch<'a>(&'a AtomicUsize);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One recorded commit: its events, shared by every adapter, and how far each adapter is.
#[derive(Debug)]
pub(crate) struct Commit {
    ledger: Arc<Ledger>,
    events: Vec<Event>,
    /// Receipts alive. Starts at 1 (the commit's own receipt) and once 0 stays 0: nobody can
    /// ask for this commit's outcome any more, so `remaining` and `tallies` are left alone
    /// (fire-and-forget commits then cost consumers no shared writes).
    receipts: AtomicUsize,
    /// Event × adapter pairs not yet settled (kept while a receipt is alive).
    remaining: AtomicUsize,
    /// Per adapter, how its events ended; made when the first event settles while a receipt
    /// is alive (most commits' receipts are dropped before that).
    tallies: OnceLock<Box<[Tally]>>,
    /// Whether a receipt waits (settling skips the wake-up otherwise).
    awaited: AtomicBool,
    done: Notify,
    /// Set for attempts handed over by a durable store.
    durable: Option<Durable>,
    /// When it was recorded (for the age of what is pending).
    opened: std::time::Instant,
}

/// What a durable store needs back: per event, its id in the store and the attempts it had
/// before this one, and where to report each event's outcome.
struct Durable {
    tokens: Vec<(u64, u32)>,
    sink: Arc<dyn AttemptSink>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("events", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Commit {
    pub(crate) fn events(&self) -> &[Event] {
        &self.events
    }

    pub(crate) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// When the commit was recorded.
    pub(crate) fn opened(&self) -> std::time::Instant {
        self.opened
    }

    pub(crate) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Reports the outcome of events `range` of a durable commit to its store, after
    /// `attempted` attempts in this round (0 or 1), and counts them as `state` at `lane`.
    pub(crate) fn settle_durable(
        &self,
        lane: usize,
        range: std::ops::Range<usize>,
        attempted: u32,
        state: Final,
        outcome: &AttemptOutcome,
    ) {
        let Some(durable) = &self.durable else {
            return self.settle(lane, state, range.len());
        };
        for &(id, before) in &durable.tokens[range.clone()] {
            let attempts = before.saturating_add(attempted);
            if let Err(panic) = panic::contain(|| durable.sink.outcome(id, attempts, outcome)) {
                tracing::error!(target: "emissions", panic, "durable store's outcome callback panicked");
            }
        }
        self.settle(lane, state, range.len());
    }

    /// Records `n` of this commit's events as having reached `state` at `lane`.
    pub(crate) fn settle(&self, lane: usize, state: Final, n: usize) {
        if n == 0 {
            return;
        }
        if self.receipts.load(Ordering::Acquire) > 0 {
            self.tallies()[lane].add(state, n as u64);
            if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
                fence(Ordering::SeqCst);
                if self.awaited.load(Ordering::Relaxed) {
                    self.done.notify_waiters();
                }
            }
        }
        self.ledger.lanes[lane].settled.add(state, n as u64);
        self.ledger.progressed();
    }

    fn tallies(&self) -> &[Tally] {
        self.tallies.get_or_init(|| {
            (0..self.ledger.lanes.len())
                .map(|_| Tally::default())
                .collect()
        })
    }

    fn add_receipt(&self) {
        self.receipts.fetch_add(1, Ordering::AcqRel);
    }

    fn drop_receipt(&self) {
        self.receipts.fetch_sub(1, Ordering::AcqRel);
    }

    fn is_settled(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.awaited.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.is_settled() {
                return;
            }
            notified.await;
        }
    }

    fn outcome(&self) -> CommitOutcome {
        let committed = self.events.len() as u64;
        CommitOutcome::new(
            self.ledger
                .lanes
                .iter()
                .zip(self.tallies().iter())
                .map(|(lane, tally)| (lane.name.clone(), tally.counts(committed)))
                .collect(),
        )
    }
}
