//! The relay: claims due deliveries from the store, hands them to the adapters' own queues
//! through the engine's durable lanes, and writes every outcome back — a retry as a row with a
//! due time, never an in-memory sleep.
//!
//! Two tasks per outbox. The **relay** loops: for each destination with room (fewer than
//! `max_in_flight` deliveries claimed and not yet acknowledged), claim up to `batch_size` due
//! deliveries in a short transaction of its own, read their events, submit them; when nothing
//! is claimable, sleep until a retry it scheduled comes due, a commit wakes it (in-process, or
//! PostgreSQL `NOTIFY` from any instance), an outcome is written, or the poll interval passes
//! (which finds retries scheduled elsewhere and expired leases). The **acknowledgement
//! writer** takes the outcomes the engine reports (on its consumers' tasks, through an
//! [`AttemptSink`]) and applies them in batched transactions, each only where the fence still
//! matches. No database transaction is ever open while a delivery is in progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::Emissions;
use emissions_core::durable::{Attempt, AttemptOutcome, AttemptSink};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::outbox::Inner;
use crate::store::{Ack, AckKind, Claimed, now_ms};

/// Most outcomes applied in one transaction.
const ACK_BATCH: usize = 500;

/// A delivery this instance holds claimed.
#[derive(Clone, Copy, Debug)]
struct Claim {
    destination: usize,
    event_seq: i64,
    fence: i64,
    first_attempt_at_ms: Option<i64>,
    /// Handed to the engine: from then on an attempt may be under way, and a release without
    /// an outcome leaves a possible duplicate.
    handed_over: bool,
}

/// What the relay and the acknowledgement writer share.
struct Shared {
    claims: Mutex<HashMap<i64, Claim>>,
    /// Per destination: claimed and not yet acknowledged.
    in_flight: Vec<AtomicUsize>,
    /// Outcomes reported and not yet written.
    unwritten: AtomicUsize,
    /// The earliest retry this instance scheduled and has not claimed since (ms; `i64::MAX`
    /// for none): when the relay next has something to do. Retries scheduled elsewhere, or
    /// before a restart, and expired leases are found by the poll.
    next_retry_ms: AtomicI64,
    written: Notify,
}

/// Where the engine reports outcomes: into the acknowledgement writer's channel.
struct Outcomes {
    tx: mpsc::UnboundedSender<(u64, u32, AttemptOutcome)>,
    shared: Arc<Shared>,
}

