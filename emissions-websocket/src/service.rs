//! One connection: the request it made, then the WebSocket pump or the SSE stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::hub::{Disconnect, Entry, Hub, Out, Outlet, Pull, Registration, Slot, Start, Visible};
use crate::selection::Selection;
use crate::socket::{self, Socket, Upgrade};

/// A feed request, read from the request head: the transport (a WebSocket upgrade, or SSE
/// for `Accept: text/event-stream`), the subscription (`events=`, `topics=`), and where to
/// start (`since=<position>` or the `Last-Event-ID` header; `replay=N`). An axum extractor:
/// a malformed request is answered 400 with the reason.
///
/// Use it in a handler of your own when authentication is done by your own extractors, then
/// pass the principal to [`LiveFeed::serve`](crate::LiveFeed::serve).
pub struct FeedRequest {
    pub(crate) transport: Transport,
    pub(crate) subscription: Selection,
    pub(crate) start: Start,
    pub(crate) origin: Option<String>,
}

impl std::fmt::Debug for FeedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedRequest")
            .field(
                "transport",
                &match self.transport {
                    Transport::WebSocket(_) => "websocket",
                    Transport::Sse => "sse",
                },
            )
            .field("subscription", &self.subscription)
            .field("start", &self.start)
            .finish()
    }
}

pub(crate) enum Transport {
    WebSocket(Upgrade),
    Sse,
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for FeedRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let subscription = Selection::from_query(&query).map_err(bad_request)?;
        let param = |name: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let header_text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().map(str::to_owned))
        };
        let last_event_id = match header_text(header::HeaderName::from_static("last-event-id")) {
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return Err(bad_request("Last-Event-ID is not a position")),
            None => None,
        };
        // A reconnecting EventSource repeats its URL and adds Last-Event-ID: the header is
        // the newer position and wins over `since` and `replay` in the URL.
        let start = match (last_event_id, param("since"), param("replay")) {
            (Some(position), _, _) => Start::Since(position),
            (None, Some(_), Some(_)) => {
                return Err(bad_request("either since or replay, not both"));
            }
            (None, Some(position), None) => Start::Since(position),
            (None, None, Some(n)) => Start::Replay(
                n.parse::<usize>()
                    .map_err(|_| bad_request("replay must be a number"))?,
            ),
            (None, None, None) => Start::Now,
        };
        let origin = header_text(header::ORIGIN).and_then(Result::ok);
        let upgrade = parts
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let transport = if upgrade {
            Transport::WebSocket(Upgrade::from_parts(parts).map_err(IntoResponse::into_response)?)
        } else if parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream")))
        {
            Transport::Sse
        } else {
            return Err(bad_request(
                "a live feed answers WebSocket upgrades and `Accept: text/event-stream`",
            ));
        };
        Ok(FeedRequest {
            transport,
            subscription,
            start,
            origin,
        })
    }
}

/// A control message from a WebSocket client.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    subscribe: Selection,
}

/// A control frame's JSON text.
fn control(kind: &str, detail: serde_json::Value) -> String {
    let mut frame = serde_json::json!({ "type": kind });
    if let (Some(map), serde_json::Value::Object(extra)) = (frame.as_object_mut(), detail) {
        map.extend(extra);
    }
    frame.to_string()
}

/// An error frame: the reason, cut to 256 characters (a reason may quote the client's
/// message, which may be as long as the inbound limit allows).
fn error(reason: impl std::fmt::Display) -> String {
    const MAX: usize = 256;
    let reason = reason.to_string();
    let message = match reason.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &reason[..at]),
        None => reason,
    };
    control("error", serde_json::json!({ "message": message }))
}

/// The answer to a control message: the new subscription applied, or why not.
fn apply(text: &str, registration: &Registration) -> String {
    match serde_json::from_str::<Control>(text) {
        Ok(Control { subscribe }) => match subscribe.check() {
            Ok(()) => {
                let echo =
                    serde_json::json!({"events": subscribe.events, "topics": subscribe.topics});
                registration.subscribe(subscribe);
                control("subscribed", echo)
            }
            Err(reason) => error(reason),
        },
        Err(err) => error(format_args!("invalid control message: {err}")),
    }
}

/// How long a closing client gets to read up to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;
/// A write batch stops once it holds this many bytes (or one frame, if larger).
const WRITE_BYTES: usize = socket::BACKLOG;

