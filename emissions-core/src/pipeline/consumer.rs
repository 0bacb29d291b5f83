//! [`Consumer`]: the task that feeds one adapter.
//!
//! Each round it builds a batch of up to `max_demand` events — events released from behind
//! their key first, then retries that have come due, then new events from the queue (checked
//! with `interested`, and for ordered adapters admitted one per key) — hands it to
//! `handle_events`, and settles every event of it on its own: delivered ones at once, failed
//! ones into the backlog for their retry (or the dead-letter step when the policy gives up).
//! A failed event never holds the queue: the next round goes on with the events behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::durable::AttemptOutcome;
use crate::ledger::{Final, Ledger};
use crate::options::jitter;
use crate::panic;
use crate::pipeline::retry::{Admission, Backlog};
use crate::pipeline::segment::{Segment, drop_all, fail_all};
use crate::pipeline::{Control, Lane};
use crate::telemetry::{DropReason, TelemetryEvent};
use crate::{Adapter, AdapterOptions, BatchError, Event, Failure, OverflowPolicy};

/// How long consumers may keep draining when the last handle is dropped without `shutdown`.
pub(crate) const DETACHED_GRACE: Duration = Duration::from_secs(10);

tokio::task_local! {
    /// Set while an adapter's `handle_events` runs: commits made there never wait.
    static DELIVERING: ();
}

/// Whether this task is inside an adapter's `handle_events`.
pub(crate) fn delivering() -> bool {
    DELIVERING.try_with(|()| ()).is_ok()
}

/// What a delivery round left the consumer to do.
enum Flow {
    Continue,
    /// The shutdown deadline passed during the call.
    Aborted,
    /// Shutdown gave up on this consumer; it must not touch the ledger again.
    Fenced,
}

/// The task that feeds one adapter.
pub(crate) struct Consumer {
    lane: Arc<Lane>,
    adapter: Box<dyn Adapter>,
    options: AdapterOptions,
    ledger: Arc<Ledger>,
    control: Arc<Control>,
    /// The events of a batch of several commits, being delivered (reused between rounds).
    events: Vec<Event>,
    /// Emptied vectors kept for the next round's batch and new events.
    spare_batch: Vec<Segment>,
    spare_fresh: Vec<Segment>,
}

impl Consumer {
    pub(crate) fn new(
        lane: Arc<Lane>,
        adapter: Box<dyn Adapter>,
        options: AdapterOptions,
        ledger: Arc<Ledger>,
        control: Arc<Control>,
    ) -> Self {
        Consumer {
            lane,
            adapter,
            options,
            ledger,
            control,
            events: Vec::new(),
            spare_batch: Vec::new(),
            spare_fresh: Vec::new(),
        }
    }

    fn name(&self) -> &str {
        self.ledger.lane_name(self.lane.index)
    }

    pub(crate) async fn run(mut self) {
        let drained = loop {
            if self.control.is_aborted() {
                break false;
            }
            let Some((batch, progressed)) = self.next_batch() else {
                return; // fenced
            };
            if !batch.is_empty() {
                match self.deliver(batch).await {
                    Flow::Continue => continue,
                    Flow::Aborted => break false,
                    Flow::Fenced => return,
                }
            }
            if progressed {
                // Everything taken this round was filtered, refused, held behind its key or
                // dropped: look again at once (more may be queued), without hogging the thread.
                tokio::task::consume_budget().await;
                continue;
            }
            if self.lane.inbox.is_drained() && self.lane.backlog().is_empty() {
                break true;
            }
            idle(&self.lane).await;
        };
        if drained {
            self.shut_adapter_down().await;
        } else {
            self.abandon_leftovers();
        }
    }

    /// Builds the next batch, and says whether anything was taken from the queue or the
    /// backlog for it (even if nothing of it is left to deliver); `None` once fenced.
    fn next_batch(&mut self) -> Option<(Vec<Segment>, bool)> {
        let max = self.options.max_demand;
        let mut batch = std::mem::take(&mut self.spare_batch);
        let mut late = Vec::new();
        let (taken, room) = {
            let mut backlog = self.lane.backlog();
            if backlog.is_fenced() {
                return None;
            }
            // The clock only matters when something waits for a retry.
            let now = (backlog.waiting() > 0).then(Instant::now);
            if now.is_some() && self.lane.inbox.is_closed() {
                // Shutting down: a retry due after the deadline can never be made.
                let deadline = self.deadline_or_grace(Instant::now());
                late = backlog.take_due_after(deadline);
                for segment in &late {
                    if let Some(key) = segment.key() {
                        backlog.release(key);
                    }
                }
            }
            let taken = now.map_or(0, |now| backlog.take_due(now, max, &mut batch));
            // Under the block policy, new events are taken only while every one of them could
            // still wait in the backlog: the bound holds exactly.
            let room = self.options.overflow != OverflowPolicy::Block
                || backlog.waiting() + max <= self.options.backlog;
            (taken, room)
        };
        let mut progressed = taken > 0 || !late.is_empty();
        if !late.is_empty() {
            self.ledger.set_deadline_exceeded(self.lane.index);
            self.ledger.set_shutdown_error(
                self.lane.index,
                "retries due after the shutdown deadline were dropped",
            );
            drop_all(late, DropReason::Shutdown);
        }
        if taken < max && room {
            let mut fresh = std::mem::take(&mut self.spare_fresh);
            progressed |= self.lane.inbox.take(max - taken, &mut fresh) > 0;
            for segment in fresh.drain(..) {
                self.admit(segment, &mut batch);
            }
            self.spare_fresh = fresh;
        }
        Some((batch, progressed))
    }

