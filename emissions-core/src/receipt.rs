//! Delivery accounting: per-adapter counts, commit receipts and reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::handler::HandlerReport;
use crate::pipeline::Shared;

/// How the events committed to one adapter ended up.
///
/// Every committed event ends, for each adapter, in exactly one of delivered, filtered (the
/// adapter was not interested), failed (given up on and dead-lettered) or dropped (queue
/// overflow, or shutdown). Once everything has settled,
/// `committed == delivered + filtered + failed + dropped`.
///
/// ```
/// use emissions_core::DeliveryCounts;
/// let counts = DeliveryCounts::default();
/// assert!(counts.is_balanced());
/// assert_eq!(counts.settled(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DeliveryCounts {
    /// Events handed to this adapter's queue (or dropped on the way in).
    pub committed: u64,
    /// Events the adapter delivered.
    pub delivered: u64,
    /// Events the adapter was not interested in.
    pub filtered: u64,
    /// Events that failed after the retry policy (dead-lettered).
    pub failed: u64,
    /// Events dropped by overflow or shutdown.
    pub dropped: u64,
}

impl DeliveryCounts {
    /// Events that reached a final state.
    ///
    /// ```
    /// assert_eq!(emissions_core::DeliveryCounts::default().settled(), 0);
    /// ```
    pub fn settled(&self) -> u64 {
        self.delivered + self.filtered + self.failed + self.dropped
    }

    /// Whether every committed event reached a final state.
    ///
    /// ```
    /// assert!(emissions_core::DeliveryCounts::default().is_balanced());
    /// ```
    pub fn is_balanced(&self) -> bool {
        self.committed == self.settled()
    }
}

/// A final state of one event at one adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    Delivered,
    Filtered,
    Failed,
    Dropped,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    committed: AtomicU64,
    delivered: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    pub(crate) fn commit(&self, n: u64) {
        self.committed.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn add(&self, state: Settled, n: u64) {
        let counter = match state {
            Settled::Delivered => &self.delivered,
            Settled::Filtered => &self.filtered,
            Settled::Failed => &self.failed,
            Settled::Dropped => &self.dropped,
        };
        counter.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn snapshot(&self) -> DeliveryCounts {
        DeliveryCounts {
            committed: self.committed.load(Ordering::Acquire),
            delivered: self.delivered.load(Ordering::Acquire),
            filtered: self.filtered.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            dropped: self.dropped.load(Ordering::Acquire),
        }
    }
}

/// Tracks one commit's events across all adapters until each has settled.
#[derive(Debug)]
pub(crate) struct CommitTracker {
    pub(crate) shared: Arc<Shared>,
    event_count: usize,
    counts: Box<[Counters]>,
    remaining: AtomicUsize,
    done: Notify,
}

impl CommitTracker {
    pub(crate) fn new(shared: Arc<Shared>, event_count: usize) -> Self {
        let adapters = shared.slots.len();
        let counts: Box<[Counters]> = (0..adapters).map(|_| Counters::default()).collect();
        for c in counts.iter() {
            c.commit(event_count as u64);
        }
        CommitTracker {
            shared,
            event_count,
            counts,
            remaining: AtomicUsize::new(event_count * adapters),
            done: Notify::new(),
        }
    }

    /// Records `n` events of this commit as settled at `adapter`.
    pub(crate) fn record(&self, adapter: usize, state: Settled, n: usize) {
        self.shared.slots[adapter].counters.add(state, n as u64);
        self.counts[adapter].add(state, n as u64);
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.done.notify_waiters();
        }
    }

    fn outcome(&self) -> CommitOutcome {
        CommitOutcome {
            adapters: self
                .shared
                .slots
                .iter()
                .zip(self.counts.iter())
                .map(|(slot, c)| (slot.name.clone(), c.snapshot()))
                .collect(),
        }
    }
}

/// Returned by a commit: await [`settled`](Self::settled) until every adapter is done with the
/// commit's events (delivered, filtered, failed or dropped). Dropping a receipt changes nothing.
///
/// ```
/// # use emissions_core::Emissions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder().start().await?;
/// let buffer = emissions.start();
/// buffer.emit("order_created", &serde_json::json!({"id": 1}))?;
/// let receipt = buffer.commit().await?;
/// assert_eq!(receipt.event_count(), 1);
/// let outcome = receipt.settled().await;
/// assert!(outcome.is_delivered());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Receipt {
    tracker: Arc<CommitTracker>,
}