/// Runs one WebSocket connection to its end.
pub(crate) async fn websocket(mut socket: Socket, hub: Arc<Hub>, mut registration: Registration) {
    let mut cut = hub.cut();
    let reason = pump(&mut socket, &hub, &mut registration, &mut cut)
        .await
        .unwrap_or_else(|reason| reason);
    // The connection counts as ended now (frames still on the wire are unconfirmed), and
    // gives its place back — except at shutdown, where the close after the drain is part
    // of what the caller waits for.
    let mut registration = Some(registration);
    if reason != Disconnect::Shutdown {
        end(registration.take(), reason);
    }
    // After whatever the wire still holds: a close never cuts a frame in two.
    let closed = match reason {
        Disconnect::Error => false,
        // The client's close is answered (tungstenite queued the answer when it read it).
        Disconnect::Client => {
            tokio::select! {
                closed = tokio::time::timeout(CLOSE_GRACE, socket.flush()) => matches!(closed, Ok(Ok(()))),
                () = cut_off(&mut cut) => false,
            }
        }
        reason => {
            let frame = CloseFrame {
                code: reason.code().into(),
                reason: Utf8Bytes::from_static(reason.reason()),
            };
            let close = socket::close(&mut socket, frame);
            tokio::select! {
                closed = tokio::time::timeout(CLOSE_GRACE, close) => matches!(closed, Ok(Ok(()))),
                () = cut_off(&mut cut) => false,
            }
        }
    };
    end(registration, reason);
    if closed {
        tokio::select! {
            () = socket::linger(&mut socket, CLOSE_GRACE) => {}
            () = cut_off(&mut cut) => {}
        }
    }
}

/// Counts a connection's end and lets go of it (settling its books).
fn end(registration: Option<Registration>, reason: Disconnect) {
    if let Some(registration) = registration {
        registration.end(reason);
    }
}

/// Sends the `n` event frames queued on the wire (already counted as being written) with
/// what else it holds; counts them sent once the socket has taken them all. Dropped
/// half-way, it leaves them on the wire, where the next flush resumes.
async fn flush(socket: &mut Socket, registration: &Registration, n: u64) -> Result<(), Disconnect> {
    flush_wire(socket).await?;
    registration.written(n);
    Ok(())
}

/// Sends one frame of the feed's own (an answer, a ping) after what the wire holds.
async fn say(socket: &mut Socket, frame: &[u8]) -> Result<(), Disconnect> {
    socket.get_mut().queue(frame);
    flush_wire(socket).await
}

async fn flush_wire(socket: &mut Socket) -> Result<(), Disconnect> {
    socket.get_mut().flush().await.map_err(|err| {
        tracing::debug!(target: "emissions::websocket", %err, "write failed");
        Disconnect::Error
    })
}

/// How a write waits: for the hub letting go of the connection (slow), the shutdown cut, and
/// the client: one that takes no bytes for `patience` (a ping interval and timeout) is gone
/// (4001), so no write waits forever, however slowly a client that keeps reading reads.
struct Guard {
    outlet: Arc<Outlet>,
    cut: watch::Receiver<bool>,
    patience: Duration,
    /// The wire's bytes handed to the socket so far.
    progress: Arc<AtomicU64>,
}

impl Guard {
    /// Runs `write` to its end or until one of the above. A write the socket takes at once
    /// (the usual case) finishes without arming a timer.
    async fn run(
        &mut self,
        write: impl Future<Output = Result<(), Disconnect>>,
    ) -> Result<(), Disconnect> {
        let mut write = std::pin::pin!(write);
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(written) = first {
            return written;
        }
        loop {
            let before = self.progress.load(Ordering::Relaxed);
            tokio::select! {
                written = &mut write => return written,
                () = self.outlet.kick.notified() => {
                    return Err(self.outlet.reason().unwrap_or(Disconnect::Shutdown));
                }
                () = cut_off(&mut self.cut) => return Err(Disconnect::Shutdown),
                () = tokio::time::sleep(self.patience) => {
                    if self.progress.load(Ordering::Relaxed) == before {
                        return Err(Disconnect::PingTimeout);
                    }
                }
            }
        }
    }
}

