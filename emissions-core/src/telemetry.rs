//! Telemetry: the nine events of the emissions contract, as `tracing` events and to observers.
//!
//! Every event has a name ([`names`]), numeric measurements and metadata whose keys are the
//! constants in [`keys`]. Each one is emitted as a `tracing` event with target `emissions`
//! (field `event` holds the name) and passed to every observer attached to the instance with
//! [`Emissions::attach_observer`](crate::Emissions::attach_observer). The library never
//! installs a subscriber or exporter.
//!
//! | name | measurements | metadata |
//! |---|---|---|
//! | `emissions.buffer.started` | `count` = 1 | — |
//! | `emissions.buffer.committed` | `count` = n | `event_count` = n |
//! | `emissions.buffer.terminated` | `count` = 1 | `event_count`, `reason` (`terminate` or `drop`) |
//! | `emissions.event.dropped` | `count` = 1 | `event_name`, `reason`, `adapter` or `handler` (when one dropped it) |
//! | `emissions.adapter.success` | `duration` (ns) | `adapter`, `event_count` |
//! | `emissions.adapter.error` | `duration` (ns) | `adapter`, `reason`, `event_count` |
//! | `emissions.handler.success` | `duration` (ns) | `handler`, `event` |
//! | `emissions.handler.error` | `duration` (ns) | `handler`, `event`, `reason` |
//! | `emissions.handler.ignored` | `count` = 1 | `handler`, `event` |
//!
//! ```
//! use emissions_core::telemetry::{keys, names, TelemetryEvent};
//! let ev = TelemetryEvent::BufferCommitted { event_count: 3 };
//! assert_eq!(ev.name(), names::BUFFER_COMMITTED);
//! assert_eq!(ev.measurements(), vec![(keys::COUNT, 3)]);
//! assert_eq!(ev.metadata(), vec![(keys::EVENT_COUNT, serde_json::json!(3))]);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

/// Telemetry event names.
pub mod names {
    /// A buffer was opened.
    pub const BUFFER_STARTED: &str = "emissions.buffer.started";
    /// A buffer's events were handed to the pipeline (commit or flush).
    pub const BUFFER_COMMITTED: &str = "emissions.buffer.committed";
    /// A buffer was discarded (terminate, or dropped without commit).
    pub const BUFFER_TERMINATED: &str = "emissions.buffer.terminated";
    /// An event was dropped (no buffer, queue overflow, shutdown…).
    pub const EVENT_DROPPED: &str = "emissions.event.dropped";
    /// An adapter handled a batch.
    pub const ADAPTER_SUCCESS: &str = "emissions.adapter.success";
    /// An adapter failed a batch (or part of one).
    pub const ADAPTER_ERROR: &str = "emissions.adapter.error";
    /// A handler handled an event.
    pub const HANDLER_SUCCESS: &str = "emissions.handler.success";
    /// A handler failed or panicked.
    pub const HANDLER_ERROR: &str = "emissions.handler.error";
    /// A handler ignored an event.
    pub const HANDLER_IGNORED: &str = "emissions.handler.ignored";
}

/// Measurement and metadata keys.
pub mod keys {
    /// Measurement: how many.
    pub const COUNT: &str = "count";
    /// Measurement: nanoseconds spent.
    pub const DURATION: &str = "duration";
    /// Metadata: number of events concerned.
    pub const EVENT_COUNT: &str = "event_count";
    /// Metadata: the dropped event's name.
    pub const EVENT_NAME: &str = "event_name";
    /// Metadata: why (drop reason, error message, termination cause).
    pub const REASON: &str = "reason";
    /// Metadata: the adapter's registered name.
    pub const ADAPTER: &str = "adapter";
    /// Metadata: the handler's name.
    pub const HANDLER: &str = "handler";
    /// Metadata: the handled event's name.
    pub const EVENT: &str = "event";
    /// Commit → delivered, in nanoseconds (measurement of `emissions.adapter.success`).
    pub const LATENCY: &str = "latency";
}

/// Why an event was dropped; `as_str` is the `reason` metadata value.
///
/// ```
/// use emissions_core::telemetry::DropReason;
/// assert_eq!(DropReason::QueueFull.as_str(), "queue_full");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Emitted with no open buffer in scope.
    NoBuffer,
    /// The adapter's queue was full under the drop-newest policy.
    QueueFull,
    /// Evicted from a full queue to make room, under the drop-oldest policy.
    QueueEvicted,
    /// Still queued or in flight when shutdown's deadline passed, or abandoned by shutdown.
    Shutdown,
    /// A cascade went deeper than the configured limit.
    CascadeDepth,
    /// The adapter's backlog (events waiting for a retry or behind their key) was full.
    BacklogFull,
}

