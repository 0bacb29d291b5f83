//! A WebSocket connection's I/O: the HTTP/1.1 upgrade answered in the app's own router, and
//! the wire that carries the feed's frames.
//!
//! # Frames written once for every connection
//!
//! A server's frames are not masked, so an event's WebSocket frame is the same bytes for
//! every connection: it is encoded once, when the event enters the feed, and a connection
//! copies the frames it may see straight from the feed into its [`Wire`]'s buffer and hands
//! them to the socket in one write. The feed's other frames (answers to control messages,
//! pings) go onto the wire the same way; tungstenite reads the client's frames and writes
//! the protocol's own (pongs, closes) through the same buffer.
//!
//! # Order and cancellation
//!
//! The wire's buffer takes whole frames only: tungstenite writes a frame in one call, which the
//! wire accepts in full or not at all, and the feed appends whole frames. So frames never
//! interleave, whichever side wrote them. What was handed to the socket is tracked in the
//! wire, not in a future: a flush dropped half-way resumes where it stopped, and a close
//! frame goes out after the frames queued before it.
//!
//! # Backpressure and memory
//!
//! tungstenite's writes (pongs to a client that pings without reading, say) wait once more
//! than [`BACKLOG`] bytes are queued, and tungstenite keeps at most as much again of its own
//! ([`config`]): past that, a pong waiting to go out is replaced by the next. The feed
//! appends only after its previous frames were flushed, one write batch (or one answer) at
//! a time, and a batch stops at [`BACKLOG`] bytes (or one frame, when a frame is larger): a
//! connection whose client stops reading holds at most a batch of its own, whatever the
//! number of connections.
//!
//! # Closing
//!
//! [`linger`]: after the close frame, the wire is shut down for writing (a TCP FIN after
//! everything queued) and what the client still sends is read and dropped until it closes
//! too: a socket closed with unread input is reset, and a reset can discard, on the client's
//! side, the very close frame that said why. It lasts 5 s at most, and ends at the shutdown
//! deadline.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

/// Bytes queued on a wire beyond which tungstenite's writes wait; also the most tungstenite
/// keeps of its own meanwhile, and where a write batch of the feed's frames stops.
pub(crate) const BACKLOG: usize = 64 * 1024;

/// A feed connection's WebSocket: tungstenite over the [`Wire`].
pub(crate) type Socket = WebSocketStream<Wire>;

/// tungstenite's settings for a feed connection: inbound messages up to `max_inbound` bytes,
/// read `read_buffer` bytes at a time; every frame it writes goes straight to the wire, and
/// while the wire is full it keeps at most [`BACKLOG`] bytes of its own.
pub(crate) fn config(max_inbound: usize, read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer.min(max_inbound))
        .max_message_size(Some(max_inbound))
        .max_frame_size(Some(max_inbound))
        .write_buffer_size(0)
        .max_write_buffer_size(BACKLOG)
}

/// A valid WebSocket upgrade request (RFC 6455 over HTTP/1.1), not answered yet.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl Upgrade {
    /// Reads the upgrade from a request head: the checks axum's `WebSocketUpgrade` makes, with
    /// the same answers (400, 405, 426) — except that `Connection` is read as the list of
    /// tokens it is (RFC 9110 §7.6.1), across repeated headers, so `Connection: keep-alive`
    /// and `Connection: Upgrade` on two lines upgrade, and `Connection: upgraded` does not.
    pub(crate) fn from_parts(parts: &mut Parts) -> Result<Self, (StatusCode, &'static str)> {
        let refuse = |status: StatusCode, why: &'static str| Err((status, why));
        if parts.version > Version::HTTP_11 {
            return refuse(
                StatusCode::BAD_REQUEST,
                "WebSocket is served over HTTP/1.1; over HTTP/2 use `Accept: text/event-stream`",
            );
        }
        if parts.method != Method::GET {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            );
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            );
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            );
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            );
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            );
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            );
        };
        Ok(Upgrade { key, on_upgrade })
    }

    /// Answers 101 and, once the HTTP server hands the connection over, runs `connection`
    /// on it in a task of its own; `failed` is called instead when the hand-over fails.
    pub(crate) fn respond<C, F>(
        self,
        config: WebSocketConfig,
        failed: impl FnOnce(hyper::Error) + Send + 'static,
        connection: C,
    ) -> Response
    where
        C: FnOnce(Socket) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Upgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let wire = Wire::new(TokioIo::new(upgraded));
                    let socket =
                        WebSocketStream::from_raw_socket(wire, Role::Server, Some(config)).await;
                    connection(socket).await;
                }
                Err(err) => failed(err),
            }
        });
        let accept = derive_accept_key(key.as_bytes());
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::try_from(accept).expect("base64 is a valid header value"),
                ),
            ],
        )
            .into_response()
    }
}

