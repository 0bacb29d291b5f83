//! Counts and reports: [`DeliveryCounts`] per adapter, [`HandlerCounts`] per handler, and the
//! [`DeliveryReport`] that [`Emissions::stats`](crate::Emissions::stats) and
//! [`Emissions::shutdown`](crate::Emissions::shutdown) return.

/// How the events committed to one adapter ended up.
///
/// Every committed event ends, for each adapter, in exactly one of delivered, filtered (the
/// adapter was not interested), failed (given up on and dead-lettered) or dropped (queue
/// overflow, or shutdown). Once everything has settled,
/// `committed == delivered + filtered + failed + dropped` (+ `deferred`, for attempts handed
/// over by a durable store, where every attempt counts as committed).
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
    /// Events committed for this adapter (each commit is recorded for every adapter at once).
    pub committed: u64,
    /// Events the adapter delivered.
    pub delivered: u64,
    /// Events the adapter was not interested in.
    pub filtered: u64,
    /// Events given up on: a permanent failure, or retries exhausted (dead-lettered).
    pub failed: u64,
    /// Events dropped by overflow or shutdown (dead-lettered with their reason).
    pub dropped: u64,
    /// Durable attempts that failed retryably and went back to the durable store (the
    /// `emissions-outbox` crate) for a later attempt; always 0 for in-memory delivery.
    pub deferred: u64,
}

impl DeliveryCounts {
    /// Events that reached a final state (for durable attempts, including `deferred`).
    ///
    /// ```
    /// assert_eq!(emissions_core::DeliveryCounts::default().settled(), 0);
    /// ```
    pub fn settled(&self) -> u64 {
        self.delivered + self.filtered + self.failed + self.dropped + self.deferred
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

/// How the runs of one handler ended.
///
/// Once everything has settled, `dispatched == succeeded + ignored + failed + dropped`.
///
/// ```
/// assert!(emissions_core::HandlerCounts::default().is_balanced());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HandlerCounts {
    /// Events handed to the handler.
    pub dispatched: u64,
    /// Runs that ended in [`Handled::Done`](crate::Handled::Done).
    pub succeeded: u64,
    /// Runs that ended in [`Handled::Ignored`](crate::Handled::Ignored).
    pub ignored: u64,
    /// Events given up on after the retry policy (dead-lettered).
    pub failed: u64,
    /// Runs cancelled by shutdown (dead-lettered with reason `shutdown`).
    pub dropped: u64,
}

impl HandlerCounts {
    /// Whether every dispatched event reached a final state.
    ///
    /// See [`HandlerCounts`].
    pub fn is_balanced(&self) -> bool {
        self.dispatched == self.succeeded + self.ignored + self.failed + self.dropped
    }
}

/// One handler's line in a [`DeliveryReport`].
///
/// ```
/// # use emissions_core::{async_trait, BoxError, Emissions, Event, Handled, Handler, HandlerContext};
/// # struct Audit;
/// # #[async_trait]
/// # impl Handler for Audit {
/// #     fn events(&self) -> &[&str] { &["order_created"] }
/// #     async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> { Ok(Handled::Done) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder().handler("audit", Audit).start().await?;
/// emissions.emit_now("order_created", &1).await?;
/// let report = emissions.shutdown(std::time::Duration::from_secs(5)).await;
/// let audit = report.handler("audit").unwrap();
/// assert_eq!((audit.name.as_str(), audit.counts.succeeded), ("audit", 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerReport {
    /// The handler's registered name.
    pub name: String,
    /// Its counts since start.
    pub counts: HandlerCounts,
}

/// One adapter's line in a [`DeliveryReport`].
///
/// ```
/// # use emissions_core::Emissions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder().adapter(emissions_core::Named::new("test", emissions_testing::TestAdapter::new()))?.start().await?;
/// emissions.emit_now("ping", &1).await?;
/// let report = emissions.shutdown(std::time::Duration::from_secs(5)).await;
/// let test = report.adapter("test").unwrap();
/// assert_eq!(test.counts.delivered, 1);
/// assert!(!test.deadline_exceeded && test.shutdown_error.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdapterReport {
    /// The adapter's registered name.
    pub name: String,
    /// Its counts since start.
    pub counts: DeliveryCounts,
    /// Why its shutdown was incomplete: its `shutdown` failed or panicked, or the deadline cut
    /// the drain or the adapter's `shutdown` short.
    pub shutdown_error: Option<String>,
    /// Whether shutdown's deadline cut its drain short (what was left is counted as dropped).
    pub deadline_exceeded: bool,
}

/// What one adapter has not finished yet, from
/// [`Emissions::backlog`](crate::Emissions::backlog): the figures an on-call engineer watches.
///
/// ```
/// # use emissions_core::Emissions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = Emissions::builder().adapter(emissions_core::Named::new("kafka", emissions_testing::TestAdapter::new()))?.start().await?;
/// for adapter in emissions.backlog() {
///     let age = adapter.oldest_pending.unwrap_or_default();
///     println!("{}: {} queued, {} in flight, {} waiting, oldest {age:?}",
///         adapter.name, adapter.queued, adapter.in_flight, adapter.waiting);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdapterBacklog {
    /// The adapter's registered name.
    pub name: String,
    /// Events in its queue, not yet taken by its consumer.
    pub queued: usize,
    /// Events handed to `handle_events` and not answered yet.
    pub in_flight: usize,
    /// Events waiting beside the queue: for a retry, or behind an earlier event of their key.
    pub waiting: usize,
    /// How long ago the oldest of those events was committed (`None`: nothing pending).
    pub oldest_pending: Option<std::time::Duration>,
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
