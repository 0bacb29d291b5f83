//! One connection: the request it made, then the WebSocket pump or the SSE stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::{Disconnect, Entry, Hub, Out, Registration, Slot, Start, Visible};
use crate::selection::Selection;

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
    WebSocket(WebSocketUpgrade),
    Sse,
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}

impl<S: Send + Sync> FromRequestParts<S> for FeedRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
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
        let start = match (param("since").or(last_event_id), param("replay")) {
            (Some(_), Some(_)) => return Err(bad_request("either since or replay, not both")),
            (Some(position), None) => Start::Since(position),
            (None, Some(n)) => Start::Replay(
                n.parse::<usize>()
                    .map_err(|_| bad_request("replay must be a number"))?,
            ),
            (None, None) => Start::Now,
        };
        let origin = header_text(header::ORIGIN).and_then(Result::ok);
        let upgrade = parts
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let transport = if upgrade {
            Transport::WebSocket(
                WebSocketUpgrade::from_request_parts(parts, state)
                    .await
                    .map_err(IntoResponse::into_response)?,
            )
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

fn control(kind: &str, detail: serde_json::Value) -> Message {
    let mut frame = serde_json::json!({ "type": kind });
    if let (Some(map), serde_json::Value::Object(extra)) = (frame.as_object_mut(), detail) {
        map.extend(extra);
    }
    Message::Text(Utf8Bytes::from(frame.to_string()))
}

/// The answer to a control message: the new subscription applied, or why not.
fn apply(text: &str, registration: &Registration) -> Message {
    match serde_json::from_str::<Control>(text) {
        Ok(Control { subscribe }) => match subscribe.check() {
            Ok(()) => {
                let echo =
                    serde_json::json!({"events": subscribe.events, "topics": subscribe.topics});
                registration.subscribe(subscribe);
                control("subscribed", echo)
            }
            Err(reason) => control("error", serde_json::json!({ "message": reason })),
        },
        Err(err) => control(
            "error",
            serde_json::json!({ "message": format!("invalid control message: {err}") }),
        ),
    }
}

/// How long a closing client gets to read up to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Runs one WebSocket connection to its end.
pub(crate) async fn websocket(
    mut socket: WebSocket,
    hub: Arc<Hub>,
    mut registration: Registration,
) {
    let mut cut = hub.cut();
    let reason = pump(&mut socket, &hub, &mut registration, &mut cut)
        .await
        .unwrap_or_else(|reason| reason);
    if !matches!(reason, Disconnect::Client | Disconnect::Error) {
        let frame = CloseFrame {
            code: reason.code(),
            reason: Utf8Bytes::from_static(reason.reason()),
        };
        let close = tokio::time::timeout(CLOSE_GRACE, socket.send(Message::Close(Some(frame))));
        tokio::select! {
            _ = close => {}
            () = cut_off(&mut cut) => {}
        }
    }
    hub.disconnected(reason);
    drop(registration);
}

/// Writes `frames` with one flush; counts them sent once flushed.
async fn write(
    socket: &mut WebSocket,
    registration: &Registration,
    frames: Vec<Arc<Entry>>,
    bytes: usize,
) -> Result<(), Disconnect> {
    registration.writing(frames.len() as u64, bytes);
    for entry in frames {
        socket
            .feed(Message::Text(entry.text.clone()))
            .await
            .map_err(write_error)?;
    }
    socket.flush().await.map_err(write_error)?;
    registration.written();
    Ok(())
}

async fn pump(
    socket: &mut WebSocket,
    hub: &Hub,
    registration: &mut Registration,
    cut: &mut watch::Receiver<bool>,
) -> Result<Disconnect, Disconnect> {
    let stopped =
        |registration: &Registration| registration.outlet.reason().unwrap_or(Disconnect::Shutdown);
    for out in std::mem::take(&mut registration.preface) {
        let sent = async {
            match out {
                Out::Event(entry) => write(socket, registration, vec![entry], 0).await,
                Out::Control(text) => socket
                    .send(Message::Text(Utf8Bytes::from(text)))
                    .await
                    .map_err(|_| Disconnect::Error),
            }
        };
        tokio::select! {
            sent = sent => sent?,
            () = cut_off(cut) => return Err(Disconnect::Shutdown),
        }
    }
    let mut last_heard = Instant::now();
    let limits = &hub.limits;
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    loop {
        let frames = tokio::select! {
            first = registration.rx.recv() => match first {
                Some(first) => {
                    let mut frames = vec![first];
                    while frames.len() < WRITE_BATCH {
                        let Ok(next) = registration.rx.try_recv() else { break };
                        frames.push(next);
                    }
                    frames
                }
                // The hub let go: everything queued has been written.
                None => return Ok(stopped(registration)),
            },
            () = registration.outlet.kick.notified() => return Ok(stopped(registration)),
            () = cut_off(cut) => return Err(Disconnect::Shutdown),
            inbound = socket.recv() => {
                last_heard = Instant::now();
                let reply = match inbound {
                    None | Some(Ok(Message::Close(_))) => return Ok(Disconnect::Client),
                    Some(Ok(Message::Text(text))) => apply(text.as_str(), registration),
                    Some(Ok(Message::Binary(_))) => control("error", serde_json::json!({"message": "binary messages are not supported"})),
                    Some(Ok(_)) => continue, // ping (answered by the library), pong
                    Some(Err(err)) => return Err(inbound_error(&err)),
                };
                socket.send(reply).await.map_err(|_| Disconnect::Error)?;
                continue;
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > limits.ping_interval + limits.pong_timeout {
                    return Err(Disconnect::PingTimeout);
                }
                socket.send(Message::Ping(Default::default())).await.map_err(|_| Disconnect::Error)?;
                continue;
            },
        };
        let bytes = frames.iter().map(|f| f.text.len()).sum();
        let outlet = registration.outlet.clone();
        tokio::select! {
            sent = write(socket, registration, frames, bytes) => sent?,
            () = outlet.kick.notified() => return Ok(stopped(registration)),
            () = cut_off(cut) => return Err(Disconnect::Shutdown),
        }
    }
}

fn write_error(err: axum::Error) -> Disconnect {
    tracing::debug!(target: "emissions::websocket", %err, "write failed");
    Disconnect::Error
}

/// Resolves when the shutdown deadline cuts connections off.
async fn cut_off(cut: &mut watch::Receiver<bool>) {
    if cut.wait_for(|c| *c).await.is_err() {
        // The hub is gone: nothing will ever cut.
        std::future::pending::<()>().await;
    }
}

/// An inbound message over the limit, or another protocol or I/O error.
fn inbound_error(err: &axum::Error) -> Disconnect {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if let Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) =
            error.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        {
            return Disconnect::TooBig;
        }
        source = error.source();
    }
    Disconnect::Error
}

