//! [`Engine`]: the running parts of an instance, and its shutdown.
//!
//! Shutdown is driven by one background task, started by the first call (or by dropping the
//! last handle). Every call — concurrent, repeated, or cancelled — only brings the deadline
//! forward and waits for that task's report, so a dropped `shutdown` future stops nothing and
//! every caller gets the same report. The report is built after every consumer, every adapter
//! `shutdown` and every handler run has ended (or was cancelled and joined); work that cannot
//! be joined even after the abort (it blocks its thread) is fenced — counted as dropped, its
//! later reports ignored — so the report is true and never changes once returned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

use crate::extension::Attached;
use crate::handler::Handlers;
use crate::pipeline::consumer::DETACHED_GRACE;
use crate::pipeline::{Control, Pipeline};
use crate::{DeliveryReport, panic};

/// How long consumers and handler runs get to stop once the deadline has passed and they were
/// told to abort, before they are abandoned.
pub(crate) const ABORT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct State {
    started: bool,
    report: Option<DeliveryReport>,
}

/// The pipeline, the handlers, the consumer tasks and the shutdown state of one instance.
#[derive(Debug)]
pub(crate) struct Engine {
    pipeline: Pipeline,
    handlers: Option<Arc<Handlers>>,
    control: Arc<Control>,
    /// Consumer tasks, and which lane each one feeds.
    consumers: Mutex<(JoinSet<()>, HashMap<Id, usize>)>,
    extensions: Vec<Attached>,
    closed: AtomicBool,
    state: Mutex<State>,
    done: Notify,
}

impl Engine {
    pub(crate) fn new(
        pipeline: Pipeline,
        handlers: Option<Arc<Handlers>>,
        control: Arc<Control>,
        consumers: JoinSet<()>,
        lanes: HashMap<Id, usize>,
        extensions: Vec<Attached>,
    ) -> Self {
        Engine {
            pipeline,
            handlers,
            control,
            consumers: Mutex::new((consumers, lanes)),
            extensions,
            closed: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            done: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub(crate) fn extensions(&self) -> &[Attached] {
        &self.extensions
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Shuts down within `timeout` (or the earlier deadline of another call) and returns the
    /// report. Idempotent and cancel-safe.
    pub(crate) async fn shutdown(self: &Arc<Self>, timeout: Duration) -> DeliveryReport {
        let deadline = deadline_after(timeout);
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(report) = &state.report {
                    return report.clone();
                }
                self.control.shorten(deadline);
                if !state.started {
                    state.started = true;
                    self.close();
                    tokio::spawn(self.clone().drive());
                }
            }
            notified.await;
        }
    }

    /// The last handle is gone without `shutdown`: drain in the background for a while.
    pub(crate) fn detach(self: &Arc<Self>) {
        let mut state = self.state();
        if state.started {
            return;
        }
        state.started = true;
        self.control.shorten(deadline_after(DETACHED_GRACE));
        self.close();
        // Without a runtime the consumers are gone with it; nothing is left to drive.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.clone().drive());
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pipeline.close();
    }

    async fn drive(self: Arc<Self>) {
        let (mut consumers, lanes) =
            std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|e| e.into_inner()));
        let mut deadline_changed = self.control.watch();
        let mut ended = HashSet::new();

        // Drain, until the (possibly brought forward) deadline.
        let deadline = || self.control.deadline().unwrap_or_else(Instant::now);
        self.join_until(
            &mut consumers,
            &lanes,
            &mut ended,
            deadline,
            &mut deadline_changed,
        )
        .await;

        // Past the deadline: abort, give consumers a moment, then abandon what is left.
        if !consumers.is_empty() {
            self.control.abort();
            let grace = Instant::now() + ABORT_GRACE;
            self.join_until(
                &mut consumers,
                &lanes,
                &mut ended,
                || grace,
                &mut deadline_changed,
            )
            .await;
            let left: Vec<usize> = lanes
                .iter()
                .filter(|(id, _)| !ended.contains(id))
                .map(|(_, lane)| *lane)
                .collect();
            consumers.abort_all();
            consumers.detach_all();
            for lane in left {
                self.abandon(
                    lane,
                    true,
                    "adapter did not return within 1 s after the deadline (blocking its thread?); \
                     its events were counted as dropped and it was abandoned",
                );
            }
        }

        if let Some(handlers) = &self.handlers {
            let deadline = self.control.deadline().unwrap_or_else(Instant::now);
            handlers.stop(deadline, ABORT_GRACE).await;
        }

        // Extensions persist what the last moments reported, before the report is built —
        // with a moment of their own when the deadline has already passed.
        let deadline = self
            .control
            .deadline()
            .unwrap_or_else(Instant::now)
            .max(Instant::now() + ABORT_GRACE);
        for attached in &self.extensions {
            let shutdown = panic::contain_async(attached.extension.shutdown(deadline));
            match tokio::time::timeout_at(deadline, shutdown).await {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => {
                    tracing::error!(target: "emissions", panic, "an extension panicked at shutdown")
                }
                Err(_) => {
                    tracing::error!(target: "emissions", "an extension did not shut down in time")
                }
            }
        }

        let ledger = self.pipeline.ledger();
        ledger.close();
        let report = ledger.report();
        self.state().report = Some(report);
        self.done.notify_waiters();
    }

    /// Joins consumers until all have ended or `until()` has passed (read again whenever the
    /// deadline changes).
    async fn join_until(
        &self,
        consumers: &mut JoinSet<()>,
        lanes: &HashMap<Id, usize>,
        ended: &mut HashSet<Id>,
        until: impl Fn() -> Instant,
        changed: &mut watch::Receiver<Option<Instant>>,
    ) {
        loop {
            tokio::select! {
                biased;
                next = consumers.join_next_with_id() => match next {
                    Some(result) => self.consumer_ended(result, lanes, ended),
                    None => return,
                },
                () = tokio::time::sleep_until(until()) => return,
                _ = changed.changed() => {}
            }
        }
    }

    fn consumer_ended(
        &self,
        result: Result<(Id, ()), JoinError>,
        lanes: &HashMap<Id, usize>,
        ended: &mut HashSet<Id>,
    ) {
        let error = match result {
            Ok((id, ())) => {
                ended.insert(id);
                return;
            }
            Err(error) => error,
        };
        ended.insert(error.id());
        let Some(&lane) = lanes.get(&error.id()) else {
            return;
        };
        let reason = match error.try_into_panic() {
            Ok(panic) => format!("consumer panicked: {}", panic::message(&*panic)),
            Err(_) => "consumer was cancelled".to_owned(),
        };
        self.abandon(lane, false, &reason);
    }

    /// Fences a lane whose consumer is gone or will not return: what it held is dropped.
    fn abandon(&self, lane: usize, past_deadline: bool, reason: &str) {
        let ledger = self.pipeline.ledger();
        if past_deadline {
            ledger.set_deadline_exceeded(lane);
        }
        ledger.set_shutdown_error(lane, reason);
        self.pipeline.lanes()[lane].fence();
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    // About thirty years: "never" for a deadline, and still representable.
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}