    /// Checks new events with `interested`, and for ordered adapters admits one per key.
    fn admit(&self, mut segment: Segment, batch: &mut Vec<Segment>) {
        let adapter = &self.adapter;
        let interested = |e: &Event| panic::contain(|| adapter.interested(e));
        // Usually every event is wanted: find the first that is not before splitting.
        let mut first = None;
        for (i, event) in segment.events().iter().enumerate() {
            let wanted = interested(event);
            if wanted != Ok(true) {
                first = Some((i, wanted));
                break;
            }
        }
        let Some((unwanted_at, unwanted)) = first else {
            return self.admit_wanted(segment, batch);
        };
        if unwanted_at > 0 {
            self.admit_wanted(segment.split_front(unwanted_at), batch);
        }
        let mut decided = Some(unwanted);
        let runs = segment.split_by(|e| decided.take().unwrap_or_else(|| interested(e)));
        for (wanted, run) in runs {
            match wanted {
                Ok(true) => self.admit_wanted(run, batch),
                Ok(false) => run.settle(Final::Filtered),
                Err(panic) => fail_all(
                    vec![run],
                    Failure::permanent(format!("interested panicked: {panic}")),
                ),
            }
        }
    }

    fn admit_wanted(&self, run: Segment, batch: &mut Vec<Segment>) {
        // A durable store keeps per-key order itself (one attempt of a key at a time).
        if self.options.key_fn().is_some() && !run.is_durable() {
            self.admit_keyed(run, batch);
        } else {
            batch.push(run);
        }
    }

    fn admit_keyed(&self, mut run: Segment, batch: &mut Vec<Segment>) {
        let key_fn = self.options.key_fn().expect("ordered adapter");
        let mut dropped = Vec::new();
        while run.len() > 0 {
            let mut single = run.split_front(1);
            let key = match key_fn.key(&single.events()[0]) {
                Ok(Some(key)) => key,
                Ok(None) => {
                    batch.push(single);
                    continue;
                }
                Err(panic) => {
                    fail_all(
                        vec![single],
                        Failure::permanent(format!("ordering key panicked: {panic}")),
                    );
                    continue;
                }
            };
            let key: Arc<str> = Arc::from(key);
            single.set_key(key.clone());
            let mut backlog = self.lane.backlog();
            // Only an event that would wait behind its key takes a place in the backlog.
            if backlog.is_busy(&key) && backlog.waiting() >= self.options.backlog {
                match self.options.overflow {
                    OverflowPolicy::DropOldest => {
                        let evicted = backlog.evict_oldest_retries(1);
                        if evicted.is_empty() {
                            dropped.push(single);
                            continue;
                        }
                        dropped.extend(evicted);
                    }
                    // Block: cannot happen (new events are taken only while they all fit).
                    OverflowPolicy::Block => {}
                    _ => {
                        dropped.push(single);
                        continue;
                    }
                }
            }
            if let Admission::Go(single) = backlog.admit(single) {
                batch.push(single);
            }
        }
        if !dropped.is_empty() {
            drop_all(dropped, DropReason::BacklogFull);
        }
    }

    /// Hands `batch` to the adapter and settles each event on its own.
    async fn deliver(&mut self, mut batch: Vec<Segment>) -> Flow {
        // One commit's events are lent as they are; several are gathered (one clone each).
        let lent = (batch.len() == 1).then(|| batch[0].shared_events());
        if lent.is_none() {
            self.events
                .extend(batch.iter().flat_map(|s| s.events().iter().cloned()));
        }
        let events: &[Event] = lent.as_deref().unwrap_or(&self.events);
        let count = events.len();
        let started = Instant::now();
        for segment in &mut batch {
            segment.attempted(started);
        }
        self.lane.backlog().send(batch);
        let call = DELIVERING.scope((), panic::contain_async(self.adapter.handle_events(events)));
        // The call first: one that is ready at once never registers for the abort.
        let result = tokio::select! {
            biased;
            result = call => Some(result),
            () = self.control.aborted() => None,
        };
        drop(lent);
        self.events.clear();
        let duration = started.elapsed();
        let batch = {
            let mut backlog = self.lane.backlog();
            if backlog.is_fenced() {
                return Flow::Fenced;
            }
            backlog.returned()
        };
        match result {
            None => {
                // Whether these reached the destination is unknown: dropped, not delivered.
                drop_all(batch, DropReason::Shutdown);
                Flow::Aborted
            }
            Some(result) => {
                self.spare_batch = self.settle(batch, count, result, duration);
                Flow::Continue
            }
        }
    }

