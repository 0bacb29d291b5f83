//! [`Dispatcher`]: the pipeline consumer of the `handlers` lane, which starts one supervised
//! run per (event, subscribed handler); [`Handlers`]: the registry those runs share.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::run::Run;
use super::{Handler, HandlerOptions};
use crate::emissions::WeakEmissions;
use crate::ledger::{Destination, Ledger, RunEnd};
use crate::options::DeadLetterCause;
use crate::telemetry::TelemetryEvent;
use crate::{Adapter, BatchError, BoxError, Emissions, Event, Failure};

/// Per ordered handler: how many completion signals to keep before pruning finished chains.
const CHAINS_BEFORE_PRUNING: usize = 1024;

/// One registered handler.
pub(crate) struct Registered {
    name: Arc<str>,
    handler: Arc<dyn Handler>,
    options: HandlerOptions,
    /// Slots for runs handling an event (`concurrency`).
    permits: Arc<Semaphore>,
    /// Slots for runs in existence, running or waiting (`concurrency + backlog`).
    admission: Arc<Semaphore>,
    /// For ordered handlers: per key, the completion signal of the latest run.
    chains: Mutex<HashMap<String, oneshot::Receiver<()>>>,
}

impl Registered {
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn handler(&self) -> &dyn Handler {
        &*self.handler
    }

    pub(crate) fn options(&self) -> &HandlerOptions {
        &self.options
    }

    /// The handler's concurrency slots, held only while a run handles its event.
    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }
}

/// Handler state shared by the dispatcher, its runs and the instance.
pub(crate) struct Handlers {
    registered: Vec<Registered>,
    routes: HashMap<String, Vec<usize>>,
    depth_limit: u32,
    ledger: Arc<Ledger>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    instance: OnceLock<WeakEmissions>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.registered.iter().map(|r| &*r.name).collect();
        f.debug_struct("Handlers")
            .field("handlers", &names)
            .field("running", &self.tasks.len())
            .finish()
    }
}

impl Handlers {
    /// `list[i]` is booked as handler `i` of `ledger`.
    pub(crate) fn new(
        list: Vec<(String, Box<dyn Handler>, HandlerOptions)>,
        depth_limit: u32,
        ledger: Arc<Ledger>,
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
                    admission: Arc::new(Semaphore::new(
                        options.concurrency.saturating_add(options.backlog),
                    )),
                    handler,
                    options,
                    chains: Mutex::new(HashMap::new()),
                }
            })
            .collect();
        Handlers {
            registered,
            routes,
            depth_limit,
            ledger,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            instance: OnceLock::new(),
        }
    }

    pub(crate) fn registered(&self, index: usize) -> &Registered {
        &self.registered[index]
    }

    pub(crate) fn depth_limit(&self) -> u32 {
        self.depth_limit
    }

    pub(crate) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Cancelled when shutdown gives up waiting for runs.
    pub(crate) fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    pub(crate) fn bind(&self, instance: WeakEmissions) {
        let _ = self.instance.set(instance);
    }

    pub(crate) fn instance(&self) -> Option<Emissions> {
        self.instance.get().and_then(WeakEmissions::upgrade)
    }

    /// Ends every run: after `deadline`, runs still going are cancelled; each is joined, and a
    /// run that cannot be joined within `grace` (it blocks its thread) is fenced: counted as
    /// dropped now, ignored later. Returns how many runs were fenced.
    pub(crate) async fn stop(&self, deadline: Instant, grace: Duration) -> u64 {
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        self.cancel.cancel();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return 0;
        }
        let fenced = self.ledger.fence_handlers();
        tracing::error!(target: "emissions", runs = fenced, "handler runs did not end after cancellation (blocking their thread?); counted as dropped and abandoned");
        fenced
    }

    /// The ordering chain of `key` for handler `index`: the signal to wait for, and the one
    /// this run drops when it ends.
    fn chain(
        &self,
        index: usize,
        key: String,
    ) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (done, signal) = oneshot::channel();
        let mut chains = self.registered[index]
            .chains
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if chains.len() >= CHAINS_BEFORE_PRUNING {
            chains
                .retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
        (chains.insert(key, signal), done)
    }

    /// A run that could not start because the handler's key function panicked.
    fn refuse(&self, index: usize, event: &Event, panic: &str) {
        let reason = format!("ordering key panicked: {panic}");
        self.ledger.run_dispatched(index);
        self.ledger.telemetry().emit(&TelemetryEvent::HandlerError {
            handler: &self.registered[index].name,
            event: event.name(),
            reason: &reason,
            duration: Duration::ZERO,
        });
        self.ledger.dead_letter(
            Destination::Handler(index),
            vec![event.clone()],
            Failure::permanent(reason),
            0,
            DeadLetterCause::Failed,
        );
        self.ledger.run_ended(index, RunEnd::Failed);
    }
}

/// The pipeline consumer that starts handler runs. Its events count as delivered at the
/// `handlers` lane once every subscribed handler has a run.
pub(crate) struct Dispatcher {
    handlers: Arc<Handlers>,
}

impl Dispatcher {
    pub(crate) fn new(handlers: Arc<Handlers>) -> Self {
        Dispatcher { handlers }
    }
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
                let Ok(admitted) = registered.admission.clone().acquire_owned().await else {
                    continue;
                };
                let (previous, done) = match registered.options.key_fn() {
                    None => (None, None),
                    Some(key) => match key.key(event) {
                        Ok(None) => (None, None),
                        Ok(Some(key)) => {
                            let (previous, done) = handlers.chain(index, key);
                            (previous, Some(done))
                        }
                        Err(panic) => {
                            handlers.refuse(index, event, &panic);
                            continue;
                        }
                    },
                };
                handlers.ledger.run_dispatched(index);
                let run = Run::new(handlers.clone(), index, event.clone(), admitted, done);
                handlers.tasks.spawn(run.execute(previous));
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self, deadline: Instant) -> Result<(), BoxError> {
        let tasks = &self.handlers.tasks;
        tasks.close();
        match tokio::time::timeout_at(deadline, tasks.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err("handler runs still going at the deadline are cancelled".into()),
        }
    }
}