impl AttemptSink for Outcomes {
    fn outcome(&self, id: u64, attempts: u32, outcome: &AttemptOutcome) {
        self.shared.unwritten.fetch_add(1, Ordering::AcqRel);
        if self.tx.send((id, attempts, outcome.clone())).is_err() {
            // The writer is gone (shutting down past the deadline): the lease will expire.
            self.shared.unwritten.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The running relay; [`finish`](RelayHandle::finish) stops it at shutdown.
pub(crate) struct RelayHandle {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    relay: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// One per destination: hands claimed deliveries to its lane.
    submitters: Vec<JoinHandle<()>>,
    renewer: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops claiming, writes every outcome already reported (the engine's consumers have
    /// ended by now), and releases whatever this instance still holds claimed, so that it is
    /// due again at once for the next instance — all bounded by `deadline`. A delivery that
    /// was handed to the engine and has no outcome may have reached its destination: it is
    /// released marked so, and the next claim counts it as a re-delivery.
    pub(crate) async fn finish(self, deadline: Instant) {
        let _ = tokio::time::timeout_at(deadline, self.relay).await;
        for task in &self.submitters {
            task.abort();
        }
        loop {
            let written = self.shared.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.shared.unwritten.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                tracing::warn!(target: "emissions::outbox", "outcomes not written before the deadline; their deliveries are released as possibly delivered");
                break;
            }
        }
        self.writer.abort();
        self.renewer.abort();
        let (unsent, uncertain): (Vec<i64>, Vec<i64>) = {
            let held = self.shared.claims.lock().unwrap_or_else(|e| e.into_inner());
            let (unsent, uncertain): (Vec<_>, Vec<_>) =
                held.iter().partition(|(_, claim)| !claim.handed_over);
            (
                unsent.into_iter().map(|(id, _)| *id).collect(),
                uncertain.into_iter().map(|(id, _)| *id).collect(),
            )
        };
        let owner = &self.inner.owner;
        for (ids, uncertain) in [(unsent, false), (uncertain, true)] {
            if ids.is_empty() {
                continue;
            }
            match self.inner.store.release(owner, &ids, uncertain).await {
                Ok(n) => {
                    tracing::debug!(target: "emissions::outbox", deliveries = n, uncertain, "released claims at shutdown")
                }
                Err(err) => {
                    tracing::warn!(target: "emissions::outbox", error = %err, "could not release claims; their leases will expire")
                }
            }
        }
    }
}

pub(crate) fn start(inner: Arc<Inner>, emissions: &Emissions) -> RelayHandle {
    let _ = emissions;
    let shared = Arc::new(Shared {
        claims: Mutex::new(HashMap::new()),
        in_flight: inner
            .destinations()
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect(),
        unwritten: AtomicUsize::new(0),
        next_retry_ms: AtomicI64::new(i64::MAX),
        written: Notify::new(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: Arc<dyn AttemptSink> = Arc::new(Outcomes {
        tx,
        shared: shared.clone(),
    });
    let writer = tokio::spawn(write_outcomes(inner.clone(), shared.clone(), rx));
    // Each destination's claims go to its lane from a task of its own: a destination whose
    // queue is full waits there, and the relay goes on claiming for the others.
    let (handoffs, submitters): (Vec<_>, Vec<_>) = (0..inner.destinations().len())
        .map(|index| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(hand_over(
                inner.clone(),
                shared.clone(),
                sink.clone(),
                index,
                rx,
            ));
            (tx, task)
        })
        .unzip();
    let renewer = tokio::spawn(renew_leases(inner.clone(), shared.clone()));
    let relay = tokio::spawn(relay(inner.clone(), shared.clone(), sink, handoffs));
    RelayHandle {
        inner,
        shared,
        relay,
        writer,
        submitters,
        renewer,
    }
}

/// Claims handed from the relay to a destination's submitter.
type Handoff = mpsc::UnboundedSender<Vec<Attempt>>;

/// Hands one destination's claimed deliveries to its lane, waiting for room in its queue.
async fn hand_over(
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    sink: Arc<dyn AttemptSink>,
    destination: usize,
    mut rx: mpsc::UnboundedReceiver<Vec<Attempt>>,
) {
    let lane = &inner.destinations()[destination].lane;
    while let Some(attempts) = rx.recv().await {
        let ids: Vec<i64> = attempts
            .iter()
            .map(|a| i64::try_from(a.id).unwrap_or_default())
            .collect();
        {
            // Marked before the engine can start on them.
            let mut held = shared.claims.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                if let Some(claim) = held.get_mut(id) {
                    claim.handed_over = true;
                }
            }
        }
        if lane.submit(attempts, sink.clone()).await.is_err() {
            // The instance is shutting down: not handed over, released at shutdown.
            let mut held = shared.claims.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                if let Some(claim) = held.get_mut(id) {
                    claim.handed_over = false;
                }
            }
            return;
        }
    }
}

/// Extends the leases of the deliveries this instance has claimed but not yet handed to their
/// adapter's queue (they wait here for room), every third of the lease, so that no other
/// instance takes over work this one has not started. Once handed over, a delivery has what
/// is left of its lease — at least two thirds of it — for its attempt: a delivery that takes
/// longer may be taken over (and is counted as a re-delivery), and a stalled or dead
/// instance's deliveries are.
async fn renew_leases(inner: Arc<Inner>, shared: Arc<Shared>) {
    let every = (inner.config.lease / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids: Vec<i64> = shared
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, claim)| !claim.handed_over)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        if let Err(err) = inner
            .store
            .renew(&inner.owner, &ids, inner.config.lease)
            .await
        {
            tracing::warn!(target: "emissions::outbox", error = %err, "renewing leases failed; retrying at the next tick");
        }
    }
}

async fn relay(
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    sink: Arc<dyn AttemptSink>,
    handoffs: Vec<Handoff>,
) {
    let config = &inner.config;
    #[cfg(feature = "postgres")]
    let mut listener = listen(&inner).await;
    warn_unserved(&inner).await;
    let mut last_purge = Instant::now();
    let mut failing_since: Option<Instant> = None;
    // Destinations whose last claim found fewer deliveries than it asked for: nothing more
    // can be due for them until something happens (a commit, an outcome, a retry or lease
    // coming due, the poll), so they are not asked again before the relay is woken. This
    // keeps a backlog that is blocked behind its keys from being scanned back to back.
    let mut exhausted = vec![false; inner.destinations().len()];
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        let mut claimed_any = false;
        let mut failed = false;
        for (index, destination) in inner.destinations().iter().enumerate() {
            let held = shared.in_flight[index].load(Ordering::Acquire);
            let room = config.max_in_flight.saturating_sub(held);
            if room == 0 || exhausted[index] {
                continue;
            }
            let lane = &destination.lane;
            let limit = room.min(config.batch_size);
            let claims = match inner
                .store
                .claim(
                    lane.adapter(),
                    lane.is_ordered(),
                    limit,
                    // The oldest deliveries include those in flight here (leased ones stay
                    // pending): look past them.
                    config.max_in_flight + 4 * config.batch_size,
                    &inner.owner,
                    config.lease,
                )
                .await
            {
                Ok(claims) => claims,
                Err(err) => {
                    if failing_since.is_none() {
                        tracing::error!(target: "emissions::outbox", error = %err, "claiming deliveries failed; retrying");
                    }
                    failed = true;
                    break;
                }
            };
            exhausted[index] = claims.len() < limit;
            if claims.is_empty() {
                continue;
            }
            claimed_any = true;
            if !submit(&inner, &shared, &sink, &handoffs[index], index, claims) {
                return; // the instance is shutting down
            }
        }
        if failed {
            failing_since.get_or_insert_with(Instant::now);
            pause(&inner, config.poll_interval.min(Duration::from_secs(1))).await;
            continue;
        }
        if failing_since.take().is_some() {
            tracing::info!(target: "emissions::outbox", "claiming deliveries works again");
        }
        if claimed_any {
            continue;
        }
        if last_purge.elapsed() >= config.purge_interval {
            last_purge = Instant::now();
            if let Err(err) = inner.store.purge(config.retention, 1000).await {
                tracing::warn!(target: "emissions::outbox", error = %err, "cleanup failed");
            }
        }
        // Nothing to claim now: sleep until a retry of ours comes due, a commit or an outcome
        // wakes us, or the poll.
        let next_retry = shared.next_retry_ms.load(Ordering::Acquire);
        let until_retry = u64::try_from(next_retry.saturating_sub(now_ms())).unwrap_or(0);
        let wait = Duration::from_millis(until_retry).min(config.poll_interval);
        #[cfg(feature = "postgres")]
        {
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => {
                        if listener.recv().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = inner.stop.cancelled() => return,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = notified => {}
            }
        }
        #[cfg(not(feature = "postgres"))]
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        exhausted.fill(false);
        if next_retry <= now_ms() {
            // Due: the claims that follow take it (and any retry scheduled since stays).
            let _ = shared.next_retry_ms.compare_exchange(
                next_retry,
                i64::MAX,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

/// Names the destinations with deliveries waiting that no adapter of this instance serves (an
/// adapter removed, or renamed, since they were committed): they wait for an instance that
/// has it.
async fn warn_unserved(inner: &Inner) {
    let Ok(stats) = inner.store.stats().await else {
        return;
    };
    let served: Vec<&str> = inner
        .destinations()
        .iter()
        .map(|d| d.lane.adapter())
        .collect();
    for stats in stats {
        let waiting = stats.pending + stats.in_flight;
        if waiting > 0 && !served.contains(&stats.destination.as_str()) {
            tracing::warn!(
                target: "emissions::outbox",
                destination = %stats.destination,
                deliveries = waiting,
                "deliveries wait for a destination no adapter of this instance serves; register it again to deliver them"
            );
        }
    }
}

/// Waits `delay` (or until stopped).
async fn pause(inner: &Inner, delay: Duration) {
    tokio::select! {
        () = inner.stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// `LISTEN`s on the outbox channel, when the store is PostgreSQL and the connection allows it
/// (behind a transaction-mode pooler it does not: the relay then polls).
#[cfg(feature = "postgres")]
async fn listen(inner: &Inner) -> Option<sqlx::postgres::PgListener> {
    #[allow(irrefutable_let_patterns)] // without the `sqlite` feature
    let crate::store::Store::Postgres(pool) = &inner.store else {
        return None;
    };
    let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(target: "emissions::outbox", error = %err, "LISTEN unavailable; polling");
            return None;
        }
    };
    match listener.listen(&inner.config.channel).await {
        Ok(()) => Some(listener),
        Err(err) => {
            tracing::warn!(target: "emissions::outbox", error = %err, "LISTEN unavailable; polling");
            None
        }
    }
}

/// Registers the claims and passes their events on to the destination's submitter. Returns
/// false once the instance is shutting down.
fn submit(
    inner: &Inner,
    shared: &Shared,
    sink: &Arc<dyn AttemptSink>,
    handoff: &Handoff,
    destination: usize,
    claims: Vec<Claimed>,
) -> bool {
    let mut fresh = Vec::with_capacity(claims.len());
    {
        let mut held = shared.claims.lock().unwrap_or_else(|e| e.into_inner());
        for claim in claims {
            if let Some(mine) = held.get_mut(&claim.id) {
                // Claimed again by this instance (its lease ran out while it was stalled):
                // the attempt under way goes on, and its outcome is written under the new
                // fence. Not a second attempt, and not a second slot.
                mine.fence = claim.fence;
                continue;
            }
            held.insert(
                claim.id,
                Claim {
                    destination,
                    event_seq: claim.event_seq,
                    fence: claim.fence,
                    first_attempt_at_ms: claim.first_attempt_at_ms,
                    handed_over: false,
                },
            );
            fresh.push(claim);
        }
    }
    shared.in_flight[destination].fetch_add(fresh.len(), Ordering::AcqRel);
    let takeovers = fresh.iter().filter(|c| c.redelivery).count() as u64;
    if takeovers > 0 {
        inner.redeliveries.fetch_add(takeovers, Ordering::Relaxed);
        tracing::warn!(target: "emissions::outbox", deliveries = takeovers, "delivering again what may have been delivered (an expired lease, or an attempt cut off by a shutdown); duplicates are identified by the event id");
    }
    let mut attempts = Vec::with_capacity(fresh.len());
    for mut claim in fresh {
        let id = u64::try_from(claim.id).unwrap_or_default();
        match claim.event.take() {
            Some(Ok(event)) => attempts.push(Attempt::new(id, event, claim.attempts)),
            Some(Err(reason)) => sink.outcome(
                id,
                claim.attempts,
                &AttemptOutcome::Failed {
                    error: format!("the stored event cannot be read back: {reason}"),
                },
            ),
            None => sink.outcome(
                id,
                claim.attempts,
                &AttemptOutcome::Failed {
                    error: "the stored event is missing".to_owned(),
                },
            ),
        }
    }
    attempts.is_empty() || handoff.send(attempts).is_ok()
}

async fn write_outcomes(
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(u64, u32, AttemptOutcome)>,
) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let count = batch.len();
        let (acks, freed) = acknowledgements(&inner, &shared, batch.drain(..));
        let mut delay = Duration::from_millis(100);
        loop {
            match inner.store.acknowledge(&acks, inner.config.retention).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(target: "emissions::outbox", error = %err, "writing outcomes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for (destination, n) in freed.iter().enumerate() {
            if *n > 0 {
                shared.in_flight[destination].fetch_sub(*n, Ordering::AcqRel);
            }
        }
        shared.unwritten.fetch_sub(count, Ordering::AcqRel);
        shared.written.notify_waiters();
        inner.progress.notify_waiters();
        // Room for more claims.
        inner.wake.notify_one();
    }
}

/// Turns reported outcomes into store writes; returns them and, per destination, how many
/// claims they end.
fn acknowledgements(
    inner: &Inner,
    shared: &Shared,
    outcomes: impl Iterator<Item = (u64, u32, AttemptOutcome)>,
) -> (Vec<Ack>, Vec<usize>) {
    let now = now_ms();
    let mut freed = vec![0; shared.in_flight.len()];
    let mut held = shared.claims.lock().unwrap_or_else(|e| e.into_inner());
    let acks = outcomes
        .filter_map(|(id, attempts, outcome)| {
            let id = i64::try_from(id).ok()?;
            let claim = held.remove(&id)?;
            freed[claim.destination] += 1;
            let first = claim.first_attempt_at_ms.unwrap_or(now);
            let kind = match outcome {
                AttemptOutcome::Delivered | AttemptOutcome::Filtered => AckKind::Done,
                AttemptOutcome::Retry { error, retry_after } => {
                    let policy = inner.destinations()[claim.destination].lane.retry_policy();
                    let since_first =
                        Duration::from_millis(u64::try_from(now - first).unwrap_or(0));
                    match policy.next_delay(attempts, since_first, retry_after) {
                        Some(delay) => {
                            let next_at_ms = now.saturating_add(crate::store::duration_ms(delay));
                            shared.next_retry_ms.fetch_min(next_at_ms, Ordering::AcqRel);
                            AckKind::Retry { next_at_ms, error }
                        }
                        None => AckKind::GiveUp {
                            state: "failed",
                            error,
                        },
                    }
                }
                AttemptOutcome::Failed { error } => AckKind::GiveUp {
                    state: "abandoned",
                    error,
                },
                // Cut off (queued or under way) by a shutdown deadline, or evicted: due again,
                // and possibly delivered already if it was under way — counted as a possible
                // duplicate when delivered again.
                _ => AckKind::Release { uncertain: true },
            };
            Some(Ack {
                id,
                event_seq: claim.event_seq,
                fence: claim.fence,
                attempts,
                first_attempt_at_ms: first,
                kind,
            })
        })
        .collect();
    (acks, freed)
}
