//! The delivery pipeline: one bounded queue ([`queue::Inbox`]) and one consumer task
//! ([`consumer::Consumer`]) per adapter, fed by an all-or-nothing fan-out.
//!
//! The semantics (ordering, backpressure, retries, shutdown) are documented on the crate root.

pub(crate) mod consumer;
pub(crate) mod queue;
pub(crate) mod retry;
pub(crate) mod segment;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::durable::{Attempt, AttemptSink};
use crate::ledger::Ledger;
use crate::options::KeyFn;
use crate::telemetry::DropReason;
use crate::{AdapterOptions, Error, Event, OverflowPolicy, Receipt, RetryPolicy};
use queue::Inbox;
use retry::Backlog;
use segment::{Segment, drop_all};

/// One adapter's queue and what its consumer holds.
#[derive(Debug)]
pub(crate) struct Lane {
    index: usize,
    inbox: Inbox,
    backlog: Mutex<Backlog>,
    /// The adapter's retry policy (a durable store schedules its retries by it).
    retry: RetryPolicy,
    /// The adapter's ordering key (a durable store orders each key's deliveries by it).
    key: Option<KeyFn>,
}

impl Lane {
    pub(crate) fn new(index: usize, options: &AdapterOptions) -> Self {
        Lane {
            index,
            inbox: Inbox::new(options.capacity, options.overflow),
            backlog: Mutex::new(Backlog::default()),
            retry: options.retry.clone(),
            key: options.key_fn().cloned(),
        }
    }

    pub(crate) fn key_fn(&self) -> Option<&KeyFn> {
        self.key.as_ref()
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Events in this lane's queue, and when the oldest was committed.
    pub(crate) fn pending_in_queue(&self) -> (usize, Option<std::time::Instant>) {
        self.inbox.pending()
    }

    pub(crate) fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shutdown gives up on this lane's consumer (it did not return in time): everything it
    /// holds or has queued is dropped now, and what it reports later is ignored.
    pub(crate) fn fence(&self) {
        let mut abandoned = self.backlog().fence();
        abandoned.extend(self.inbox.drain());
        drop_all(abandoned, DropReason::Shutdown);
    }
}

/// Where the events of a commit come from (a buffer, or `emit_now`'s one event).
pub(crate) trait Source: Sync {
    /// How many events a commit would take now, to reserve room for.
    fn pending(&self) -> Result<usize, Error>;

    /// Takes the events, if there are at most `room` (else `None`: more arrived meanwhile).
    /// Called under the fan-out lock; once it returns events, the commit is recorded.
    fn take(&self, room: usize) -> Result<Option<Vec<Event>>, Error>;
}

/// Signals from shutdown to the consumers: the deadline (only ever brought forward) and the
/// abort once it has passed. Each signal also wakes every consumer (through its inbox), so an
/// idle consumer waits on nothing but its inbox and its next retry.
#[derive(Debug)]
pub(crate) struct Control {
    deadline: watch::Sender<Option<Instant>>,
    abort: CancellationToken,
    lanes: Vec<Arc<Lane>>,
}

impl Control {
    pub(crate) fn new(lanes: Vec<Arc<Lane>>) -> Self {
        Control {
            deadline: watch::Sender::new(None),
            abort: CancellationToken::new(),
            lanes,
        }
    }

