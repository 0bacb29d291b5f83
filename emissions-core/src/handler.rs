//! Internal handlers: in-process subscribers that run in supervised tasks and may cascade.
//!
//! # Dispatch
//!
//! All handlers share one pipeline consumer, registered as the adapter named `handlers`, with its
//! own bounded queue and overflow policy ([`EmissionsBuilder::handler_queue`](crate::EmissionsBuilder::handler_queue)). For each event it
//! starts, for every handler subscribed to the event's name, one **supervised tokio task**.
//! Events no handler subscribes to are counted as filtered at `handlers`.
//!
//! # Supervision
//!
//! An error, a panic or a timeout in one handler run never affects other handlers, other events
//! or the pipeline: it is reported as `emissions.handler.error` (the reason is the error, the
//! panic message, or `timed out after …`) and retried under the handler's
//! [`RetryPolicy`]; once the policy gives up, the event goes to the handler's
//! dead-letter hook and counts as failed for that handler.
//!
//! # Concurrency and order
//!
//! Each handler runs at most `concurrency` events at once (default 16); when it is saturated the
//! dispatcher waits, its queue fills, and its overflow policy applies — backpressure, not
//! unbounded tasks. By default events run concurrently and may finish in any order;
//! [`HandlerOptions::ordered_by`] keeps the events of one key in dispatch order for that handler.
//!
//! # Cascading
//!
//! A handler emits follow-up events through its [`HandlerContext`] (or the ambient
//! [`emit`](crate::emit), which reaches the same child buffer). The child buffer is committed
//! only when the handler succeeds (or ignores the event) and discarded when it fails, panics or
//! times out — each retry starts a fresh one. Child events carry [`CAUSATION_ID`] (the parent's
//! id), [`CORRELATION_ID`] (the root's correlation id: its `correlation_id` metadata if it had
//! one, else its id) and [`CASCADE_DEPTH`] in their metadata. Emitting deeper than the depth limit
//! ([`EmissionsBuilder::cascade_depth_limit`](crate::EmissionsBuilder::cascade_depth_limit), default 8) returns [`Error::CascadeDepth`] and
//! reports `emissions.event.dropped` with reason `cascade_depth`, so an emit loop ends.
//!
//! # Shutdown
//!
//! After the queue drains, shutdown waits for running handler tasks until the deadline; tasks
//! still running then are cancelled and their events counted as dropped for that handler.
//! Follow-up events committed after the pipeline closed are reported as dropped (reason
//! `shutdown`).
//!
//! # Example
//!
//! ```
//! use emissions_core::{async_trait, BoxError, Emissions, Event, Handled, Handler, HandlerContext};
//!
//! struct SearchIndex;
//!
//! #[async_trait]
//! impl Handler for SearchIndex {
//!     fn events(&self) -> &[&str] {
//!         &["order_created", "order_deleted"]
//!     }
//!
//!     async fn handle(&self, event: &Event, ctx: &HandlerContext) -> Result<Handled, BoxError> {
//!         match event.name() {
//!             "order_created" => {
//!                 // index it, then tell whoever cares
//!                 ctx.emit("order_indexed", &event.payload_json())?;
//!                 Ok(Handled::Done)
//!             }
//!             _ => Ok(Handled::Ignored),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), emissions_core::Error> {
//! let emissions = Emissions::builder().handler("search_index", SearchIndex).start().await?;
//! emissions.emit_now("order_created", &serde_json::json!({"id": 1})).await?;
//! emissions.settled().await;
//! let report = emissions.stats();
//! assert_eq!(report.handler("search_index").unwrap().counts.succeeded, 1);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::buffer::Cascade;
use crate::emissions::WeakEmissions;
use crate::options::DeadLetter;
use crate::pipeline::panic_message;
use crate::telemetry::{DropReason, TelemetryEvent};
use crate::{
    Adapter, BatchError, BoxError, Buffer, DeadLetterHook, Emissions, Error, Event, Failure,
    Metadata, RetryPolicy,
};

/// Metadata key of a follow-up event: the id of the event whose handler emitted it.
pub const CAUSATION_ID: &str = "causation_id";
/// Metadata key of a follow-up event: the correlation id of the cascade's root event.
pub const CORRELATION_ID: &str = "correlation_id";
/// Metadata key of a follow-up event: how many handler hops separate it from the root (1 for a
/// direct follow-up).
pub const CASCADE_DEPTH: &str = "cascade_depth";
/// The registered adapter name of the handler dispatcher.
pub const DISPATCHER: &str = "handlers";

