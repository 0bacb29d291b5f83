//! [`Emissions`]: the instance handle, its builder, and shutdown.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::durable::{Attempt, AttemptSink, DurableLane};
use crate::pipeline::Source;
use crate::shutdown::Engine;
use crate::telemetry::{ObserverId, TelemetryEvent};
use crate::{Buffer, DeliveryReport, EmissionsBuilder, Error, Event, Metadata, Receipt};

/// A running emissions instance: cheap to clone, `Send + Sync`.
///
/// Open a [`Buffer`] per request with [`start`](Self::start), emit into it, and commit; or emit a
/// single event with [`emit_now`](Self::emit_now). [`shutdown`](Self::shutdown) drains and
/// reports. Dropping the last handle (and every buffer) also closes the pipeline: consumers drain
/// in the background for up to 10 seconds, without a report.
///
/// In memory, an event that is queued or waiting for a retry when the process dies is lost and
/// reported nowhere; shutdown counts it (dropped) and hands it to the dead-letter hook.
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
/// let emissions = Emissions::builder().adapter(emissions_core::Named::new("print", Print))?.start().await?;
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

/// Held by every handle and buffer; when the last one goes, the engine is detached (drains in
/// the background for up to 10 seconds, without a report).
struct Inner {
    engine: Arc<Engine>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.engine.detach();
    }
}

impl fmt::Debug for Emissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ledger = self.inner.engine.pipeline().ledger();
        let names: Vec<&str> = ledger.lane_names().collect();
        f.debug_struct("Emissions")
            .field("adapters", &names)
            .field("closed", &self.inner.engine.is_closed())
            .finish()
    }
}

/// A handle that does not keep the instance alive (held by the handler dispatcher).
#[derive(Clone, Debug)]
pub(crate) struct WeakEmissions(Weak<Inner>);

impl WeakEmissions {
    pub(crate) fn upgrade(&self) -> Option<Emissions> {
        self.0.upgrade().map(|inner| Emissions { inner })
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
        self.commit(&Ready(Mutex::new(Some(vec![event])))).await
    }

