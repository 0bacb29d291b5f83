//! Shared state of one feed: registered connections, the history ring, the stream cursor,
//! statistics, the fan-out with every frame authorized, and the drain on shutdown.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use emissions_core::{CloudEvents, Event};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::Limits;
use crate::position::Position;
use crate::selection::Selection;

/// Why a connection ended; for WebSocket clients `code` and `reason` go in the close frame,
/// and [`FeedStats::disconnects`] counts each.
///
/// ```
/// use emissions_websocket::{Disconnect, LiveFeed, Public};
/// let feed = LiveFeed::builder().all_events().build(Public)?;
/// // Alert on slow consumers: clients cut off because they could not keep up.
/// let slow = feed.stats().disconnects_for(Disconnect::Slow);
/// assert_eq!(slow, 0);
/// assert_eq!((Disconnect::Slow.code(), Disconnect::Slow.reason()), (4000, "slow consumer"));
/// # Ok::<(), emissions_websocket::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Disconnect {
    /// The client closed the connection.
    Client,
    /// Its outgoing queue overflowed (close code 4000, "slow consumer").
    Slow,
    /// It did not answer a ping in time, or took no bytes of a write for a ping interval and
    /// timeout (close code 4001, "ping timeout").
    PingTimeout,
    /// It sent a message over the inbound limit (close code 1009).
    TooBig,
    /// The feed is shutting down (close code 1001, after what was queued for it).
    Shutdown,
    /// It broke the WebSocket protocol, e.g. an unmasked or malformed frame (close code 1002).
    Protocol,
    /// It sent a text message that is not UTF-8 (close code 1007).
    NotUtf8,
    /// An I/O error, or a client gone without a close.
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
            Disconnect::Protocol => 1002,
            Disconnect::NotUtf8 => 1007,
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
            Disconnect::Protocol => "protocol error",
            Disconnect::NotUtf8 => "text is not UTF-8",
            Disconnect::Error => "error",
        }
    }

    const ALL: [Disconnect; 8] = [
        Disconnect::Client,
        Disconnect::Slow,
        Disconnect::PingTimeout,
        Disconnect::TooBig,
        Disconnect::Shutdown,
        Disconnect::Protocol,
        Disconnect::NotUtf8,
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
    /// Requests refused (authentication — including a panicking `authenticate`, answered
    /// 500 —, origin, capacity, shutdown, bad request).
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
    /// The JSON frame as a WebSocket text message, the same for every connection.
    pub(crate) frame: Bytes,
}

/// What a connection is allowed to see: the app's `may_see` bound to its principal.
pub(crate) type Visible = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// Something to write before the live frames: a missed or replayed event, or a control frame.
pub(crate) enum Out {
    Event(Arc<Entry>),
    Control(String),
}

/// Who a connection is: what it may see, what it subscribed to, and (after a resume) below
/// which offsets of each stream it has already been served.
pub(crate) struct Viewer {
    visible: Visible,
    subscription: RwLock<Selection>,
    skip_below: Vec<u64>,
}

impl Viewer {
    fn shows(&self, hub: &Hub, subscription: &Selection, entry: &Entry) -> bool {
        self.skip_below
            .get(entry.stream)
            .is_none_or(|below| entry.offset >= *below)
            && subscription.narrows_to(entry.event.name(), entry.topic.as_deref())
            && hub.allowed(&self.visible, &entry.event)
    }
}

/// The books and the read position of one connection.
pub(crate) struct Outlet {
    id: u64,
    books: Mutex<Books>,
    /// The next ring sequence number this connection reads.
    cursor: AtomicU64,
    reason: Mutex<Option<Disconnect>>,
    pub(crate) kick: Notify,
    /// Set once the connection's end is counted (by itself, or by the hub when it cuts it
    /// off: an SSE response the server no longer polls may be dropped much later).
    ended: std::sync::atomic::AtomicBool,
    /// Its place under the connection cap, given back when it ends.
    slot: Mutex<Option<Slot>>,
}

