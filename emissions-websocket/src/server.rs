//! The server: configuration, the accept loop, and one task per client.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use emissions_core::{Adapter, BatchError, BoxError, Event, TopicRouter, async_trait};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::Error;
use crate::hub::{Client, Disconnect, Hub, WebSocketStats};
use crate::subscription::Subscription;

type AuthFn = Arc<dyn Fn(&Request) -> Result<(), String> + Send + Sync>;

#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) client_queue_events: usize,
    pub(crate) client_queue_bytes: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) max_inbound_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) resume_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_queue_events: 1024,
            client_queue_bytes: 1024 * 1024,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            max_inbound_bytes: 16 * 1024,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            resume_buffer: 1024,
        }
    }
}

/// A WebSocket server that pushes committed events to its clients. Configure, then
/// [`bind`](Self::bind) to get the adapter.
///
/// Defaults: per-client queue of 1 024 events and 1 MiB; ping every 20 s, disconnect after 10 s
/// more without any frame from the client; inbound messages and frames up to 16 KiB; 10 000
/// connections; handshake within 10 s; resume buffer of the last 1 024 events; any `Origin`;
/// no authentication. Plain `ws://`: run it behind an HTTPS-terminating proxy for `wss://`.
///
/// ```
/// use emissions_core::Emissions;
/// use emissions_websocket::WebSocketServer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let adapter = WebSocketServer::new("live", "127.0.0.1:0")
///     .allowed_origins(["http://localhost:8080"])
///     .auth(|request| match request.headers().get("authorization") {
///         Some(value) if value == "Bearer s3cret" => Ok(()),
///         _ => Err("missing or wrong bearer token".into()),
///     })
///     .bind()
///     .await?;
/// let handle = adapter.handle();
/// let emissions = Emissions::builder().adapter("live", adapter).start().await?;
/// println!("clients connect to ws://{}/?events=order_*", handle.local_addr());
/// # let _ = emissions;
/// # Ok(()) }
/// ```
#[must_use]
pub struct WebSocketServer {
    name: String,
    address: String,
    limits: Limits,
    origins: Option<Vec<String>>,
    auth: Option<AuthFn>,
    router: Option<Arc<dyn TopicRouter + Send + Sync>>,
}

impl fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("limits", &self.limits)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

impl WebSocketServer {
    /// A server named `name` (its adapter name) that will listen on `address`.
    ///
    /// See [`WebSocketServer`].
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        WebSocketServer {
            name: name.into(),
            address: address.into(),
            limits: Limits::default(),
            origins: None,
            auth: None,
            router: None,
        }
    }

    /// Per-client outgoing queue: at most `events` frames and `bytes` bytes waiting. A client
    /// that falls further behind is disconnected (close code 4000). Defaults to 1 024 and 1 MiB.
    ///
    /// See [`WebSocketServer`].
    pub fn client_queue(mut self, events: usize, bytes: usize) -> Self {
        self.limits.client_queue_events = events;
        self.limits.client_queue_bytes = bytes;
        self
    }

    /// Ping every `interval`; disconnect (close code 4001) a client silent for `interval +
    /// timeout`. Defaults to 20 s and 10 s.
    ///
    /// See [`WebSocketServer`].
    pub fn ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.limits.ping_interval = interval;
        self.limits.pong_timeout = timeout;
        self
    }

    /// Largest inbound message or frame (clients only send control messages); bigger closes
    /// the connection with 1009. Defaults to 16 KiB.
    ///
    /// See [`WebSocketServer`].
    pub fn max_inbound_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_inbound_bytes = bytes;
        self
    }

    /// Most simultaneous connections; more are answered 503 without upgrading. Defaults to 10 000.
    ///
    /// See [`WebSocketServer`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.limits.max_connections = connections;
        self
    }

    /// Longest a client may take to complete the handshake. Defaults to 10 s.
    ///
    /// See [`WebSocketServer`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// How many recent events are kept for clients that reconnect with `last_event_id`.
    /// Defaults to 1 024.
    ///
    /// See [`WebSocketServer`].
    pub fn resume_buffer(mut self, events: usize) -> Self {
        self.limits.resume_buffer = events;
        self
    }

    /// Only these `Origin` values may connect; others get 403 before upgrading.
    ///
    /// See [`WebSocketServer`].
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Checks each handshake request (headers, query); `Err(reason)` answers 401 without
    /// upgrading.
    ///
    /// See [`WebSocketServer`].
    pub fn auth(
        mut self,
        check: impl Fn(&Request) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.auth = Some(Arc::new(check));
        self
    }

    /// Resolves `topics=` subscriptions through a router.
    ///
    /// See [`WebSocketServer`].
    pub fn router(mut self, router: impl TopicRouter + Send + Sync + 'static) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    fn invalid(&self, field: &'static str, reason: &str) -> Error {
        Error::Config {
            server: self.name.clone(),
            field,
            reason: reason.to_owned(),
        }
    }

    /// Checks the configuration, listens, and returns the adapter to register.
    ///
    /// See [`WebSocketServer`].
    pub async fn bind(self) -> Result<WebSocketAdapter, Error> {
        let l = &self.limits;
        let zero = [
            (
                "client_queue",
                l.client_queue_events == 0 || l.client_queue_bytes == 0,
            ),
            (
                "ping",
                l.ping_interval.is_zero() || l.pong_timeout.is_zero(),
            ),
            ("max_inbound_bytes", l.max_inbound_bytes == 0),
            ("max_connections", l.max_connections == 0),
            ("handshake_timeout", l.handshake_timeout.is_zero()),
        ];
        if let Some((field, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(self.invalid(field, "must be greater than zero"));
        }
        let listener = TcpListener::bind(&self.address)
            .await
            .map_err(|source| Error::Bind {
                address: self.address.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            address: self.address.clone(),
            source,
        })?;
        let hub = Arc::new(Hub::new(
            self.name.clone(),
            self.limits.clone(),
            self.router.clone(),
        ));
        let gate = Arc::new(Gate {
            origins: self.origins,
            auth: self.auth,
        });
        let accept = tokio::spawn(accept_loop(listener, hub.clone(), gate));
        Ok(WebSocketAdapter {
            handle: WebSocketHandle { hub, local_addr },
            accept: Some(accept),
        })
    }
}