    /// Commits events that already exist — received from another instance, or handed on by an
    /// adapter that fans out to instances of its own — keeping their ids, times, payloads and
    /// metadata, so every wire carries the same identity. All or nothing, as a buffer's commit.
    ///
    /// ```
    /// # use emissions_core::{Emissions, Event, Metadata};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let event = Event::new("order_created", &serde_json::json!({"id": 7}), Metadata::new())?;
    /// let receipt = emissions.forward(vec![event]).await?;
    /// assert_eq!(receipt.event_count(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn forward(&self, events: Vec<Event>) -> Result<Receipt, Error> {
        self.ensure_open()?;
        self.commit(&Ready(Mutex::new(Some(events)))).await
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
            .engine
            .pipeline()
            .ledger()
            .telemetry()
            .attach(Arc::new(observer))
    }

    /// Detaches an observer; returns whether it was attached.
    ///
    /// See [`attach_observer`](Self::attach_observer).
    pub fn detach_observer(&self, id: ObserverId) -> bool {
        self.inner.engine.pipeline().ledger().telemetry().detach(id)
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
        self.inner.engine.pipeline().ledger().report()
    }

    /// Per adapter, what is not finished yet — queued, in flight, waiting for a retry or
    /// behind its key — and the age of the oldest of it: backlog and lag, read now.
    ///
    /// See [`AdapterBacklog`](crate::AdapterBacklog).
    pub fn backlog(&self) -> Vec<crate::AdapterBacklog> {
        let pipeline = self.inner.engine.pipeline();
        let now = std::time::Instant::now();
        pipeline
            .lanes()
            .iter()
            .enumerate()
            .map(|(index, lane)| {
                let (queued, queued_oldest) = lane.pending_in_queue();
                let (in_flight, waiting, held_oldest) = lane.backlog().pending();
                let oldest = match (queued_oldest, held_oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                crate::AdapterBacklog {
                    name: pipeline.ledger().lane_name(index).to_string(),
                    queued,
                    in_flight,
                    waiting,
                    oldest_pending: oldest.map(|at| now.saturating_duration_since(at)),
                }
            })
            .collect()
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
        self.inner.engine.pipeline().ledger().idle().await;
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
        self.inner.engine.is_closed()
    }

    /// Stops accepting events (later emits and commits fail with [`Error::ShutDown`]; a
    /// committer waiting for room is released with it and keeps its events), drains every
    /// queue and every retry due before the deadline, calls each adapter's `shutdown`, waits
    /// for handler runs, and returns the per-adapter report.
    ///
    /// Whatever has not settled when `timeout` runs out — still queued, in flight, waiting for
    /// a retry, or a handler run still going — is counted as dropped (reason `shutdown`),
    /// handed to the dead-letter hook, and the adapter is marked `deadline_exceeded`. A retry
    /// due after the deadline is dropped at once rather than waited for. The report is built
    /// only after all that work has ended (an adapter or handler that blocks its thread and
    /// does not return within a second of the deadline is abandoned, its events counted as
    /// dropped), so it always balances and never changes afterwards.
    ///
    /// Idempotent and cancel-safe: any number of calls, concurrent or repeated, all return
    /// the same report; dropping a `shutdown` future stops nothing (the shutdown goes on in
    /// the background). A later call with a shorter timeout brings the deadline forward; it
    /// is never pushed back.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let report = emissions.shutdown(Duration::from_secs(5)).await;
    /// assert!(report.is_balanced());
    /// assert_eq!(emissions.shutdown(Duration::ZERO).await, report);
    /// assert!(matches!(emissions.emit_now("late", &1).await, Err(emissions_core::Error::ShutDown)));
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> DeliveryReport {
        self.inner.engine.shutdown(timeout).await
    }

    /// Where a durable store (the `emissions-outbox` crate) hands adapter `adapter` its
    /// attempts; `None` if no adapter has that name. See [`durable`](crate::durable).
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().adapter(emissions_core::Named::new("test", emissions_testing::TestAdapter::new()))?.start().await?;
    /// assert_eq!(emissions.durable_lane("test").unwrap().adapter(), "test");
    /// assert!(emissions.durable_lane("kafka").is_none());
    /// # Ok(()) }
    /// ```
    pub fn durable_lane(&self, adapter: &str) -> Option<DurableLane> {
        let pipeline = self.inner.engine.pipeline();
        let ledger = pipeline.ledger();
        let index = ledger.lane_names().position(|name| name == adapter)?;
        Some(DurableLane::new(
            self.downgrade(),
            index,
            ledger.lane_name(index).clone(),
            pipeline.lanes()[index].retry_policy().clone(),
            pipeline.lanes()[index].key_fn().cloned(),
        ))
    }

    /// The [`Extension`](crate::Extension) of type `T` attached to this instance, if any.
    ///
    /// See [`Extension`](crate::Extension).
    pub fn extension<T: crate::Extension>(&self) -> Option<Arc<T>> {
        self.extensions()
            .iter()
            .find_map(|attached| attached.get::<T>())
    }

    pub(crate) fn extensions(&self) -> &[crate::extension::Attached] {
        self.inner.engine.extensions()
    }

    /// The registered adapters' names, in registration order (the handler dispatcher, when
    /// there are handlers, is `handlers`).
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().adapter(emissions_core::Named::new("test", emissions_testing::TestAdapter::new()))?.start().await?;
    /// assert_eq!(emissions.adapter_names(), ["test"]);
    /// # Ok(()) }
    /// ```
    pub fn adapter_names(&self) -> Vec<String> {
        let ledger = self.inner.engine.pipeline().ledger();
        ledger.lane_names().map(str::to_owned).collect()
    }

    pub(crate) async fn submit_durable(
        &self,
        lane: usize,
        attempts: Vec<Attempt>,
        sink: Arc<dyn AttemptSink>,
    ) -> Result<(), Error> {
        self.inner
            .engine
            .pipeline()
            .submit_durable(lane, attempts, sink)
            .await
    }

    pub(crate) fn from_engine(engine: Arc<Engine>) -> Self {
        Emissions {
            inner: Arc::new(Inner { engine }),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakEmissions {
        WeakEmissions(Arc::downgrade(&self.inner))
    }

    pub(crate) fn ensure_open(&self) -> Result<(), Error> {
        if self.is_shut_down() {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Records a commit of `source`'s events (see [`Pipeline::commit`](crate::pipeline::Pipeline::commit)).
    pub(crate) async fn commit(&self, source: &impl Source) -> Result<Receipt, Error> {
        self.ensure_open()?;
        self.inner.engine.pipeline().commit(source).await
    }

    pub(crate) fn telemetry(&self, event: &TelemetryEvent<'_>) {
        self.inner
            .engine
            .pipeline()
            .ledger()
            .telemetry()
            .emit(event);
    }
}

/// The events of [`Emissions::emit_now`] and [`Emissions::forward`], ready as they are.
struct Ready(Mutex<Option<Vec<Event>>>);

impl Source for Ready {
    fn pending(&self) -> Result<usize, Error> {
        let events = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(events.as_ref().map_or(0, Vec::len))
    }

    fn take(&self, room: usize) -> Result<Option<Vec<Event>>, Error> {
        let mut events = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if events.as_ref().is_some_and(|e| e.len() > room) {
            return Ok(None);
        }
        Ok(Some(events.take().unwrap_or_default()))
    }
}