/// Frames of one connection not yet settled; closed once settled (then nothing more counts).
#[derive(Default)]
struct Books {
    /// Taken for this connection (its preface, or pulled and set aside), not being written.
    unsent: u64,
    /// Being written.
    writing: u64,
    closed: bool,
}

impl Outlet {
    fn new(id: u64, slot: Slot) -> Self {
        Outlet {
            id,
            books: Mutex::default(),
            cursor: AtomicU64::new(0),
            reason: Mutex::new(None),
            kick: Notify::new(),
            ended: std::sync::atomic::AtomicBool::new(false),
            slot: Mutex::new(Some(slot)),
        }
    }

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

/// What a connection finds when it reads the feed.
pub(crate) enum Pull {
    /// Frames for it, appended to the caller's batch and counted as being written.
    Frames,
    /// Nothing new yet.
    Idle,
    /// The feed shuts down and it has read everything.
    Drained,
    /// Its books are closed: cut off as slow, or by the shutdown deadline.
    Closed,
}

/// A connection's side of the hub, from registration to its end. Dropping it (the
/// connection ended, or its task panicked) deregisters it and settles its books.
pub(crate) struct Registration {
    hub: Arc<Hub>,
    viewer: Arc<Viewer>,
    pub(crate) outlet: Arc<Outlet>,
    pub(crate) preface: Vec<Out>,
}

impl Registration {
    /// Hands up to `max` frames for this connection to `take`, in order, until `take` says
    /// the batch is full (returns `false`), and counts them as being written.
    pub(crate) fn pull(&self, max: usize, take: impl FnMut(&Arc<Entry>) -> bool) -> Pull {
        self.hub.pull(&self.viewer, &self.outlet, max, take)
    }

    /// `n` preface frames are being written.
    pub(crate) fn writing_preface(&self, n: u64) {
        let mut books = self.outlet.books();
        if !books.closed {
            let n = n.min(books.unsent);
            books.unsent -= n;
            books.writing += n;
        }
    }