/// Handshake checks.
struct Gate {
    origins: Option<Vec<String>>,
    auth: Option<AuthFn>,
}

fn refuse(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() = status;
    response
}

async fn accept_loop(listener: TcpListener, hub: Arc<Hub>, gate: Arc<Gate>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(stream, peer, hub.clone(), gate.clone()));
    }
}

/// What the handshake learned from the request.
#[derive(Default)]
struct Requested {
    subscription: Subscription,
    last_event_id: Option<String>,
    replay: usize,
}

async fn connection(stream: TcpStream, peer: SocketAddr, hub: Arc<Hub>, gate: Arc<Gate>) {
    let over_cap = hub.connections.fetch_add(1, Ordering::AcqRel) >= hub.limits.max_connections;
    let _slot = ConnectionSlot(hub.clone());
    let requested = Arc::new(Mutex::new(Requested::default()));
    let learned = requested.clone();
    // The error type is fixed by tungstenite's `Callback`.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if over_cap {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections",
            ));
        }
        if let Some(origins) = &gate.origins {
            let origin = request
                .headers()
                .get("origin")
                .and_then(|o| o.to_str().ok());
            if !origin.is_some_and(|o| origins.iter().any(|allowed| allowed == o)) {
                return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
            }
        }
        if let Some(auth) = &gate.auth {
            if let Err(reason) = auth(request) {
                return Err(refuse(StatusCode::UNAUTHORIZED, &reason));
            }
        }
        let query = request.uri().query();
        let subscription = Subscription::from_query(query)
            .map_err(|reason| refuse(StatusCode::BAD_REQUEST, &reason))?;
        let param = |name: &str| {
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let replay = match param("replay") {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| refuse(StatusCode::BAD_REQUEST, "replay must be a number"))?,
            None => 0,
        };
        *learned.lock().unwrap_or_else(|e| e.into_inner()) = Requested {
            subscription,
            last_event_id: param("last_event_id"),
            replay,
        };
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(hub.limits.max_inbound_bytes))
        .max_frame_size(Some(hub.limits.max_inbound_bytes));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match tokio::time::timeout(hub.limits.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => return hub.rejected(&err.to_string()),
        Err(_) => return hub.rejected("handshake timeout"),
    };
    hub.accepted();
    let requested = std::mem::take(&mut *requested.lock().unwrap_or_else(|e| e.into_inner()));
    let reason = serve(ws, &hub, requested).await;
    hub.disconnected(reason);
    tracing::trace!(target: "emissions::websocket", %peer, "connection ended");
}

