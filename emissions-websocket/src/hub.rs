//! Shared state: connected clients, the resume ring, statistics, and the fan-out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use emissions_core::{Event, TopicRouter};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::server::Limits;
use crate::subscription::Subscription;

/// Why a client was disconnected; `code` and `reason` go in the close frame.
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
    /// The server is shutting down (close code 1001).
    Shutdown,
    /// A protocol or I/O error.
    Error,
}

impl Disconnect {
    /// The close code sent to the client.
    ///
    /// ```
    /// assert_eq!(emissions_websocket::Disconnect::Slow.code(), 4000);
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

    /// The close reason sent to the client (and the stats key).
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

/// Connection statistics of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebSocketStats {
    /// Clients connected now.
    pub connected: usize,
    /// Upgrades accepted since start.
    pub accepted: u64,
    /// Handshakes refused (auth 401, origin 403, cap 503, bad request, timeout).
    pub rejected: u64,
    /// Disconnections by reason.
    pub disconnects: Vec<(Disconnect, u64)>,
    /// Frames not sent because their client was too slow and was disconnected.
    pub dropped_frames: u64,
}

impl WebSocketStats {
    /// Disconnections for one reason.
    ///
    /// ```
    /// use emissions_websocket::{Disconnect, WebSocketStats};
    /// assert_eq!(WebSocketStats::default().disconnects_for(Disconnect::Slow), 0);
    /// ```
    pub fn disconnects_for(&self, reason: Disconnect) -> u64 {
        self.disconnects
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// One event, serialized once for every client.
#[derive(Clone)]
pub(crate) struct Frame {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) text: Utf8Bytes,
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    name: &'a str,
    timestamp: String,
    metadata: &'a emissions_core::Metadata,
}

impl Frame {
    pub(crate) fn new(event: &Event) -> Self {
        let id = event.id().to_string();
        let frame = EventFrame {
            kind: "event",
            id: id.clone(),
            name: event.name(),
            timestamp: humantime::format_rfc3339_micros(event.emitted_at()).to_string(),
            metadata: event.metadata(),
        };
        // A struct of strings and a JSON map always serializes as an object; the payload is
        // JSON written by serde_json, so the frame is UTF-8.
        let bytes = event
            .to_json_with_payload(&frame, "payload")
            .unwrap_or_default();
        let text = String::from_utf8(bytes).unwrap_or_default();
        Frame {
            id,
            name: event.name().to_owned(),
            text: Utf8Bytes::from(text),
        }
    }
}

/// The hub's view of one client.
pub(crate) struct Client {
    pub(crate) subscription: Arc<RwLock<Subscription>>,
    pub(crate) tx: mpsc::Sender<Utf8Bytes>,
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    /// Set before the client is removed, so its task sends the right close frame.
    pub(crate) closing: Arc<Mutex<Option<Disconnect>>>,
    /// Wakes the client's task even while it waits on a full socket.
    pub(crate) kick: Arc<tokio::sync::Notify>,
}

impl Client {
    fn disconnect(self, reason: Disconnect) {
        *self.closing.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.kick.notify_one();
    }
}

pub(crate) struct State {
    pub(crate) clients: HashMap<u64, Client>,
    pub(crate) ring: VecDeque<Frame>,
    pub(crate) shutting_down: bool,
}

pub(crate) struct Hub {
    pub(crate) name: String,
    pub(crate) limits: Limits,
    pub(crate) router: Option<Arc<dyn TopicRouter + Send + Sync>>,
    state: Mutex<State>,
    pub(crate) next_id: AtomicU64,
    pub(crate) connections: AtomicUsize,
    accepted: AtomicU64,
    rejected: AtomicU64,
    disconnects: [AtomicU64; 6],
    dropped_frames: AtomicU64,
}

impl Hub {
    pub(crate) fn new(
        name: String,
        limits: Limits,
        router: Option<Arc<dyn TopicRouter + Send + Sync>>,
    ) -> Self {
        Hub {
            name,
            limits,
            router,
            state: Mutex::new(State {
                clients: HashMap::new(),
                ring: VecDeque::new(),
                shutting_down: false,
            }),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            disconnects: Default::default(),
            dropped_frames: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn rejected(&self, why: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "emissions::websocket", server = %self.name, why, "handshake refused");
    }

    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn disconnected(&self, reason: Disconnect) {
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "emissions::websocket", server = %self.name, code = reason.code(), reason = reason.reason(), "client disconnected");
    }

    pub(crate) fn stats(&self) -> WebSocketStats {
        WebSocketStats {
            connected: self.lock().clients.len(),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            disconnects: Disconnect::ALL
                .iter()
                .map(|d| (*d, self.disconnects[d.index()].load(Ordering::Relaxed)))
                .collect(),
            dropped_frames: self.dropped_frames.load(Ordering::Relaxed),
        }
    }

    /// Appends the events to the ring and queues each frame for every subscribed client, under
    /// one lock for the whole batch (each client is woken once per batch, not once per frame);
    /// disconnects clients whose queue is full.
    pub(crate) fn publish(&self, events: &[Event]) {
        let frames: Vec<Frame> = events.iter().map(Frame::new).collect();
        let mut state = self.lock();
        for frame in &frames {
            state.ring.push_back(frame.clone());
        }
        let excess = state.ring.len().saturating_sub(self.limits.resume_buffer);
        state.ring.drain(..excess);
        let mut slow = Vec::new();
        for (id, client) in &state.clients {
            let subscription = client
                .subscription
                .read()
                .unwrap_or_else(|e| e.into_inner());
            for frame in &frames {
                if !subscription.matches(&frame.name, self.router.as_ref()) {
                    continue;
                }
                let bytes = frame.text.len();
                let queued = client.queued_bytes.load(Ordering::Acquire);
                if queued + bytes > self.limits.client_queue_bytes {
                    slow.push(*id);
                    break;
                }
                match client.tx.try_send(frame.text.clone()) {
                    Ok(()) => {
                        client.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        slow.push(*id);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
        for id in slow {
            if let Some(client) = state.clients.remove(&id) {
                client.disconnect(Disconnect::Slow);
                self.dropped_frames.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "emissions::websocket", server = %self.name, client = id, "slow client disconnected (outgoing queue full)");
            }
        }
    }

    /// Closes every client (shutdown).
    pub(crate) fn close_all(&self) {
        let mut state = self.lock();
        state.shutting_down = true;
        for (_, client) in state.clients.drain() {
            client.disconnect(Disconnect::Shutdown);
        }
    }
}
