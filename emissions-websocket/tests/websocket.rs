//! Real sockets on loopback: subscriptions, slow clients, liveness, limits, security, resume.

use std::time::Duration;

use emissions_core::{Emissions, Event};
use emissions_websocket::{Disconnect, WebSocketHandle, WebSocketServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

emissions_core::topic_router! {
    struct Topics { "orders" => ["order_created", "order_shipped"], "users" => ["user_created"] }
}

async fn start(server: WebSocketServer) -> (Emissions, WebSocketHandle) {
    let adapter = server.bind().await.unwrap();
    let handle = adapter.handle();
    let emissions = Emissions::builder()
        .adapter("ws", adapter)
        .start()
        .await
        .unwrap();
    (emissions, handle)
}

async fn connect(handle: &WebSocketHandle, query: &str) -> Ws {
    let url = format!("ws://{}/?{query}", handle.local_addr());
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Reads the next text frame as JSON (skipping pings), failing after 10 s.
async fn next_json(ws: &mut Ws) -> Value {
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

/// Reads until the close frame; returns its code.
async fn close_code(ws: &mut Ws) -> Option<u16> {
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

async fn emit_all(emissions: &Emissions, names: &[&'static str]) -> Vec<Event> {
    let buffer = emissions.start();
    for (i, name) in names.iter().enumerate() {
        buffer.emit(*name, &json!({"seq": i})).unwrap();
    }
    let events = buffer.events();
    buffer.commit().await.unwrap().settled().await;
    events
}

/// A client is registered once the server has answered its first control message.
async fn subscribed(ws: &mut Ws, events: &[&str]) {
    ws.send(Message::Text(
        json!({"subscribe": {"events": events}}).to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(ws).await["type"], "subscribed");
}

#[tokio::test]
async fn subscriptions_filter_by_name_prefix_and_topic_and_change_at_runtime() {
    let (emissions, handle) = start(WebSocketServer::new("ws", "127.0.0.1:0").router(Topics)).await;
    let mut exact = connect(&handle, "events=user_created").await;
    let mut prefix = connect(&handle, "events=order_*").await;
    let mut topic = connect(&handle, "topics=users").await;
    let mut all = connect(&handle, "").await;
    // Round-trip each once so all four are registered before anything is published.
    for ws in [&mut exact, &mut prefix, &mut topic, &mut all] {
        ws.send(Message::Text("{\"nonsense\":1}".into()))
            .await
            .unwrap();
        let reply = next_json(ws).await;
        assert_eq!(
            reply["type"], "error",
            "invalid control → error frame, not a disconnect"
        );
    }
    emit_all(
        &emissions,
        &[
            "order_created",
            "user_created",
            "order_shipped",
            "invoice_sent",
        ],
    )
    .await;
    let names = |values: Vec<Value>| {
        values
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_json(&mut prefix).await);
    }
    assert_eq!(names(got), ["order_created", "order_shipped"]);
    assert_eq!(next_json(&mut exact).await["name"], "user_created");
    assert_eq!(next_json(&mut topic).await["name"], "user_created");
    let mut everything = Vec::new();
    for _ in 0..4 {
        everything.push(next_json(&mut all).await);
    }
    assert_eq!(
        names(everything.clone()),
        [
            "order_created",
            "user_created",
            "order_shipped",
            "invoice_sent"
        ]
    );
    assert_eq!(everything[0]["type"], "event");
    assert_eq!(everything[0]["payload"], json!({"seq": 0}));

    // Change at runtime: `exact` now wants invoices only.
    subscribed(&mut exact, &["invoice_*"]).await;
    emit_all(&emissions, &["user_created", "invoice_paid"]).await;
    assert_eq!(next_json(&mut exact).await["name"], "invoice_paid");
}

/// A client whose socket receive buffer is tiny, so a server pushing to it fills up fast.
async fn connect_small_buffer(handle: &WebSocketHandle) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(handle.local_addr()).await.unwrap();
    let url = format!("ws://{}/", handle.local_addr());
    tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_healthy_clients_get_everything_while_stalled_ones_are_cut_off() {
    const HEALTHY: usize = 200;
    const STALLED: usize = 4;
    const ROUNDS: usize = 12;
    const PER_ROUND: usize = 50;
    const EVENTS: usize = ROUNDS * PER_ROUND;
    let (emissions, handle) =
        start(WebSocketServer::new("ws", "127.0.0.1:0").client_queue(64, 256 * 1024)).await;
    let received = std::sync::Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        tokio::sync::Notify::new(),
    ));
    let mut readers = Vec::new();
    for _ in 0..HEALTHY {
        let mut ws = connect(&handle, "events=tick").await;
        subscribed(&mut ws, &["tick"]).await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(EVENTS);
            while seqs.len() < EVENTS {
                let frame = next_json(&mut ws).await;
                seqs.push(frame["payload"]["seq"].as_u64().unwrap());
                received.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                received.1.notify_waiters();
            }
            (seqs, ws)
        }));
    }
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut ws = connect_small_buffer(&handle).await;
        ws.send(Message::Text(
            json!({"subscribe": {"events": []}}).to_string().into(),
        ))
        .await
        .unwrap();
        stalled.push(ws); // reads nothing (its "subscribed" reply stays unread too)
    }
    while handle.stats().connected < HEALTHY + STALLED {
        tokio::task::yield_now().await;
    }
    let padding = "x".repeat(1024);
    // Bulk events only the stalled clients (subscribed to everything) get: they fill a stalled
    // client's socket and queue quickly without loading the healthy ones.
    let bulk = "b".repeat(128 * 1024);
    for round in 0..ROUNDS {
        let buffer = emissions.start();
        for i in round * PER_ROUND..(round + 1) * PER_ROUND {
            buffer
                .emit("tick", &json!({"seq": i, "pad": padding}))
                .unwrap();
            if i % 5 == 0 {
                buffer.emit("bulk", &json!({"data": bulk})).unwrap();
            }
        }
        buffer.commit().await.unwrap().settled().await;
        // Healthy clients keep up: wait until every one has this round before the next.
        let target = (round + 1) * PER_ROUND * HEALTHY;
        loop {
            let notified = received.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if received.0.load(std::sync::atomic::Ordering::SeqCst) >= target {
                break;
            }
            tokio::time::timeout(Duration::from_secs(30), notified)
                .await
                .expect("healthy clients stalled");
        }
    }
    let mut healthy = Vec::new();
    for reader in readers {
        let (seqs, ws) = reader.await.unwrap();
        assert_eq!(seqs, (0..EVENTS as u64).collect::<Vec<_>>());
        healthy.push(ws);
    }
    let stats = handle.stats();
    assert_eq!(stats.dropped_frames, STALLED as u64, "{stats:?}");
    // Reading at last, a stalled client finds the documented close code after what it was sent.
    for mut ws in stalled {
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .expect("closed")
            {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        };
        assert_eq!(code, Some(4000));
    }
    // The healthy clients are all still connected; the stalled ones are counted as slow.
    let counted = async {
        while handle.stats().disconnects_for(Disconnect::Slow) < STALLED as u64 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), counted)
        .await
        .expect("slow disconnects counted");
    assert_eq!(handle.stats().connected, HEALTHY);
    drop(healthy);
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let (_emissions, handle) = start(
        WebSocketServer::new("ws", "127.0.0.1:0")
            .ping(Duration::from_millis(200), Duration::from_millis(200)),
    )
    .await;
    let mut silent = connect(&handle, "").await;
    // Not reading means not answering pings; after a while, read what the server said.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(close_code(&mut silent).await, Some(4001));
    assert_eq!(handle.stats().disconnects_for(Disconnect::PingTimeout), 1);
}

