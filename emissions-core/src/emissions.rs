//! [`Emissions`]: the instance handle, its builder, and shutdown.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::handler::{DISPATCHER, Dispatcher, Handlers};
use crate::pipeline::{Consumer, Control, Pipeline, panic_message};
use crate::receipt::{AdapterReport, DeliveryReport};
use crate::telemetry::{ObserverId, TelemetryEvent};
use crate::{
    Adapter, AdapterOptions, Buffer, Error, Event, Handler, HandlerOptions, Metadata,
    OverflowPolicy, Receipt,
};

/// How long consumers get to stop once the deadline has passed and they were told to abort.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// A running emissions instance: cheap to clone, `Send + Sync`.
///
/// Open a [`Buffer`] per request with [`start`](Self::start), emit into it, and commit; or emit a
/// single event with [`emit_now`](Self::emit_now). [`shutdown`](Self::shutdown) drains and
/// reports. Dropping the last handle (and every buffer) also closes the pipeline: consumers drain
/// in the background for up to 10 seconds, without a report.
///
/// ```
/// use emissions_core::{async_trait, Adapter, BatchError, Emissions, Event};
/// use std::time::Duration;
///
/// struct Print;
///
/// #[async_trait]
/// impl Adapter for Print {
///     async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
///         for e in events {
///             println!("{}", e.name());
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder().adapter("print", Print).start().await?;
///
/// let buffer = emissions.start();
/// buffer.emit("order_created", &serde_json::json!({"id": 1}))?;
/// let receipt = buffer.commit().await?;
/// assert!(receipt.settled().await.is_delivered());
///
/// let report = emissions.shutdown(Duration::from_secs(5)).await;
/// assert_eq!(report.adapter("print").unwrap().counts.delivered, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Emissions {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    handlers: Option<Arc<Handlers>>,
    closed: AtomicBool,
    consumers: Mutex<Vec<JoinHandle<()>>>,
    control: Arc<Control>,
    report: tokio::sync::OnceCell<DeliveryReport>,
}

impl fmt::Debug for Emissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .inner
            .pipeline
            .shared
            .slots
            .iter()
            .map(|s| &*s.name)
            .collect();
        f.debug_struct("Emissions")
            .field("adapters", &names)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// A handle that does not keep the instance alive (held by handler tasks' dispatcher).
#[derive(Clone, Debug)]
pub(crate) struct WeakEmissions(Weak<Inner>);

