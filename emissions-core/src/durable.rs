//! Durable delivery: the seam between the engine and a durable store (the `emissions-outbox`
//! crate).
//!
//! In-memory delivery records a commit for every adapter at once and retries failed events in
//! memory. A durable store persists every (event, adapter) delivery instead and hands the engine
//! one attempt at a time through a [`DurableLane`]: the engine delivers it through that
//! adapter's own queue, consumer and ledger — `interested`, batching, panics contained, the
//! shutdown deadline — makes exactly **one** attempt, and reports each event's
//! [`AttemptOutcome`] to the store's [`AttemptSink`]. Retries, their schedule, per-key order
//! and giving up are the store's: the engine keeps no backlog, applies no ordering key and calls
//! no dead-letter hook for durable attempts.
//!
//! # Accounting
//!
//! Every attempt handed over counts as committed at its adapter and settles as delivered,
//! filtered, failed (a permanent failure), dropped (the shutdown deadline: the store still has
//! it) or `deferred` (a retryable failure, handed back for a later attempt) — see
//! [`DeliveryCounts::deferred`](crate::DeliveryCounts::deferred).
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use emissions_core::durable::{Attempt, AttemptOutcome, AttemptSink};
//! use emissions_core::{Emissions, Event, Metadata};
//!
//! #[derive(Default)]
//! struct Outcomes(Mutex<Vec<(u64, u32, AttemptOutcome)>>);
//!
//! impl AttemptSink for Outcomes {
//!     fn outcome(&self, id: u64, attempts: u32, outcome: &AttemptOutcome) {
//!         self.0.lock().unwrap().push((id, attempts, outcome.clone()));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), emissions_core::Error> {
//! let emissions = Emissions::builder()
//!     .adapter(emissions_core::Named::new("test", emissions_testing::TestAdapter::new()))?
//!     .start()
//!     .await?;
//! let lane = emissions.durable_lane("test").expect("registered");
//! let outcomes = Arc::new(Outcomes::default());
//! // Event 7 of the store, attempted twice before.
//! let event = Event::new("order_created", &1, Metadata::new())?;
//! lane.submit(vec![Attempt::new(7, event, 2)], outcomes.clone()).await?;
//! emissions.settled().await;
//! assert_eq!(*outcomes.0.lock().unwrap(), [(7, 3, AttemptOutcome::Delivered)]);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::emissions::WeakEmissions;
use crate::options::KeyFn;
use crate::telemetry::DropReason;
use crate::{Error, Event, RetryPolicy};

/// One event for one attempt at one adapter, from a durable store.
///
/// See the [module docs](crate::durable).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Attempt {
    /// The store's identifier of this (event, adapter) delivery, reported back with the outcome.
    pub id: u64,
    /// The event.
    pub event: Event,
    /// Attempts already made at this adapter (0 for the first).
    pub attempts: u32,
}

impl Attempt {
    /// An attempt of `event`, known to the store as `id`, after `attempts` earlier ones.
    ///
    /// See the [module docs](crate::durable).
    pub fn new(id: u64, event: Event, attempts: u32) -> Self {
        Attempt {
            id,
            event,
            attempts,
        }
    }
}

/// How one durable attempt ended.
///
/// ```
/// use emissions_core::durable::AttemptOutcome;
/// let retry = AttemptOutcome::Retry { error: "503".into(), retry_after: None };
/// assert!(retry.is_retry());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The adapter delivered it.
    Delivered,
    /// The adapter is not interested in it.
    Filtered,
    /// A retryable failure: the store schedules the next attempt.
    Retry {
        /// The adapter's error.
        error: String,
        /// The destination's own wait (`Retry-After`), if it gave one.
        retry_after: Option<Duration>,
    },
    /// A permanent failure: retrying will not help.
    Failed {
        /// The adapter's error.
        error: String,
    },
    /// Not attempted to the end: queued or in flight when the shutdown deadline passed (or
    /// evicted by a drop-oldest queue). Whether it reached the destination is unknown; the
    /// store still has it.
    Dropped {
        /// Why.
        reason: DropReason,
    },
}

impl AttemptOutcome {
    /// Whether the store should try again.
    ///
    /// See [`AttemptOutcome`].
    pub fn is_retry(&self) -> bool {
        matches!(self, AttemptOutcome::Retry { .. })
    }
}

/// Receives the outcome of every durable attempt — once per event, on the adapter's consumer
/// task (or the task that shuts down): keep it short (hand it to a channel or a batch writer). A
/// panic in it is caught and logged.
///
/// See the [module docs](crate::durable) for an example.
pub trait AttemptSink: Send + Sync + 'static {
    /// Attempt `id` ended in `outcome`, after `attempts` attempts in all.
    fn outcome(&self, id: u64, attempts: u32, outcome: &AttemptOutcome);
}

/// Where a durable store hands one adapter its attempts. Cheap to clone; does not keep the
/// instance alive.
///
/// See the [module docs](crate::durable).
#[derive(Clone)]
pub struct DurableLane {
    emissions: WeakEmissions,
    lane: usize,
    name: Arc<str>,
    retry: RetryPolicy,
    key: Option<KeyFn>,
}

impl fmt::Debug for DurableLane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableLane")
            .field("adapter", &self.name)
            .finish_non_exhaustive()
    }
}

impl DurableLane {
    pub(crate) fn new(
        emissions: WeakEmissions,
        lane: usize,
        name: Arc<str>,
        retry: RetryPolicy,
        key: Option<KeyFn>,
    ) -> Self {
        DurableLane {
            emissions,
            lane,
            name,
            retry,
            key,
        }
    }

    /// The adapter's registered name.
    ///
    /// See the [module docs](crate::durable).
    pub fn adapter(&self) -> &str {
        &self.name
    }

    /// The adapter's retry policy, for the store to schedule retries and decide when to give
    /// up.
    ///
    /// See the [module docs](crate::durable).
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The event's ordering key at this adapter ([`AdapterOptions::ordered_by`](crate::AdapterOptions::ordered_by)),
    /// for the store to keep each key's deliveries in order: `Ok(None)` when the adapter is
    /// unordered or the event has no key, `Err(message)` when the key function panicked.
    ///
    /// See the [module docs](crate::durable).
    pub fn ordering_key(&self, event: &Event) -> Result<Option<String>, String> {
        match &self.key {
            Some(key) => key.key(event),
            None => Ok(None),
        }
    }

    /// Whether the adapter keeps each key's events in order (it has an
    /// [`ordered_by`](crate::AdapterOptions::ordered_by) key function).
    ///
    /// See the [module docs](crate::durable).
    pub fn is_ordered(&self) -> bool {
        self.key.is_some()
    }

    /// Hands `attempts` to the adapter's queue, waiting for room (never dropping: the store
    /// still has them). Cancel-safe: if the future is dropped while waiting, nothing was handed
    /// over. Fails with [`Error::ShutDown`] once the instance shuts down (or is gone).
    ///
    /// See the [module docs](crate::durable).
    pub async fn submit(
        &self,
        attempts: Vec<Attempt>,
        sink: Arc<dyn AttemptSink>,
    ) -> Result<(), Error> {
        let emissions = self.emissions.upgrade().ok_or(Error::ShutDown)?;
        emissions.ensure_open()?;
        emissions.submit_durable(self.lane, attempts, sink).await
    }
}
