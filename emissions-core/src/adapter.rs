//! The [`Adapter`] trait: a destination for committed events.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{BoxError, Event};

/// A destination for committed events (Kafka, webhooks, WebSocket clients, a test recorder…).
///
/// Each registered adapter is owned by one consumer task that takes batches of up to
/// `max_demand` events from the adapter's own bounded queue.
///
/// # Contract
///
/// - **Never concurrent.** Methods take `&mut self` and are called one at a time, from the
///   adapter's consumer task, in this order: `init` once at start, then any number of
///   `interested`/`handle_events`, then `shutdown` once.
/// - **Order.** First attempts arrive in commit order; the events of one commit arrive
///   contiguously and in emit order (a batch may end in the middle of a commit; the rest comes
///   in the next batch). Retries do not keep that order unless the adapter is registered with
///   [`AdapterOptions::ordered_by`](crate::AdapterOptions::ordered_by): then a batch holds at
///   most one event per key, and a key's events arrive one after the other in commit order,
///   retries included.
/// - **Errors.** `Ok(())` means every event in the batch is delivered. [`BatchError`] says which
///   events failed and whether each [`Failure`] is retryable; report each event's own outcome
///   (never fail an event you did not try). A retryable event waits for its retry beside the
///   queue under the adapter's [`RetryPolicy`](crate::RetryPolicy), its attempts counted on
///   its own, while later batches go on; events that failed together in one call are retried
///   together. Permanent failures, and retryable ones once the policy gives up, go to the
///   dead-letter hook and are counted as failed.
/// - **Panics.** A panic in `handle_events` is caught and treated as a retryable failure of the
///   whole batch (reason `panicked: <message>`); the adapter keeps being used afterwards, so keep
///   its state consistent across await points. A panic in `interested` fails that event
///   permanently (without an attempt). A panic in `init` or `shutdown` is reported as their
///   error.
/// - **Cancellation.** The future of `handle_events` is dropped only when a shutdown deadline
///   passes; its events are then counted as dropped (reason `shutdown`), because whether they
///   reached the destination is unknown. An adapter that blocks its thread past the deadline
///   cannot be cancelled: a second after the deadline its events are counted as dropped and
///   whatever it reports later is ignored.
/// - **Committing from inside.** A commit made from `handle_events` never waits for room in a
///   queue with the block policy (it could wait on itself): it fails with
///   [`Error::QueueFull`](crate::Error::QueueFull) and commits nothing. This follows the call's
///   own task only: a task that `handle_events` spawns and then awaits is not covered, and can
///   deadlock the adapter on its own full queue — commit from the call itself, or do not await
///   such a task there.
/// - **Backpressure.** Taking long in `handle_events` is how an adapter slows its own input; it
///   never delays other adapters or the committing request (see the overflow policy).
/// - **Payload bytes.** [`Event::payload`] is the JSON written at emit time, shared by every
///   adapter; [`Event::envelope`] and [`CloudEvents`](crate::CloudEvents) embed it without
///   serializing it again.
///
/// # Example
///
/// ```
/// use emissions_core::{async_trait, Adapter, BatchError, Event};
///
/// struct Stdout;
///
/// #[async_trait]
/// impl Adapter for Stdout {
///     fn interested(&self, event: &Event) -> bool {
///         event.name().starts_with("order_")
///     }
///
///     async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
///         for event in events {
///             println!("{} {}", event.name(), String::from_utf8_lossy(event.payload()));
///         }
///         Ok(())
///     }
/// }
/// # let _adapter = Stdout;
/// ```
#[async_trait]
pub trait Adapter: Send + 'static {
    /// Prepares the adapter (connects, checks configuration). An error fails
    /// [`EmissionsBuilder::start`](crate::EmissionsBuilder::start) with
    /// [`Error::Init`](crate::Error::Init) naming the adapter. Defaults to doing nothing.
    async fn init(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// Whether the adapter wants `event`. Events it does not want are counted as filtered and
    /// never reach `handle_events`. Called on the consumer task; keep it cheap. Defaults to
    /// `true`.
    fn interested(&self, event: &Event) -> bool {
        let _ = event;
        true
    }

    /// Delivers a non-empty batch of at most `max_demand` events.
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError>;

    /// Flushes and releases resources. Called once, after the queue is drained, and bounded by
    /// `deadline` (the core stops waiting then). An error is reported in the shutdown report.
    /// Defaults to doing nothing.
    async fn shutdown(&mut self, deadline: Instant) -> Result<(), BoxError> {
        let _ = deadline;
        Ok(())
    }
}