/// What a handler did with an event.
///
/// ```
/// use emissions_core::Handled;
/// assert_ne!(Handled::Done, Handled::Ignored);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// Handled (reported as `emissions.handler.success`).
    Done,
    /// Deliberately not handled (reported as `emissions.handler.ignored`). Follow-up events
    /// emitted before deciding are still committed.
    Ignored,
}

/// An in-process subscriber to events. See the [module docs](crate::handler).
///
/// # Contract
///
/// - **Concurrent.** `handle` may run for several events at once (up to the handler's
///   concurrency limit), hence `&self` and `Sync`.
/// - **Errors.** Any error, a panic, or running past the timeout fails the run: its follow-up
///   events are discarded and the event is retried under the handler's retry policy, then
///   dead-lettered.
/// - **Cancellation.** The future is dropped on timeout and when shutdown's deadline passes; keep
///   side effects idempotent or transactional.
///
/// See the [module docs](crate::handler) for an example.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The event names this handler subscribes to. Read once, at start.
    fn events(&self) -> &[&str];

    /// Handles one event. Emit follow-up events through `ctx`.
    async fn handle(&self, event: &Event, ctx: &HandlerContext) -> Result<Handled, BoxError>;
}

/// What a handler run gets besides the event: who it is, which attempt, and a way to emit
/// follow-up events into its child buffer.
///
/// See the [module docs](crate::handler).
pub struct HandlerContext {
    handler: Arc<str>,
    attempt: u32,
    buffer: Buffer,
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("handler", &self.handler)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl HandlerContext {
    /// The handler's registered name.
    ///
    /// See the [module docs](crate::handler).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Which attempt this is, starting at 1.
    ///
    /// See the [module docs](crate::handler).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Emits a follow-up event, committed only if this run succeeds.
    ///
    /// See the [module docs](crate::handler).
    pub fn emit<P>(&self, name: impl Into<Cow<'static, str>>, payload: &P) -> Result<(), Error>
    where
        P: Serialize + ?Sized,
    {
        self.buffer.emit(name, payload)
    }

    /// Emits a follow-up event with metadata (the cascade keys are added to it).
    ///
    /// See the [module docs](crate::handler).
    pub fn emit_with_metadata<P>(
        &self,
        name: impl Into<Cow<'static, str>>,
        payload: &P,
        metadata: Metadata,
    ) -> Result<(), Error>
    where
        P: Serialize + ?Sized,
    {
        self.buffer.emit_with_metadata(name, payload, metadata)
    }
}

type KeyFn = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;

/// Options of one handler. Defaults: concurrency 16, timeout 30 s, [`RetryPolicy::default`],
/// no dead-letter hook, unordered.
///
/// ```
/// use std::time::Duration;
/// use emissions_core::{HandlerOptions, RetryPolicy};
///
/// let options = HandlerOptions::default()
///     .concurrency(4)
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::default().max_attempts(3))
///     .ordered_by(|event| event.payload_json()["order_id"].as_u64().map(|id| id.to_string()));
/// assert!(options.validate("search_index").is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Most runs of this handler at once. Defaults to 16.
    pub concurrency: usize,
    /// Longest a run may take before it fails. Defaults to 30 s.
    pub timeout: Duration,
    /// Retries of failed runs. Defaults to [`RetryPolicy::default`].
    pub retry: RetryPolicy,
    /// Receives events this handler gave up on. Defaults to none (logged and counted).
    pub dead_letter: Option<DeadLetterHook>,
    key: Option<KeyFn>,
}

impl fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("dead_letter", &self.dead_letter)
            .field("ordered", &self.key.is_some())
            .finish()
    }
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            concurrency: 16,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            dead_letter: None,
            key: None,
        }
    }
}