#[tokio::test]
async fn an_oversized_inbound_message_closes_with_1009() {
    let (_emissions, handle) =
        start(WebSocketServer::new("ws", "127.0.0.1:0").max_inbound_bytes(1024)).await;
    let mut ws = connect(&handle, "").await;
    ws.send(Message::Text("y".repeat(4096).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(u16::from(CloseCode::Size)));
    assert_eq!(handle.stats().disconnects_for(Disconnect::TooBig), 1);
}

async fn refused(handle: &WebSocketHandle, headers: &[(&'static str, &str)]) -> u16 {
    let mut request = format!("ws://{}/", handle.local_addr())
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Ok(_) => panic!("upgraded"),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn auth_origin_and_the_connection_cap_refuse_before_upgrading() {
    let (_emissions, handle) = start(
        WebSocketServer::new("ws", "127.0.0.1:0")
            .allowed_origins(["https://shop.example.com"])
            .auth(|request| match request.headers().get("authorization") {
                Some(token) if token == "Bearer good" => Ok(()),
                _ => Err("bad token".into()),
            })
            .max_connections(2),
    )
    .await;
    let origin = ("origin", "https://shop.example.com");
    let token = ("authorization", "Bearer good");
    assert_eq!(refused(&handle, &[origin]).await, 401);
    assert_eq!(
        refused(&handle, &[origin, ("authorization", "Bearer bad")]).await,
        401
    );
    assert_eq!(
        refused(&handle, &[("origin", "https://evil.example.com"), token]).await,
        403
    );
    assert_eq!(refused(&handle, &[token]).await, 403);

    let request = |_: ()| {
        let mut r = format!("ws://{}/", handle.local_addr())
            .into_client_request()
            .unwrap();
        r.headers_mut().insert("origin", origin.1.parse().unwrap());
        r.headers_mut()
            .insert("authorization", token.1.parse().unwrap());
        r
    };
    let first = tokio_tungstenite::connect_async(request(())).await.unwrap();
    let second = tokio_tungstenite::connect_async(request(())).await.unwrap();
    match tokio_tungstenite::connect_async(request(())).await {
        Err(WsError::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("third connection: {:?}", other.map(|_| ())),
    }
    drop((first, second));
    assert_eq!(handle.stats().rejected, 5);
}

#[tokio::test]
async fn reconnecting_with_the_last_id_replays_what_was_missed_or_asks_to_resync() {
    let (emissions, handle) =
        start(WebSocketServer::new("ws", "127.0.0.1:0").resume_buffer(5)).await;
    let sent = emit_all(&emissions, &["a", "b", "c", "d"]).await;
    let mut resumed = connect(
        &handle,
        &format!("last_event_id={}&events=a,c,d", sent[1].id()),
    )
    .await;
    assert_eq!(next_json(&mut resumed).await["name"], "c");
    assert_eq!(next_json(&mut resumed).await["name"], "d");
    // Then live events follow.
    emit_all(&emissions, &["d"]).await;
    assert_eq!(
        next_json(&mut resumed).await["id"].as_str().map(str::len),
        Some(36)
    );

    // Push the old ids out of the 5-event ring.
    emit_all(&emissions, &["e", "f", "g", "h", "i"]).await;
    let mut gap = connect(&handle, &format!("last_event_id={}", sent[0].id())).await;
    let resync = next_json(&mut gap).await;
    assert_eq!(resync["type"], "resync");
    assert_eq!(resync["reason"], "gap too large");
}

#[tokio::test]
async fn replay_sends_the_most_recent_matching_events_first() {
    let (emissions, handle) = start(WebSocketServer::new("ws", "127.0.0.1:0")).await;
    emit_all(&emissions, &["a", "b", "a", "c", "a"]).await;
    let mut ws = connect(&handle, "replay=2&events=a").await;
    let first = next_json(&mut ws).await;
    let second = next_json(&mut ws).await;
    assert_eq!(
        (first["name"].clone(), first["payload"]["seq"].clone()),
        (json!("a"), json!(2))
    );
    assert_eq!(
        (second["name"].clone(), second["payload"]["seq"].clone()),
        (json!("a"), json!(4))
    );
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_at_the_timeout() {
    use tokio::io::AsyncReadExt;
    let (_emissions, handle) = start(
        WebSocketServer::new("ws", "127.0.0.1:0").handshake_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut raw = TcpStream::connect(handle.local_addr()).await.unwrap();
    // Never send the upgrade request: the server must hang up on its own.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Counted right after the socket is dropped.
    let counted = async {
        while handle.stats().rejected < 1 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), counted)
        .await
        .expect("rejection counted");
}

#[tokio::test]
async fn shutdown_closes_clients_with_going_away() {
    let (emissions, handle) = start(WebSocketServer::new("ws", "127.0.0.1:0")).await;
    let mut ws = connect(&handle, "").await;
    subscribed(&mut ws, &[]).await;
    emissions.shutdown(Duration::from_secs(5)).await;
    assert_eq!(close_code(&mut ws).await, Some(1001));
}
