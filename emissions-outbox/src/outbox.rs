//! [`Outbox`]: the durable store attached to an emissions instance — what commits write to,
//! what the relay delivers from, and where failed deliveries can be inspected and re-queued.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use emissions_core::{Emissions, Event, Extension, async_trait};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::config::OutboxConfig;
use crate::relay::{self, RelayHandle};
use crate::store::{DeliveryRecord, DestinationStats, NewDelivery, Replay, Store};

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) config: OutboxConfig,
    /// This instance's name as a lease owner.
    pub(crate) owner: String,
    /// Wakes the relay (a commit happened, an acknowledgement freed room, …).
    pub(crate) wake: Arc<Notify>,
    /// Notified whenever outcomes were written (for [`Outbox::drained`]).
    pub(crate) progress: Notify,
    /// Deliveries this instance took over from an expired lease (possible duplicates).
    pub(crate) redeliveries: AtomicU64,
    relay: Mutex<Option<RelayHandle>>,
    pub(crate) stop: CancellationToken,
    /// The destinations (adapter names) of the attached instance.
    destinations: std::sync::OnceLock<Vec<Destination>>,
    /// Attached to a second instance: commits are refused.
    reused: std::sync::atomic::AtomicBool,
}

/// Longest ordering key stored (an index entry must fit a database page); a delivery whose key
/// is longer, or holds a NUL character, is stored `abandoned` with the reason.
pub const MAX_KEY_BYTES: usize = 1024;

/// One destination: its name, and how to compute its ordering key.
pub(crate) struct Destination {
    pub(crate) lane: emissions_core::durable::DurableLane,
}

