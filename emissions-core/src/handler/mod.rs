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
//! [`RetryPolicy`] — the same retry clock as adapters: attempts are the
//! run's own, and while it waits for its retry it holds no concurrency slot, so a failing
//! event never holds up the others. Once the policy gives up, the event goes to the handler's
//! dead-letter hook and counts as failed for that handler. A panic in the handler's
//! [`ordered_by`](HandlerOptions::ordered_by) key function fails that one event for that one
//! handler (dead-lettered, 0 attempts); other handlers run it as usual.
//!
//! # Concurrency and order
//!
//! Each handler runs at most `concurrency` events at once (default 16). Besides those, up to
//! `backlog` runs (default 1 000) may wait — for a retry, or behind an earlier event of their
//! key — without holding a concurrency slot, so a waiting run never blocks a running one. When
//! a handler holds `concurrency + backlog` runs, the dispatcher waits, its queue fills, and its
//! overflow policy applies — backpressure, not unbounded tasks. By default events run
//! concurrently and may finish in any order; [`HandlerOptions::ordered_by`] keeps the events of
//! one key in dispatch order for that handler.
//!
//! # Cascading
//!
//! A handler emits follow-up events through its [`HandlerContext`] (or the ambient
//! [`emit`](crate::emit), which reaches the same child buffer). The child buffer is committed
//! by the run only when the handler succeeds (or ignores the event) and discarded when it
//! fails, panics or times out — each retry starts a fresh one. The handler cannot commit,
//! flush or terminate it itself (ambient [`commit`](crate::commit) and friends return
//! [`Error::HandlerBuffer`] there), so the follow-ups of a failed
//! run are never delivered. Child events carry [`CAUSATION_ID`] (the parent's
//! id), [`CORRELATION_ID`] (the root's correlation id: its `correlation_id` metadata if it had
//! one, else its id) and [`CASCADE_DEPTH`] in their metadata. Emitting deeper than the depth limit
//! ([`EmissionsBuilder::cascade_depth_limit`](crate::EmissionsBuilder::cascade_depth_limit), default 8) returns [`Error::CascadeDepth`] and
//! reports `emissions.event.dropped` with reason `cascade_depth`, so an emit loop ends.
//!
//! # Shutdown
//!
//! After the queue drains, shutdown waits for running handler tasks until the deadline; tasks
//! still running then (or waiting for a retry) are cancelled, joined, and their events counted
//! as dropped for that handler and handed to its dead-letter hook (reason `shutdown`). A run
//! that blocks its thread and cannot be joined within a second is counted as dropped and
//! abandoned. Follow-up events of runs that finish after shutdown began cannot be committed:
//! they are reported as dropped and handed to the handler's dead-letter hook.
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

mod cascade;
mod dispatcher;
mod run;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::options::KeyFn;
use crate::{BoxError, Buffer, DeadLetter, DeadLetterHook, Error, Event, Metadata, RetryPolicy};

pub use crate::ledger::{HandlerCounts, HandlerReport};
pub(crate) use cascade::Cascade;
pub(crate) use dispatcher::{Dispatcher, Handlers};

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
    handler: std::sync::Arc<str>,
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
    pub(crate) fn new(handler: std::sync::Arc<str>, attempt: u32, buffer: Buffer) -> Self {
        HandlerContext {
            handler,
            attempt,
            buffer,
        }
    }

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

/// Options of one handler. Defaults: concurrency 16, backlog 1 000, timeout 30 s,
/// [`RetryPolicy::default`], no dead-letter hook, unordered.
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
    /// Most runs of this handler handling an event at once. Defaults to 16.
    pub concurrency: usize,
    /// Most runs waiting besides those — for a retry, or behind an earlier event of their key.
    /// Defaults to 1 000.
    pub backlog: usize,
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
            .field("backlog", &self.backlog)
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
            backlog: 1_000,
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

    /// Sets how many runs may wait besides the running ones (for a retry, or behind an
    /// earlier event of their key). Defaults to 1 000.
    ///
    /// ```
    /// assert_eq!(emissions_core::HandlerOptions::default().backlog(10).backlog, 10);
    /// ```
    pub fn backlog(mut self, runs: usize) -> Self {
        self.backlog = runs;
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
    /// Defaults to unordered. A panic in `key` fails that event for this handler only.
    ///
    /// See [`HandlerOptions`].
    pub fn ordered_by(
        mut self,
        key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(KeyFn::new(key));
        self
    }

    pub(crate) fn key_fn(&self) -> Option<&KeyFn> {
        self.key.as_ref()
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
