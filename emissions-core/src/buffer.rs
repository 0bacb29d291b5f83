//! [`Buffer`]: the per-request collection of events.
//!
//! # Lifecycle
//!
//! ```text
//!  start() ──▶ Open ──emit()──▶ Open
//!               │  └──flush()──▶ Open        (events so far handed to the pipeline)
//!               ├──commit()───▶ Committed    (events handed over; closed)
//!               ├──terminate()▶ Terminated   (events discarded; closed)
//!               └──drop───────▶ Terminated   (last handle dropped while open: discarded, reported)
//! ```
//!
//! Emitting, committing, flushing or terminating a closed buffer returns
//! [`Error::BufferClosed`]; nothing is ever silently ignored.
//!
//! # Commits are all-or-nothing
//!
//! `commit` and `flush` record the buffered events for every adapter at once, or not at all.
//! The only thing a commit may wait for is room in a queue with the
//! [block policy](crate::OverflowPolicy::Block), and it waits *before* anything is recorded:
//! if the commit future is dropped there (a timeout, a cancelled request), nothing was
//! committed, the buffer is still open and still holds its events. A commit that fails for any
//! reason leaves the buffer as it was.
//!
//! # Concurrency and order
//!
//! A `Buffer` is a cheap handle (`Clone`, `Send + Sync`): spawned subtasks of a request can emit
//! into the same buffer. Events keep the order in which `emit` returned. Commits and flushes of
//! one buffer are handed to the pipeline one at a time, so successive flushes arrive in order.
//!
//! # Errors
//!
//! A payload that fails to serialize returns [`Error::Serialize`] and leaves the buffer
//! unchanged. After [`Emissions::shutdown`](crate::Emissions::shutdown), emit and commit return
//! [`Error::ShutDown`]; a failed commit keeps its events in the (still open) buffer, where
//! [`events`](Buffer::events) hands them back. From inside an adapter's `handle_events`, a
//! commit that would have to wait for room fails with [`Error::QueueFull`] — again keeping its
//! events.
//!
//! # Example
//!
//! ```
//! # use emissions_core::Emissions;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), emissions_core::Error> {
//! let emissions = Emissions::builder().start().await?;
//! let buffer = emissions.start();
//! buffer.emit("order_created", &serde_json::json!({"id": 1}))?;
//! let child = buffer.clone();
//! tokio::spawn(async move { child.emit("order_priced", &42) }).await.unwrap()?;
//! let receipt = buffer.commit().await?;
//! assert_eq!(receipt.event_count(), 2);
//! assert!(buffer.emit("late", &1).is_err());
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::ambient;
use crate::handler::Cascade;
use crate::pipeline::Source;
use crate::telemetry::{DropReason, TelemetryEvent, TerminateReason};
use crate::{BufferState, Emissions, Error, Event, Metadata, Receipt};

/// A per-request buffer of events. See the [module docs](crate::buffer) for the lifecycle.
#[derive(Clone)]
pub struct Buffer {
    shared: Arc<BufferShared>,
}

struct BufferShared {
    emissions: Emissions,
    /// Set on the child buffers of handlers: stamps causation metadata, enforces the depth limit.
    cascade: Option<Cascade>,
    state: Mutex<BufferInner>,
}

struct BufferInner {
    status: BufferState,
    events: Vec<Event>,
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Buffer")
            .field("state", &inner.status)
            .field("events", &inner.events.len())
            .finish()
    }
}

impl Buffer {
    pub(crate) fn new(emissions: Emissions) -> Self {
        Self::with_cascade(emissions, None)
    }

    /// The buffer of one handler run: follow-ups carry the cascade's metadata, and only the
    /// run commits or discards it.
    pub(crate) fn for_run(emissions: Emissions, cascade: Cascade) -> Self {
        Self::with_cascade(emissions, Some(cascade))
    }

