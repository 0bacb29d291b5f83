//! Shared by the feed tests: an app with two users, real sockets on loopback, and clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::request::Parts;
use emissions_core::{AdapterOptions, Emissions, Event, RetryPolicy};
use emissions_websocket::{Authorize, FeedBuilder, LiveFeed, Refusal};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Users log in with a `user=NAME` cookie (asynchronously looked up); each sees the events
/// whose metadata `user_id` is theirs. An event named `boom` makes `may_see` panic, the user
/// `panic` makes `authenticate` panic.
pub(crate) struct Users;

impl Authorize for Users {
    type Principal = String;

    async fn authenticate(&self, request: &mut Parts) -> Result<String, Refusal> {
        tokio::task::yield_now().await; // a session lookup
        let cookie = request
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match cookie.strip_prefix("user=") {
            Some("panic") => panic!("authenticate panics for the user `panic`"),
            Some(user) if !user.is_empty() => Ok(user.to_owned()),
            _ => Err(Refusal::unauthorized("log in first")),
        }
    }

    fn may_see(&self, user: &String, event: &Event) -> bool {
        assert!(event.name() != "boom", "may_see panics on boom");
        event.metadata().get("user_id").and_then(|v| v.as_str()) == Some(user.as_str())
    }
}

pub(crate) struct App {
    pub emissions: Emissions,
    pub feed: LiveFeed<Users>,
    pub addr: SocketAddr,
}

/// The feed mounted at `/live` in the app's own router, its adapter registered.
pub(crate) async fn app(builder: FeedBuilder) -> App {
    let feed = builder.build(Users).unwrap();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("live", feed.adapter().unwrap())
                .options(AdapterOptions::default().retry(RetryPolicy::none())),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    mount(emissions, feed).await
}

/// The app: its own routes, and the feed at `/live`, on a loopback port.
pub(crate) async fn mount(emissions: Emissions, feed: LiveFeed<Users>) -> App {
    let router = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/live", feed.handler());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    App {
        emissions,
        feed,
        addr,
    }
}

/// Commits one event per `(name, user)`, in order, and waits until delivered.
pub(crate) async fn commit(emissions: &Emissions, events: &[(&'static str, &str)]) -> Vec<Event> {
    let buffer = emissions.start();
    for (i, (name, user)) in events.iter().enumerate() {
        let mut metadata = emissions_core::Metadata::new();
        metadata.insert("user_id".into(), json!(user));
        buffer
            .emit_with_metadata(*name, &json!({"seq": i, "user": user}), metadata)
            .unwrap();
    }
    let events = buffer.events();
    buffer.commit().await.unwrap().settled().await;
    events
}

/// Commits `n` events `order_created` of `user` with `pad` bytes of padding each, in one
/// commit, and waits until delivered; returns them.
pub(crate) async fn commit_padded(
    emissions: &Emissions,
    n: usize,
    user: &str,
    pad: usize,
) -> Vec<Event> {
    let buffer = emissions.start();
    for i in 0..n {
        let mut metadata = emissions_core::Metadata::new();
        metadata.insert("user_id".into(), json!(user));
        buffer
            .emit_with_metadata(
                "order_created",
                &json!({"seq": i, "user": user, "pad": "x".repeat(pad)}),
                metadata,
            )
            .unwrap();
    }
    let events = buffer.events();
    buffer.commit().await.unwrap().settled().await;
    events
}

/// Waits until `condition` holds, failing after 10 s.
pub(crate) async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A WebSocket client of `user` (None: no cookie) with a query; Err is the HTTP status.
pub(crate) async fn try_ws(
    addr: SocketAddr,
    user: Option<&str>,
    query: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}/live?{query}")
        .into_client_request()
        .unwrap();
    if let Some(user) = user {
        request
            .headers_mut()
            .insert("cookie", format!("user={user}").parse().unwrap());
    }
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

/// A registered WebSocket client of `user`.
pub(crate) async fn ws(app: &App, user: &str, query: &str) -> Ws {
    let before = app.feed.stats().accepted;
    let ws = try_ws(app.addr, Some(user), query, &[]).await.unwrap();
    until("registered", || app.feed.stats().accepted > before).await;
    ws
}

/// The next text frame as JSON (skipping pings), failing after 10 s.
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("no error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Event frames until `n` have arrived.
pub(crate) async fn events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = next_json(ws).await;
        assert_eq!(frame["type"], "event", "{frame}");
        out.push(frame);
    }
    out
}

/// Asserts that nothing arrives for a while (the frames that do arrive are shown).
pub(crate) async fn quiet(ws: &mut Ws) {
    match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
        Err(_) => {}
        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
        Ok(other) => panic!("expected nothing, got {other:?}"),
    }
}