/// One SSE connection: the stream the HTTP server pulls frames from. Dropped by the server
/// when the client goes; its registration then settles the books.
struct SseFeed {
    hub: Arc<Hub>,
    registration: Registration,
    cut: watch::Receiver<bool>,
    reason: Disconnect,
}

impl SseFeed {
    fn ended(&mut self, reason: Disconnect) {
        self.reason = reason;
    }
}

impl Drop for SseFeed {
    fn drop(&mut self) {
        self.hub.disconnected(self.reason);
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
            hub.reach(position).await;
        }
        hub.register(self.slot, self.visible, self.subscription, self.start)
    }
}

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
        cut,
        reason: Disconnect::Client,
    };
    futures_util::stream::unfold((feed, preface), |(mut feed, mut preface)| async move {
        if let Some(out) = preface.pop_front() {
            let frame = match out {
                Out::Event(entry) => {
                    feed.registration.writing(1, 0);
                    feed.registration.written();
                    event_frame(&entry)
                }
                Out::Control(text) => SseEvent::default().event("control").data(text),
            };
            return Some((Ok(frame), (feed, preface)));
        }
        let outlet = feed.registration.outlet.clone();
        let next = tokio::select! {
            biased;
            () = outlet.kick.notified() => None,
            () = cut_off(&mut feed.cut) => None,
            next = feed.registration.rx.recv() => next,
        };
        match next {
            Some(entry) => {
                feed.registration.writing(1, entry.text.len());
                feed.registration.written();
                Some((Ok(event_frame(&entry)), (feed, preface)))
            }
            None => {
                feed.ended(outlet.reason().unwrap_or(Disconnect::Shutdown));
                None
            }
        }
    })
}

fn event_frame(entry: &Entry) -> SseEvent {
    SseEvent::default()
        .id(entry.position.clone())
        .data(entry.text.as_str())
}