async fn pump(
    socket: &mut Socket,
    hub: &Hub,
    registration: &mut Registration,
    cut: &mut watch::Receiver<bool>,
) -> Result<Disconnect, Disconnect> {
    let stopped =
        |registration: &Registration| registration.outlet.reason().unwrap_or(Disconnect::Shutdown);
    let limits = &hub.limits;
    let outlet = registration.outlet.clone();
    let mut guard = Guard {
        outlet: outlet.clone(),
        cut: cut.clone(),
        patience: limits.ping_interval + limits.pong_timeout,
        progress: socket.get_ref().progress(),
    };
    for out in std::mem::take(&mut registration.preface) {
        let sent = async {
            match out {
                Out::Event(entry) => {
                    registration.writing_preface(1);
                    socket.get_mut().queue(&entry.frame);
                    flush(socket, registration, 1).await
                }
                Out::Control(text) => say(socket, &socket::text_frame(text)).await,
            }
        };
        guard.run(sent).await?;
    }
    // When the ping not answered yet was sent: pings go out once the connection has been
    // idle for an interval (a busy one proves its client alive by taking its frames, and the
    // interval lets the client read what is still in flight before a ping), and a client
    // that does not answer within the timeout is gone (4001).
    let mut unanswered: Option<Instant> = None;
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Taken before reading: it sees every later `notify_waiters`, and registers with the
        // shared `Notify` (under its lock) only when the connection goes idle.
        let published = hub.published.notified();
        tokio::pin!(published);
        // The frames go from the feed's ring onto the wire, encoded once for everyone, and
        // leave in one write; a batch stops at the wire's backlog in bytes, so a client that
        // stops reading holds at most that much of its own.
        let wire = socket.get_mut();
        let mut taken = 0;
        match registration.pull(WRITE_BATCH, |entry| {
            wire.queue(&entry.frame);
            taken += 1;
            wire.queued() < WRITE_BYTES
        }) {
            Pull::Frames => {
                guard.run(flush(socket, registration, taken)).await?;
                ping.reset();
                // Between batches too, without waiting: a connection that never goes idle
                // still hears its client's pings, subscription changes and close.
                if let Some(inbound) = socket.next().now_or_never() {
                    unanswered = None;
                    let reply = match heard(inbound, registration) {
                        Ok(reply) => reply,
                        Err(end) => return end,
                    };
                    if let Some(reply) = reply {
                        guard.run(say(socket, &socket::text_frame(reply))).await?;
                    }
                }
                continue;
            }
            // The feed shuts down and everything for this connection has been written.
            Pull::Drained => return Ok(Disconnect::Shutdown),
            Pull::Closed => return Ok(stopped(registration)),
            Pull::Idle => {}
        }
        let pong_due = unanswered.map(|sent| sent + limits.pong_timeout);
        let outbound = tokio::select! {
            () = &mut published => continue,
            () = outlet.kick.notified() => return Ok(stopped(registration)),
            () = cut_off(cut) => return Err(Disconnect::Shutdown),
            inbound = socket.next() => {
                unanswered = None;
                match heard(inbound, registration) {
                    Ok(Some(reply)) => socket::text_frame(reply),
                    Ok(None) => continue,
                    Err(end) => return end,
                }
            },
            () = tokio::time::sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                return Err(Disconnect::PingTimeout);
            }
            _ = ping.tick(), if unanswered.is_none() => {
                unanswered = Some(Instant::now());
                socket::ping_frame()
            },
        };
        // The feed's own frames (events, answers, pings) go onto the wire whole, like the
        // events; tungstenite writes only the protocol's pongs and closes.
        guard.run(say(socket, &outbound)).await?;
    }
}

/// What the client said: the answer to send, if any; `Err` ends the connection (`Ok` inside
/// for a client that closed, `Err` for an error).
fn heard(
    inbound: Option<Result<Message, tungstenite::Error>>,
    registration: &Registration,
) -> Result<Option<String>, Result<Disconnect, Disconnect>> {
    match inbound {
        None | Some(Ok(Message::Close(_))) => Err(Ok(Disconnect::Client)),
        Some(Ok(Message::Text(text))) => Ok(Some(apply(text.as_str(), registration))),
        Some(Ok(Message::Binary(_))) => Ok(Some(error("binary messages are not supported"))),
        Some(Ok(_)) => Ok(None), // ping (answered by the library), pong
        Some(Err(err)) => Err(Err(inbound_error(&err))),
    }
}

/// Resolves when the shutdown deadline cuts connections off.
async fn cut_off(cut: &mut watch::Receiver<bool>) {
    if cut.wait_for(|c| *c).await.is_err() {
        // The hub is gone: nothing will ever cut.
        std::future::pending::<()>().await;
    }
}

/// What a read's error says of the client: a message over the limit, a protocol breach, a
/// text that is not UTF-8, or an I/O error (a client gone without a close among them).
fn inbound_error(err: &tungstenite::Error) -> Disconnect {
    use tungstenite::error::ProtocolError;
    tracing::debug!(target: "emissions::websocket", %err, "read failed");
    match err {
        tungstenite::Error::Capacity(_) => Disconnect::TooBig,
        tungstenite::Error::Utf8(_) => Disconnect::NotUtf8,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Disconnect::Error
        }
        tungstenite::Error::Protocol(_) => Disconnect::Protocol,
        _ => Disconnect::Error,
    }
}