    /// Turns the adapter's answer into a final state or a retry for every event of the batch.
    /// Returns the emptied batch vector, for reuse.
    fn settle(
        &self,
        batch: Vec<Segment>,
        count: usize,
        result: Result<Result<(), BatchError>, String>,
        duration: Duration,
    ) -> Vec<Segment> {
        let adapter = self.name();
        // `failed[i]`: which failure (index into `failures`) event `i` of the batch had.
        let (failed, failures): (Vec<Option<usize>>, Vec<Failure>) = match result {
            Ok(Ok(())) => (Vec::new(), Vec::new()),
            Ok(Err(BatchError::Batch(failure))) => (vec![Some(0); count], vec![failure]),
            Err(panic) => (
                vec![Some(0); count],
                vec![Failure::retryable(format!("panicked: {panic}"))],
            ),
            Ok(Err(BatchError::Events(mut list))) => {
                list.sort_by_key(|(index, _)| *index);
                list.dedup_by_key(|(index, _)| *index);
                if let Some((index, _)) = list.iter().find(|(i, _)| *i >= count) {
                    tracing::warn!(target: "emissions", adapter, index, batch = count, "adapter named a failed event outside its batch; ignored");
                    list.retain(|(i, _)| *i < count);
                }
                let mut failed = vec![None; count];
                let mut failures = Vec::with_capacity(list.len());
                for (index, failure) in list {
                    failed[index] = Some(failures.len());
                    failures.push(failure);
                }
                (failed, failures)
            }
        };
        let failed_count = failed.iter().filter(|f| f.is_some()).count();
        if failed_count < count && self.ledger.telemetry().is_observed() {
            // Commit → delivered, per commit of the batch (its events share the commit's time).
            let now = std::time::Instant::now();
            let mut ages = Vec::with_capacity(batch.len());
            let mut index = 0;
            for segment in &batch {
                let n = segment.len();
                let delivered = if failed.is_empty() {
                    n
                } else {
                    failed[index..index + n]
                        .iter()
                        .filter(|f| f.is_none())
                        .count()
                };
                index += n;
                if delivered > 0 {
                    ages.push((now.saturating_duration_since(segment.opened()), delivered));
                }
            }
            let latency = ages.iter().map(|(age, _)| *age).max().unwrap_or_default();
            self.ledger
                .telemetry()
                .emit(&TelemetryEvent::AdapterSuccess {
                    adapter,
                    event_count: count - failed_count,
                    duration,
                    latency,
                    commit_ages: &ages,
                });
        }
        if let Some(first) = failures.first() {
            self.ledger.telemetry().emit(&TelemetryEvent::AdapterError {
                adapter,
                reason: &first.to_string(),
                event_count: failed_count,
                duration,
            });
        }
        self.finish(batch, &failed, failures)
    }

    /// Settles a returned batch: `failed[i]` names the failure of event `i` of the batch
    /// (`None`: delivered). Failed events are scheduled for a retry or given up on.
    fn finish(
        &self,
        mut batch: Vec<Segment>,
        failed: &[Option<usize>],
        failures: Vec<Failure>,
    ) -> Vec<Segment> {
        if failures.is_empty() {
            if self.options.key_fn().is_some() {
                let mut backlog = self.lane.backlog();
                for key in batch.iter().filter_map(Segment::key) {
                    backlog.release(key);
                }
            }
            for segment in batch.drain(..) {
                segment.settle(Final::Delivered);
            }
            return batch;
        }
        let now = Instant::now();
        // One jitter draw per call: events that failed together are retried together.
        let draw = jitter();
        let mut delivered = Vec::new();
        let mut given_up: Vec<Vec<Segment>> = failures.iter().map(|_| Vec::new()).collect();
        let mut overflow = Vec::new();
        let mut durable = Vec::new();
        let mut index = 0;
        {
            let mut backlog = self.lane.backlog();
            for segment in batch.drain(..) {
                let runs = segment.split_by(|_| {
                    index += 1;
                    failed[index - 1]
                });
                for (failure, run) in runs {
                    let Some(group) = failure else {
                        if let Some(key) = run.key() {
                            backlog.release(key);
                        }
                        delivered.push(run);
                        continue;
                    };
                    let failure = &failures[group];
                    if run.is_durable() {
                        // One attempt only: the store retries (rows with a due time).
                        let (state, outcome) = if failure.is_retryable() {
                            let outcome = AttemptOutcome::Retry {
                                error: failure.to_string(),
                                retry_after: failure.retry_after_hint(),
                            };
                            (Final::Deferred, outcome)
                        } else {
                            let outcome = AttemptOutcome::Failed {
                                error: failure.to_string(),
                            };
                            (Final::Failed, outcome)
                        };
                        durable.push((run, state, outcome));
                        continue;
                    }
                    let retry_at = if failure.is_retryable() {
                        run.attempts().next(
                            &self.options.retry,
                            draw,
                            failure.retry_after_hint(),
                            now,
                        )
                    } else {
                        None
                    };
                    match retry_at {
                        Some(at) => self.schedule(&mut backlog, run, at, &mut overflow),
                        None => {
                            if let Some(key) = run.key() {
                                backlog.release(key);
                            }
                            given_up[group].push(run);
                        }
                    }
                }
            }
        }
        for segment in delivered {
            segment.settle(Final::Delivered);
        }
        for (segment, state, outcome) in durable {
            segment.settle_as(state, &outcome);
        }
        for (segments, failure) in given_up.into_iter().zip(failures) {
            if !segments.is_empty() {
                fail_all(segments, failure);
            }
        }
        if !overflow.is_empty() {
            drop_all(overflow, DropReason::BacklogFull);
        }
        batch
    }