/// Whether a comma-separated header holds `token` (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A text message as a server sends it (final, unmasked), ready to be copied to any
/// connection.
pub(crate) fn text_frame(text: String) -> Vec<u8> {
    encode(Frame::message(text, OpCode::Data(Data::Text), true))
}

/// A ping as a server sends it, with no payload.
pub(crate) fn ping_frame() -> Vec<u8> {
    encode(Frame::ping(Vec::new()))
}

fn encode(frame: Frame) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(frame.len());
    frame
        .format(&mut bytes)
        .expect("a frame formats into a vector");
    bytes
}

/// Sends a close frame after everything queued before it, with nothing after it.
///
/// tungstenite writes a pong it still holds after whatever it writes next, a close included,
/// and a flush that found its own buffer full returns with that pong still held: two
/// flushes first (no read comes between them to ask for another pong).
pub(crate) async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<Wire<S>>,
    frame: CloseFrame,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    socket.flush().await?;
    socket.flush().await?;
    socket.send(Message::Close(Some(frame))).await
}

/// Ends a connection whose close frame was sent (see "Closing" in the module docs): shuts
/// the wire down for writing, then reads and drops what the client still sends until it
/// closes too, for at most `max`.
pub(crate) async fn linger(socket: &mut Socket, max: Duration) {
    let wire = socket.get_mut();
    let _ = tokio::time::timeout(max, async {
        if wire.shutdown().await.is_err() {
            return;
        }
        let mut scrap = [0; 1024];
        while let Ok(1..) = wire.read(&mut scrap).await {}
    })
    .await;
}

/// The upgraded connection with an outgoing buffer of whole frames (see the module docs).
pub(crate) struct Wire<S = TokioIo<Upgraded>> {
    io: S,
    /// Frames to send; `out[..sent]` has already been handed to the socket.
    out: Vec<u8>,
    sent: usize,
    /// Bytes handed to the socket since the start: a write's progress, read while it waits.
    progress: Arc<AtomicU64>,
}