/// Why an event (or a batch) failed, and whether trying again may help.
///
/// ```
/// use emissions_core::Failure;
/// let f = Failure::retryable("broker unavailable");
/// assert!(f.is_retryable());
/// assert_eq!(f.to_string(), "broker unavailable");
/// ```
#[derive(Debug)]
pub struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    error: BoxError,
}

impl Failure {
    /// A transient failure: the events are retried under the retry policy.
    ///
    /// ```
    /// assert!(emissions_core::Failure::retryable("timeout").is_retryable());
    /// ```
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Failure {
            retryable: true,
            retry_after: None,
            error: error.into(),
        }
    }

    /// A transient failure whose destination asked to wait at least `delay` before the next
    /// attempt (an HTTP `Retry-After`). The next attempt comes after the longer of this and the
    /// retry policy's own delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// let f = emissions_core::Failure::retry_after("rate limited", Duration::from_secs(30));
    /// assert!(f.is_retryable());
    /// assert_eq!(f.retry_after_hint(), Some(Duration::from_secs(30)));
    /// ```
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        Failure {
            retryable: true,
            retry_after: Some(delay),
            error: error.into(),
        }
    }

    /// The wait the destination asked for, if any.
    ///
    /// See [`retry_after`](Self::retry_after).
    pub fn retry_after_hint(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A permanent failure: the events go to the dead-letter hook at once.
    ///
    /// ```
    /// assert!(!emissions_core::Failure::permanent("too large").is_retryable());
    /// ```
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Failure {
            retryable: false,
            retry_after: None,
            error: error.into(),
        }
    }

    /// Whether the events are retried.
    ///
    /// ```
    /// assert!(emissions_core::Failure::retryable("x").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The underlying error.
    ///
    /// ```
    /// let f = emissions_core::Failure::permanent("bad");
    /// assert_eq!(f.error().to_string(), "bad");
    /// ```
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }

    /// A failure with the same kind, wait and message (the error's own type is not kept), for
    /// reporting one failure to several dead letters.
    pub(crate) fn duplicate(&self) -> Failure {
        Failure {
            retryable: self.retryable,
            retry_after: self.retry_after,
            error: self.error.to_string().into(),
        }
    }

    /// Takes the underlying error out.
    ///
    /// ```
    /// let e = emissions_core::Failure::permanent("bad").into_error();
    /// assert_eq!(e.to_string(), "bad");
    /// ```
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// The failed part of a call to [`Adapter::handle_events`].
///
/// ```
/// use emissions_core::{BatchError, Failure};
/// // Events 1 and 3 of the batch failed; the others were delivered.
/// let err = BatchError::partial([
///     (1, Failure::retryable("timeout")),
///     (3, Failure::permanent("rejected")),
/// ]);
/// assert!(matches!(err, BatchError::Events(ref v) if v.len() == 2));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchError {
    /// Every event of the batch failed for this reason.
    Batch(Failure),
    /// Only these events failed, by index into the batch; all others were delivered. Indices
    /// outside the batch are ignored (and logged); a repeated index counts once.
    Events(Vec<(usize, Failure)>),
}

impl BatchError {
    /// The whole batch failed and may be retried.
    ///
    /// ```
    /// let e = emissions_core::BatchError::retryable("connection reset");
    /// assert!(matches!(e, emissions_core::BatchError::Batch(ref f) if f.is_retryable()));
    /// ```
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        BatchError::Batch(Failure::retryable(error))
    }

    /// The whole batch failed and must not be retried.
    ///
    /// ```
    /// let e = emissions_core::BatchError::permanent("unknown topic");
    /// assert!(matches!(e, emissions_core::BatchError::Batch(ref f) if !f.is_retryable()));
    /// ```
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        BatchError::Batch(Failure::permanent(error))
    }

    /// Some events failed, each with its own failure, by index into the batch.
    ///
    /// ```
    /// use emissions_core::{BatchError, Failure};
    /// let e = BatchError::partial([(0, Failure::retryable("timeout"))]);
    /// assert!(matches!(e, BatchError::Events(_)));
    /// ```
    pub fn partial(failures: impl IntoIterator<Item = (usize, Failure)>) -> Self {
        BatchError::Events(failures.into_iter().collect())
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Batch(failure) => fmt::Display::fmt(failure, f),
            BatchError::Events(list) => match list.first() {
                Some((_, first)) => write!(f, "{} event(s) failed, first: {first}", list.len()),
                None => f.write_str("no event failed"),
            },
        }
    }
}

impl std::error::Error for BatchError {}
