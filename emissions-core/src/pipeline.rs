//! The delivery pipeline: one bounded flume queue and one consumer task per adapter.
//!
//! # Ordering
//!
//! A commit takes the pipeline's fan-out lock and pushes its events, in emit order, onto every
//! adapter's queue before the next commit may start. So the events of one commit are contiguous
//! in every queue, and every adapter sees commits in one global order.
//!
//! # Backpressure
//!
//! Queues are independent. A full queue applies its adapter's [`OverflowPolicy`]: drop the
//! newest events (default), evict the oldest, or block the committer. Every drop is counted and
//! reported as `emissions.event.dropped`.
//!
//! # Batching and retries
//!
//! A consumer waits for one event, then takes whatever else is queued, up to `max_demand`
//! (it never waits to fill a batch). Events the adapter is not interested in are counted as
//! filtered. Failed events are retried under the adapter's [`RetryPolicy`](crate::RetryPolicy),
//! the failed ones only and in order, before the consumer takes the next batch; what still fails
//! goes to the dead-letter hook.
//!
//! # Shutdown
//!
//! Closing drops the senders: consumers drain what is queued, then call the adapter's
//! `shutdown`. When the deadline passes, consumers stop; whatever is still queued or in flight
//! is counted as dropped (reason `shutdown`). An [`Item`] that is dropped without being settled
//! counts itself as dropped, so nothing can leave the pipeline unaccounted.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::options::DeadLetter;
use crate::receipt::{CommitTracker, Counters, Settled};
use crate::telemetry::{DropReason, Telemetry, TelemetryEvent};
use crate::{Adapter, AdapterOptions, BatchError, Error, Event, Failure, OverflowPolicy, Receipt};

/// How long consumers may keep draining when the last handle is dropped without `shutdown`.
const DETACHED_GRACE: Duration = Duration::from_secs(10);

/// State shared by the pipeline, the consumers and every commit tracker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) slots: Box<[Slot]>,
    pub(crate) telemetry: Telemetry,
    /// Woken whenever events settle, for `Emissions::settled`.
    pub(crate) progress: Notify,
    /// How many `Emissions::settled` calls are waiting: with none, settling skips the wake-up
    /// (whose lock the consumers would otherwise contend on for every batch).
    pub(crate) progress_watchers: AtomicUsize,
}

impl Shared {
    /// Wakes `Emissions::settled` callers, if any.
    pub(crate) fn progressed(&self) {
        // Pairs with the fence in `watch_progress`: either the watcher sees the counters this
        // thread updated, or this thread sees the watcher.
        fence(Ordering::SeqCst);
        if self.progress_watchers.load(Ordering::Relaxed) > 0 {
            self.progress.notify_waiters();
        }
    }

    /// Registers a watcher until the guard drops; call before reading the counters.
    pub(crate) fn watch_progress(&self) -> ProgressWatch<'_> {
        self.progress_watchers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        ProgressWatch(self)
    }
}

/// See [`Shared::watch_progress`].
#[derive(Debug)]
pub(crate) struct ProgressWatch<'a>(&'a Shared);

impl Drop for ProgressWatch<'_> {
    fn drop(&mut self) {
        self.0.progress_watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-adapter accounting.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) counters: Counters,
    pub(crate) shutdown_error: Mutex<Option<String>>,
    pub(crate) deadline_exceeded: AtomicBool,
}

impl Slot {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Slot {
            name,
            counters: Counters::default(),
            shutdown_error: Mutex::new(None),
            deadline_exceeded: AtomicBool::new(false),
        }
    }
}

/// One event on its way to one adapter.
#[derive(Debug)]
pub(crate) struct Item {
    /// `None` only while the event is lent to the adapter's call (see [`Lent`]).
    event: Option<Event>,
    tracker: Arc<CommitTracker>,
    adapter: usize,
    settled: bool,
}