    fn wake_consumers(&self) {
        for lane in &self.lanes {
            lane.inbox.wake();
        }
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// Completes once the deadline has passed and consumers must stop.
    pub(crate) async fn aborted(&self) {
        self.abort.cancelled().await;
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// Sets the deadline, or brings it forward; never pushes it back.
    pub(crate) fn shorten(&self, deadline: Instant) {
        let changed = self.deadline.send_if_modified(|current| match current {
            Some(existing) if *existing <= deadline => false,
            _ => {
                *current = Some(deadline);
                true
            }
        });
        if changed {
            self.wake_consumers();
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Option<Instant>> {
        self.deadline.subscribe()
    }

    /// The deadline has passed: consumers drop what they hold and stop.
    pub(crate) fn abort(&self) {
        self.abort.cancel();
        self.wake_consumers();
    }
}

/// The producer side: all-or-nothing fan-out of commits to every adapter's queue.
#[derive(Debug)]
pub(crate) struct Pipeline {
    ledger: Arc<Ledger>,
    lanes: Box<[Arc<Lane>]>,
    /// Lanes with the block policy, whose room a commit waits for before it is recorded.
    blocking: Box<[usize]>,
    /// The fan-out lock (orders commits globally); `true` once closed.
    closed: Mutex<bool>,
}

impl Pipeline {
    pub(crate) fn new(ledger: Arc<Ledger>, lanes: Vec<Arc<Lane>>) -> Self {
        let blocking = lanes
            .iter()
            .filter(|l| l.inbox.policy() == OverflowPolicy::Block)
            .map(|l| l.index)
            .collect();
        Pipeline {
            ledger,
            lanes: lanes.into_boxed_slice(),
            blocking,
            closed: Mutex::new(false),
        }
    }

    pub(crate) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub(crate) fn lanes(&self) -> &[Arc<Lane>] {
        &self.lanes
    }

    fn fanout(&self) -> MutexGuard<'_, bool> {
        self.closed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a commit of `source`'s events for every adapter at once, or not at all.
    ///
    /// Cancel-safe: the only wait is for room in block-policy queues, before anything is taken
    /// from `source` or recorded; dropping the future there commits nothing.
    pub(crate) async fn commit(&self, source: &impl Source) -> Result<Receipt, Error> {
        loop {
            // Without block-policy queues nothing is waited for: take whatever is there.
            let pending = if self.blocking.is_empty() {
                usize::MAX
            } else {
                source.pending()?
            };
            let reserved = self.reserve(pending).await?;
            let mut overflow = Vec::new();
            let receipt = {
                let closed = self.fanout();
                if *closed {
                    return Err(Error::ShutDown);
                }
                let Some(events) = source.take(pending)? else {
                    continue; // more events arrived meanwhile: reserve for them too
                };
                self.record(events, reserved, &mut overflow)
            };
            drop_overflow(overflow);
            return Ok(receipt);
        }
    }

    /// Waits for room for `n` events in every block-policy queue, in lane order (so that two
    /// committers never wait on each other); a commit larger than a queue waits for all of it.
    /// Inside an adapter's `handle_events` it never waits. The places are held by the returned
    /// [`Reservation`] (given back if it is dropped before the commit is recorded).
    async fn reserve(&self, n: usize) -> Result<Reservation<'_>, Error> {
        let mut reservation = Reservation {
            pipeline: self,
            events: n,
            lanes: 0,
        };
        if n == 0 {
            return Ok(reservation);
        }
        let inside_adapter = consumer::delivering();
        for &index in self.blocking.iter() {
            let inbox = &self.lanes[index].inbox;
            let permit = match inbox.try_reserve(n) {
                Some(permit) => permit,
                None if inbox.is_closed() => return Err(Error::ShutDown),
                None if inside_adapter => {
                    return Err(Error::QueueFull {
                        adapter: self.ledger.lane_name(index).to_string(),
                    });
                }
                None => inbox.reserve(n).await.map_err(|_| Error::ShutDown)?,
            };
            permit.forget();
            reservation.lanes += 1;
        }
        Ok(reservation)
    }

    /// Under the fan-out lock: records the commit and queues it on every lane. Never waits.
    fn record(
        &self,
        events: Vec<Event>,
        mut reservation: Reservation<'_>,
        overflow: &mut Vec<(Segment, DropReason)>,
    ) -> Receipt {
        if self.lanes.is_empty() {
            return Receipt::without_adapters(events.len());
        }
        let commit = self.ledger.open_commit(events);
        let reserved = std::mem::take(&mut reservation.lanes) > 0;
        for lane in self.lanes.iter() {
            let places = reserved && lane.inbox.policy() == OverflowPolicy::Block;
            let reserved = places.then_some(reservation.events);
            lane.inbox
                .push(Segment::new(commit.clone(), lane.index), reserved, overflow);
        }
        Receipt::new(commit)
    }

    /// Hands durable attempts to one lane, waiting for room (whatever its overflow policy:
    /// the store still holds them, so nothing is ever dropped on arrival). Cancel-safe: the
    /// wait comes before anything is recorded.
    pub(crate) async fn submit_durable(
        &self,
        lane: usize,
        attempts: Vec<Attempt>,
        sink: Arc<dyn AttemptSink>,
    ) -> Result<(), Error> {
        let n = attempts.len();
        if n == 0 {
            return Ok(());
        }
        let inbox = &self.lanes[lane].inbox;
        let permit = match inbox.try_reserve(n) {
            Some(permit) => permit,
            None => inbox.reserve(n).await.map_err(|_| Error::ShutDown)?,
        };
        permit.forget();
        let commit = self.ledger.open_durable(lane, attempts, sink);
        let mut overflow = Vec::new();
        inbox.push(Segment::new(commit, lane), Some(n), &mut overflow);
        drop_overflow(overflow);
        Ok(())
    }

    /// Stops accepting commits: waiting committers fail with [`Error::ShutDown`] (their
    /// buffers keep their events) and the consumers are woken to drain.
    pub(crate) fn close(&self) {
        let mut closed = self.fanout();
        *closed = true;
        for lane in self.lanes.iter() {
            lane.inbox.close();
        }
    }
}

/// Places waited for in the block-policy queues (the first `lanes` of them) for a commit of
/// `events`; given back if the commit is not recorded (cancelled, or more events arrived).
struct Reservation<'a> {
    pipeline: &'a Pipeline,
    events: usize,
    lanes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        for &index in &self.pipeline.blocking[..self.lanes] {
            self.pipeline.lanes[index].inbox.unreserve(self.events);
        }
    }
}

/// Drops what did not fit at commit time, one dead letter per reason (outside the fan-out
/// lock: the dead-letter hook is user code).
fn drop_overflow(overflow: Vec<(Segment, DropReason)>) {
    if overflow.is_empty() {
        return;
    }
    let mut by_reason: Vec<(DropReason, Vec<Segment>)> = Vec::new();
    for (segment, reason) in overflow {
        match by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, segments)) => segments.push(segment),
            None => by_reason.push((reason, vec![segment])),
        }
    }
    for (reason, segments) in by_reason {
        drop_all(segments, reason);
    }
}