impl HandlerOptions {
    /// Sets the concurrency limit. Defaults to 16.
    ///
    /// See [`HandlerOptions`].
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit;
        self
    }

    /// Sets the per-run timeout. Defaults to 30 s.
    ///
    /// See [`HandlerOptions`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the retry policy.
    ///
    /// See [`HandlerOptions`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the dead-letter hook.
    ///
    /// ```
    /// let o = emissions_core::HandlerOptions::default().dead_letter(|dead| drop(dead));
    /// assert!(o.dead_letter.is_some());
    /// ```
    pub fn dead_letter(mut self, hook: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        self.dead_letter = Some(DeadLetterHook::new(hook));
        self
    }

    /// Runs events with the same key one at a time, in dispatch order (including their
    /// retries); events whose key is `None`, and different keys, still run concurrently.
    /// Defaults to unordered.
    ///
    /// See [`HandlerOptions`].
    pub fn ordered_by(
        mut self,
        key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Checks the options; the error names the handler and the field.
    ///
    /// ```
    /// let err = emissions_core::HandlerOptions::default().concurrency(0).validate("h").unwrap_err();
    /// assert_eq!(err.to_string(), "adapter `h`: invalid `concurrency`: must be at least 1");
    /// ```
    pub fn validate(&self, handler: &str) -> Result<(), Error> {
        if self.concurrency == 0 {
            return Err(Error::config(handler, "concurrency", "must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(Error::config(
                handler,
                "timeout",
                "must be longer than zero",
            ));
        }
        self.retry.validate(handler)
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
    /// Runs that ended in [`Handled::Done`].
    pub succeeded: u64,
    /// Runs that ended in [`Handled::Ignored`].
    pub ignored: u64,
    /// Events given up on after the retry policy (dead-lettered).
    pub failed: u64,
    /// Runs cancelled by shutdown.
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

/// One handler's line in a [`DeliveryReport`](crate::DeliveryReport).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerReport {
    /// The handler's registered name.
    pub name: String,
    /// Its counts since start.
    pub counts: HandlerCounts,
}

#[derive(Debug, Default)]
struct HandlerCounters {
    dispatched: AtomicU64,
    succeeded: AtomicU64,
    ignored: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl HandlerCounters {
    fn snapshot(&self) -> HandlerCounts {
        HandlerCounts {
            dispatched: self.dispatched.load(Ordering::Acquire),
            succeeded: self.succeeded.load(Ordering::Acquire),
            ignored: self.ignored.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            dropped: self.dropped.load(Ordering::Acquire),
        }
    }
}

/// One registered handler.
struct Registered {
    name: Arc<str>,
    handler: Arc<dyn Handler>,
    options: HandlerOptions,
    permits: Arc<Semaphore>,
    counts: HandlerCounters,
    /// For ordered handlers: per key, the completion signal of the latest run.
    chains: Mutex<HashMap<String, oneshot::Receiver<()>>>,
}

/// Handler state shared by the dispatcher, its tasks and the instance.
pub(crate) struct Handlers {
    registered: Vec<Registered>,
    routes: HashMap<String, Vec<usize>>,
    depth_limit: u32,
    in_flight: AtomicUsize,
    tasks: TaskTracker,
    cancel: CancellationToken,
    instance: OnceLock<WeakEmissions>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.registered.iter().map(|r| &*r.name).collect();
        f.debug_struct("Handlers")
            .field("handlers", &names)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl Handlers {
    pub(crate) fn new(
        list: Vec<(String, Box<dyn Handler>, HandlerOptions)>,
        depth_limit: u32,
    ) -> Self {
        let mut routes: HashMap<String, Vec<usize>> = HashMap::new();
        let registered = list
            .into_iter()
            .enumerate()
            .map(|(index, (name, handler, options))| {
                let handler: Arc<dyn Handler> = Arc::from(handler);
                for event in handler.events() {
                    let subscribers = routes.entry((*event).to_owned()).or_default();
                    if !subscribers.contains(&index) {
                        subscribers.push(index);
                    }
                }
                Registered {
                    name: Arc::from(name.as_str()),
                    permits: Arc::new(Semaphore::new(options.concurrency)),
                    handler,
                    options,
                    counts: HandlerCounters::default(),
                    chains: Mutex::new(HashMap::new()),
                }
            })
            .collect();
        Handlers {
            registered,
            routes,
            depth_limit,
            in_flight: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            instance: OnceLock::new(),
        }
    }

    pub(crate) fn bind(&self, instance: WeakEmissions) {
        let _ = self.instance.set(instance);
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    pub(crate) fn reports(&self) -> Vec<HandlerReport> {
        self.registered
            .iter()
            .map(|r| HandlerReport {
                name: r.name.to_string(),
                counts: r.counts.snapshot(),
            })
            .collect()
    }
}

/// The pipeline consumer that starts handler tasks.
pub(crate) struct Dispatcher {
    pub(crate) handlers: Arc<Handlers>,
}

#[async_trait]
impl Adapter for Dispatcher {
    fn interested(&self, event: &Event) -> bool {
        self.handlers.routes.contains_key(event.name())
    }

    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let handlers = &self.handlers;
        for event in events {
            let Some(subscribers) = handlers.routes.get(event.name()) else {
                continue;
            };
            for &index in subscribers {
                let registered = &handlers.registered[index];
                // Waiting here is the backpressure of a saturated handler.
                let Ok(permit) = registered.permits.clone().acquire_owned().await else {
                    continue;
                };
                let previous = registered.options.key.as_ref().and_then(|key| {
                    let key = key(event)?;
                    let (done, signal) = oneshot::channel();
                    let mut chains = registered.chains.lock().unwrap_or_else(|e| e.into_inner());
                    if chains.len() >= 1024 {
                        chains.retain(|_, rx| {
                            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                        });
                    }
                    let previous = chains.insert(key, signal);
                    Some((previous, done))
                });
                let (previous, done) = match previous {
                    Some((previous, done)) => (previous, Some(done)),
                    None => (None, None),
                };
                registered.counts.dispatched.fetch_add(1, Ordering::AcqRel);
                handlers.in_flight.fetch_add(1, Ordering::AcqRel);
                let run = Run {
                    handlers: handlers.clone(),
                    index,
                    event: event.clone(),
                    settled: false,
                    _permit: permit,
                    _done: done,
                };
                handlers.tasks.spawn(run.execute(previous));
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self, deadline: Instant) -> Result<(), BoxError> {
        let handlers = &self.handlers;
        // If the core stops waiting (deadline), cancel the runs rather than leave them detached.
        let _cancel_on_drop = handlers.cancel.clone().drop_guard();
        handlers.tasks.close();
        if tokio::time::timeout_at(deadline, handlers.tasks.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        handlers.cancel.cancel();
        handlers.tasks.wait().await;
        Err("handler runs still in progress at the deadline were cancelled".into())
    }
}

/// One handler run for one event, with retries. Counts itself as dropped if it never settles.
struct Run {
    handlers: Arc<Handlers>,
    index: usize,
    event: Event,
    settled: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Dropped when the run ends, releasing the next run of the same key.
    _done: Option<oneshot::Sender<()>>,
}

enum Attempt {
    Handled(Handled),
    Failed(String),
    Cancelled,
}

impl Run {
    fn registered(&self) -> &Registered {
        &self.handlers.registered[self.index]
    }

    async fn execute(mut self, previous: Option<oneshot::Receiver<()>>) {
        let cancel = self.handlers.cancel.clone();
        if let Some(previous) = previous {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = previous => {}
            }
        }
        let Some(emissions) = self
            .handlers
            .instance
            .get()
            .and_then(WeakEmissions::upgrade)
        else {
            return;
        };
        let policy = self.registered().options.retry.clone();
        let first_attempt = Instant::now();
        let mut attempt = 1u32;
        loop {
            let started = Instant::now();
            let buffer = Buffer::with_cascade(emissions.clone(), Some(self.cascade()));
            let outcome = self.attempt(&buffer, attempt, &cancel).await;
            let duration = started.elapsed();
            let registered = self.registered();
            let (handler, event) = (&*registered.name, self.event.name());
            let reason = match outcome {
                Attempt::Cancelled => {
                    let _ = buffer.terminate();
                    return;
                }
                Attempt::Handled(handled) => {
                    self.commit_children(&emissions, &buffer).await;
                    let (telemetry, counter) = match handled {
                        Handled::Done => (
                            TelemetryEvent::HandlerSuccess {
                                handler,
                                event,
                                duration,
                            },
                            &registered.counts.succeeded,
                        ),
                        Handled::Ignored => (
                            TelemetryEvent::HandlerIgnored { handler, event },
                            &registered.counts.ignored,
                        ),
                    };
                    emissions.telemetry(&telemetry);
                    counter.fetch_add(1, Ordering::AcqRel);
                    self.settled = true;
                    return;
                }
                Attempt::Failed(reason) => reason,
            };
            let _ = buffer.terminate();
            emissions.telemetry(&TelemetryEvent::HandlerError {
                handler,
                event,
                reason: &reason,
                duration,
            });
            let delay = policy.delay(attempt);
            let out_of_time = policy
                .elapsed_limit()
                .is_some_and(|limit| first_attempt.elapsed() + delay > limit);
            if attempt >= policy.attempts() || out_of_time {
                self.dead_letter(reason, attempt);
                return;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    fn cascade(&self) -> Cascade {
        let metadata = self.event.metadata();
        let depth = metadata
            .get(CASCADE_DEPTH)
            .and_then(serde_json::Value::as_u64)
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0);
        Cascade {
            causation_id: self.event.id().to_string(),
            correlation_id: metadata
                .get(CORRELATION_ID)
                .cloned()
                .unwrap_or_else(|| self.event.id().to_string().into()),
            depth: depth.saturating_add(1),
            limit: self.handlers.depth_limit,
            handler: self.registered().name.clone(),
        }
    }

    async fn attempt(&self, buffer: &Buffer, attempt: u32, cancel: &CancellationToken) -> Attempt {
        let registered = self.registered();
        let ctx = HandlerContext {
            handler: registered.name.clone(),
            attempt,
            buffer: buffer.clone(),
        };
        let span = tracing::info_span!(
            target: "emissions",
            "handler",
            handler = &*registered.name,
            event = self.event.name(),
            event_id = %self.event.id(),
            attempt,
        );
        let run = buffer
            .scope(registered.handler.handle(&self.event, &ctx))
            .instrument(span);
        #[cfg(feature = "opentelemetry")]
        let otel_span = crate::otel::HandlerSpan::start(&self.event, &registered.name, attempt);
        #[cfg(feature = "opentelemetry")]
        let run = otel_span.wrap(run);
        let guarded = tokio::time::timeout(
            registered.options.timeout,
            AssertUnwindSafe(run).catch_unwind(),
        );
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => Attempt::Cancelled,
            result = guarded => match result {
                Ok(Ok(Ok(handled))) => Attempt::Handled(handled),
                Ok(Ok(Err(error))) => Attempt::Failed(error.to_string()),
                Ok(Err(panic)) => Attempt::Failed(format!("panicked: {}", panic_message(&*panic))),
                Err(_) => Attempt::Failed(format!("timed out after {:?}", registered.options.timeout)),
            },
        };
        #[cfg(feature = "opentelemetry")]
        otel_span.finish(match &outcome {
            Attempt::Failed(reason) => Some(reason),
            Attempt::Cancelled => Some("cancelled by shutdown"),
            Attempt::Handled(_) => None,
        });
        outcome
    }

    async fn commit_children(&self, emissions: &Emissions, buffer: &Buffer) {
        if let Err(err) = buffer.commit().await {
            // Shut down while the handler ran: the follow-up events cannot be delivered.
            for child in buffer.events() {
                emissions.telemetry(&TelemetryEvent::EventDropped {
                    event_name: child.name(),
                    reason: DropReason::Shutdown,
                    adapter: None,
                    handler: Some(&self.registered().name),
                });
            }
            tracing::warn!(target: "emissions", handler = &*self.registered().name, error = %err, "follow-up events not committed");
            let _ = buffer.terminate();
        }
    }

    fn dead_letter(&mut self, reason: String, attempts: u32) {
        let registered = &self.handlers.registered[self.index];
        tracing::warn!(
            target: "emissions",
            handler = &*registered.name,
            event = self.event.name(),
            attempts,
            reason = %reason,
            "handler gave up; handing the event to the dead-letter hook"
        );
        if let Some(hook) = &registered.options.dead_letter {
            let dead = DeadLetter {
                destination: registered.name.clone(),
                events: vec![self.event.clone()],
                failure: Failure::retryable(reason),
                attempts,
            };
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook.call(dead))) {
                tracing::error!(target: "emissions", handler = &*registered.name, panic = panic_message(&*panic), "dead-letter hook panicked");
            }
        }
        registered.counts.failed.fetch_add(1, Ordering::AcqRel);
        self.settled = true;
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let registered = &self.handlers.registered[self.index];
        if !self.settled {
            registered.counts.dropped.fetch_add(1, Ordering::AcqRel);
            if let Some(emissions) = self
                .handlers
                .instance
                .get()
                .and_then(WeakEmissions::upgrade)
            {
                emissions.telemetry(&TelemetryEvent::EventDropped {
                    event_name: self.event.name(),
                    reason: DropReason::Shutdown,
                    adapter: None,
                    handler: Some(&registered.name),
                });
            }
        }
        self.handlers.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(emissions) = self
            .handlers
            .instance
            .get()
            .and_then(WeakEmissions::upgrade)
        {
            emissions.notify_progress();
        }
    }
}