impl Receipt {
    pub(crate) fn new(tracker: Arc<CommitTracker>) -> Self {
        Receipt { tracker }
    }

    /// Events in the commit.
    ///
    /// See [`Receipt`] for an example.
    pub fn event_count(&self) -> usize {
        self.tracker.event_count
    }

    /// Whether every adapter is done with the commit's events.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let receipt = emissions.start().commit().await?;
    /// assert!(receipt.is_settled()); // nothing to deliver
    /// # Ok(()) }
    /// ```
    pub fn is_settled(&self) -> bool {
        self.tracker.remaining.load(Ordering::Acquire) == 0
    }

    /// Waits until every adapter is done with the commit's events and returns the outcome.
    ///
    /// See [`Receipt`] for an example.
    pub async fn settled(&self) -> CommitOutcome {
        loop {
            let notified = self.tracker.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_settled() {
                return self.tracker.outcome();
            }
            notified.await;
        }
    }
}

/// The outcome of one commit, per adapter.
///
/// ```
/// # use emissions_core::Emissions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = Emissions::builder().start().await?;
/// let outcome = emissions.emit_now("ping", &()).await?.settled().await;
/// for (adapter, counts) in outcome.iter() {
///     println!("{adapter}: {} delivered", counts.delivered);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    adapters: Vec<(Arc<str>, DeliveryCounts)>,
}

impl CommitOutcome {
    /// The counts of one adapter, by registered name.
    ///
    /// See [`CommitOutcome`].
    pub fn adapter(&self, name: &str) -> Option<DeliveryCounts> {
        self.adapters
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, c)| *c)
    }

    /// Each adapter's name and counts, in registration order.
    ///
    /// See [`CommitOutcome`].
    pub fn iter(&self) -> impl Iterator<Item = (&str, DeliveryCounts)> + '_ {
        self.adapters.iter().map(|(n, c)| (&**n, *c))
    }

    /// True when every adapter delivered (or filtered) every event of the commit.
    ///
    /// See [`Receipt`].
    pub fn is_delivered(&self) -> bool {
        self.adapters
            .iter()
            .all(|(_, c)| c.failed == 0 && c.dropped == 0 && c.is_balanced())
    }
}

/// One adapter's line in a [`DeliveryReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdapterReport {
    /// The adapter's registered name.
    pub name: String,
    /// Its counts since start.
    pub counts: DeliveryCounts,
    /// The error of its `shutdown`, if it failed, panicked or ran past the deadline.
    pub shutdown_error: Option<String>,
    /// Whether shutdown's deadline cut its drain short.
    pub deadline_exceeded: bool,
}

/// Per-adapter accounting: from [`Emissions::stats`](crate::Emissions::stats) while running, and
/// from [`Emissions::shutdown`](crate::Emissions::shutdown) at the end.
///
/// ```
/// # use emissions_core::Emissions;
/// # use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = Emissions::builder().start().await?;
/// let report = emissions.shutdown(Duration::from_secs(5)).await;
/// assert!(report.is_balanced());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReport {
    /// One entry per adapter, in registration order (the handler dispatcher, when there are
    /// handlers, is the adapter named `handlers`).
    pub adapters: Vec<AdapterReport>,
    /// One entry per handler, in registration order.
    pub handlers: Vec<HandlerReport>,
}

impl DeliveryReport {
    /// The entry of one adapter, by registered name.
    ///
    /// See [`DeliveryReport`].
    pub fn adapter(&self, name: &str) -> Option<&AdapterReport> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The entry of one handler, by registered name.
    ///
    /// See [`DeliveryReport`].
    pub fn handler(&self, name: &str) -> Option<&HandlerReport> {
        self.handlers.iter().find(|h| h.name == name)
    }

    /// True when, for every adapter, `committed == delivered + filtered + failed + dropped`,
    /// and for every handler, `dispatched == succeeded + ignored + failed + dropped`.
    ///
    /// See [`DeliveryReport`].
    pub fn is_balanced(&self) -> bool {
        self.adapters.iter().all(|a| a.counts.is_balanced())
            && self.handlers.iter().all(|h| h.counts.is_balanced())
    }
}