impl Item {
    fn event(&self) -> &Event {
        self.event
            .as_ref()
            .expect("an item's event is only away during the adapter call")
    }

    fn settle(mut self, state: Settled) {
        self.settled = true;
        self.tracker.record(self.adapter, state, 1);
    }

    /// Settles many items, recording each run of items from one commit at once (fewer atomic
    /// operations on shared counters on the hot path).
    fn settle_all(items: Vec<Item>, state: Settled) {
        let mut run: Option<(Arc<CommitTracker>, usize, usize)> = None;
        for mut item in items {
            item.settled = true;
            match &mut run {
                Some((tracker, _, count)) if Arc::ptr_eq(tracker, &item.tracker) => *count += 1,
                _ => {
                    if let Some((tracker, adapter, count)) = run.take() {
                        tracker.record(adapter, state, count);
                    }
                    run = Some((item.tracker.clone(), item.adapter, 1));
                }
            }
        }
        if let Some((tracker, adapter, count)) = run {
            tracker.record(adapter, state, count);
        }
    }

    fn drop_with(mut self, reason: DropReason) {
        self.report_drop(reason);
    }

    fn report_drop(&mut self, reason: DropReason) {
        self.settled = true;
        let shared = &self.tracker.shared;
        shared.telemetry.emit(&TelemetryEvent::EventDropped {
            event_name: self.event.as_ref().map_or("", |e| e.name()),
            reason,
            adapter: Some(&shared.slots[self.adapter].name),
            handler: None,
        });
        self.tracker.record(self.adapter, Settled::Dropped, 1);
        shared.progressed();
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if !self.settled {
            // Abandoned: a cancelled blocking commit, an aborted consumer, a queue freed at exit.
            self.report_drop(DropReason::Shutdown);
        }
    }
}

/// A batch's events moved out of their items for the adapter call (no reference-count
/// traffic on events that every adapter shares); they go back when the call is over, and on
/// any drop, so an abandoned item still reports its event's name.
struct Lent {
    events: Vec<Event>,
    items: Vec<Item>,
}

impl Lent {
    fn new(mut items: Vec<Item>) -> Self {
        let events = items
            .iter_mut()
            .map(|item| {
                item.event
                    .take()
                    .expect("an item's event is only away during the adapter call")
            })
            .collect();
        Lent { events, items }
    }

    fn restore(mut self) -> Vec<Item> {
        self.put_back();
        std::mem::take(&mut self.items)
    }