impl DropReason {
    /// The stable string used as the `reason` metadata value.
    ///
    /// ```
    /// assert_eq!(emissions_core::telemetry::DropReason::NoBuffer.as_str(), "no_buffer");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoBuffer => "no_buffer",
            DropReason::QueueFull => "queue_full",
            DropReason::QueueEvicted => "queue_evicted",
            DropReason::Shutdown => "shutdown",
            DropReason::CascadeDepth => "cascade_depth",
            DropReason::BacklogFull => "backlog_full",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a buffer was terminated; `as_str` is the `reason` metadata value.
///
/// ```
/// use emissions_core::telemetry::TerminateReason;
/// assert_eq!(TerminateReason::Dropped.as_str(), "drop");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TerminateReason {
    /// `terminate` was called.
    Terminate,
    /// The last handle was dropped while the buffer was open (error path, panic, cancellation).
    Dropped,
}

impl TerminateReason {
    /// The stable string used as the `reason` metadata value.
    ///
    /// ```
    /// assert_eq!(emissions_core::telemetry::TerminateReason::Terminate.as_str(), "terminate");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            TerminateReason::Terminate => "terminate",
            TerminateReason::Dropped => "drop",
        }
    }
}

/// One telemetry event, borrowed for the duration of the observer call.
///
/// ```
/// use emissions_core::telemetry::{keys, TelemetryEvent};
/// let ev = TelemetryEvent::AdapterError {
///     adapter: "kafka",
///     reason: "broker down",
///     event_count: 2,
///     duration: std::time::Duration::from_micros(5),
/// };
/// assert_eq!(ev.measurements(), vec![(keys::DURATION, 5_000)]);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TelemetryEvent<'a> {
    /// `emissions.buffer.started`
    BufferStarted,
    /// `emissions.buffer.committed`
    BufferCommitted {
        /// Events handed over.
        event_count: usize,
    },
    /// `emissions.buffer.terminated`
    BufferTerminated {
        /// Events discarded.
        event_count: usize,
        /// Terminated explicitly or dropped.
        reason: TerminateReason,
    },
    /// `emissions.event.dropped`
    EventDropped {
        /// The dropped event's name.
        event_name: &'a str,
        /// Why it was dropped.
        reason: DropReason,
        /// The adapter that dropped it, when the drop concerns one adapter.
        adapter: Option<&'a str>,
        /// The handler that dropped it (shutdown while handling, or a cascade too deep).
        handler: Option<&'a str>,
    },
    /// `emissions.adapter.success`
    AdapterSuccess {
        /// The adapter's registered name.
        adapter: &'a str,
        /// Events delivered by the call.
        event_count: usize,
        /// Time spent in `handle_events`.
        duration: Duration,
        /// Commit → delivered: how long ago the oldest event the call delivered was committed
        /// (queueing, retries and the call itself).
        latency: Duration,
        /// Commit → delivered for every event the call delivered: per commit, its age and how
        /// many of its events the call delivered.
        commit_ages: &'a [(Duration, usize)],
    },
    /// `emissions.adapter.error`
    AdapterError {
        /// The adapter's registered name.
        adapter: &'a str,
        /// The error (panic message for panics).
        reason: &'a str,
        /// Events that failed in the call.
        event_count: usize,
        /// Time spent in `handle_events`.
        duration: Duration,
    },
    /// `emissions.handler.success`
    HandlerSuccess {
        /// The handler's name.
        handler: &'a str,
        /// The event name.
        event: &'a str,
        /// Time spent handling.
        duration: Duration,
    },
    /// `emissions.handler.error`
    HandlerError {
        /// The handler's name.
        handler: &'a str,
        /// The event name.
        event: &'a str,
        /// The error (panic message for panics).
        reason: &'a str,
        /// Time spent handling.
        duration: Duration,
    },
    /// `emissions.handler.ignored`
    HandlerIgnored {
        /// The handler's name.
        handler: &'a str,
        /// The event name.
        event: &'a str,
    },
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl TelemetryEvent<'_> {
    /// The event's name, one of [`names`].
    ///
    /// ```
    /// use emissions_core::telemetry::{names, TelemetryEvent};
    /// assert_eq!(TelemetryEvent::BufferStarted.name(), names::BUFFER_STARTED);
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            TelemetryEvent::BufferStarted => names::BUFFER_STARTED,
            TelemetryEvent::BufferCommitted { .. } => names::BUFFER_COMMITTED,
            TelemetryEvent::BufferTerminated { .. } => names::BUFFER_TERMINATED,
            TelemetryEvent::EventDropped { .. } => names::EVENT_DROPPED,
            TelemetryEvent::AdapterSuccess { .. } => names::ADAPTER_SUCCESS,
            TelemetryEvent::AdapterError { .. } => names::ADAPTER_ERROR,
            TelemetryEvent::HandlerSuccess { .. } => names::HANDLER_SUCCESS,
            TelemetryEvent::HandlerError { .. } => names::HANDLER_ERROR,
            TelemetryEvent::HandlerIgnored { .. } => names::HANDLER_IGNORED,
        }
    }

    /// The numeric measurements, keyed by [`keys`]; durations in nanoseconds.
    ///
    /// ```
    /// use emissions_core::telemetry::{keys, TelemetryEvent};
    /// assert_eq!(TelemetryEvent::BufferStarted.measurements(), vec![(keys::COUNT, 1)]);
    /// ```
    pub fn measurements(&self) -> Vec<(&'static str, u64)> {
        match *self {
            TelemetryEvent::BufferStarted
            | TelemetryEvent::BufferTerminated { .. }
            | TelemetryEvent::EventDropped { .. }
            | TelemetryEvent::HandlerIgnored { .. } => vec![(keys::COUNT, 1)],
            TelemetryEvent::BufferCommitted { event_count } => {
                vec![(keys::COUNT, event_count as u64)]
            }
            TelemetryEvent::AdapterSuccess {
                duration, latency, ..
            } => vec![
                (keys::DURATION, nanos(duration)),
                (keys::LATENCY, nanos(latency)),
            ],
            TelemetryEvent::AdapterError { duration, .. }
            | TelemetryEvent::HandlerSuccess { duration, .. }
            | TelemetryEvent::HandlerError { duration, .. } => {
                vec![(keys::DURATION, nanos(duration))]
            }
        }
    }

    /// The metadata, keyed by [`keys`].
    ///
    /// ```
    /// use emissions_core::telemetry::{keys, TelemetryEvent};
    /// let ev = TelemetryEvent::HandlerIgnored { handler: "search", event: "order_created" };
    /// assert_eq!(ev.metadata()[0], (keys::HANDLER, serde_json::json!("search")));
    /// ```
    pub fn metadata(&self) -> Vec<(&'static str, Value)> {
        match *self {
            TelemetryEvent::BufferStarted => Vec::new(),
            TelemetryEvent::BufferCommitted { event_count } => {
                vec![(keys::EVENT_COUNT, json!(event_count))]
            }
            TelemetryEvent::BufferTerminated {
                event_count,
                reason,
            } => vec![
                (keys::EVENT_COUNT, json!(event_count)),
                (keys::REASON, json!(reason.as_str())),
            ],
            TelemetryEvent::EventDropped {
                event_name,
                reason,
                adapter,
                handler,
            } => {
                let mut meta = vec![
                    (keys::EVENT_NAME, json!(event_name)),
                    (keys::REASON, json!(reason.as_str())),
                ];
                if let Some(adapter) = adapter {
                    meta.push((keys::ADAPTER, json!(adapter)));
                }
                if let Some(handler) = handler {
                    meta.push((keys::HANDLER, json!(handler)));
                }
                meta
            }
            TelemetryEvent::AdapterSuccess {
                adapter,
                event_count,
                ..
            } => vec![
                (keys::ADAPTER, json!(adapter)),
                (keys::EVENT_COUNT, json!(event_count)),
            ],
            TelemetryEvent::AdapterError {
                adapter,
                reason,
                event_count,
                ..
            } => vec![
                (keys::ADAPTER, json!(adapter)),
                (keys::REASON, json!(reason)),
                (keys::EVENT_COUNT, json!(event_count)),
            ],
            TelemetryEvent::HandlerSuccess { handler, event, .. }
            | TelemetryEvent::HandlerIgnored { handler, event } => {
                vec![(keys::HANDLER, json!(handler)), (keys::EVENT, json!(event))]
            }
            TelemetryEvent::HandlerError {
                handler,
                event,
                reason,
                ..
            } => vec![
                (keys::HANDLER, json!(handler)),
                (keys::EVENT, json!(event)),
                (keys::REASON, json!(reason)),
            ],
        }
    }
}