/// Reads until the close frame; returns its code.
pub(crate) async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("closed within 20 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends a control message and returns the answer.
pub(crate) async fn control(ws: &mut Ws, message: Value) -> Value {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
    next_json(ws).await
}

/// The `user` field of each frame's payload.
pub(crate) fn users_of(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["event"]["data"]["user"].as_str().unwrap().to_owned())
        .collect()
}

/// An SSE response body, parsed into `(id, data)` events as they arrive.
pub(crate) struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Sse {
    pub(crate) async fn open(
        addr: SocketAddr,
        user: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<Sse, u16> {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}/live?{query}"))
            .header("accept", "text/event-stream")
            .header("cookie", format!("user={user}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        if !response.status().is_success() {
            return Err(response.status().as_u16());
        }
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Ok(Sse {
            response,
            buffer: Vec::new(),
        })
    }

    /// The next event's `(event, id, data)`; `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Option<(Option<String>, Option<String>, Value)> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let (mut kind, mut id, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((kind, id, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an SSE chunk within 10 s")
                .ok()??;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

/// A masked client frame (RFC 6455 §5.2) with the given opcode and payload.
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65_536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A raw WebSocket connection of `user` with a receive buffer of `rcvbuf` bytes, upgraded
/// (the 101 read), frames to be written and read by hand.
pub(crate) async fn raw_ws(addr: SocketAddr, user: &str, rcvbuf: u32) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    let mut raw = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /live HTTP/1.1\r\nHost: app.test\r\nCookie: user={user}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(raw.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    raw
}

/// What a raw client read until the server closed the connection (or 3 s of silence): the
/// event frames, the close code, the frames after the close, and bytes left over (a frame
/// cut short). Checks every frame as RFC 6455 has a server send it.
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub events: u64,
    pub close: Option<u16>,
    pub after_close: Vec<u8>,
    pub left_over: usize,
    pub ended: bool,
}

pub(crate) async fn read_raw(raw: &mut TcpStream) -> Read {
    use tokio::io::AsyncReadExt;
    let (mut read, mut buf, mut chunk) = (Read::default(), Vec::new(), vec![0; 64 * 1024]);
    loop {
        let stop = match tokio::time::timeout(Duration::from_secs(3), raw.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                read.ended = true;
                true
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                false
            }
            Ok(Err(_)) | Err(_) => true,
        };
        while buf.len() >= 2 {
            assert_eq!(buf[0] & 0xf0, 0x80, "final, no reserved bits");
            assert_eq!(buf[1] & 0x80, 0, "a server's frames are not masked");
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < at + len {
                break;
            }
            let (opcode, payload): (u8, Vec<u8>) = (buf[0] & 0x0f, buf[at..at + len].to_vec());
            buf.drain(..at + len);
            if read.close.is_some() {
                read.after_close.push(opcode);
                continue;
            }
            match opcode {
                0x1 => {
                    serde_json::from_slice::<Value>(&payload).expect("an event frame is JSON");
                    read.events += 1;
                }
                0x8 => read.close = Some(u16::from_be_bytes([payload[0], payload[1]])),
                _ => {}
            }
        }
        if stop {
            read.left_over = buf.len();
            return read;
        }
    }
}

/// A WebSocket client of `user` whose socket has a receive buffer of `bytes`, registered.
pub(crate) async fn ws_with_receive_buffer(
    app: &App,
    user: &str,
    bytes: u32,
) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut request = format!("ws://{}/live", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", format!("user={user}").parse().unwrap());
    let before = app.feed.stats().accepted;
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    until("registered", || app.feed.stats().accepted > before).await;
    ws
}