/// Counts a connection from accept to close.
struct ConnectionSlot(Arc<Hub>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A control message from a client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    subscribe: Subscription,
}

fn control_frame(kind: &str, detail: serde_json::Value) -> Message {
    let mut frame = serde_json::json!({ "type": kind });
    if let (Some(map), serde_json::Value::Object(extra)) = (frame.as_object_mut(), detail) {
        map.extend(extra);
    }
    Message::Text(Utf8Bytes::from(frame.to_string()))
}

/// Registers the client, replays what it missed, and pumps frames until it goes.
async fn serve(mut ws: WebSocketStream<TcpStream>, hub: &Hub, requested: Requested) -> Disconnect {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(hub.limits.client_queue_events);
    let subscription = Arc::new(RwLock::new(requested.subscription));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let closing = Arc::new(Mutex::new(None));
    let kick = Arc::new(tokio::sync::Notify::new());
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let mut preface: Vec<Message> = Vec::new();
    {
        let mut state = hub.lock();
        if state.shutting_down {
            return Disconnect::Shutdown;
        }
        if let Some(last) = &requested.last_event_id {
            // Under the hub lock: nothing published between the backlog and the live frames.
            match state.ring.iter().position(|f| &f.id == last) {
                Some(position) => {
                    let wanted = subscription.read().unwrap_or_else(|e| e.into_inner());
                    preface.extend(
                        state
                            .ring
                            .iter()
                            .skip(position + 1)
                            .filter(|f| wanted.matches(&f.name, hub.router.as_ref()))
                            .map(|f| Message::Text(f.text.clone())),
                    );
                }
                None => preface.push(control_frame(
                    "resync",
                    serde_json::json!({"reason": "gap too large", "last_event_id": last}),
                )),
            }
        } else if requested.replay > 0 {
            let wanted = subscription.read().unwrap_or_else(|e| e.into_inner());
            let recent: Vec<Message> = state
                .ring
                .iter()
                .rev()
                .filter(|f| wanted.matches(&f.name, hub.router.as_ref()))
                .take(requested.replay)
                .map(|f| Message::Text(f.text.clone()))
                .collect();
            preface.extend(recent.into_iter().rev());
        }
        state.clients.insert(
            id,
            Client {
                subscription: subscription.clone(),
                tx,
                queued_bytes: queued_bytes.clone(),
                closing: closing.clone(),
                kick: kick.clone(),
            },
        );
    }
    let link = Link {
        rx: &mut rx,
        subscription: &subscription,
        queued_bytes: &queued_bytes,
        closing: &closing,
        kick: &kick,
    };
    let result = pump(&mut ws, hub, preface, link).await;
    hub.lock().clients.remove(&id);
    let reason = match result {
        Ok(reason) => reason,
        Err(reason) => reason,
    };
    if !matches!(reason, Disconnect::Client | Disconnect::Error) {
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: Utf8Bytes::from_static(reason.reason()),
        };
        // A slow client may take a while to read up to the close frame.
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
    }
    reason
}

/// How long a disconnected client gets to read up to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The client's side of the hub.
struct Link<'a> {
    rx: &'a mut mpsc::Receiver<Utf8Bytes>,
    subscription: &'a RwLock<Subscription>,
    queued_bytes: &'a AtomicUsize,
    closing: &'a Mutex<Option<Disconnect>>,
    kick: &'a tokio::sync::Notify,
}

impl Link<'_> {
    fn reason(&self) -> Disconnect {
        self.closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Disconnect::Shutdown)
    }
}

/// Sends one message unless the hub disconnects the client meanwhile.
async fn send(
    ws: &mut WebSocketStream<TcpStream>,
    link: &Link<'_>,
    message: Message,
) -> Result<(), Disconnect> {
    tokio::select! {
        sent = ws.send(message) => sent.map_err(|_| Disconnect::Error),
        () = link.kick.notified() => Err(link.reason()),
    }
}

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued (up to [`WRITE_BATCH`] frames), then
/// flushes once, unless the hub disconnects the client meanwhile.
async fn send_queued(
    ws: &mut WebSocketStream<TcpStream>,
    link: &mut Link<'_>,
    first: Utf8Bytes,
) -> Result<(), Disconnect> {
    let Link {
        rx,
        queued_bytes,
        kick,
        ..
    } = link;
    let write = async {
        ws.feed(Message::Text(first)).await?;
        for _ in 1..WRITE_BATCH {
            let Ok(text) = rx.try_recv() else { break };
            queued_bytes.fetch_sub(text.len(), Ordering::AcqRel);
            ws.feed(Message::Text(text)).await?;
        }
        ws.flush().await
    };
    tokio::select! {
        sent = write => sent.map_err(|_| Disconnect::Error),
        () = kick.notified() => Err(link.reason()),
    }
}