/// Emits `event` as a `tracing` event under target `emissions`.
pub(crate) fn trace(event: &TelemetryEvent<'_>) {
    use tracing::{debug, trace, warn};
    let name = event.name();
    match *event {
        TelemetryEvent::BufferStarted => trace!(target: "emissions", event = name, count = 1u64),
        TelemetryEvent::BufferCommitted { event_count } => debug!(
            target: "emissions",
            event = name,
            count = event_count as u64,
            event_count = event_count as u64
        ),
        TelemetryEvent::BufferTerminated {
            event_count,
            reason,
        } => debug!(
            target: "emissions",
            event = name,
            count = 1u64,
            event_count = event_count as u64,
            reason = reason.as_str()
        ),
        TelemetryEvent::EventDropped {
            event_name,
            reason,
            adapter,
            handler,
        } => warn!(
            target: "emissions",
            event = name,
            count = 1u64,
            event_name,
            reason = reason.as_str(),
            adapter,
            handler
        ),
        TelemetryEvent::AdapterSuccess {
            adapter,
            event_count,
            duration,
            latency,
            ..
        } => debug!(
            target: "emissions",
            event = name,
            duration = nanos(duration),
            latency = nanos(latency),
            adapter,
            event_count = event_count as u64
        ),
        TelemetryEvent::AdapterError {
            adapter,
            reason,
            event_count,
            duration,
        } => warn!(
            target: "emissions",
            event = name,
            duration = nanos(duration),
            adapter,
            reason,
            event_count = event_count as u64
        ),
        TelemetryEvent::HandlerSuccess {
            handler,
            event: ev,
            duration,
        } => debug!(
            target: "emissions",
            event = name,
            duration = nanos(duration),
            handler,
            handled_event = ev
        ),
        TelemetryEvent::HandlerError {
            handler,
            event: ev,
            reason,
            duration,
        } => warn!(
            target: "emissions",
            event = name,
            duration = nanos(duration),
            handler,
            handled_event = ev,
            reason
        ),
        TelemetryEvent::HandlerIgnored { handler, event: ev } => debug!(
            target: "emissions",
            event = name,
            count = 1u64,
            handler,
            handled_event = ev
        ),
    }
}