/// The durable outbox. Cheap to clone.
///
/// Build one with [`OutboxConfig::build`], attach it to an instance with
/// `EmissionsBuilder::extension(outbox.clone())`; its relay starts and stops with the instance.
/// Commit into it with [`CommitIn`](crate::CommitIn) (in the caller's transaction) or
/// [`DurableCommit`](crate::DurableCommit) (in a transaction of its own).
///
/// See the [crate docs](crate) for the guarantees and an example.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("owner", &self.inner.owner)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new(store: Store, config: OutboxConfig) -> Self {
        let owner = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        Outbox {
            inner: Arc::new(Inner {
                store,
                config,
                owner,
                wake: Arc::new(Notify::new()),
                progress: Notify::new(),
                redeliveries: AtomicU64::new(0),
                relay: Mutex::new(None),
                stop: CancellationToken::new(),
                destinations: std::sync::OnceLock::new(),
                reused: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Creates or upgrades the outbox tables (for [`Migrations::Explicit`](crate::Migrations::Explicit)).
    ///
    /// ```no_run
    /// # async fn f(outbox: emissions_outbox::Outbox) -> Result<(), emissions_outbox::Error> {
    /// outbox.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), Error> {
        self.inner.store.migrate().await
    }

    /// Wakes the relay now (commits wake it themselves; see the crate docs).
    ///
    /// See [`Outbox`].
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Re-queues the deliveries `replay` selects (due now, attempts from zero); returns how
    /// many.
    ///
    /// ```no_run
    /// # async fn f(outbox: emissions_outbox::Outbox) -> Result<(), emissions_outbox::Error> {
    /// use emissions_outbox::Replay;
    /// let requeued = outbox.replay(Replay::failed().destination("billing")).await?;
    /// println!("{requeued} deliveries re-queued");
    /// # Ok(()) }
    /// ```
    pub async fn replay(&self, replay: Replay) -> Result<u64, Error> {
        let count = self.inner.store.replay(&replay).await?;
        self.wake();
        Ok(count)
    }

    /// Per destination, the deliveries in each state and the age of the oldest waiting one —
    /// the backlog to watch.
    ///
    /// ```no_run
    /// # async fn f(outbox: emissions_outbox::Outbox) -> Result<(), emissions_outbox::Error> {
    /// for stats in outbox.stats().await? {
    ///     println!("{}: {} pending, oldest {:?}", stats.destination, stats.pending, stats.oldest_pending_age);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<Vec<DestinationStats>, Error> {
        self.inner.store.stats().await
    }

    /// Deliveries in commit order, optionally only of one destination and one state
    /// (`pending`, `in_flight`, `delivered`, `failed`, `abandoned`); at most `limit`.
    ///
    /// ```no_run
    /// # async fn f(outbox: emissions_outbox::Outbox) -> Result<(), emissions_outbox::Error> {
    /// for failed in outbox.deliveries(Some("billing"), Some("failed"), 100).await? {
    ///     println!("{} {}: {:?}", failed.event_name, failed.event_id, failed.last_error);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn deliveries(
        &self,
        destination: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, Error> {
        self.inner.store.deliveries(destination, state, limit).await
    }

    /// Waits until no delivery to this instance's destinations is pending or in flight —
    /// every committed event delivered, failed or abandoned at each of them (retries
    /// included: a delivery waiting for its next attempt is pending). Deliveries to a
    /// destination no adapter of this instance serves (one removed since they were committed)
    /// are not waited for: the relay names them at start, and [`stats`](Self::stats) shows
    /// them. Test helpers use it instead of sleeping; wrap it in a timeout where a destination
    /// may never answer.
    ///
    /// ```no_run
    /// # async fn f(outbox: emissions_outbox::Outbox) -> Result<(), emissions_outbox::Error> {
    /// outbox.drained().await?;
    /// assert!(outbox.stats().await?.iter().all(|s| s.pending + s.in_flight == 0));
    /// # Ok(()) }
    /// ```
    pub async fn drained(&self) -> Result<(), Error> {
        loop {
            let progressed = self.inner.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let stats = self.inner.store.stats().await?;
            let served = self.destinations();
            let waiting = stats.iter().filter(|s| {
                (served.is_empty() || served.contains(&s.destination))
                    && s.pending + s.in_flight > 0
            });
            if waiting.count() == 0 {
                return Ok(());
            }
            // Woken by written outcomes; the poll covers deliveries finished elsewhere.
            let _ = tokio::time::timeout(self.inner.config.poll_interval, progressed).await;
        }
    }

    /// Deletes finished rows now (the relay also does so every
    /// [`purge_interval`](OutboxConfig::purge_interval)); returns how many.
    ///
    /// See [`Retention`](crate::Retention).
    pub async fn purge(&self) -> Result<u64, Error> {
        self.inner
            .store
            .purge(self.inner.config.retention, 1000)
            .await
    }

    /// The destinations this outbox writes deliveries for: the adapters of the instance it
    /// is attached to (empty before that instance starts).
    ///
    /// ```no_run
    /// # fn f(outbox: emissions_outbox::Outbox) {
    /// println!("delivering to {:?}", outbox.destinations());
    /// # }
    /// ```
    pub fn destinations(&self) -> Vec<String> {
        self.inner
            .destinations()
            .iter()
            .map(|d| d.lane.adapter().to_owned())
            .collect()
    }

    /// Deliveries this instance attempted again although an earlier attempt may have reached
    /// the destination — taken over from an expired lease, or cut off by a shutdown deadline
    /// (here or in an earlier run) — each a possible duplicate there (the event id identifies
    /// it).
    ///
    /// See [`Outbox`].
    pub fn redeliveries(&self) -> u64 {
        self.inner.redeliveries.load(Ordering::Relaxed)
    }

    /// The rows to write for `events`: one delivery per destination, with its ordering key.
    pub(crate) fn rows<'e>(
        &self,
        events: &'e [Event],
    ) -> Result<Vec<(&'e Event, Vec<NewDelivery>)>, Error> {
        let limit = self.inner.config.max_payload_bytes;
        if let Some(event) = events.iter().find(|e| e.payload().len() > limit) {
            return Err(Error::PayloadTooLarge {
                name: event.name().to_owned(),
                size: event.payload().len(),
                limit,
            });
        }
        if self.inner.reused.load(Ordering::Acquire) {
            return Err(Error::AlreadyAttached);
        }
        let destinations = self.inner.destinations.get().ok_or(Error::NoOutbox)?;
        Ok(events
            .iter()
            .map(|event| {
                let deliveries = destinations
                    .iter()
                    .map(|d| {
                        let key = d
                            .lane
                            .ordering_key(event)
                            .map_err(|panic| format!("ordering key panicked: {panic}"))
                            .and_then(|key| match key {
                                Some(key) if key.len() > MAX_KEY_BYTES => Err(format!(
                                    "ordering key of {} bytes, over the limit of {MAX_KEY_BYTES}",
                                    key.len()
                                )),
                                Some(key) if key.contains('\0') => {
                                    Err("ordering key contains a NUL character".to_owned())
                                }
                                key => Ok(key),
                            });
                        match key {
                            Ok(key) => NewDelivery {
                                destination: d.lane.adapter().to_owned(),
                                key,
                                state: "pending",
                                error: None,
                            },
                            // Kept, as abandoned with the reason, to be seen and replayed.
                            Err(reason) => NewDelivery {
                                destination: d.lane.adapter().to_owned(),
                                key: None,
                                state: "abandoned",
                                error: Some(reason),
                            },
                        }
                    })
                    .collect();
                (event, deliveries)
            })
            .collect())
    }
}

#[async_trait]
impl Extension for Outbox {
    fn started(&self, emissions: &Emissions) {
        let destinations: Vec<Destination> = emissions
            .adapter_names()
            .iter()
            .filter_map(|name| emissions.durable_lane(name))
            .map(|lane| Destination { lane })
            .collect();
        if self.inner.destinations.set(destinations).is_err() {
            // Attached before: its commits are refused (`Error::AlreadyAttached`), and no
            // second relay starts.
            self.inner.reused.store(true, Ordering::Release);
            tracing::error!(target: "emissions::outbox", "an Outbox was attached to a second emissions instance; build one per instance");
            return;
        }
        let handle = relay::start(self.inner.clone(), emissions);
        if let Ok(mut relay) = self.inner.relay.try_lock() {
            *relay = Some(handle);
        }
    }

    async fn shutdown(&self, deadline: Instant) {
        if self.inner.reused.load(Ordering::Acquire) {
            // Not this instance's relay to stop.
            return;
        }
        self.inner.stop.cancel();
        self.inner.wake.notify_one();
        let handle = self.inner.relay.lock().await.take();
        if let Some(handle) = handle {
            handle.finish(deadline).await;
        }
    }
}

impl Inner {
    pub(crate) fn destinations(&self) -> &[Destination] {
        self.destinations.get().map_or(&[], Vec::as_slice)
    }
}