    /// `n` of the frames being written are written.
    pub(crate) fn written(&self, n: u64) {
        let mut books = self.outlet.books();
        if !books.closed {
            let n = n.min(books.writing);
            books.writing -= n;
            self.hub.frames_sent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` frames taken to be written are set aside unwritten (dropped at settlement).
    pub(crate) fn unwritten(&self, n: u64) {
        let mut books = self.outlet.books();
        if !books.closed {
            let n = n.min(books.writing);
            books.writing -= n;
            books.unsent += n;
        }
    }

    /// Counts the connection's end (once) and lets go of it.
    pub(crate) fn end(&self, reason: Disconnect) {
        let mut state = self.hub.write();
        self.hub.end(&mut state, &self.outlet, reason);
    }

    /// Replaces the subscription (only ever narrows what `may_see` allows).
    pub(crate) fn subscribe(&self, selection: Selection) {
        *self
            .viewer
            .subscription
            .write()
            .unwrap_or_else(|e| e.into_inner()) = selection;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.hub.write();
        self.hub.settle(&mut state, &self.viewer, &self.outlet);
        // Ended without saying why: its task panicked or was dropped.
        self.hub.end(&mut state, &self.outlet, Disconnect::Error);
    }
}

/// Holds one place under the connection cap, from the request to the end of the connection.
pub(crate) struct Slot(Arc<Hub>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A registered connection, as the hub sees it.
#[derive(Clone)]
struct Client {
    viewer: Arc<Viewer>,
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

/// One entry of the ring: its sequence number is its index in the feed since start.
struct Kept {
    /// Live frames, and their bytes, before this one since start (for the lag limits;
    /// history frames are never sent live, so they never count as lag).
    live_before: u64,
    bytes_before: u64,
    /// Read at start from the source's history: kept for resume and replay, never sent live.
    history: bool,
    entry: Arc<Entry>,
}

struct State {
    /// Connections fed live (a slow one leaves this map when it is cut off).
    clients: HashMap<u64, Client>,
    /// Connections not yet ended.
    outlets: HashMap<u64, Client>,
    /// The last frames of the feed, shared by every connection: each reads it at its own
    /// pace; the ring holds `max(history, client queue)` frames.
    ring: VecDeque<Kept>,
    /// The sequence number of the next frame; live frames and bytes so far.
    next_seq: u64,
    next_live: u64,
    next_bytes: u64,
    /// Frames and bytes since connections were last checked for lag.
    since_check: (u64, u64),
    epoch: String,
    /// Per stream: the next offset not yet published.
    cursor: Vec<u64>,
    /// Per stream: history below this offset is gone (evicted, or before this instance).
    floor: Vec<u64>,
    /// Per stream: the end of the stream as far as known (Kafka: the high watermark); a
    /// position beyond it belongs to another incarnation of the stream.
    horizon: Vec<u64>,
    shutting_down: bool,
    /// A Kafka source still reading its history: a position cannot be resumed yet.
    loading: bool,
}

impl State {
    fn front_seq(&self) -> u64 {
        self.next_seq - self.ring.len() as u64
    }

    /// How far behind the feed a connection reading at `seq` is: live frames and bytes.
    fn lag(&self, seq: u64) -> (u64, u64) {
        let front = self.front_seq();
        match self.ring.get(seq.saturating_sub(front) as usize) {
            Some(kept) if seq >= front => (
                self.next_live - kept.live_before,
                self.next_bytes - kept.bytes_before,
            ),
            _ if seq < front => (u64::MAX, u64::MAX),
            _ => (0, 0),
        }
    }
}

pub(crate) struct Hub {
    pub(crate) limits: Limits,
    /// Frames carry the structured CloudEvent instead of the envelope.
    pub(crate) cloudevents: Option<CloudEvents>,
    state: RwLock<State>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    disconnects: [AtomicU64; 8],
    frames_sent: AtomicU64,
    dropped_frames: AtomicU64,
    unconfirmed_frames: AtomicU64,
    authorization_panics: AtomicU64,
    /// Woken when frames are published or the shutdown starts.
    pub(crate) published: Notify,
    idle: Notify,
    cut: watch::Sender<bool>,
    /// The standalone listener and the Kafka source: stopped when the shutdown starts.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Whether a source reads the streams' ends (Kafka), and how to ask it to now.
    horizon_source: std::sync::atomic::AtomicBool,
    pub(crate) horizon_wanted: Notify,
    horizon_moved: Notify,
    loaded: Notify,
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
    pub(crate) fn new(
        limits: Limits,
        cloudevents: Option<CloudEvents>,
        epoch: String,
        starts: Vec<u64>,
    ) -> Self {
        Hub {
            limits,
            cloudevents,
            state: RwLock::new(State {
                clients: HashMap::new(),
                outlets: HashMap::new(),
                ring: VecDeque::new(),
                next_seq: 0,
                next_live: 0,
                next_bytes: 0,
                since_check: (0, 0),
                epoch,
                cursor: starts.clone(),
                horizon: starts.clone(),
                floor: starts,
                shutting_down: false,
                loading: false,
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
            published: Notify::new(),
            idle: Notify::new(),
            cut: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            horizon_source: std::sync::atomic::AtomicBool::new(false),
            horizon_wanted: Notify::new(),
            horizon_moved: Notify::new(),
            loaded: Notify::new(),
        }
    }

    /// Whether the source is still reading its history (resume waits for it).
    #[cfg(feature = "kafka")]
    pub(crate) fn set_loading(&self, loading: bool) {
        self.write().loading = loading;
        if !loading {
            self.loaded.notify_waiters();
        }
    }

    /// Waits (up to `max`) until the source has read its history.
    pub(crate) async fn until_loaded(&self, max: std::time::Duration) {
        let deadline = Instant::now() + max;
        loop {
            let loaded = self.loaded.notified();
            tokio::pin!(loaded);
            loaded.as_mut().enable();
            if !self.read().loading {
                return;
            }
            tokio::select! {
                () = loaded => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn epoch(&self) -> String {
        self.read().epoch.clone()
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
        self.read().shutting_down
    }

    /// A watch that turns `true` when the shutdown deadline cuts every connection off.
    pub(crate) fn cut(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }

    pub(crate) fn rejected(&self, why: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "emissions::websocket", why, "feed request refused");
    }

    /// Counts a connection's end once, gives its place under the cap back, and stops
    /// waiting for it.
    fn end(&self, state: &mut State, outlet: &Outlet, reason: Disconnect) {
        if outlet.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        state.clients.remove(&outlet.id);
        state.outlets.remove(&outlet.id);
        drop(outlet.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "emissions::websocket", code = reason.code(), reason = reason.reason(), "connection ended");
        if state.outlets.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Takes a place under the connection cap, or `None` when it is full.
    pub(crate) fn slot(self: &Arc<Self>) -> Option<Slot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.clone());
        (before < self.limits.max_connections).then_some(slot)
    }

    pub(crate) fn stats(&self) -> FeedStats {
        FeedStats {
            connected: self.read().outlets.len(),
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

    /// Settles a connection's books once: frames for it still in the ring past its cursor,
    /// and frames set aside, are dropped; frames being written are unconfirmed. Under the
    /// state's write lock, so that no `pull` is reading for the connection.
    fn settle(&self, state: &mut State, viewer: &Viewer, outlet: &Outlet) {
        let mut books = outlet.books();
        if books.closed {
            return;
        }
        books.closed = true;
        let front = state.front_seq();
        let from = outlet.cursor.load(Ordering::Acquire).max(front);
        let subscription = viewer
            .subscription
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let unread = state
            .ring
            .iter()
            .skip((from - front) as usize)
            .filter(|kept| !kept.history && viewer.shows(self, &subscription, &kept.entry))
            .count() as u64;
        self.dropped_frames
            .fetch_add(unread + books.unsent, Ordering::Relaxed);
        self.unconfirmed_frames
            .fetch_add(books.writing, Ordering::Relaxed);
        books.unsent = 0;
        books.writing = 0;
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outlet = Arc::new(Outlet::new(id, slot));
        let mut state = self.write();
        if state.shutting_down {
            return None;
        }
        let mut preface = Vec::new();
        let mut skip_below = Vec::new();
        {
            let shows = |entry: &Entry| {
                subscription.narrows_to(entry.event.name(), entry.topic.as_deref())
                    && self.allowed(&visible, &entry.event)
            };
            match start {
                Start::Now => {}
                Start::Replay(n) => {
                    let mut recent: Vec<Out> = state
                        .ring
                        .iter()
                        .rev()
                        .filter(|k| shows(&k.entry))
                        .take(n)
                        .map(|k| Out::Event(k.entry.clone()))
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
                                .filter(|k| {
                                    k.entry.offset >= from[k.entry.stream] && shows(&k.entry)
                                })
                                .map(|k| Out::Event(k.entry.clone())),
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
        outlet.books().unsent = events as u64;
        outlet.cursor.store(state.next_seq, Ordering::Release);
        let viewer = Arc::new(Viewer {
            visible,
            subscription: RwLock::new(subscription),
            skip_below,
        });
        let client = Client {
            viewer: viewer.clone(),
            outlet: outlet.clone(),
        };
        state.clients.insert(id, client.clone());
        state.outlets.insert(id, client);
        drop(state);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Registration {
            hub: self.clone(),
            viewer,
            outlet,
            preface,
        })
    }

    /// Reads the ring from the connection's cursor: hands up to `max` frames it may see and
    /// subscribed to to `take` (which says whether it has room for more), counted as being
    /// written before the cursor moves past them.
    /// Books are settled only under the state's write lock, so they cannot close while this
    /// reads.
    fn pull(
        &self,
        viewer: &Viewer,
        outlet: &Outlet,
        max: usize,
        mut take: impl FnMut(&Arc<Entry>) -> bool,
    ) -> Pull {
        let state = self.read();
        let front = state.front_seq();
        let mut at = outlet.cursor.load(Ordering::Acquire);
        let mut books = outlet.books();
        if at < front || books.closed {
            // Only a connection already cut off falls behind the ring.
            return Pull::Closed;
        }
        let subscription = viewer
            .subscription
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let (mut taken, mut room) = (0, true);
        while room && at < state.next_seq && taken < max {
            let kept = &state.ring[(at - front) as usize];
            at += 1;
            if !kept.history && viewer.shows(self, &subscription, &kept.entry) {
                room = take(&kept.entry);
                taken += 1;
            }
        }
        drop(subscription);
        books.writing += taken as u64;
        outlet.cursor.store(at, Ordering::Release);
        drop(books);
        if taken > 0 {
            Pull::Frames
        } else if state.shutting_down && at == state.next_seq {
            Pull::Drained
        } else {
            Pull::Idle
        }
    }

    /// Keeps entries for resume and replay without sending them (history read at start).
    #[cfg(feature = "kafka")]
    pub(crate) fn remember(&self, entries: Vec<Arc<Entry>>, cursor: &[u64]) {
        let mut state = self.write();
        advance(&mut state, cursor);
        self.keep(&mut state, entries, true);
    }

    /// The ends of the streams as the source knows them (Kafka's high watermarks).
    #[cfg(feature = "kafka")]
    pub(crate) fn extend_horizon(&self, ends: &[u64]) {
        self.horizon_source.store(true, Ordering::Release);
        let mut state = self.write();
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
                let state = self.read();
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

    /// Appends entries to the ring; every quarter of a client queue, cuts off connections
    /// that fell further behind than their queue allows (counting what they did not get),
    /// and evicts what no connection still needs beyond the history.
    fn keep(&self, state: &mut State, entries: Vec<Arc<Entry>>, history: bool) {
        let added = entries.len() as u64;
        let mut bytes = 0u64;
        let caught_up = state.next_seq;
        for entry in entries {
            let len = if history { 0 } else { entry.text.len() as u64 };
            state.ring.push_back(Kept {
                live_before: state.next_live,
                bytes_before: state.next_bytes,
                history,
                entry,
            });
            state.next_seq += 1;
            state.next_live += u64::from(!history);
            state.next_bytes += len;
            bytes += len;
        }
        if history {
            // Connections that had read everything have nothing to read in history frames:
            // move them past, so they never fall behind on frames they will not be sent.
            for client in state.clients.values() {
                let _ = client.outlet.cursor.compare_exchange(
                    caught_up,
                    state.next_seq,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            return;
        }
        state.since_check.0 += added;
        state.since_check.1 += bytes;
        let limits = &self.limits;
        let capacity = limits.history.max(limits.client_queue_events);
        let check_every = (
            (limits.client_queue_events as u64 / 4).max(1),
            (limits.client_queue_bytes as u64 / 4).max(1),
        );
        let over = state.ring.len() > capacity + capacity / 4;
        if !(over || state.since_check.0 >= check_every.0 || state.since_check.1 >= check_every.1) {
            return;
        }
        state.since_check = (0, 0);
        let keep_from = if over {
            state.next_seq - capacity as u64
        } else {
            state.front_seq()
        };
        let slow: Vec<(u64, Client)> = state
            .clients
            .iter()
            .filter(|(_, client)| {
                let at = client.outlet.cursor.load(Ordering::Acquire);
                let (frames, bytes) = state.lag(at);
                frames > limits.client_queue_events as u64
                    || bytes > limits.client_queue_bytes as u64
                    || at < keep_from
            })
            .map(|(id, client)| (*id, client.clone()))
            .collect();
        for (id, client) in slow {
            self.settle(state, &client.viewer, &client.outlet);
            client.outlet.disconnect(Disconnect::Slow);
            // Ended for the feed now (an SSE response the server no longer polls would
            // otherwise hold its place under the cap until the client goes).
            self.end(state, &client.outlet, Disconnect::Slow);
            tracing::info!(target: "emissions::websocket", connection = id, "slow client cut off (fell behind its queue)");
        }
        while state.front_seq() < keep_from {
            if let Some(old) = state.ring.pop_front() {
                let stream = old.entry.stream;
                state.floor[stream] = state.floor[stream].max(old.entry.offset + 1);
            }
        }
    }

    /// Appends the entries to the feed and wakes every connection to read them.
    pub(crate) fn publish(&self, entries: Vec<Arc<Entry>>, cursor: &[u64]) {
        let mut state = self.write();
        advance(&mut state, cursor);
        if entries.is_empty() || state.shutting_down {
            return;
        }
        self.keep(&mut state, entries, false);
        drop(state);
        self.published.notify_waiters();
    }

    /// Stops taking connections, lets every connection write what is queued for it and close
    /// (1001), and at the deadline cuts off the rest, counting their unsent frames. Returns
    /// once every connection has ended or been settled; safe to call again or after a
    /// cancelled call.
    pub(crate) async fn shutdown(&self, deadline: Instant) {
        {
            let mut state = self.write();
            state.shutting_down = true;
        }
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        // Each connection drains what is past its cursor, then closes.
        self.published.notify_waiters();
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.read().outlets.is_empty() {
                // Connections that still read what their clients send after the close end
                // by the deadline too.
                let cut = self.cut.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    cut.send_replace(true);
                });
                return;
            }
            tokio::select! {
                () = idle => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.cut.send_replace(true);
        let mut state = self.write();
        let outlets: Vec<Client> = state.outlets.values().cloned().collect();
        for client in &outlets {
            self.settle(&mut state, &client.viewer, &client.outlet);
            // Ended as far as the feed is concerned (an SSE response whose client stopped
            // reading is closed by the HTTP server only when its socket is).
            self.end(&mut state, &client.outlet, Disconnect::Shutdown);
        }
        let cut = outlets.len();
        drop(state);
        tracing::warn!(target: "emissions::websocket", connections = cut, "shutdown deadline: connections cut off, their unsent frames counted as dropped");
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
    if state.loading {
        return Err("this instance is still reading the stream's history; try again".to_owned());
    }
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

#[cfg(all(test, feature = "kafka"))]
mod tests {
    use super::*;

    fn entries(from: u64, n: u64) -> Vec<Arc<Entry>> {
        (from..from + n)
            .map(|offset| {
                let event =
                    Event::new("order_created", &offset, emissions_core::Metadata::new()).unwrap();
                crate::request_builder::entry(event, None, 0, offset, "e", &[offset + 1], None)
            })
            .collect()
    }

    /// History read at start is never sent live, so it never counts as a connection's lag:
    /// a connection registered while it loads is not cut off, and reads only live frames.
    #[test]
    fn history_loaded_after_a_connection_registered_is_not_its_lag() {
        let hub = Arc::new(Hub::new(Limits::default(), None, "e".into(), vec![0]));
        let visible: Visible = Arc::new(|_: &Event| true);
        let registration = hub
            .register(
                hub.slot().unwrap(),
                visible,
                Selection::default(),
                Start::Now,
            )
            .unwrap();
        hub.remember(entries(0, 3000), &[3000]);
        hub.publish(entries(3000, 300), &[3300]);
        assert_eq!(hub.stats().disconnects_for(Disconnect::Slow), 0);
        let mut batch = Vec::new();
        while let Pull::Frames = registration.pull(64, |e| {
            batch.push(e.clone());
            true
        }) {}
        let offsets: Vec<u64> = batch.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, (3000..3300).collect::<Vec<_>>());
    }
}