    /// Opens a buffer (reports `emissions.buffer.started`).
    fn with_cascade(emissions: Emissions, cascade: Option<Cascade>) -> Self {
        emissions.telemetry(&TelemetryEvent::BufferStarted);
        Buffer {
            shared: Arc::new(BufferShared {
                emissions,
                cascade,
                state: Mutex::new(BufferInner {
                    status: BufferState::Open,
                    events: Vec::new(),
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BufferInner> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event with empty metadata.
    ///
    /// See the [module docs](crate::buffer).
    pub fn emit<P>(&self, name: impl Into<Cow<'static, str>>, payload: &P) -> Result<(), Error>
    where
        P: Serialize + ?Sized,
    {
        self.emit_with_metadata(name, payload, Metadata::new())
    }

    /// Appends an event with metadata.
    ///
    /// ```
    /// # use emissions_core::{Emissions, Metadata};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// # let emissions = Emissions::builder().start().await?;
    /// let buffer = emissions.start();
    /// let mut meta = Metadata::new();
    /// meta.insert("source".into(), "api".into());
    /// buffer.emit_with_metadata("order_created", &serde_json::json!({"id": 1}), meta)?;
    /// assert_eq!(buffer.events()[0].metadata()["source"], "api");
    /// # Ok(()) }
    /// ```
    pub fn emit_with_metadata<P>(
        &self,
        name: impl Into<Cow<'static, str>>,
        payload: &P,
        metadata: Metadata,
    ) -> Result<(), Error>
    where
        P: Serialize + ?Sized,
    {
        self.shared.emissions.ensure_open()?;
        let mut metadata = metadata;
        if let Some(cascade) = &self.shared.cascade {
            let name = name.into();
            if let Err(err) = cascade.stamp(&mut metadata) {
                self.shared
                    .emissions
                    .telemetry(&TelemetryEvent::EventDropped {
                        event_name: &name,
                        reason: DropReason::CascadeDepth,
                        adapter: None,
                        handler: Some(cascade.handler()),
                    });
                return Err(err);
            }
            return self.push(Event::new(name, payload, metadata)?);
        }
        self.push(Event::new(name, payload, metadata)?)
    }

    fn push(&self, event: Event) -> Result<(), Error> {
        let mut inner = self.lock();
        match inner.status {
            BufferState::Open => {
                if inner.events.capacity() == 0 {
                    // One allocation for a typical request instead of growing 4 → 8.
                    inner.events.reserve(8);
                }
                inner.events.push(event);
                Ok(())
            }
            state => Err(Error::BufferClosed { state }),
        }
    }

    /// Hands every buffered event to the pipeline and closes the buffer.
    ///
    /// Returns a [`Receipt`] to await delivery. With the default overflow policy it never waits
    /// for adapters; with [`OverflowPolicy::Block`](crate::OverflowPolicy::Block) it waits for
    /// room in that adapter's queue.
    ///
    /// See the [module docs](crate::buffer).
    pub async fn commit(&self) -> Result<Receipt, Error> {
        self.refuse_in_run()?;
        self.hand_over(BufferState::Committed).await
    }

    /// Hands the events buffered so far to the pipeline and keeps the buffer open.
    ///
    /// ```
    /// # use emissions_core::{BufferState, Emissions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// # let emissions = Emissions::builder().start().await?;
    /// let buffer = emissions.start();
    /// buffer.emit("step_one", &1)?;
    /// assert_eq!(buffer.flush().await?.event_count(), 1);
    /// buffer.emit("step_two", &2)?;
    /// assert_eq!(buffer.state(), BufferState::Open);
    /// assert_eq!(buffer.commit().await?.event_count(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self) -> Result<Receipt, Error> {
        self.refuse_in_run()?;
        self.hand_over(BufferState::Open).await
    }

    /// A handler run's buffer is committed by the run, not by the handler.
    fn refuse_in_run(&self) -> Result<(), Error> {
        match self.shared.cascade {
            Some(_) => Err(Error::HandlerBuffer),
            None => Ok(()),
        }
    }

    /// Commits a handler run's follow-up events (the run succeeded).
    pub(crate) async fn commit_for_run(&self) -> Result<Receipt, Error> {
        self.hand_over(BufferState::Committed).await
    }

    /// Discards a handler run's follow-up events (the run failed) and returns them.
    pub(crate) fn discard(&self) -> Vec<Event> {
        let events = {
            let mut inner = self.lock();
            if inner.status != BufferState::Open {
                return Vec::new();
            }
            inner.status = BufferState::Terminated;
            std::mem::take(&mut inner.events)
        };
        self.shared
            .emissions
            .telemetry(&TelemetryEvent::BufferTerminated {
                event_count: events.len(),
                reason: TerminateReason::Terminate,
            });
        events
    }

    async fn hand_over(&self, next: BufferState) -> Result<Receipt, Error> {
        let source = Handover { buffer: self, next };
        let receipt = self.shared.emissions.commit(&source).await.map_err(|err| {
            match (err, self.state()) {
                // A closed buffer says so, even after shutdown.
                (Error::ShutDown, state) if state != BufferState::Open => {
                    Error::BufferClosed { state }
                }
                (err, _) => err,
            }
        })?;
        self.shared
            .emissions
            .telemetry(&TelemetryEvent::BufferCommitted {
                event_count: receipt.event_count(),
            });
        Ok(receipt)
    }

    /// Takes the buffered events for a commit made elsewhere — a durable store writing them in
    /// the caller's database transaction (the `emissions-outbox` crate). While the returned
    /// [`PendingCommit`] lives the buffer is [`Committing`](BufferState::Committing) and
    /// refuses new events; [`PendingCommit::confirm`] marks it committed, and dropping the
    /// guard unconfirmed (the write failed, or the future was cancelled) puts the events back
    /// and reopens the buffer, so nothing is lost.
    ///
    /// ```
    /// # use emissions_core::{BufferState, Emissions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// # let emissions = Emissions::builder().start().await?;
    /// let buffer = emissions.start();
    /// buffer.emit("order_created", &1)?;
    /// let pending = buffer.begin_commit()?;
    /// assert_eq!(pending.events().len(), 1);
    /// drop(pending); // the write failed: the events are back
    /// assert_eq!((buffer.state(), buffer.events().len()), (BufferState::Open, 1));
    /// let pending = buffer.begin_commit()?;
    /// // … the store wrote `pending.events()` …
    /// assert_eq!(pending.confirm(), 1);
    /// assert_eq!(buffer.state(), BufferState::Committed);
    /// # Ok(()) }
    /// ```
    pub fn begin_commit(&self) -> Result<PendingCommit, Error> {
        self.refuse_in_run()?;
        let events = {
            let mut inner = self.lock();
            if inner.status != BufferState::Open {
                return Err(Error::BufferClosed {
                    state: inner.status,
                });
            }
            inner.status = BufferState::Committing;
            std::mem::take(&mut inner.events)
        };
        Ok(PendingCommit {
            buffer: self.clone(),
            events,
            confirmed: false,
        })
    }

    /// Discards the buffered events and closes the buffer; returns how many were discarded.
    ///
    /// ```
    /// # use emissions_core::{BufferState, Emissions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// # let emissions = Emissions::builder().start().await?;
    /// let buffer = emissions.start();
    /// buffer.emit("order_created", &1)?;
    /// assert_eq!(buffer.terminate()?, 1);
    /// assert_eq!(buffer.state(), BufferState::Terminated);
    /// # Ok(()) }
    /// ```
    pub fn terminate(&self) -> Result<usize, Error> {
        self.refuse_in_run()?;
        let discarded = {
            let mut inner = self.lock();
            if inner.status != BufferState::Open {
                return Err(Error::BufferClosed {
                    state: inner.status,
                });
            }
            inner.status = BufferState::Terminated;
            std::mem::take(&mut inner.events).len()
        };
        self.shared
            .emissions
            .telemetry(&TelemetryEvent::BufferTerminated {
                event_count: discarded,
                reason: TerminateReason::Terminate,
            });
        Ok(discarded)
    }

    /// Where the buffer is in its lifecycle.
    ///
    /// See [`flush`](Self::flush).
    pub fn state(&self) -> BufferState {
        self.lock().status
    }

    /// The events buffered and not yet handed over, in emit order.
    ///
    /// See [`emit_with_metadata`](Self::emit_with_metadata).
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// Runs `future` with this buffer as the ambient buffer of the task, so that
    /// [`emissions_core::emit`](crate::emit) and friends reach it from deep in the call stack.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// # let emissions = Emissions::builder().start().await?;
    /// async fn deep_in_the_stack() -> Result<(), emissions_core::Error> {
    ///     emissions_core::emit("order_created", &serde_json::json!({"id": 1}))
    /// }
    ///
    /// let buffer = emissions.start();
    /// buffer.scope(deep_in_the_stack()).await?;
    /// assert_eq!(buffer.events().len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        ambient::scope_buffer(self.clone(), future).await
    }

    /// The instance this buffer commits to.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let buffer = emissions.start();
    /// assert!(!buffer.emissions().is_shut_down());
    /// # Ok(()) }
    /// ```
    pub fn emissions(&self) -> &Emissions {
        &self.shared.emissions
    }
}

/// A buffer's events, taken for a commit made elsewhere; see [`Buffer::begin_commit`].
pub struct PendingCommit {
    buffer: Buffer,
    events: Vec<Event>,
    confirmed: bool,
}

impl fmt::Debug for PendingCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCommit")
            .field("events", &self.events.len())
            .finish()
    }
}

impl PendingCommit {
    /// The events being committed, in emit order.
    ///
    /// See [`Buffer::begin_commit`].
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The commit happened: the buffer is committed (reports `emissions.buffer.committed`).
    /// Returns how many events it held.
    ///
    /// See [`Buffer::begin_commit`].
    pub fn confirm(mut self) -> usize {
        self.confirmed = true;
        let count = self.events.len();
        self.buffer.lock().status = BufferState::Committed;
        self.buffer
            .shared
            .emissions
            .telemetry(&TelemetryEvent::BufferCommitted { event_count: count });
        count
    }
}

impl Drop for PendingCommit {
    fn drop(&mut self) {
        if !self.confirmed {
            let mut inner = self.buffer.lock();
            inner.status = BufferState::Open;
            let mut events = std::mem::take(&mut self.events);
            events.append(&mut inner.events);
            inner.events = events;
        }
    }
}

/// A commit or flush of one buffer, as the pipeline takes it.
struct Handover<'a> {
    buffer: &'a Buffer,
    next: BufferState,
}

impl Source for Handover<'_> {
    fn pending(&self) -> Result<usize, Error> {
        let inner = self.buffer.lock();
        match inner.status {
            BufferState::Open => Ok(inner.events.len()),
            state => Err(Error::BufferClosed { state }),
        }
    }

    fn take(&self, room: usize) -> Result<Option<Vec<Event>>, Error> {
        let mut inner = self.buffer.lock();
        if inner.status != BufferState::Open {
            return Err(Error::BufferClosed {
                state: inner.status,
            });
        }
        if inner.events.len() > room {
            return Ok(None);
        }
        inner.status = self.next;
        Ok(Some(std::mem::take(&mut inner.events)))
    }
}

impl Buffer {
    /// Whether another handle to this buffer exists (a task the handler gave it to).
    #[cfg(feature = "tower")]
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }
}

impl Drop for BufferShared {
    fn drop(&mut self) {
        let inner = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.status == BufferState::Open {
            let count = inner.events.len();
            if count > 0 {
                tracing::debug!(target: "emissions", events = count, "buffer dropped without commit; events discarded");
            }
            self.emissions.telemetry(&TelemetryEvent::BufferTerminated {
                event_count: count,
                reason: TerminateReason::Dropped,
            });
        }
    }
}