impl WeakEmissions {
    pub(crate) fn upgrade(&self) -> Option<Emissions> {
        self.0.upgrade().map(|inner| Emissions { inner })
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

impl Emissions {
    /// A builder to register adapters and start an instance.
    ///
    /// See [`EmissionsBuilder`].
    pub fn builder() -> EmissionsBuilder {
        EmissionsBuilder::default()
    }

    /// Opens a new buffer (reports `emissions.buffer.started`).
    ///
    /// See [`Buffer`].
    pub fn start(&self) -> Buffer {
        Buffer::new(self.clone())
    }

    /// Commits one event at once, without a buffer, for work outside requests.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let receipt = emissions.emit_now("nightly_report_ready", &serde_json::json!({"rows": 10})).await?;
    /// assert_eq!(receipt.event_count(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn emit_now<P>(
        &self,
        name: impl Into<Cow<'static, str>>,
        payload: &P,
    ) -> Result<Receipt, Error>
    where
        P: Serialize + ?Sized,
    {
        self.ensure_open()?;
        let event = Event::new(name, payload, Metadata::new())?;
        self.dispatch(|| Ok(vec![event])).await
    }

    /// Attaches a telemetry observer; it sees every telemetry event of this instance, on the
    /// thread that produced it. Keep it cheap.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// use emissions_core::telemetry::names;
    /// use std::sync::{Arc, Mutex};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// let id = emissions.attach_observer(move |event| sink.lock().unwrap().push(event.name()));
    /// let _buffer = emissions.start();
    /// assert!(emissions.detach_observer(id));
    /// assert_eq!(seen.lock().unwrap()[0], names::BUFFER_STARTED);
    /// # Ok(()) }
    /// ```
    pub fn attach_observer(
        &self,
        observer: impl Fn(&TelemetryEvent<'_>) + Send + Sync + 'static,
    ) -> ObserverId {
        self.inner
            .pipeline
            .shared
            .telemetry
            .attach(Arc::new(observer))
    }

    /// Detaches an observer; returns whether it was attached.
    ///
    /// See [`attach_observer`](Self::attach_observer).
    pub fn detach_observer(&self, id: ObserverId) -> bool {
        self.inner.pipeline.shared.telemetry.detach(id)
    }

    /// Per-adapter counts so far.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// assert!(emissions.stats().adapters.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> DeliveryReport {
        DeliveryReport {
            adapters: self
                .inner
                .pipeline
                .shared
                .slots
                .iter()
                .map(|slot| AdapterReport {
                    name: slot.name.to_string(),
                    counts: slot.counters.snapshot(),
                    shutdown_error: slot
                        .shutdown_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                    deadline_exceeded: slot.deadline_exceeded.load(Ordering::Acquire),
                })
                .collect(),
            handlers: self
                .inner
                .handlers
                .as_ref()
                .map(|h| h.reports())
                .unwrap_or_default(),
        }
    }

    /// Waits until the instance is idle: every committed event has settled at every adapter
    /// (delivered, filtered, failed or dropped) and no handler is running — including the
    /// follow-up events that handlers commit meanwhile. Test helpers use it instead of sleeping.
    /// Under a continuous stream of commits it waits until the stream pauses.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// emissions.emit_now("a", &1).await?;
    /// emissions.settled().await;
    /// assert!(emissions.stats().is_balanced());
    /// # Ok(()) }
    /// ```
    pub async fn settled(&self) {
        let shared = &self.inner.pipeline.shared;
        let _watch = shared.watch_progress();
        loop {
            let notified = shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            fence(Ordering::SeqCst);
            let adapters_idle = shared.slots.iter().all(|slot| {
                let counts = slot.counters.snapshot();
                counts.settled() >= counts.committed
            });
            let handlers_idle = self.inner.handlers.as_ref().is_none_or(|h| h.is_idle());
            if adapters_idle && handlers_idle {
                return;
            }
            notified.await;
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// assert!(!emissions.is_shut_down());
    /// # Ok(()) }
    /// ```
    pub fn is_shut_down(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Stops accepting events (later emits and commits fail with [`Error::ShutDown`]), drains
    /// every queue, calls each adapter's `shutdown`, and returns the per-adapter report.
    ///
    /// Whatever has not settled when `timeout` runs out — still queued, in flight, or waiting for
    /// a retry — is counted as dropped (reason `shutdown`) and the adapter is marked
    /// `deadline_exceeded`, so the report always balances. Calling it again returns the same
    /// report.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let report = emissions.shutdown(Duration::from_secs(5)).await;
    /// assert!(report.is_balanced());
    /// assert!(matches!(emissions.emit_now("late", &1).await, Err(emissions_core::Error::ShutDown)));
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> DeliveryReport {
        self.inner
            .report
            .get_or_init(|| self.shutdown_now(timeout))
            .await
            .clone()
    }

    async fn shutdown_now(&self, timeout: Duration) -> DeliveryReport {
        let deadline = Instant::now() + timeout;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.control.set_deadline(deadline);
        self.inner.pipeline.close().await;
        let handles: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
        let mut all = futures_util::future::join_all(handles);
        if tokio::time::timeout_at(deadline, &mut all).await.is_err() {
            self.inner.control.abort.cancel();
            if tokio::time::timeout(ABORT_GRACE, &mut all).await.is_err() {
                for abort in aborts {
                    abort.abort();
                }
            }
        }
        self.inner.pipeline.drain_leftovers();
        self.stats()
    }

    pub(crate) fn ensure_open(&self) -> Result<(), Error> {
        if self.is_shut_down() {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    /// See [`Pipeline::dispatch`](crate::pipeline::Pipeline::dispatch).
    pub(crate) async fn dispatch(
        &self,
        take: impl FnOnce() -> Result<Vec<Event>, Error>,
    ) -> Result<Receipt, Error> {
        self.ensure_open()?;
        self.inner.pipeline.dispatch(take).await
    }

    pub(crate) fn telemetry(&self, event: &TelemetryEvent<'_>) {
        self.inner.pipeline.shared.telemetry.emit(event);
    }

    pub(crate) fn notify_progress(&self) {
        self.inner.pipeline.shared.progressed();
    }
}

struct Registration {
    name: String,
    adapter: Box<dyn Adapter>,
    options: Option<AdapterOptions>,
}

/// Registers adapters with their options, then [`start`](Self::start)s the instance.
///
/// ```
/// use emissions_core::{async_trait, Adapter, AdapterOptions, BatchError, Emissions, Event, OverflowPolicy};
///
/// struct Noop;
/// #[async_trait]
/// impl Adapter for Noop {
///     async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder()
///     .default_options(AdapterOptions::default().max_demand(100))
///     .adapter("audit", Noop)
///     .adapter_with("kafka", Noop, AdapterOptions::default().overflow(OverflowPolicy::Block))
///     .start()
///     .await?;
/// # let _ = emissions;
///
/// let err = Emissions::builder()
///     .adapter_with("kafka", Noop, AdapterOptions::default().capacity(0))
///     .start()
///     .await
///     .unwrap_err();
/// assert_eq!(err.to_string(), "adapter `kafka`: invalid `capacity`: must be at least 1");
/// # Ok(()) }
/// ```
pub struct EmissionsBuilder {
    adapters: Vec<Registration>,
    defaults: AdapterOptions,
    handlers: Vec<(String, Box<dyn Handler>, HandlerOptions)>,
    handler_queue: AdapterOptions,
    cascade_depth_limit: u32,
}

impl Default for EmissionsBuilder {
    fn default() -> Self {
        EmissionsBuilder {
            adapters: Vec::new(),
            defaults: AdapterOptions::default(),
            handlers: Vec::new(),
            handler_queue: AdapterOptions::default(),
            cascade_depth_limit: 8,
        }
    }
}

impl fmt::Debug for EmissionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.adapters.iter().map(|r| r.name.as_str()).collect();
        let handlers: Vec<&str> = self.handlers.iter().map(|h| h.0.as_str()).collect();
        f.debug_struct("EmissionsBuilder")
            .field("adapters", &names)
            .field("defaults", &self.defaults)
            .field("handlers", &handlers)
            .field("handler_queue", &self.handler_queue)
            .field("cascade_depth_limit", &self.cascade_depth_limit)
            .finish()
    }
}

impl EmissionsBuilder {
    /// Registers an adapter under a unique name, with the default options.
    ///
    /// See [`EmissionsBuilder`].
    pub fn adapter(mut self, name: impl Into<String>, adapter: impl Adapter) -> Self {
        self.adapters.push(Registration {
            name: name.into(),
            adapter: Box::new(adapter),
            options: None,
        });
        self
    }

    /// Registers an adapter under a unique name, with its own options.
    ///
    /// See [`EmissionsBuilder`].
    pub fn adapter_with(
        mut self,
        name: impl Into<String>,
        adapter: impl Adapter,
        options: AdapterOptions,
    ) -> Self {
        self.adapters.push(Registration {
            name: name.into(),
            adapter: Box::new(adapter),
            options: Some(options),
        });
        self
    }

    /// Options for adapters registered with [`adapter`](Self::adapter). Defaults to
    /// [`AdapterOptions::default`].
    ///
    /// See [`EmissionsBuilder`].
    pub fn default_options(mut self, options: AdapterOptions) -> Self {
        self.defaults = options;
        self
    }

    /// Registers a handler under a unique name, with the default [`HandlerOptions`].
    ///
    /// See the [handler module](crate::handler).
    pub fn handler(self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.handler_with(name, handler, HandlerOptions::default())
    }

    /// Registers a handler under a unique name, with its own options.
    ///
    /// ```
    /// # use emissions_core::{async_trait, BoxError, Emissions, Event, Handled, Handler, HandlerContext, HandlerOptions};
    /// # struct Audit;
    /// # #[async_trait]
    /// # impl Handler for Audit {
    /// #     fn events(&self) -> &[&str] { &["order_created"] }
    /// #     async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> { Ok(Handled::Done) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder()
    ///     .handler_with("audit", Audit, HandlerOptions::default().concurrency(1))
    ///     .cascade_depth_limit(4)
    ///     .start()
    ///     .await?;
    /// # let _ = emissions;
    /// # Ok(()) }
    /// ```
    pub fn handler_with(
        mut self,
        name: impl Into<String>,
        handler: impl Handler,
        options: HandlerOptions,
    ) -> Self {
        self.handlers
            .push((name.into(), Box::new(handler), options));
        self
    }

    /// Queue options of the handler dispatcher (the adapter named `handlers`). Defaults to
    /// [`AdapterOptions::default`]. [`OverflowPolicy::Block`](crate::OverflowPolicy::Block) is
    /// refused: a handler committing follow-up events into its own full queue would deadlock.
    ///
    /// See [`handler_with`](Self::handler_with).
    pub fn handler_queue(mut self, options: AdapterOptions) -> Self {
        self.handler_queue = options;
        self
    }

    /// The deepest cascade allowed: a follow-up event more than `limit` handler hops from its
    /// root is dropped and reported. Defaults to 8.
    ///
    /// See [`handler_with`](Self::handler_with).
    pub fn cascade_depth_limit(mut self, limit: u32) -> Self {
        self.cascade_depth_limit = limit;
        self
    }

    /// Validates every adapter's options, runs each adapter's `init` in registration order, and
    /// starts one consumer task per adapter. Must run inside a tokio runtime.
    ///
    /// Fails with [`Error::Config`] (naming the adapter and the field) or [`Error::Init`].
    ///
    /// See [`EmissionsBuilder`].
    pub async fn start(mut self) -> Result<Emissions, Error> {
        let mut seen = HashSet::new();
        let mut registrations = Vec::with_capacity(self.adapters.len() + 1);
        for (name, _, options) in &self.handlers {
            check_name(name, &mut seen)?;
            options.validate(name)?;
        }
        let handlers = if self.handlers.is_empty() {
            None
        } else {
            if self.handler_queue.overflow == OverflowPolicy::Block {
                return Err(Error::config(
                    DISPATCHER,
                    "overflow",
                    "Block can deadlock handlers that emit follow-up events; use DropNewest or DropOldest",
                ));
            }
            let handlers = Arc::new(Handlers::new(
                std::mem::take(&mut self.handlers),
                self.cascade_depth_limit,
            ));
            self.adapters.push(Registration {
                name: DISPATCHER.to_owned(),
                adapter: Box::new(Dispatcher {
                    handlers: handlers.clone(),
                }),
                options: Some(self.handler_queue.clone()),
            });
            Some(handlers)
        };
        for reg in self.adapters {
            check_name(&reg.name, &mut seen)?;
            let options = reg.options.unwrap_or_else(|| self.defaults.clone());
            options.validate(&reg.name)?;
            registrations.push((reg.name, reg.adapter, options));
        }
        for (name, adapter, _) in registrations.iter_mut() {
            let init = AssertUnwindSafe(adapter.init()).catch_unwind().await;
            let failure = match init {
                Ok(Ok(())) => continue,
                Ok(Err(source)) => source,
                Err(panic) => format!("init panicked: {}", panic_message(&*panic)).into(),
            };
            return Err(Error::Init {
                adapter: name.clone(),
                source: failure,
            });
        }

        let names: Vec<Arc<str>> = registrations
            .iter()
            .map(|(n, _, _)| Arc::from(n.as_str()))
            .collect();
        let options: Vec<AdapterOptions> =
            registrations.iter().map(|(_, _, o)| o.clone()).collect();
        let (pipeline, receivers) = Pipeline::new(names, &options);
        let control = Arc::new(Control::default());
        let consumers = registrations
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(index, ((_, adapter, options), rx))| {
                tokio::spawn(
                    Consumer {
                        index,
                        adapter,
                        rx,
                        options,
                        shared: pipeline.shared.clone(),
                        control: control.clone(),
                    }
                    .run(),
                )
            })
            .collect();
        let inner = Arc::new(Inner {
            pipeline,
            handlers,
            closed: AtomicBool::new(false),
            consumers: Mutex::new(consumers),
            control,
            report: tokio::sync::OnceCell::new(),
        });
        if let Some(handlers) = &inner.handlers {
            handlers.bind(WeakEmissions(Arc::downgrade(&inner)));
        }
        Ok(Emissions { inner })
    }
}

fn check_name(name: &str, seen: &mut HashSet<String>) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::config(name, "name", "must not be empty"));
    }
    if !seen.insert(name.to_owned()) {
        return Err(Error::config(
            name,
            "name",
            "is registered twice; give each adapter and handler a unique name",
        ));
    }
    Ok(())
}
