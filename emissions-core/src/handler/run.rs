//! [`Run`]: one handler run for one event, with its retries, in a supervised task.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dispatcher::{Handlers, Registered};
use super::{Cascade, Handled, HandlerContext};
use crate::ledger::{Destination, RunEnd};
use crate::options::{DeadLetterCause, jitter};
use crate::panic;
use crate::pipeline::retry::Attempts;
use crate::telemetry::{DropReason, TelemetryEvent};
use crate::{Buffer, Error, Event, Failure};

/// One handler run. Booked as dispatched when created; books its end exactly once — and if
/// it is dropped before that (cancelled by shutdown, aborted), as dropped.
pub(crate) struct Run {
    handlers: Arc<Handlers>,
    index: usize,
    event: Event,
    attempts: Attempts,
    ended: bool,
    /// The run's place among the handler's runs (`concurrency + backlog`), for its whole life.
    _admitted: OwnedSemaphorePermit,
    /// Dropped when the run ends, releasing the next run of the same key.
    _done: Option<oneshot::Sender<()>>,
}

enum Attempt {
    Handled(Handled),
    Failed(String),
    Cancelled,
}

impl Run {
    pub(crate) fn new(
        handlers: Arc<Handlers>,
        index: usize,
        event: Event,
        admitted: OwnedSemaphorePermit,
        done: Option<oneshot::Sender<()>>,
    ) -> Self {
        Run {
            handlers,
            index,
            event,
            attempts: Attempts::default(),
            ended: false,
            _admitted: admitted,
            _done: done,
        }
    }

    fn registered(&self) -> &Registered {
        self.handlers.registered(self.index)
    }

    fn end(&mut self, end: RunEnd) {
        self.ended = true;
        self.handlers.ledger().run_ended(self.index, end);
    }

    pub(crate) async fn execute(mut self, previous: Option<oneshot::Receiver<()>>) {
        let cancel = self.handlers.cancellation().clone();
        if let Some(previous) = previous {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = previous => {}
            }
        }
        let Some(emissions) = self.handlers.instance() else {
            return;
        };
        let policy = self.registered().options().retry.clone();
        loop {
            // A concurrency slot only while handling: a run waiting (for its key or a retry)
            // never holds one, so it can never block the run it waits for.
            let permits = self.registered().permits().clone();
            let slot = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                slot = permits.acquire_owned() => slot,
            };
            let started = Instant::now();
            self.attempts.attempted(started);
            let buffer = Buffer::for_run(
                emissions.clone(),
                Cascade::of(
                    &self.event,
                    self.registered().name().clone(),
                    self.handlers.depth_limit(),
                ),
            );
            let outcome = self.attempt(&buffer, &cancel).await;
            let duration = started.elapsed();
            let reason = match outcome {
                Attempt::Cancelled => {
                    buffer.discard();
                    return;
                }
                Attempt::Handled(handled) => {
                    self.commit_follow_ups(&buffer).await;
                    let (handler, event) = (&**self.registered().name(), self.event.name());
                    let (telemetry, end) = match handled {
                        Handled::Done => (
                            TelemetryEvent::HandlerSuccess {
                                handler,
                                event,
                                duration,
                            },
                            RunEnd::Succeeded,
                        ),
                        Handled::Ignored => (
                            TelemetryEvent::HandlerIgnored { handler, event },
                            RunEnd::Ignored,
                        ),
                    };
                    emissions.telemetry(&telemetry);
                    self.end(end);
                    return;
                }
                Attempt::Failed(reason) => reason,
            };
            buffer.discard();
            emissions.telemetry(&TelemetryEvent::HandlerError {
                handler: self.registered().name(),
                event: self.event.name(),
                reason: &reason,
                duration,
            });
            let Some(at) = self.attempts.next(&policy, jitter(), None, Instant::now()) else {
                self.give_up(reason);
                return;
            };
            drop(slot);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(at) => {}
            }
        }
    }

    async fn attempt(&self, buffer: &Buffer, cancel: &CancellationToken) -> Attempt {
        let registered = self.registered();
        let attempt = self.attempts.made();
        let ctx = HandlerContext::new(registered.name().clone(), attempt, buffer.clone());
        let span = tracing::info_span!(
            target: "emissions",
            "handler",
            handler = &**registered.name(),
            event = self.event.name(),
            event_id = %self.event.id(),
            attempt,
        );
        let run = buffer
            .scope(registered.handler().handle(&self.event, &ctx))
            .instrument(span);
        #[cfg(feature = "opentelemetry")]
        let otel_span = crate::otel::HandlerSpan::start(&self.event, registered.name(), attempt);
        #[cfg(feature = "opentelemetry")]
        let run = otel_span.wrap(run);
        let guarded = tokio::time::timeout(registered.options().timeout, panic::contain_async(run));
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => Attempt::Cancelled,
            result = guarded => match result {
                Ok(Ok(Ok(handled))) => Attempt::Handled(handled),
                Ok(Ok(Err(error))) => Attempt::Failed(error.to_string()),
                Ok(Err(panic)) => Attempt::Failed(format!("panicked: {panic}")),
                Err(_) => Attempt::Failed(format!("timed out after {:?}", registered.options().timeout)),
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

    /// Commits the follow-up events of a successful run. If they cannot be committed (shut
    /// down meanwhile, or a queue refused them), they go to the handler's dead-letter hook.
    async fn commit_follow_ups(&self, buffer: &Buffer) {
        let Err(err) = buffer.commit_for_run().await else {
            return;
        };
        let events = buffer.discard();
        if events.is_empty() {
            return;
        }
        tracing::warn!(target: "emissions", handler = &**self.registered().name(), error = %err, "follow-up events not committed");
        let reason = match err {
            Error::ShutDown => DropReason::Shutdown,
            _ => DropReason::QueueFull,
        };
        self.handlers
            .ledger()
            .report_dropped(Destination::Handler(self.index), &events, reason, 0);
    }

    fn give_up(&mut self, reason: String) {
        self.handlers.ledger().dead_letter(
            Destination::Handler(self.index),
            vec![self.event.clone()],
            Failure::retryable(reason),
            self.attempts.made(),
            DeadLetterCause::Failed,
        );
        self.end(RunEnd::Failed);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.ended {
            self.handlers.ledger().report_dropped(
                Destination::Handler(self.index),
                std::slice::from_ref(&self.event),
                DropReason::Shutdown,
                self.attempts.made(),
            );
            self.end(RunEnd::Dropped);
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("handler", self.registered().name())
            .field("event", &self.event.name())
            .field("attempts", &self.attempts.made())
            .finish()
    }
}