    /// Puts `segment` in the backlog for a retry at `at`, applying the overflow policy when
    /// the backlog is full; what does not fit goes to `overflow`.
    fn schedule(
        &self,
        backlog: &mut Backlog,
        segment: Segment,
        at: Instant,
        overflow: &mut Vec<Segment>,
    ) {
        let room = self.options.backlog.saturating_sub(backlog.waiting());
        if segment.len() > room {
            match self.options.overflow {
                OverflowPolicy::DropOldest => {
                    let evicted = backlog.evict_oldest_retries(segment.len() - room);
                    let freed: usize = evicted.iter().map(Segment::len).sum();
                    overflow.extend(evicted);
                    if freed + room < segment.len() {
                        // Not enough older retries to evict: the newest do not fit either.
                        let mut segment = segment;
                        let fits = segment.split_front(freed + room);
                        if let Some(key) = segment.key() {
                            backlog.release(key);
                        }
                        overflow.push(segment);
                        if fits.len() > 0 {
                            backlog.schedule(fits, at);
                        }
                        return;
                    }
                }
                // Block: cannot happen (new events are taken only while they all fit).
                OverflowPolicy::Block => {}
                _ => {
                    let mut segment = segment;
                    let fits = segment.split_front(room);
                    if let Some(key) = segment.key() {
                        backlog.release(key);
                    }
                    overflow.push(segment);
                    if fits.len() > 0 {
                        backlog.schedule(fits, at);
                    }
                    return;
                }
            }
        }
        backlog.schedule(segment, at);
    }

    fn deadline_or_grace(&self, now: Instant) -> Instant {
        self.control
            .deadline()
            .unwrap_or_else(|| now + DETACHED_GRACE)
    }

    /// After a clean drain: the adapter's own `shutdown`, bounded by the deadline.
    async fn shut_adapter_down(&mut self) {
        let deadline = self.deadline_or_grace(Instant::now());
        let late = "shutdown deadline passed during adapter shutdown";
        let shutdown = panic::contain_async(self.adapter.shutdown(deadline));
        let error = tokio::select! {
            biased;
            () = self.control.aborted() => Some(late.to_owned()),
            result = tokio::time::timeout_at(deadline, shutdown) => match result {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(err))) => Some(err.to_string()),
                Ok(Err(panic)) => Some(format!("panicked: {panic}")),
                Err(_) => Some(late.to_owned()),
            },
        };
        if let Some(error) = error {
            self.ledger.set_shutdown_error(self.lane.index, &error);
        }
    }

    /// After the abort: whatever is still queued or waiting is dropped.
    fn abandon_leftovers(&self) {
        let mut leftovers = {
            let mut backlog = self.lane.backlog();
            if backlog.is_fenced() {
                return;
            }
            backlog.take_all()
        };
        leftovers.extend(self.lane.inbox.drain());
        self.ledger.set_deadline_exceeded(self.lane.index);
        self.ledger.set_shutdown_error(
            self.lane.index,
            "shutdown deadline passed before the queue was drained",
        );
        drop_all(leftovers, DropReason::Shutdown);
    }
}

/// Waits for a commit, the next retry, or a signal from shutdown (which wakes the inbox too).
async fn idle(lane: &Lane) {
    let next_due = lane.backlog().next_due();
    tokio::select! {
        biased;
        () = lane.inbox.woken() => {}
        () = sleep_until_opt(next_due) => {}
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
