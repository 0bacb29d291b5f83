//! Shared state of one feed: registered connections, the history ring, the stream cursor,
//! statistics, the fan-out with every frame authorized, and the drain on shutdown.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::extract::ws::Utf8Bytes;
use emissions_core::Event;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Limits;
use crate::position::Position;
use crate::selection::Selection;

/// Why a connection ended; for WebSocket clients `code` and `reason` go in the close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Disconnect {
    /// The client closed the connection.
    Client,
    /// Its outgoing queue overflowed (close code 4000, "slow consumer").
    Slow,
    /// It did not answer pings in time (close code 4001, "ping timeout").
    PingTimeout,
    /// It sent a message over the inbound limit (close code 1009).
    TooBig,
    /// The feed is shutting down (close code 1001, after what was queued for it).
    Shutdown,
    /// A protocol or I/O error.
    Error,
}

impl Disconnect {
    /// The close code sent to a WebSocket client.
    ///
    /// ```
    /// assert_eq!(emissions_websocket::Disconnect::Slow.code(), 4000);
    /// assert_eq!(emissions_websocket::Disconnect::Shutdown.code(), 1001);
    /// ```
    pub fn code(self) -> u16 {
        match self {
            Disconnect::Client => 1000,
            Disconnect::Slow => 4000,
            Disconnect::PingTimeout => 4001,
            Disconnect::TooBig => 1009,
            Disconnect::Shutdown => 1001,
            Disconnect::Error => 1011,
        }
    }

    /// The close reason sent to a WebSocket client.
    ///
    /// ```
    /// assert_eq!(emissions_websocket::Disconnect::Slow.reason(), "slow consumer");
    /// ```
    pub fn reason(self) -> &'static str {
        match self {
            Disconnect::Client => "client closed",
            Disconnect::Slow => "slow consumer",
            Disconnect::PingTimeout => "ping timeout",
            Disconnect::TooBig => "message too big",
            Disconnect::Shutdown => "server shutting down",
            Disconnect::Error => "error",
        }
    }

    const ALL: [Disconnect; 6] = [
        Disconnect::Client,
        Disconnect::Slow,
        Disconnect::PingTimeout,
        Disconnect::TooBig,
        Disconnect::Shutdown,
        Disconnect::Error,
    ];

    fn index(self) -> usize {
        Disconnect::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Counters of one feed. Every frame queued for a connection ends in exactly one of
/// `frames_sent`, `unconfirmed_frames` or `dropped_frames` once that connection has ended.
///
/// ```
/// use emissions_websocket::{Disconnect, FeedStats};
/// let stats = FeedStats::default();
/// assert_eq!((stats.frames_sent, stats.dropped_frames), (0, 0));
/// assert_eq!(stats.disconnects_for(Disconnect::Slow), 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStats {
    /// Connections open now (WebSocket and SSE).
    pub connected: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Requests refused (authentication, origin, capacity, shutdown, bad request).
    pub rejected: u64,
    /// Ended connections by reason.
    pub disconnects: Vec<(Disconnect, u64)>,
    /// Event frames written to a connection (WebSocket: flushed to the socket; SSE: handed to
    /// the HTTP server).
    pub frames_sent: u64,
    /// Event frames queued for a connection and never written: a slow client's queue, what a
    /// client left behind when it went away, and what the shutdown deadline cut off.
    pub dropped_frames: u64,
    /// Event frames being written when their connection failed or was cut off by the
    /// shutdown deadline: the client may or may not have them (WebSocket writes are batched
    /// and flushed together).
    pub unconfirmed_frames: u64,
    /// Frames withheld because the authorization check panicked (counted as "may not see").
    pub authorization_panics: u64,
}