type ObserverFn = Arc<dyn Fn(&TelemetryEvent<'_>) + Send + Sync>;

/// Identifies an attached observer, for [`Emissions::detach_observer`](crate::Emissions::detach_observer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObserverId(u64);

/// The observers of one instance.
#[derive(Default)]
pub(crate) struct Telemetry {
    observers: RwLock<Vec<(ObserverId, ObserverFn)>>,
    any: AtomicBool,
    next_id: AtomicU64,
}

impl Telemetry {
    /// Emits `event` as a `tracing` event and to every observer. Observers (and tracing
    /// subscribers) are user code: a panic in one is logged and stops nothing.
    /// Whether an emitted event reaches anyone (a tracing subscriber or an observer): what is
    /// only built for telemetry can be skipped otherwise.
    pub(crate) fn is_observed(&self) -> bool {
        tracing::dispatcher::has_been_set() || self.any.load(Ordering::Acquire)
    }

    pub(crate) fn emit(&self, event: &TelemetryEvent<'_>) {
        // Without any subscriber there is nothing to call (or to contain).
        if tracing::dispatcher::has_been_set()
            && let Err(panic) = crate::panic::contain(|| trace(event))
        {
            eprintln!(
                "emissions: a tracing subscriber panicked on {}: {panic}",
                event.name()
            );
        }
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        // Clone the list so an observer may attach or detach without deadlocking.
        let observers: Vec<ObserverFn> = self
            .observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for observer in observers {
            if let Err(panic) = crate::panic::contain(|| observer(event)) {
                tracing::error!(target: "emissions", telemetry_event = event.name(), panic, "telemetry observer panicked");
            }
        }
    }

    pub(crate) fn attach(&self, f: ObserverFn) -> ObserverId {
        let id = ObserverId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut list = self.observers.write().unwrap_or_else(|e| e.into_inner());
        list.push((id, f));
        self.any.store(true, Ordering::Release);
        id
    }

    pub(crate) fn detach(&self, id: ObserverId) -> bool {
        let mut list = self.observers.write().unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        self.any.store(!list.is_empty(), Ordering::Release);
        list.len() != before
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.observers.read().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("Telemetry").field("observers", &n).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn observers_attach_and_detach() {
        let telemetry = Telemetry::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let id = telemetry.attach(Arc::new(move |e| sink.lock().unwrap().push(e.name())));
        telemetry.emit(&TelemetryEvent::BufferStarted);
        assert!(telemetry.detach(id));
        assert!(!telemetry.detach(id));
        telemetry.emit(&TelemetryEvent::BufferStarted);
        assert_eq!(*seen.lock().unwrap(), vec![names::BUFFER_STARTED]);
    }

    #[test]
    fn dropped_metadata_names_adapter_only_when_known() {
        let ev = TelemetryEvent::EventDropped {
            event_name: "a",
            reason: DropReason::NoBuffer,
            adapter: None,
            handler: None,
        };
        assert_eq!(ev.metadata().len(), 2);
        let ev = TelemetryEvent::EventDropped {
            event_name: "a",
            reason: DropReason::QueueFull,
            adapter: Some("k"),
            handler: None,
        };
        assert_eq!(ev.metadata()[2], (keys::ADAPTER, json!("k")));
    }
}