impl<S> std::fmt::Debug for Wire<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("queued", &(self.out.len() - self.sent))
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// The buffer a connection allocates for its first write.
    const BUFFER: usize = 16 * 1024;
    /// The most a connection keeps between writes (more, grown for a large frame, is given
    /// back once sent).
    const KEEP: usize = 4 * BACKLOG;

    fn new(io: S) -> Self {
        Wire {
            io,
            out: Vec::new(),
            sent: 0,
            progress: Arc::default(),
        }
    }

    /// Bytes handed to the socket so far, readable while a write holds the wire.
    pub(crate) fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// Queues a whole, already encoded frame; sent by the next flush.
    pub(crate) fn queue(&mut self, frame: &[u8]) {
        if self.out.capacity() == 0 {
            // One allocation for a whole batch of the usual size, not one per doubling.
            self.out.reserve(frame.len().max(Self::BUFFER));
        }
        self.out.extend_from_slice(frame);
    }

    /// Bytes queued and not yet handed to the socket.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Hands what is queued to the socket; ready once all of it was taken.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.out.clear();
        if self.out.capacity() > Self::KEEP {
            self.out.shrink_to(Self::BUFFER);
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    /// Takes all of `buf` (a whole frame) or nothing.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.queued() > 0 && self.queued() + buf.len() > BACKLOG {
            ready!(self.poll_send(cx))?;
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A server socket over a wire and a client socket, joined by a pipe that holds only
    /// `capacity` bytes: every write of any size is split.
    async fn pair(
        capacity: usize,
    ) -> (
        WebSocketStream<Wire<DuplexStream>>,
        WebSocketStream<DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(capacity);
        let config = Some(config(16 * 1024, 4 * 1024));
        let server =
            WebSocketStream::from_raw_socket(Wire::new(server), Role::Server, config).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (server, client)
    }

    /// Frames queued on the wire and the protocol's own frames (pongs, text, close) leave
    /// whole and in order through a socket that takes 37 bytes at a time.
    #[tokio::test]
    async fn queued_frames_and_the_protocols_own_interleave_whole_and_in_order() {
        let (mut server, client) = pair(37).await;
        let (mut sink, mut stream) = client.split();
        let pinger = tokio::spawn(async move {
            for i in 0..20 {
                sink.send(Message::Ping(format!("p{i}").into()))
                    .await
                    .unwrap();
            }
        });
        let reader = tokio::spawn(async move {
            let mut texts = Vec::new();
            let mut pongs = 0;
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => texts.push(text.to_string()),
                    Some(Ok(Message::Pong(_))) => pongs += 1,
                    Some(Ok(Message::Close(frame))) => {
                        return (texts, pongs, frame.map(|f| u16::from(f.code)));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let mut expected = Vec::new();
        for i in 0..300 {
            let text = format!("event {i} {}", "é".repeat(i % 90));
            server.get_mut().queue(&text_frame(text.clone()));
            expected.push(text);
            if i % 7 == 0 {
                server.get_mut().flush().await.unwrap();
            }
            if i % 30 == 0 {
                // Reading answers the client's pings through the same wire.
                let _ = tokio::time::timeout(Duration::from_millis(5), server.next()).await;
                server
                    .send(Message::Text(format!("control {i}").into()))
                    .await
                    .unwrap();
                expected.push(format!("control {i}"));
            }
        }
        let close = CloseFrame {
            code: 1001.into(),
            reason: "bye".into(),
        };
        server.send(Message::Close(Some(close))).await.unwrap();
        let (texts, pongs, code) = reader.await.unwrap();
        // Pings the server never got to read wait in the pipe.
        pinger.abort();
        assert_eq!(texts, expected);
        assert!(pongs > 0, "the pings were answered");
        assert_eq!(code, Some(1001));
    }

    /// A flush dropped half-way (the client is not reading) keeps its place: the close sent
    /// afterwards follows every frame queued before it, none cut in two.
    #[tokio::test]
    async fn a_close_after_a_dropped_flush_follows_the_frames_queued_before_it() {
        let (mut server, mut client) = pair(64).await;
        for i in 0..50 {
            server.get_mut().queue(&text_frame(format!("{i:0>300}")));
        }
        let flushed =
            tokio::time::timeout(Duration::from_millis(20), server.get_mut().flush()).await;
        assert!(flushed.is_err(), "the pipe cannot take 15 KB unread");
        assert!(server.get_ref().queued() > 0);
        let closing = tokio::spawn(async move {
            let close = CloseFrame {
                code: 1001.into(),
                reason: "server shutting down".into(),
            };
            server.send(Message::Close(Some(close))).await.unwrap();
            server
        });
        for i in 0..50 {
            match client.next().await {
                Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), format!("{i:0>300}")),
                other => panic!("frame {i}: {other:?}"),
            }
        }
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected the close, got {other:?}"),
        }
        let server = closing.await.unwrap();
        assert_eq!(server.get_ref().queued(), 0);
    }

    /// A client that pings without ever reading gets its pongs queued only up to the
    /// backlog on the wire and as much again in tungstenite (later pongs replace the one
    /// waiting): 10 000 pings leave a bounded number of pongs behind, not 10 000.
    #[tokio::test]
    async fn pongs_to_a_client_that_never_reads_stay_bounded() {
        let (mut server, client) = pair(1024).await;
        let (mut sink, mut unread) = client.split();
        let pinger = tokio::spawn(async move {
            for _ in 0..10_000 {
                sink.send(Message::Ping(vec![7; 100].into())).await.unwrap();
            }
            sink
        });
        for pings in 0..10_000 {
            match tokio::time::timeout(Duration::from_secs(5), server.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => {}
                other => panic!("after {pings} pings: {other:?}"),
            }
            assert!(server.get_ref().queued() <= BACKLOG + 200);
        }
        let _sink = pinger.await.unwrap();
        // The client reads at last; the server sends what it kept.
        let flushing = tokio::spawn(async move {
            let _ = server.flush().await;
            server
        });
        let mut pongs = 0;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(500), unread.next()).await
        {
            assert!(matches!(message, Message::Pong(_)), "{message:?}");
            pongs += 1;
        }
        // 1 KiB in the pipe, 64 KiB on the wire, 64 KiB in tungstenite, one waiting: about
        // 1 300 pongs of 102 bytes.
        assert!(
            (1_000..2_000).contains(&pongs),
            "{pongs} pongs kept for 10 000 pings"
        );
        drop(flushing.await.unwrap());
    }

    /// The opcodes of the whole frames a server sent into `raw` (only short frames: pongs
    /// and closes), reading until 300 ms pass without a byte.
    async fn opcodes(raw: &mut DuplexStream, opcodes: &mut Vec<u8>, rest: &mut Vec<u8>) {
        let mut chunk = [0; 16 * 1024];
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout(Duration::from_millis(300), raw.read(&mut chunk)).await
        {
            rest.extend_from_slice(&chunk[..n]);
            while rest.len() >= 2 && rest.len() >= 2 + usize::from(rest[1]) {
                assert!(rest[1] < 126, "a short, unmasked frame");
                opcodes.push(rest[0] & 0x0f);
                rest.drain(..2 + usize::from(rest[1]));
            }
        }
    }

    /// A close after a ping flood that filled the wire and tungstenite's own buffer is the
    /// last frame: the pong tungstenite still holds goes before it, not after — also when
    /// the client has emptied the pipe, so that one flush sends everything else at once.
    /// (Read raw: a client library stops at the close and would not show what follows.)
    #[tokio::test]
    async fn a_close_after_a_ping_flood_is_the_last_frame() {
        let (server, mut raw) = tokio::io::duplex(256 * 1024);
        let config = Some(config(16 * 1024, 4 * 1024));
        let mut server =
            WebSocketStream::from_raw_socket(Wire::new(server), Role::Server, config).await;
        // Masked pings (RFC 6455 §5.3), as a client sends them.
        let mut pings = Vec::new();
        for _ in 0..5_000 {
            pings.extend_from_slice(&[0x89, 0x80 | 100, 1, 2, 3, 4]);
            pings.extend((0..100).map(|i| 7 ^ [1, 2, 3, 4][i % 4]));
        }
        let (from_server, mut to_server) = tokio::io::split(raw);
        let pinger = tokio::spawn(async move {
            to_server.write_all(&pings).await.unwrap();
            to_server
        });
        for _ in 0..5_000 {
            let ping = tokio::time::timeout(Duration::from_secs(5), server.next()).await;
            assert!(matches!(ping, Ok(Some(Ok(Message::Ping(_))))), "{ping:?}");
        }
        raw = from_server.unsplit(pinger.await.unwrap());
        let (mut sent, mut rest) = (Vec::new(), Vec::new());
        opcodes(&mut raw, &mut sent, &mut rest).await;
        let closing = tokio::spawn(async move {
            let frame = CloseFrame {
                code: 4000.into(),
                reason: "slow consumer".into(),
            };
            close(&mut server, frame).await.unwrap();
            server
        });
        opcodes(&mut raw, &mut sent, &mut rest).await;
        assert!(rest.is_empty());
        let closes: Vec<usize> = (0..sent.len()).filter(|i| sent[*i] == 0x8).collect();
        assert_eq!(
            closes,
            [sent.len() - 1],
            "{:x?}",
            &sent[sent.len().saturating_sub(3)..]
        );
        drop(closing.await.unwrap());
    }

    #[test]
    fn frames_are_final_unmasked_and_carry_their_payload() {
        assert_eq!(text_frame("é".into()), [0x81, 2, 0xc3, 0xa9]);
        let text = "x".repeat(300);
        let long = text_frame(text.clone());
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&long[4..], text.as_bytes());
        assert_eq!(ping_frame(), [0x89, 0]);
    }

    #[test]
    fn connection_tokens_are_matched_whole_and_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::UPGRADE, "websocket"));
    }
}