async fn pump(
    ws: &mut WebSocketStream<TcpStream>,
    hub: &Hub,
    preface: Vec<Message>,
    mut link: Link<'_>,
) -> Result<Disconnect, Disconnect> {
    for message in preface {
        send(ws, &link, message).await?;
    }
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + hub.limits.ping_interval,
        hub.limits.ping_interval,
    );
    loop {
        tokio::select! {
            frame = link.rx.recv() => match frame {
                Some(text) => {
                    link.queued_bytes.fetch_sub(text.len(), Ordering::AcqRel);
                    send_queued(ws, &mut link, text).await?;
                }
                None => return Ok(link.reason()),
            },
            () = link.kick.notified() => return Ok(link.reason()),
            inbound = ws.next() => {
                last_heard = Instant::now();
                match inbound {
                    None | Some(Ok(Message::Close(_))) => return Ok(Disconnect::Client),
                    Some(Ok(Message::Text(text))) => {
                        let reply = match serde_json::from_str::<Control>(&text) {
                            Ok(control) => match control.subscribe.check() {
                                Ok(()) => {
                                    let echo = serde_json::json!({"events": control.subscribe.events, "topics": control.subscribe.topics});
                                    *link.subscription.write().unwrap_or_else(|e| e.into_inner()) = control.subscribe;
                                    control_frame("subscribed", echo)
                                }
                                Err(reason) => control_frame("error", serde_json::json!({"message": reason})),
                            },
                            Err(err) => control_frame("error", serde_json::json!({"message": format!("invalid control message: {err}")})),
                        };
                        send(ws, &link, reply).await?;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let reply = control_frame("error", serde_json::json!({"message": "binary messages are not supported"}));
                        send(ws, &link, reply).await?;
                    }
                    Some(Ok(_)) => {} // ping (answered by the library), pong, raw frame
                    Some(Err(WsError::Capacity(_))) => return Err(Disconnect::TooBig),
                    Some(Err(_)) => return Err(Disconnect::Error),
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > hub.limits.ping_interval + hub.limits.pong_timeout {
                    return Err(Disconnect::PingTimeout);
                }
                send(ws, &link, Message::Ping(Default::default())).await?;
            },
        }
    }
}

/// A handle to a bound server: its address and statistics. Cheap to clone.
#[derive(Clone)]
pub struct WebSocketHandle {
    hub: Arc<Hub>,
    local_addr: SocketAddr,
}

impl fmt::Debug for WebSocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketHandle")
            .field("server", &self.hub.name)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl WebSocketHandle {
    /// The address the server listens on.
    ///
    /// See [`WebSocketServer`].
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connection counts, disconnect reasons and dropped frames so far.
    ///
    /// See [`WebSocketServer`].
    pub fn stats(&self) -> WebSocketStats {
        self.hub.stats()
    }
}

/// The adapter: each committed event becomes one JSON text frame, queued for every subscribed
/// client. See the [crate docs](crate).
pub struct WebSocketAdapter {
    handle: WebSocketHandle,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for WebSocketAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketAdapter")
            .field("handle", &self.handle)
            .finish()
    }
}

impl WebSocketAdapter {
    /// A handle for the address and statistics (take it before registering the adapter).
    ///
    /// See [`WebSocketServer`].
    pub fn handle(&self) -> WebSocketHandle {
        self.handle.clone()
    }
}

#[async_trait]
impl Adapter for WebSocketAdapter {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        self.handle.hub.publish(events);
        Ok(())
    }

    async fn shutdown(&mut self, _deadline: tokio::time::Instant) -> Result<(), BoxError> {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.handle.hub.close_all();
        Ok(())
    }
}

impl Drop for WebSocketAdapter {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}