/// One SSE connection: the stream the HTTP server pulls frames from. Dropped by the server
/// when the client goes; its registration then settles the books.
struct SseFeed {
    hub: Arc<Hub>,
    registration: Registration,
    preface: VecDeque<Out>,
    /// Pulled from the feed, not yet handed to the server.
    pending: VecDeque<Arc<Entry>>,
    cut: watch::Receiver<bool>,
    reason: Disconnect,
}

impl SseFeed {
    fn ended(&mut self, reason: Disconnect) {
        self.reason = reason;
    }

    /// The next frame, or `None` when the connection is over.
    async fn next(&mut self) -> Option<SseEvent> {
        if let Some(out) = self.preface.pop_front() {
            return Some(match out {
                Out::Event(entry) => {
                    self.registration.writing_preface(1);
                    self.registration.written(1);
                    event_frame(&entry)
                }
                Out::Control(text) => SseEvent::default().event("control").data(text),
            });
        }
        loop {
            if let Some(entry) = self.pending.pop_front() {
                self.registration.written(1);
                return Some(event_frame(&entry));
            }
            let hub = self.hub.clone();
            // Sees every later `notify_waiters` without registering (see `pump`).
            let published = hub.published.notified();
            tokio::pin!(published);
            let pending = &mut self.pending;
            match self.registration.pull(WRITE_BATCH, |entry| {
                pending.push_back(entry.clone());
                true
            }) {
                Pull::Frames => continue,
                Pull::Drained => {
                    self.ended(Disconnect::Shutdown);
                    return None;
                }
                Pull::Closed => {
                    let reason = self
                        .registration
                        .outlet
                        .reason()
                        .unwrap_or(Disconnect::Shutdown);
                    self.ended(reason);
                    return None;
                }
                Pull::Idle => {}
            }
            let outlet = self.registration.outlet.clone();
            let stop = tokio::select! {
                biased;
                () = outlet.kick.notified() => Some(outlet.reason().unwrap_or(Disconnect::Shutdown)),
                () = cut_off(&mut self.cut) => Some(Disconnect::Shutdown),
                () = &mut published => None,
            };
            if let Some(reason) = stop {
                self.ended(reason);
                return None;
            }
        }
    }
}

impl Drop for SseFeed {
    fn drop(&mut self) {
        if *self.cut.borrow() {
            // Cut off by the shutdown deadline (the server may drop the stream much later).
            self.reason = Disconnect::Shutdown;
        }
        // Pulled but never handed to the server: dropped, not unconfirmed.
        self.registration.unwritten(self.pending.len() as u64);
        self.registration.end(self.reason);
    }
}

/// What a connection brings to its registration.
pub(crate) struct Joining {
    pub(crate) slot: Slot,
    pub(crate) visible: Visible,
    pub(crate) subscription: Selection,
    pub(crate) start: Start,
}

impl Joining {
    /// Registers the connection, first waiting (briefly) for a position served by a faster
    /// instance to come within reach; `None` when the feed is shutting down.
    pub(crate) async fn register(self, hub: &Arc<Hub>) -> Option<Registration> {
        if let Start::Since(position) = &self.start {
            hub.until_loaded(HISTORY_WAIT).await;
            hub.reach(position).await;
        }
        hub.register(self.slot, self.visible, self.subscription, self.start)
    }
}

/// Longest a resuming connection waits for a Kafka source to read its history.
const HISTORY_WAIT: Duration = Duration::from_secs(30);

/// The SSE frames of one connection: `id:` is the position after each event, `data:` the
/// same JSON as a WebSocket frame; control frames are `event: control`. Each event frame
/// counts as sent once handed to the HTTP server. Ends after what was queued when the feed
/// shuts down.
pub(crate) fn sse(
    hub: Arc<Hub>,
    joining: Joining,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures_util::stream::once(async move {
        let registration = joining.register(&hub).await;
        registration.map(|registration| sse_frames(hub, registration))
    })
    .filter_map(std::future::ready)
    .flatten()
}

fn sse_frames(
    hub: Arc<Hub>,
    mut registration: Registration,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let preface: VecDeque<Out> = std::mem::take(&mut registration.preface).into();
    let cut = hub.cut();
    let feed = SseFeed {
        hub,
        registration,
        preface,
        pending: VecDeque::new(),
        cut,
        reason: Disconnect::Client,
    };
    futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next().await?;
        Some((Ok(frame), feed))
    })
}

fn event_frame(entry: &Entry) -> SseEvent {
    SseEvent::default()
        .id(entry.position.clone())
        .data(entry.text.as_str())
}