impl FeedStats {
    /// Ended connections for one reason.
    ///
    /// See [`FeedStats`].
    pub fn disconnects_for(&self, reason: Disconnect) -> u64 {
        self.disconnects
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// One carried event at its place in the stream, serialized once for every connection.
pub(crate) struct Entry {
    pub(crate) stream: usize,
    pub(crate) offset: u64,
    pub(crate) event: Event,
    pub(crate) topic: Option<Arc<str>>,
    /// The stream position after this event (the SSE `id:`).
    pub(crate) position: String,
    /// The JSON frame.
    pub(crate) text: Utf8Bytes,
}

/// What a connection is allowed to see: the app's `may_see` bound to its principal.
pub(crate) type Visible = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// Something to write before the live frames: a missed or replayed event, or a control frame.
pub(crate) enum Out {
    Event(Arc<Entry>),
    Control(String),
}

/// The books of one connection: frames queued, and frames being written; settled exactly
/// once into `dropped_frames` and `unconfirmed_frames`.
#[derive(Default)]
pub(crate) struct Outlet {
    books: Mutex<Books>,
    queued_bytes: AtomicUsize,
    reason: Mutex<Option<Disconnect>>,
    pub(crate) kick: Notify,
}

#[derive(Default)]
struct Books {
    queued: u64,
    writing: u64,
    closed: bool,
}

impl Outlet {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reason the hub set when it let go of this connection.
    pub(crate) fn reason(&self) -> Option<Disconnect> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn disconnect(&self, reason: Disconnect) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.kick.notify_one();
    }
}

/// A connection's side of the hub, from registration to its end. Dropping it (the
/// connection ended, or its task panicked) deregisters it and settles its books.
pub(crate) struct Registration {
    hub: Arc<Hub>,
    id: u64,
    pub(crate) rx: mpsc::Receiver<Arc<Entry>>,
    pub(crate) outlet: Arc<Outlet>,
    pub(crate) subscription: Arc<RwLock<Selection>>,
    pub(crate) preface: Vec<Out>,
    _slot: Slot,
}

impl Registration {
    /// `n` frames taken to be written, `bytes` of them from the queue.
    pub(crate) fn writing(&self, n: u64, bytes: usize) {
        if bytes > 0 {
            self.outlet.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        let mut books = self.outlet.books();
        if !books.closed {
            let n = n.min(books.queued);
            books.queued -= n;
            books.writing += n;
        }
    }

    /// The frames being written are written.
    pub(crate) fn written(&self) {
        let mut books = self.outlet.books();
        if !books.closed {
            self.hub
                .frames_sent
                .fetch_add(books.writing, Ordering::Relaxed);
            books.writing = 0;
        }
    }

    /// Replaces the subscription (only ever narrows what `may_see` allows).
    pub(crate) fn subscribe(&self, selection: Selection) {
        *self.subscription.write().unwrap_or_else(|e| e.into_inner()) = selection;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.rx.close();
        let mut state = self.hub.lock();
        state.clients.remove(&self.id);
        state.outlets.remove(&self.id);
        let empty = state.outlets.is_empty();
        drop(state);
        self.hub.settle(&self.outlet);
        if empty {
            self.hub.idle.notify_waiters();
        }
    }
}

/// Holds one place under the connection cap, from the request to the end of the connection.
pub(crate) struct Slot(Arc<Hub>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hub's view of a registered connection.
struct Client {
    visible: Visible,
    subscription: Arc<RwLock<Selection>>,
    skip_below: Vec<u64>,
    tx: mpsc::Sender<Arc<Entry>>,
    outlet: Arc<Outlet>,
}

/// Where a connection starts.
#[derive(Clone, Debug, Default)]
pub(crate) enum Start {
    /// From now on.
    #[default]
    Now,
    /// After a position it was given earlier (`since=` or `Last-Event-ID`).
    Since(String),
    /// With the last `n` events it may see.
    Replay(usize),
}

struct State {
    clients: HashMap<u64, Client>,
    outlets: HashMap<u64, Arc<Outlet>>,
    ring: VecDeque<Arc<Entry>>,
    epoch: String,
    /// Per stream: the next offset not yet published.
    cursor: Vec<u64>,
    /// Per stream: history below this offset is gone (evicted, or before this instance).
    floor: Vec<u64>,
    /// Per stream: the end of the stream as far as known (Kafka: the high watermark); a
    /// position beyond it belongs to another incarnation of the stream.
    horizon: Vec<u64>,
    shutting_down: bool,
}

pub(crate) struct Hub {
    pub(crate) limits: Limits,
    state: Mutex<State>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    disconnects: [AtomicU64; 6],
    frames_sent: AtomicU64,
    dropped_frames: AtomicU64,
    unconfirmed_frames: AtomicU64,
    authorization_panics: AtomicU64,
    idle: Notify,
    cut: watch::Sender<bool>,
    /// The standalone listener and the Kafka source: stopped when the shutdown starts.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Whether a source reads the streams' ends (Kafka), and how to ask it to now.
    horizon_source: std::sync::atomic::AtomicBool,
    pub(crate) horizon_wanted: Notify,
    horizon_moved: Notify,
}

impl Drop for Hub {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Hub {
    pub(crate) fn new(limits: Limits, epoch: String, starts: Vec<u64>) -> Self {
        Hub {
            limits,
            state: Mutex::new(State {
                clients: HashMap::new(),
                outlets: HashMap::new(),
                ring: VecDeque::new(),
                epoch,
                cursor: starts.clone(),
                horizon: starts.clone(),
                floor: starts,
                shutting_down: false,
            }),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            disconnects: Default::default(),
            frames_sent: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            unconfirmed_frames: AtomicU64::new(0),
            authorization_panics: AtomicU64::new(0),
            idle: Notify::new(),
            cut: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            horizon_source: std::sync::atomic::AtomicBool::new(false),
            horizon_wanted: Notify::new(),
            horizon_moved: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn epoch(&self) -> String {
        self.lock().epoch.clone()
    }

    pub(crate) fn own_task(&self, task: JoinHandle<()>) {
        if self.is_shutting_down() {
            task.abort();
        } else {
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// A watch that turns `true` when the shutdown deadline cuts every connection off.
    pub(crate) fn cut(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }

    pub(crate) fn rejected(&self, why: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "emissions::websocket", why, "feed request refused");
    }

    pub(crate) fn disconnected(&self, reason: Disconnect) {
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "emissions::websocket", code = reason.code(), reason = reason.reason(), "connection ended");
    }

    /// Takes a place under the connection cap, or `None` when it is full.
    pub(crate) fn slot(self: &Arc<Self>) -> Option<Slot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.clone());
        (before < self.limits.max_connections).then_some(slot)
    }

    pub(crate) fn stats(&self) -> FeedStats {
        FeedStats {
            connected: self.lock().outlets.len(),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            disconnects: Disconnect::ALL
                .iter()
                .map(|d| (*d, self.disconnects[d.index()].load(Ordering::Relaxed)))
                .collect(),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            dropped_frames: self.dropped_frames.load(Ordering::Relaxed),
            unconfirmed_frames: self.unconfirmed_frames.load(Ordering::Relaxed),
            authorization_panics: self.authorization_panics.load(Ordering::Relaxed),
        }
    }

    /// `may_see`, with a panic counted and taken as "no".
    fn allowed(&self, visible: &Visible, event: &Event) -> bool {
        match std::panic::catch_unwind(AssertUnwindSafe(|| visible(event))) {
            Ok(allowed) => allowed,
            Err(_) => {
                self.authorization_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "emissions::websocket", event = %event.id(), "the feed's may_see panicked; the frame is withheld");
                false
            }
        }
    }

    /// Settles a connection's books once: what is still queued is dropped, what was being
    /// written is unconfirmed.
    fn settle(&self, outlet: &Outlet) {
        let mut books = outlet.books();
        if !books.closed {
            books.closed = true;
            self.dropped_frames
                .fetch_add(books.queued, Ordering::Relaxed);
            self.unconfirmed_frames
                .fetch_add(books.writing, Ordering::Relaxed);
            books.queued = 0;
            books.writing = 0;
        }
    }

    /// Registers a connection and computes what it gets before the live frames (missed
    /// events after a position, or the last `n`), every one authorized — under the lock, so
    /// nothing published falls between the two.
    pub(crate) fn register(
        self: &Arc<Self>,
        slot: Slot,
        visible: Visible,
        subscription: Selection,
        start: Start,
    ) -> Option<Registration> {
        let (tx, rx) = mpsc::channel(self.limits.client_queue_events);
        let outlet = Arc::new(Outlet::default());
        let subscription = Arc::new(RwLock::new(subscription));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        if state.shutting_down {
            return None;
        }
        let mut preface = Vec::new();
        let mut skip_below = Vec::new();
        {
            let wanted = subscription.read().unwrap_or_else(|e| e.into_inner());
            let shows = |entry: &Entry| {
                wanted.narrows_to(entry.event.name(), entry.topic.as_deref())
                    && self.allowed(&visible, &entry.event)
            };
            match start {
                Start::Now => {}
                Start::Replay(n) => {
                    let mut recent: Vec<Out> = state
                        .ring
                        .iter()
                        .rev()
                        .filter(|e| shows(e))
                        .take(n)
                        .map(|e| Out::Event(e.clone()))
                        .collect();
                    recent.reverse();
                    preface = recent;
                }
                Start::Since(text) => match resume_point(&state, &text) {
                    Ok(from) => {
                        preface.extend(
                            state
                                .ring
                                .iter()
                                .filter(|e| e.offset >= from[e.stream] && shows(e))
                                .map(|e| Out::Event(e.clone())),
                        );
                        let missed = preface.len();
                        preface.push(Out::Control(
                            serde_json::json!({"type": "resume", "recovered": true, "missed": missed})
                                .to_string(),
                        ));
                        skip_below = from;
                    }
                    Err(reason) => preface.push(Out::Control(
                        serde_json::json!({"type": "resume", "recovered": false, "reason": reason})
                            .to_string(),
                    )),
                },
            }
        }
        let events = preface
            .iter()
            .filter(|o| matches!(o, Out::Event(_)))
            .count();
        outlet.books().queued = events as u64;
        state.clients.insert(
            id,
            Client {
                visible,
                subscription: subscription.clone(),
                skip_below,
                tx,
                outlet: outlet.clone(),
            },
        );
        state.outlets.insert(id, outlet.clone());
        drop(state);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Registration {
            hub: self.clone(),
            id,
            rx,
            outlet,
            subscription,
            preface,
            _slot: slot,
        })
    }

    /// Keeps entries for resume and replay without sending them (history read at start).
    #[cfg(feature = "kafka")]
    pub(crate) fn remember(&self, entries: Vec<Arc<Entry>>, cursor: &[u64]) {
        let mut state = self.lock();
        advance(&mut state, cursor);
        self.keep(&mut state, &entries);
    }

    /// The ends of the streams as the source knows them (Kafka's high watermarks).
    #[cfg(feature = "kafka")]
    pub(crate) fn extend_horizon(&self, ends: &[u64]) {
        self.horizon_source.store(true, Ordering::Release);
        let mut state = self.lock();
        for (horizon, end) in state.horizon.iter_mut().zip(ends) {
            *horizon = (*horizon).max(*end);
        }
        drop(state);
        self.horizon_moved.notify_waiters();
    }

    /// Before resuming at `position`: if it lies beyond the ends this instance knows (it was
    /// served by a faster instance), asks the source for the current ends and waits for
    /// them, up to `HORIZON_WAIT`. Returns at once for an in-process feed.
    pub(crate) async fn reach(&self, position: &str) {
        const HORIZON_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        if !self.horizon_source.load(Ordering::Acquire) {
            return;
        }
        let Ok(position) = Position::parse(position) else {
            return;
        };
        let deadline = Instant::now() + HORIZON_WAIT;
        loop {
            let moved = self.horizon_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            {
                let state = self.lock();
                if position.epoch != state.epoch
                    || position.offsets.len() != state.horizon.len()
                    || position
                        .offsets
                        .iter()
                        .zip(&state.horizon)
                        .all(|(at, end)| at <= end)
                {
                    return;
                }
            }
            self.horizon_wanted.notify_one();
            tokio::select! {
                () = moved => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn keep(&self, state: &mut State, entries: &[Arc<Entry>]) {
        state.ring.extend(entries.iter().cloned());
        while state.ring.len() > self.limits.history {
            if let Some(old) = state.ring.pop_front() {
                state.floor[old.stream] = state.floor[old.stream].max(old.offset + 1);
            }
        }
    }

    /// Appends the entries to the history and queues each for every connection that may see
    /// it and subscribed to it, under one lock per batch; a connection whose queue is full is
    /// cut off as slow.
    pub(crate) fn publish(&self, entries: Vec<Arc<Entry>>, cursor: &[u64]) {
        let mut state = self.lock();
        advance(&mut state, cursor);
        if entries.is_empty() {
            return;
        }
        self.keep(&mut state, &entries);
        if state.shutting_down {
            return;
        }
        let mut slow = Vec::new();
        for (id, client) in &state.clients {
            let subscription = client
                .subscription
                .read()
                .unwrap_or_else(|e| e.into_inner());
            let wanted: Vec<&Arc<Entry>> = entries
                .iter()
                .filter(|entry| {
                    client
                        .skip_below
                        .get(entry.stream)
                        .is_none_or(|below| entry.offset >= *below)
                        && subscription.narrows_to(entry.event.name(), entry.topic.as_deref())
                        && self.allowed(&client.visible, &entry.event)
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            // Counted before they are queued, so the connection never writes an uncounted one.
            client.outlet.books().queued += wanted.len() as u64;
            let mut added = 0u64;
            let mut full = false;
            for entry in &wanted {
                let bytes = entry.text.len();
                let queued = client.outlet.queued_bytes.load(Ordering::Acquire);
                if queued + bytes > self.limits.client_queue_bytes {
                    full = true;
                    break;
                }
                match client.tx.try_send((*entry).clone()) {
                    Ok(()) => {
                        client
                            .outlet
                            .queued_bytes
                            .fetch_add(bytes, Ordering::AcqRel);
                        added += 1;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        full = true;
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            let unqueued = wanted.len() as u64 - added;
            if unqueued > 0 {
                // Frames for this connection that did not fit (or found it gone): dropped.
                let mut books = client.outlet.books();
                books.queued -= unqueued.min(books.queued);
                self.dropped_frames.fetch_add(unqueued, Ordering::Relaxed);
            }
            if full {
                slow.push(*id);
            }
        }
        for id in slow {
            if let Some(client) = state.clients.remove(&id) {
                // What is queued is settled when the connection ends.
                client.outlet.disconnect(Disconnect::Slow);
                tracing::info!(target: "emissions::websocket", connection = id, "slow client cut off (outgoing queue full)");
            }
        }
    }

    /// Stops taking connections, lets every connection write what is queued for it and close
    /// (1001), and at the deadline cuts off the rest, counting their unsent frames. Returns
    /// once every connection has ended or been settled; safe to call again or after a
    /// cancelled call.
    pub(crate) async fn shutdown(&self, deadline: Instant) {
        {
            let mut state = self.lock();
            state.shutting_down = true;
            // Dropping the senders: each connection drains its queue, then closes.
            state.clients.clear();
        }
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.lock().outlets.is_empty() {
                return;
            }
            tokio::select! {
                () = idle => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.cut.send_replace(true);
        let outlets: Vec<Arc<Outlet>> = self.lock().outlets.values().cloned().collect();
        for outlet in &outlets {
            self.settle(outlet);
        }
        tracing::warn!(target: "emissions::websocket", connections = outlets.len(), "shutdown deadline: connections cut off, their unsent frames counted as dropped");
    }
}

fn advance(state: &mut State, cursor: &[u64]) {
    state.cursor.clone_from_slice(cursor);
    for (horizon, at) in state.horizon.iter_mut().zip(cursor) {
        *horizon = (*horizon).max(*at);
    }
}

/// Per stream, the first offset a connection resuming at `text` has not seen; or why it
/// cannot be resumed here.
fn resume_point(state: &State, text: &str) -> Result<Vec<u64>, String> {
    let position = Position::parse(text)?;
    if position.epoch != state.epoch {
        return Err(format!(
            "the position belongs to another stream (epoch {}, this stream is {})",
            position.epoch, state.epoch
        ));
    }
    if position.offsets.len() != state.cursor.len() {
        return Err(format!(
            "the position has {} offsets, this stream {}",
            position.offsets.len(),
            state.cursor.len()
        ));
    }
    if position
        .offsets
        .iter()
        .zip(&state.floor)
        .any(|(at, floor)| at < floor)
    {
        return Err("the position is older than this instance's history".to_owned());
    }
    if position
        .offsets
        .iter()
        .zip(&state.horizon)
        .any(|(at, end)| at > end)
    {
        return Err(
            "the position is past the end of this stream (a re-created topic needs a new epoch)"
                .to_owned(),
        );
    }
    Ok(position.offsets)
}
