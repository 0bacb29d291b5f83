//! Real sockets on loopback, the feed mounted in an axum app: who sees what (live, replay,
//! resume, re-subscribe, WebSocket and SSE), robustness to any input, slow clients, limits,
//! and the drain on shutdown with every frame accounted for.

mod support;

use std::time::Duration;

use emissions_core::Emissions;
use emissions_websocket::{Disconnect, LiveFeed, Public};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn orders() -> emissions_websocket::FeedBuilder {
    LiveFeed::builder().events(["order_*"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_sees_only_their_own_events_live_replayed_resumed_and_after_resubscribing() {
    let app = app(orders()).await;
    let mut alice = ws(&app, "alice", "").await;
    let mut bob = ws(&app, "bob", "").await;
    // The attack of the last review: subscribe to "everything".
    assert_eq!(
        control(&mut alice, json!({"subscribe": {}})).await["type"],
        "subscribed"
    );
    assert_eq!(
        control(
            &mut bob,
            json!({"subscribe": {"events": ["*", "order_created"], "topics": ["orders"]}})
        )
        .await["type"],
        "subscribed"
    );
    commit(
        &app.emissions,
        &[
            ("order_created", "alice"),
            ("order_created", "bob"),
            ("internal_audit", "alice"), // not carried by the feed at all
            ("order_paid", "bob"),
            ("order_paid", "alice"),
        ],
    )
    .await;
    let alice_seen = events(&mut alice, 2).await;
    assert_eq!(users_of(&alice_seen), ["alice", "alice"]);
    assert_eq!(alice_seen[1]["event"]["type"], "order_paid");
    quiet(&mut alice).await;
    let seen = events(&mut bob, 2).await;
    assert_eq!(users_of(&seen), ["bob", "bob"]);
    quiet(&mut bob).await;

    // Replay: the last events bob may see, never alice's.
    let mut replayed = ws(&app, "bob", "replay=10").await;
    assert_eq!(users_of(&events(&mut replayed, 2).await), ["bob", "bob"]);
    quiet(&mut replayed).await;

    // Resume from alice's first frame: only her missed events, none of bob's.
    let position = alice_seen[0]["position"].as_str().unwrap();
    commit(
        &app.emissions,
        &[("order_shipped", "bob"), ("order_shipped", "alice")],
    )
    .await;
    let mut resumed = ws(&app, "alice", &format!("since={position}")).await;
    let frames = events(&mut resumed, 2).await;
    assert_eq!(users_of(&frames), ["alice", "alice"]);
    assert_eq!(
        [&frames[0]["event"]["type"], &frames[1]["event"]["type"]],
        ["order_paid", "order_shipped"]
    );
    let answer = next_json(&mut resumed).await;
    assert_eq!(
        answer,
        json!({"type": "resume", "recovered": true, "missed": 2})
    );
    quiet(&mut resumed).await;

    // SSE, same rules: bob's replay and live frames only.
    let mut sse = Sse::open(app.addr, "bob", "replay=10", None).await.unwrap();
    for _ in 0..3 {
        let (kind, id, data) = sse.next().await.unwrap();
        assert_eq!(kind, None);
        assert_eq!(data["event"]["data"]["user"], "bob");
        assert_eq!(id.as_deref(), data["position"].as_str());
    }
    commit(
        &app.emissions,
        &[("order_created", "alice"), ("order_created", "bob")],
    )
    .await;
    let (_, _, data) = sse.next().await.unwrap();
    assert_eq!(data["event"]["data"]["user"], "bob");
    assert_eq!(app.feed.stats().authorization_panics, 0);
}

#[tokio::test]
async fn without_a_login_nothing_is_upgraded_and_the_app_answers_the_refusal() {
    let app = app(orders().allowed_origins(["http://app.test"])).await;
    assert_eq!(try_ws(app.addr, None, "", &[]).await.unwrap_err(), 401);
    assert_eq!(
        try_ws(
            app.addr,
            Some("alice"),
            "",
            &[("origin", "http://evil.test")]
        )
        .await
        .unwrap_err(),
        403
    );
    assert!(
        try_ws(
            app.addr,
            Some("alice"),
            "",
            &[("origin", "http://app.test")]
        )
        .await
        .is_ok()
    );
    let plain = reqwest::get(format!("http://{}/live", app.addr))
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);
    let no_transport = reqwest::Client::new()
        .get(format!("http://{}/live", app.addr))
        .header("cookie", "user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(no_transport.status(), 400);
    assert!(
        no_transport
            .text()
            .await
            .unwrap()
            .contains("text/event-stream")
    );
    assert_eq!(Sse::open(app.addr, "", "", None).await.err(), Some(401));
    assert_eq!(app.feed.stats().rejected, 5);
}

#[tokio::test]
async fn a_feed_must_choose_what_it_carries_and_a_public_feed_is_explicit() {
    let err = LiveFeed::builder().build(Public).unwrap_err();
    assert!(err.to_string().contains("carries nothing"), "{err}");
    let feed = LiveFeed::builder()
        .events(["status"])
        .build(Public)
        .unwrap();
    let adapter = feed.adapter().unwrap();
    assert!(feed.adapter().is_err(), "one adapter per feed");
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("live", adapter))
        .unwrap()
        .start()
        .await
        .unwrap();
    let addr = feed.listen("127.0.0.1:0").await.unwrap();
    let mut ws = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap()
        .0;
    until("registered", || feed.stats().connected == 1).await;
    let buffer = emissions.start();
    buffer.emit("secret", &json!(1)).unwrap();
    buffer.emit("status", &json!("green")).unwrap();
    buffer.commit().await.unwrap().settled().await;
    let frame = next_json(&mut ws).await;
    assert_eq!(
        (
            frame["event"]["type"].clone(),
            frame["event"]["data"].clone()
        ),
        (json!("status"), json!("green"))
    );
    quiet(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_and_malformed_input_gets_an_answer_never_a_panic() {
    let app = app(LiveFeed::builder().events(["café_*", "order_*"])).await;
    // Non-ASCII patterns in the query and in control messages.
    let mut ws_client = ws(&app, "alice", "events=caf%C3%A9_*").await;
    let answer = control(
        &mut ws_client,
        json!({"subscribe": {"events": ["café_*", "€"]}}),
    )
    .await;
    assert_eq!(answer["type"], "subscribed");
    for bad in [
        json!({"subscribe": {"events": ["é*é"]}}),
        json!({"subscribe": {"events": [""]}}),
        json!({"subscribe": {"nope": 1}}),
        json!({"unsubscribe": true}),
        json!("plain"),
    ] {
        let answer = control(&mut ws_client, bad.clone()).await;
        assert_eq!(answer["type"], "error", "{bad} → {answer}");
    }
    ws_client
        .send(Message::Text("{\"subscribe\":".into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws_client).await["type"], "error");
    ws_client
        .send(Message::Binary(vec![0xff, 0xfe].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws_client).await["type"], "error");
    commit(
        &app.emissions,
        &[("café_opened", "alice"), ("order_created", "alice")],
    )
    .await;
    let frame = next_json(&mut ws_client).await;
    assert_eq!(frame["event"]["type"], "café_opened");
    quiet(&mut ws_client).await;

    for query in [
        "events=%C3%A9*%C3%A9",
        "events=a*b",
        "topics=x*",
        "replay=lots",
        "since=abc.1&replay=2",
        "events=%FF%FE",
    ] {
        let status = try_ws(app.addr, Some("alice"), query, &[]).await.err();
        if query == "events=%FF%FE" {
            // Invalid UTF-8 is read lossily: a pattern of replacement characters, no match.
            assert_eq!(status, None, "{query}");
        } else {
            assert_eq!(status, Some(400), "{query}");
        }
    }
    // An unknown or malformed position is answered in the feed (an EventSource cannot read
    // a refusal), and the connection goes on live.
    for since in ["someoneelse.5", "%E2%82%AC.1", "e.99999999999999999999999"] {
        let mut stale = ws(&app, "alice", &format!("since={since}")).await;
        let answer = next_json(&mut stale).await;
        assert_eq!(answer["recovered"], false, "{answer}");
    }
    drop(ws_client);
    until("every connection deregistered", || {
        app.feed.stats().connected == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_may_see_withholds_the_frame_and_the_connection_lives_on() {
    let app = app(LiveFeed::builder().all_events()).await;
    let mut alice = ws(&app, "alice", "").await;
    commit(
        &app.emissions,
        &[("boom", "alice"), ("order_created", "alice")],
    )
    .await;
    let frame = next_json(&mut alice).await;
    assert_eq!(frame["event"]["type"], "order_created");
    assert_eq!(app.feed.stats().authorization_panics, 1);
    assert_eq!(app.feed.stats().connected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_everything_queued_then_closes_with_1001() {
    let app = app(orders()).await;
    let mut client = ws(&app, "alice", "").await;
    let mut sse = Sse::open(app.addr, "alice", "", None).await.unwrap();
    until("both registered", || app.feed.stats().connected == 2).await;
    let batch: Vec<(&'static str, &str)> = (0..1000).map(|_| ("order_created", "alice")).collect();
    commit(&app.emissions, &batch).await;
    let report = app.emissions.shutdown(Duration::from_secs(30)).await;
    assert!(report.is_balanced(), "{report:?}");
    let mut got = 0;
    let code = loop {
        match client.next().await {
            Some(Ok(Message::Text(_))) => got += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((got, code), (1000, Some(1001)));
    let mut sse_got = 0;
    while let Some((_, _, data)) = sse.next().await {
        assert_eq!(data["type"], "event");
        sse_got += 1;
    }
    assert_eq!(
        sse_got, 1000,
        "the SSE response ends after every queued frame"
    );
    let stats = app.feed.stats();
    assert_eq!((stats.frames_sent, stats.dropped_frames), (2000, 0));
    assert_eq!(stats.disconnects_for(Disconnect::Shutdown), 2);
    // New requests are refused once the feed shut down.
    assert_eq!(
        try_ws(app.addr, Some("alice"), "", &[]).await.err(),
        Some(503)
    );
}

/// A client with a tiny receive buffer that does not read.
async fn stalled(app: &App) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    ws_with_receive_buffer(app, "alice", 4096).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_shutdown_deadline_cuts_off_is_counted_frame_by_frame() {
    let app = app(orders().client_queue(4096, 64 * 1024 * 1024)).await;
    let mut client = stalled(&app).await;
    commit_padded(&app.emissions, 3000, "alice", 4096).await;
    // A cancelled shutdown first, then a real one with a short deadline.
    let _ = tokio::time::timeout(
        Duration::from_millis(10),
        app.feed.shutdown(Duration::from_secs(60)),
    )
    .await;
    let started = std::time::Instant::now();
    app.feed.shutdown(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    app.feed.shutdown(Duration::from_millis(300)).await; // twice: fine
    // The client now reads what reached it.
    let mut got = 0u64;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), client.next()).await
    {
        if let Message::Text(_) = message {
            got += 1;
        }
    }
    let stats = app.feed.stats();
    assert!(
        stats.dropped_frames > 0,
        "the stalled client cannot take 3000 frames: {stats:?}"
    );
    assert_eq!(
        stats.frames_sent + stats.unconfirmed_frames + stats.dropped_frames,
        3000,
        "{stats:?}"
    );
    // What it got is everything reported written, and at most the batch cut mid-write.
    assert!(got >= stats.frames_sent, "{got} {stats:?}");
    assert!(
        got <= stats.frames_sent + stats.unconfirmed_frames,
        "{got} {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_with_4000_its_frames_counted_and_the_others_get_everything() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 100;
    let app = app(orders().client_queue(256, 1024 * 1024)).await;
    let slow = stalled(&app).await;
    let mut healthy = ws(&app, "alice", "").await;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..BATCHES * PER_BATCH {
            events(&mut healthy, 1).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // The batch in which the slow client's queue overflowed: frames for it up to then. From
    // then on it reads again, to see its close frame.
    let mut cut_in = None;
    let mut slow = Some(slow);
    let mut slow_reader = None;
    for batch in 1..=BATCHES {
        commit_padded(&app.emissions, PER_BATCH, "alice", 4096).await;
        until("the healthy client keeps up", || {
            received.load(std::sync::atomic::Ordering::Relaxed) >= batch * PER_BATCH
        })
        .await;
        if cut_in.is_none() && app.feed.stats().dropped_frames > 0 {
            cut_in = Some(batch);
            let mut slow = slow.take().unwrap();
            slow_reader = Some(tokio::spawn(async move {
                let mut got = 0u64;
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
                        Ok(Some(Ok(Message::Text(_)))) => got += 1,
                        Ok(Some(Ok(Message::Close(frame)))) => {
                            break (got, frame.map(|f| u16::from(f.code)));
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => break (got, None),
                    }
                }
            }));
        }
    }
    reader.await.unwrap();
    let cut_in = cut_in.expect("the stalled client overflows its queue");
    let (got, code) = slow_reader.unwrap().await.unwrap();
    assert_eq!(code, Some(4000));
    until("the slow one is counted", || {
        app.feed.stats().disconnects_for(Disconnect::Slow) == 1
    })
    .await;
    let stats = app.feed.stats();
    let healthy = (BATCHES * PER_BATCH) as u64;
    // The slow client was cut off inside batch `cut_in` (the engine may hand a batch over in
    // parts): every frame addressed to it up to then is sent, unconfirmed or dropped.
    let for_slow = stats.frames_sent + stats.unconfirmed_frames + stats.dropped_frames - healthy;
    let cut_in = cut_in as u64 * PER_BATCH as u64;
    assert!(
        for_slow > cut_in - PER_BATCH as u64 && for_slow <= cut_in,
        "every frame for either client is accounted for: {for_slow} {stats:?}"
    );
    let slow_sent = stats.frames_sent - healthy;
    assert!(
        got >= slow_sent && got <= slow_sent + stats.unconfirmed_frames,
        "{got} {stats:?}"
    );
}

#[tokio::test]
async fn silent_clients_oversized_messages_and_the_connection_cap() {
    let app = app(orders()
        .ping(Duration::from_millis(200), Duration::from_millis(200))
        .max_inbound_bytes(1024)
        .max_connections(2))
    .await;
    let mut silent = ws(&app, "alice", "").await;
    let mut big = ws(&app, "bob", "").await;
    assert_eq!(
        try_ws(app.addr, Some("carol"), "", &[]).await.err(),
        Some(503)
    );
    big.send(Message::Text("y".repeat(4096).into()))
        .await
        .unwrap();
    let code = close_code(&mut big).await;
    assert_eq!(
        code,
        Some(u16::from(CloseCode::Size)),
        "{:?}",
        app.feed.stats()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(close_code(&mut silent).await, Some(4001));
    let stats = app.feed.stats();
    assert_eq!(stats.disconnects_for(Disconnect::TooBig), 1);
    assert_eq!(stats.disconnects_for(Disconnect::PingTimeout), 1);
    until("both gone", || app.feed.stats().connected == 0).await;
    assert!(try_ws(app.addr, Some("carol"), "", &[]).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_from_last_event_id_and_an_evicted_position_says_so() {
    let app = app(orders().history(4).client_queue(4, 1024 * 1024)).await;
    let mut sse = Sse::open(app.addr, "alice", "", None).await.unwrap();
    until("registered", || app.feed.stats().connected == 1).await;
    commit(
        &app.emissions,
        &[("order_created", "alice"), ("order_paid", "alice")],
    )
    .await;
    let (_, first_id, _) = sse.next().await.unwrap();
    let (_, _, second) = sse.next().await.unwrap();
    drop(sse);
    commit(
        &app.emissions,
        &[("order_shipped", "alice"), ("order_created", "bob")],
    )
    .await;
    let mut again = Sse::open(app.addr, "alice", "", first_id.as_deref())
        .await
        .unwrap();
    let (_, _, missed_paid) = again.next().await.unwrap();
    assert_eq!(missed_paid["event"]["id"], second["event"]["id"]);
    let (_, _, missed_shipped) = again.next().await.unwrap();
    assert_eq!(missed_shipped["event"]["type"], "order_shipped");
    let (kind, id, answer) = again.next().await.unwrap();
    assert_eq!((kind.as_deref(), id), (Some("control"), None));
    assert_eq!(
        answer,
        json!({"type": "resume", "recovered": true, "missed": 2})
    );
    // Four more events evict the first ones from a history of 4.
    commit(
        &app.emissions,
        &[
            ("order_created", "bob"),
            ("order_created", "bob"),
            ("order_created", "bob"),
            ("order_created", "bob"),
        ],
    )
    .await;
    let mut late = Sse::open(app.addr, "alice", "", first_id.as_deref())
        .await
        .unwrap();
    let (_, _, answer) = late.next().await.unwrap();
    assert_eq!(answer["recovered"], false);
    assert!(
        answer["reason"].as_str().unwrap().contains("older"),
        "{answer}"
    );
}

#[tokio::test]
async fn the_standalone_listener_backs_a_feed_without_an_adapter_on_the_same_handler() {
    let feed = LiveFeed::builder().events(["x"]).build(Public).unwrap();
    let addr = feed.listen("127.0.0.1:0").await.unwrap();
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    feed.shutdown(Duration::from_secs(1)).await;
    assert_eq!(feed.stats().disconnects_for(Disconnect::Shutdown), 1);
    let err = feed.listen("256.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}

fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Random query strings (any bytes, percent-encoded, under every parameter name) and random
/// control messages (any text, and subscriptions with any patterns): every one gets a 400 or
/// an answer frame, nothing panics, and every connection deregisters.
#[test]
fn random_queries_and_control_messages_get_an_answer_never_a_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(app(orders()));
    let parameter = (
        prop::sample::select(vec!["events", "topics", "replay", "since", "other"]),
        prop::collection::vec(any::<u8>(), 0..40),
    );
    let control = prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<String>(), 0..4)
            .prop_map(|events| json!({"subscribe": {"events": events}}).to_string()),
        prop::collection::vec("[a-z*é€]{0,6}", 0..4)
            .prop_map(|topics| json!({"subscribe": {"topics": topics}}).to_string()),
    ];
    let cases = (
        prop::collection::vec(parameter, 0..4),
        prop::collection::vec(control, 0..4),
    );
    let mut runner = TestRunner::new(Config {
        cases: 128,
        ..Config::default()
    });
    runner
        .run(&cases, |(parameters, controls)| {
            runtime.block_on(async {
                let query: Vec<String> = parameters
                    .iter()
                    .map(|(name, value)| format!("{name}={}", percent(value)))
                    .collect();
                match try_ws(app.addr, Some("alice"), &query.join("&"), &[]).await {
                    Err(status) => assert_eq!(status, 400, "{query:?}"),
                    Ok(mut client) => {
                        for text in controls {
                            client
                                .send(Message::Text(text.clone().into()))
                                .await
                                .unwrap();
                            // A resume answer may come first; then the control's answer.
                            let mut answer = next_json(&mut client).await;
                            if answer["type"] == "resume" {
                                answer = next_json(&mut client).await;
                            }
                            let kind = answer["type"].as_str().unwrap_or_default().to_owned();
                            assert!(
                                kind == "subscribed" || kind == "error",
                                "{text:?} → {answer}"
                            );
                        }
                    }
                }
            });
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        until("every connection deregistered", || {
            app.feed.stats().connected == 0
        })
        .await;
        // And the feed still serves.
        let mut client = ws(&app, "alice", "").await;
        commit(&app.emissions, &[("order_created", "alice")]).await;
        assert_eq!(
            events(&mut client, 1).await[0]["event"]["type"],
            "order_created"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_our_answers_is_cut_off_and_deregisters() {
    let app = app(orders().ping(Duration::from_millis(200), Duration::from_millis(200))).await;
    let mut client = stalled(&app).await;
    // Control messages whose answers (~15 KB each) it never reads, until the server, stuck
    // writing an answer, stops reading.
    let mut patterns: Vec<String> = vec!["order_*".into()];
    patterns.extend((0..58).map(|i| format!("{i:03}{}", "x".repeat(250))));
    let message = json!({"subscribe": {"events": patterns}}).to_string();
    for sent in 0.. {
        assert!(sent < 20_000, "the server never stopped reading");
        let send = client.send(Message::Text(message.clone().into()));
        match tokio::time::timeout(Duration::from_secs(2), send).await {
            Ok(result) => result.unwrap(),
            Err(_) => break,
        }
    }
    until(
        "cut off (no bytes taken within ping interval + timeout)",
        || app.feed.stats().disconnects_for(Disconnect::PingTimeout) == 1,
    )
    .await;
    until("deregistered", || app.feed.stats().connected == 0).await;
    let started = std::time::Instant::now();
    app.feed.shutdown(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_counted_and_ended_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let app = app(orders().client_queue(100_000, 256 * 1024 * 1024)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /live HTTP/1.1\r\nhost: x\r\ncookie: user=alice\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    until("registered", || app.feed.stats().connected == 1).await;
    commit_padded(&app.emissions, 3000, "alice", 4096).await;
    app.feed.shutdown(Duration::from_millis(300)).await;
    let stats = app.feed.stats();
    assert_eq!(stats.connected, 0, "{stats:?}");
    assert_eq!(stats.disconnects_for(Disconnect::Shutdown), 1, "{stats:?}");
    assert!(stats.dropped_frames > 0, "{stats:?}");
    assert_eq!(
        stats.frames_sent + stats.unconfirmed_frames + stats.dropped_frames,
        3000,
        "{stats:?}"
    );
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.feed.stats().disconnects,
        stats.disconnects,
        "counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_cut_off_as_slow_gives_its_place_back() {
    use tokio::io::AsyncWriteExt;
    let app = app(orders()
        .client_queue(1000, 1024 * 1024 * 1024)
        .max_connections(2))
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /live HTTP/1.1\r\nhost: x\r\ncookie: user=alice\r\naccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    until("registered", || app.feed.stats().connected == 1).await;
    let mut reader = ws(&app, "alice", "").await;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let reading = tokio::spawn(async move {
        for _ in 0..3000 {
            events(&mut reader, 1).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        reader // kept open: it holds the other place under the cap
    });
    for batch in 1..=30 {
        commit_padded(&app.emissions, 100, "alice", 4096).await;
        until("the reading client keeps up", || {
            received.load(std::sync::atomic::Ordering::Relaxed) >= batch * 100
        })
        .await;
    }
    let _reader = reading.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = app.feed.stats();
        if stats.disconnects_for(Disconnect::Slow) == 1 && stats.connected == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled SSE client is not cut off and let go: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its place under the cap is free again.
    assert!(try_ws(app.addr, Some("bob"), "", &[]).await.is_ok());
    drop(stream);
}

/// What a browser's EventSource does: on a reconnect it repeats its URL and adds
/// `Last-Event-ID`, which must win over `since` or `replay` in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventsource_reconnect_resumes_from_last_event_id_whatever_its_url_says() {
    let app = app(orders()).await;
    let first = commit(&app.emissions, &[("order_created", "alice")]).await;
    let mut probe = Sse::open(app.addr, "alice", "replay=1", None)
        .await
        .unwrap();
    let (_, saved, data) = probe.next().await.unwrap();
    assert_eq!(data["event"]["id"], first[0].id().to_string());
    drop(probe);
    // Everything committed after the saved position, in order.
    let mut after_saved: Vec<String> = Vec::new();
    for url in [
        format!("since={}", saved.clone().unwrap()),
        "replay=10".to_owned(),
    ] {
        let mut sse = Sse::open(app.addr, "alice", &url, saved.as_deref())
            .await
            .unwrap();
        let mut missed = Vec::new();
        loop {
            let (kind, _, data) = sse.next().await.unwrap();
            if kind.as_deref() == Some("control") {
                assert_eq!(data["recovered"], true, "{url}: {data}");
                break;
            }
            missed.push(data["event"]["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            missed, after_saved,
            "{url}: what followed Last-Event-ID, not the URL's start"
        );
        let newer = commit(&app.emissions, &[("order_paid", "alice")]).await;
        after_saved.push(newer[0].id().to_string());
        let (_, id, data) = sse.next().await.unwrap();
        assert_eq!(
            data["event"]["id"],
            newer[0].id().to_string(),
            "{url}: only what is new"
        );
        drop(sse);
        // Reconnect as the browser does: same URL, the last id as Last-Event-ID.
        let newest = commit(&app.emissions, &[("order_shipped", "alice")]).await;
        after_saved.push(newest[0].id().to_string());
        let mut again = Sse::open(app.addr, "alice", &url, id.as_deref())
            .await
            .unwrap();
        let (_, _, data) = again.next().await.unwrap();
        assert_eq!(
            data["event"]["id"],
            newest[0].id().to_string(),
            "{url}: no duplicates"
        );
        let (_, _, answer) = again.next().await.unwrap();
        assert_eq!(
            answer,
            json!({"type": "resume", "recovered": true, "missed": 1})
        );
    }
}

#[tokio::test]
async fn a_panicking_authenticate_is_answered_500_and_counted() {
    let app = app(orders()).await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/live", app.addr))
        .header("cookie", "user=panic")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(app.feed.stats().rejected, 1);
    assert!(try_ws(app.addr, Some("alice"), "", &[]).await.is_ok());
}

/// The upgrade is answered by the feed itself: a raw HTTP/1.1 client with Firefox's
/// `Connection: keep-alive, Upgrade` gets RFC 6455's accept key for RFC 6455's sample
/// nonce, then a server frame as the RFC defines it (final, text, unmasked, its length);
/// malformed upgrades get axum's answers and are counted.
#[tokio::test]
async fn the_upgrade_and_the_frames_are_rfc_6455_byte_for_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app(orders()).await;
    let mut raw = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    raw.write_all(
        b"GET /live HTTP/1.1\r\nHost: app.test\r\nCookie: user=alice\r\n\
          Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(raw.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    until("registered", || app.feed.stats().connected == 1).await;
    commit(&app.emissions, &[("order_created", "alice")]).await;
    let (fin_text, length) = (raw.read_u8().await.unwrap(), raw.read_u8().await.unwrap());
    assert_eq!(fin_text, 0x81, "final text frame");
    let length = match length {
        126 => usize::from(raw.read_u16().await.unwrap()),
        n => {
            assert!(
                n < 126,
                "unmasked, and a frame this short has a short length"
            );
            usize::from(n)
        }
    };
    let mut payload = vec![0; length];
    raw.read_exact(&mut payload).await.unwrap();
    let frame: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(frame["type"], "event");
    assert_eq!(frame["event"]["metadata"]["user_id"], "alice");
    until("counted sent", || app.feed.stats().frames_sent == 1).await;

    let client = reqwest::Client::new();
    let upgrade = |headers: &[(&'static str, &'static str)]| {
        let mut request = client
            .get(format!("http://{}/live", app.addr))
            .header("cookie", "user=alice");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    let cases: [(&[(&'static str, &'static str)], &str); 3] = [
        (
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
            ],
            "Sec-WebSocket-Key",
        ),
        (
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "8"),
                key,
            ],
            "Sec-WebSocket-Version",
        ),
        (
            &[
                ("connection", "close"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                key,
            ],
            "Connection",
        ),
    ];
    for (headers, names) in cases {
        let response = upgrade(headers).await.unwrap();
        assert_eq!(response.status(), 400);
        let body = response.text().await.unwrap();
        assert!(body.contains(names), "{names}: {body}");
    }
    assert_eq!(app.feed.stats().rejected, 3);
}

/// A client that pings all the while 2 000 large frames stream to it gets every frame whole
/// and in order, and its pongs in between: the feed's frames and the protocol's own share
/// the socket without ever cutting one another in two.
#[tokio::test]
async fn a_client_pinging_while_frames_stream_gets_every_frame_whole_and_its_pongs() {
    let app = app(orders().client_queue(4_096, 64 * 1024 * 1024)).await;
    let (mut sink, mut stream) = ws(&app, "alice", "").await.split();
    let pinger = tokio::spawn(async move {
        for i in 0..300u32 {
            sink.send(Message::Ping(i.to_be_bytes().to_vec().into()))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        sink
    });
    let committing = {
        let emissions = app.emissions.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                commit_padded(&emissions, 500, "alice", 2_000).await;
            }
        })
    };
    let (mut seqs, mut pongs) = (Vec::new(), 0);
    while seqs.len() < 2_000 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                seqs.push(frame["event"]["data"]["seq"].as_u64().unwrap());
            }
            Ok(Some(Ok(Message::Pong(_)))) => pongs += 1,
            other => panic!("after {} frames: {other:?}", seqs.len()),
        }
    }
    committing.await.unwrap();
    let _sink = pinger.await.unwrap();
    let expected: Vec<u64> = (0..4).flat_map(|_| 0..500).collect();
    assert_eq!(seqs, expected);
    assert!(pongs > 0, "pings answered while the frames streamed");
    until("all counted sent", || app.feed.stats().frames_sent == 2_000).await;
    assert_eq!(app.feed.stats().dropped_frames, 0);
}