    fn put_back(&mut self) {
        for (item, event) in self.items.iter_mut().zip(self.events.drain(..)) {
            item.event = Some(event);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// The producer side: fan-out to the adapters' queues.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) shared: Arc<Shared>,
    /// `None` once closed. The lock orders commits globally.
    queues: tokio::sync::Mutex<Option<Vec<flume::Sender<Item>>>>,
    policies: Box<[OverflowPolicy]>,
    /// Receiving ends kept for eviction (drop-oldest) and the final drain.
    receivers: Box<[flume::Receiver<Item>]>,
    /// Cancelled when closing, to release committers blocked on a full queue.
    closing: CancellationToken,
}

/// Signals from `shutdown` to the consumers.
#[derive(Debug, Default)]
pub(crate) struct Control {
    deadline: Mutex<Option<Instant>>,
    pub(crate) abort: CancellationToken,
}

impl Control {
    pub(crate) fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pipeline {
    /// Builds the queues; returns the pipeline and each adapter's receiver, in order.
    pub(crate) fn new(
        names: Vec<Arc<str>>,
        options: &[AdapterOptions],
    ) -> (Self, Vec<flume::Receiver<Item>>) {
        let shared = Arc::new(Shared {
            slots: names.into_iter().map(Slot::new).collect(),
            telemetry: Telemetry::default(),
            progress: Notify::new(),
            progress_watchers: AtomicUsize::new(0),
        });
        let (senders, receivers): (Vec<_>, Vec<_>) =
            options.iter().map(|o| flume::bounded(o.capacity)).unzip();
        let pipeline = Pipeline {
            shared,
            queues: tokio::sync::Mutex::new(Some(senders)),
            policies: options.iter().map(|o| o.overflow).collect(),
            receivers: receivers.clone().into_boxed_slice(),
            closing: CancellationToken::new(),
        };
        (pipeline, receivers)
    }

    /// Hands a commit's events to every adapter. `take` runs under the fan-out lock, so
    /// whoever takes events first reaches every queue first; it is not called once closed.
    pub(crate) async fn dispatch(
        &self,
        take: impl FnOnce() -> Result<Vec<Event>, Error>,
    ) -> Result<Receipt, Error> {
        let guard = self.queues.lock().await;
        let Some(queues) = guard.as_ref() else {
            return Err(Error::ShutDown);
        };
        let events = take()?;
        let tracker = Arc::new(CommitTracker::new(self.shared.clone(), events.len()));
        for (adapter, tx) in queues.iter().enumerate() {
            self.shared.slots[adapter]
                .counters
                .commit(events.len() as u64);
            for event in &events {
                let item = Item {
                    event: Some(event.clone()),
                    tracker: tracker.clone(),
                    adapter,
                    settled: false,
                };
                self.enqueue(adapter, tx, item).await;
            }
        }
        drop(guard);
        Ok(Receipt::new(tracker))
    }

    async fn enqueue(&self, adapter: usize, tx: &flume::Sender<Item>, item: Item) {
        let full = match tx.try_send(item) {
            Ok(()) => return,
            Err(flume::TrySendError::Disconnected(item)) => {
                return item.drop_with(DropReason::Shutdown);
            }
            Err(flume::TrySendError::Full(item)) => item,
        };
        match self.policies[adapter] {
            OverflowPolicy::DropNewest => full.drop_with(DropReason::QueueFull),
            OverflowPolicy::DropOldest => {
                let mut item = full;
                loop {
                    if let Ok(oldest) = self.receivers[adapter].try_recv() {
                        oldest.drop_with(DropReason::QueueEvicted);
                    }
                    match tx.try_send(item) {
                        Ok(()) => return,
                        Err(flume::TrySendError::Full(back)) => item = back,
                        Err(flume::TrySendError::Disconnected(back)) => {
                            return back.drop_with(DropReason::Shutdown);
                        }
                    }
                }
            }
            OverflowPolicy::Block => {
                tokio::select! {
                    biased;
                    // The item is inside the send future: dropping it counts it as dropped.
                    () = self.closing.cancelled() => {}
                    sent = tx.send_async(full) => {
                        if let Err(err) = sent {
                            err.into_inner().drop_with(DropReason::Shutdown);
                        }
                    }
                }
            }
        }
    }

    /// Stops accepting: releases blocked committers and drops the senders.
    pub(crate) async fn close(&self) {
        self.closing.cancel();
        self.queues.lock().await.take();
    }

    /// Counts whatever is still queued as dropped (after consumers have stopped).
    pub(crate) fn drain_leftovers(&self) {
        for rx in self.receivers.iter() {
            for item in rx.drain() {
                item.drop_with(DropReason::Shutdown);
            }
        }
    }
}

/// The task that feeds one adapter.
pub(crate) struct Consumer {
    pub(crate) index: usize,
    pub(crate) adapter: Box<dyn Adapter>,
    pub(crate) rx: flume::Receiver<Item>,
    pub(crate) options: AdapterOptions,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: Arc<Control>,
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl Consumer {
    fn slot(&self) -> &Slot {
        &self.shared.slots[self.index]
    }

    pub(crate) async fn run(mut self) {
        let abort = self.control.abort.clone();
        loop {
            let first = tokio::select! {
                biased;
                () = abort.cancelled() => break,
                received = self.rx.recv_async() => match received {
                    Ok(item) => item,
                    Err(_) => break, // closed and drained
                },
            };
            let mut batch = Vec::with_capacity(self.options.max_demand.min(self.rx.len() + 1));
            batch.push(first);
            while batch.len() < self.options.max_demand {
                match self.rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if !self.process(batch, &abort).await {
                break;
            }
        }
        if abort.is_cancelled() {
            self.slot().deadline_exceeded.store(true, Ordering::Release);
            for item in self.rx.drain() {
                item.drop_with(DropReason::Shutdown);
            }
            self.set_shutdown_error("shutdown deadline passed before the queue was drained");
            return;
        }
        let deadline = self
            .control
            .deadline()
            .unwrap_or_else(|| Instant::now() + DETACHED_GRACE);
        let shutdown = AssertUnwindSafe(self.adapter.shutdown(deadline)).catch_unwind();
        let error = tokio::select! {
            biased;
            () = abort.cancelled() => Some("shutdown deadline passed during adapter shutdown".to_owned()),
            result = tokio::time::timeout_at(deadline, shutdown) => match result {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(err))) => Some(err.to_string()),
                Ok(Err(panic)) => Some(format!("panicked: {}", panic_message(&*panic))),
                Err(_) => Some("shutdown deadline passed during adapter shutdown".to_owned()),
            },
        };
        if let Some(error) = error {
            self.set_shutdown_error(&error);
        }
    }

    fn set_shutdown_error(&self, error: &str) {
        tracing::warn!(target: "emissions", adapter = &*self.slot().name, error, "adapter shutdown incomplete");
        *self
            .slot()
            .shutdown_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
    }

    /// Filters and delivers one batch. Returns false when aborted.
    async fn process(&mut self, batch: Vec<Item>, abort: &CancellationToken) -> bool {
        let mut wanted = Vec::with_capacity(batch.len());
        for item in batch {
            let adapter = &self.adapter;
            match std::panic::catch_unwind(AssertUnwindSafe(|| adapter.interested(item.event()))) {
                Ok(true) => wanted.push(item),
                Ok(false) => item.settle(Settled::Filtered),
                Err(panic) => {
                    let failure = Failure::permanent(format!(
                        "interested panicked: {}",
                        panic_message(&*panic)
                    ));
                    self.dead_letter(vec![item], failure, 1);
                }
            }
        }
        self.shared.progressed();
        if wanted.is_empty() {
            return true;
        }
        self.deliver(wanted, abort).await
    }

    async fn deliver(&mut self, mut pending: Vec<Item>, abort: &CancellationToken) -> bool {
        let policy = self.options.retry.clone();
        let first_attempt = Instant::now();
        let mut attempt = 1u32;
        loop {
            let lent = Lent::new(std::mem::take(&mut pending));
            let started = Instant::now();
            let call = AssertUnwindSafe(self.adapter.handle_events(&lent.events)).catch_unwind();
            let result = tokio::select! {
                biased;
                () = abort.cancelled() => None,
                result = call => Some(result),
            };
            pending = lent.restore();
            let Some(result) = result else {
                for item in pending {
                    item.drop_with(DropReason::Shutdown);
                }
                return false;
            };
            let duration = started.elapsed();
            let failures = self.classify(pending, result, duration);
            self.shared.progressed();

            // The destination's Retry-After, when longer, overrides the policy's delay.
            let hint = failures
                .iter()
                .filter(|(_, f)| f.is_retryable())
                .filter_map(|(_, f)| f.retry_after_hint())
                .max()
                .unwrap_or_default();
            let delay = policy.delay(attempt).max(hint);
            let out_of_time = policy
                .elapsed_limit()
                .is_some_and(|limit| first_attempt.elapsed() + delay > limit);
            let exhausted = attempt >= policy.attempts() || out_of_time;
            let mut retry = Vec::new();
            for (items, failure) in failures {
                if failure.is_retryable() && !exhausted {
                    retry.extend(items);
                } else {
                    self.dead_letter(items, failure, attempt);
                }
            }
            if retry.is_empty() {
                return true;
            }
            tokio::select! {
                biased;
                () = abort.cancelled() => {
                    for item in retry {
                        item.drop_with(DropReason::Shutdown);
                    }
                    return false;
                }
                () = tokio::time::sleep(delay) => {}
            }
            pending = retry;
            attempt += 1;
        }
    }

    /// Settles delivered events, reports telemetry, and returns the failed groups in order.
    fn classify(
        &self,
        pending: Vec<Item>,
        result: std::thread::Result<Result<(), BatchError>>,
        duration: Duration,
    ) -> Vec<(Vec<Item>, Failure)> {
        let adapter = &*self.slot().name;
        let telemetry = &self.shared.telemetry;
        let count = pending.len();
        let whole_batch = |pending: Vec<Item>, failure: Failure| {
            telemetry.emit(&TelemetryEvent::AdapterError {
                adapter,
                reason: &failure.to_string(),
                event_count: count,
                duration,
            });
            vec![(pending, failure)]
        };
        match result {
            Ok(Ok(())) => {
                telemetry.emit(&TelemetryEvent::AdapterSuccess {
                    adapter,
                    event_count: count,
                    duration,
                });
                Item::settle_all(pending, Settled::Delivered);
                Vec::new()
            }
            Ok(Err(BatchError::Batch(failure))) => whole_batch(pending, failure),
            Err(panic) => whole_batch(
                pending,
                Failure::retryable(format!("panicked: {}", panic_message(&*panic))),
            ),
            Ok(Err(BatchError::Events(mut list))) => {
                list.sort_by_key(|(index, _)| *index);
                list.dedup_by_key(|(index, _)| *index);
                if let Some((index, _)) = list.iter().find(|(i, _)| *i >= count) {
                    tracing::warn!(target: "emissions", adapter, index, batch = count, "adapter named a failed event outside its batch; ignored");
                    list.retain(|(i, _)| *i < count);
                }
                let mut slots: Vec<Option<Item>> = pending.into_iter().map(Some).collect();
                let mut groups = Vec::with_capacity(list.len());
                for (index, failure) in list {
                    if let Some(item) = slots[index].take() {
                        groups.push((vec![item], failure));
                    }
                }
                let delivered: Vec<Item> = slots.into_iter().flatten().collect();
                if !delivered.is_empty() {
                    telemetry.emit(&TelemetryEvent::AdapterSuccess {
                        adapter,
                        event_count: delivered.len(),
                        duration,
                    });
                    for item in delivered {
                        item.settle(Settled::Delivered);
                    }
                }
                if let Some((_, first)) = groups.first() {
                    telemetry.emit(&TelemetryEvent::AdapterError {
                        adapter,
                        reason: &first.to_string(),
                        event_count: groups.len(),
                        duration,
                    });
                }
                groups
            }
        }
    }

    /// Hands failed events to the dead-letter hook, then counts them as failed.
    fn dead_letter(&self, items: Vec<Item>, failure: Failure, attempts: u32) {
        let slot = self.slot();
        tracing::warn!(
            target: "emissions",
            adapter = &*slot.name,
            events = items.len(),
            attempts,
            error = %failure,
            "events failed; handing them to the dead-letter hook"
        );
        if let Some(hook) = &self.options.dead_letter {
            let dead = DeadLetter {
                destination: slot.name.clone(),
                events: items.iter().map(|i| i.event().clone()).collect(),
                failure,
                attempts,
            };
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook.call(dead))) {
                tracing::error!(target: "emissions", adapter = &*slot.name, panic = panic_message(&*panic), "dead-letter hook panicked");
            }
        }
        for item in items {
            item.settle(Settled::Failed);
        }
        self.shared.progressed();
    }
}
