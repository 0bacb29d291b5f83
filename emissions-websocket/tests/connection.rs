//! One WebSocket connection's life on the wire, with real sockets and raw clients: what a
//! client that stops reading costs, when a client counts as gone (4001), and closes that
//! reach the client, answered, with nothing after them.

mod support;

use std::time::Duration;

use emissions_websocket::{Disconnect, LiveFeed};
use futures_util::StreamExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

fn orders() -> emissions_websocket::FeedBuilder {
    LiveFeed::builder().events(["order_*"])
}

/// A client that stops reading holds at most one write batch of its own, and a batch stops
/// at the wire's backlog: with frames of 64 KiB, one frame (what the kernel took aside).
/// The frames stay in the ring, once for every connection; at the shutdown deadline the
/// books say so: at most one frame per connection was being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_one_batch_of_its_own_at_most() {
    let app = app(orders().client_queue(10_000, 1 << 30)).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(raw_ws(app.addr, "alice", 4096).await);
    }
    until("registered", || app.feed.stats().connected == 4).await;
    commit_padded(&app.emissions, 64, "alice", 64 * 1024).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.feed.shutdown(Duration::from_millis(200)).await;
    let stats = app.feed.stats();
    assert_eq!(
        stats.frames_sent + stats.unconfirmed_frames + stats.dropped_frames,
        4 * 64,
        "{stats:?}"
    );
    assert!(
        stats.unconfirmed_frames <= 4,
        "at most one 64 KiB frame on each wire: {stats:?}"
    );
}

/// A client that spends longer than the ping interval and timeout reading a long backlog —
/// its connection busy writing all along — and then idles is still alive: it answers the
/// pings that come once its connection has been idle for an interval. (Counting silence
/// from the last message the client sent cut it off with 4001 as soon as the feed went
/// quiet.) The timeout must leave a client the time to read what is in flight before the
/// ping — here the kernel's buffers, megabytes on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_busy_reading_a_long_backlog_is_not_taken_for_gone() {
    let app = app(orders()
        .ping(Duration::from_millis(300), Duration::from_secs(2))
        .client_queue(100_000, 1 << 30))
    .await;
    let mut ws = ws_with_receive_buffer(&app, "alice", 16 * 1024).await;
    commit_padded(&app.emissions, 5_000, "alice", 2_000).await;
    let started = std::time::Instant::now();
    let mut got = 0;
    while got < 5_000 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {
                got += 1;
                if got % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("after {got} frames: {other:?} {:?}", app.feed.stats()),
        }
    }
    assert!(
        started.elapsed() > Duration::from_millis(2_300),
        "busy for longer than the interval and timeout: {:?}",
        started.elapsed()
    );
    // Idle now: reading answers the pings.
    let quiet = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "{quiet:?}");
    let stats = app.feed.stats();
    assert_eq!(
        stats.disconnects_for(Disconnect::PingTimeout),
        0,
        "{stats:?}"
    );
    assert_eq!(stats.connected, 1);
}

/// A client that takes bytes all along, only slower than a write needs — a 16 MiB frame,
/// read 64 KiB every 20 ms, about 5 s — is not cut off mid-write: what counts is no progress
/// for the ping interval and timeout (here 3 s), not a write longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_slowly_but_steadily_is_not_cut_off_mid_write() {
    use tokio::io::AsyncReadExt;
    let app = app(orders()
        .ping(Duration::from_secs(2), Duration::from_secs(1))
        .client_queue(100, 1 << 30))
    .await;
    let mut raw = raw_ws(app.addr, "alice", 64 * 1024).await;
    until("registered", || app.feed.stats().connected == 1).await;
    commit_padded(&app.emissions, 1, "alice", 16 << 20).await;
    let (mut got, mut chunk) = (Vec::new(), vec![0; 64 * 1024]);
    let started = std::time::Instant::now();
    let whole = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut chunk))
            .await
            .expect("bytes keep coming")
            .unwrap();
        assert!(
            n > 0,
            "closed after {} bytes: {:?}",
            got.len(),
            app.feed.stats()
        );
        got.extend_from_slice(&chunk[..n]);
        // A ping of an idle connection may come first.
        while got.len() >= 2 && got[0] == 0x89 && got.len() >= 2 + usize::from(got[1]) {
            got.drain(..2 + usize::from(got[1]));
        }
        if got.len() >= 10 && got[1] == 127 {
            let len = u64::from_be_bytes(got[2..10].try_into().unwrap()) as usize;
            if got.len() >= 10 + len {
                break got[10..10 + len].to_vec();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let frame: serde_json::Value = serde_json::from_slice(&whole).unwrap();
    assert_eq!(frame["event"]["data"]["seq"], 0);
    let stats = app.feed.stats();
    assert_eq!(
        (stats.frames_sent, stats.unconfirmed_frames),
        (1, 0),
        "the write ran to its end: {stats:?}"
    );
}

/// A client that floods pings and never reads is cut off as slow once events pass its
/// queue, and still gets its 4000: the server answers what it can, sends the close after the
/// frames on the wire, then reads what the client still sends instead of resetting the
/// connection (which could discard the close). Nothing follows the close, and the client got
/// exactly what the books say was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flooder_that_never_reads_is_cut_off_and_gets_its_close() {
    let app = app(orders().client_queue(256, 1024 * 1024)).await;
    let raw = raw_ws(app.addr, "alice", 4096).await;
    until("registered", || app.feed.stats().connected == 1).await;
    let flood: Vec<u8> = (0..200)
        .flat_map(|_| client_frame(0x9, &[1; 100]))
        .collect();
    let (read_half, mut write_half) = raw.into_split();
    let flooding = tokio::spawn(async move {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let write = write_half.write_all(&flood);
            if tokio::time::timeout(Duration::from_millis(300), write)
                .await
                .is_err()
            {
                break;
            }
        }
        write_half
    });
    for _ in 0..10 {
        commit_padded(&app.emissions, 100, "alice", 10_000).await;
    }
    until("cut off", || app.feed.stats().connected == 0).await;
    let mut raw = read_half.reunite(flooding.await.unwrap()).unwrap();
    let read = read_raw(&mut raw).await;
    let stats = app.feed.stats();
    assert_eq!(stats.disconnects_for(Disconnect::Slow), 1, "{stats:?}");
    assert_eq!(read.close, Some(4000), "{read:?} {stats:?}");
    assert_eq!(read.after_close, Vec::<u8>::new(), "{read:?}");
    assert_eq!(read.left_over, 0);
    assert_eq!(
        read.events,
        stats.frames_sent + stats.unconfirmed_frames,
        "{stats:?}"
    );
}

/// An oversized message arriving while frames stream closes the connection with 1009, after
/// the frames already on the wire, none cut short; the rest of the message is read and
/// dropped, not left to reset the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_mid_stream_gets_1009_after_the_frames_on_the_wire() {
    let app = app(orders()
        .client_queue(100_000, 1 << 30)
        .max_inbound_bytes(1024))
    .await;
    let mut raw = raw_ws(app.addr, "alice", 1 << 20).await;
    until("registered", || app.feed.stats().connected == 1).await;
    let emissions = app.emissions.clone();
    let committing = tokio::spawn(async move {
        for _ in 0..5 {
            commit_padded(&emissions, 400, "alice", 500).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.write_all(&client_frame(0x1, &[b'x'; 4096]))
        .await
        .unwrap();
    let read = read_raw(&mut raw).await;
    committing.await.unwrap();
    let stats = app.feed.stats();
    assert_eq!(read.close, Some(1009), "{read:?} {stats:?}");
    assert_eq!((read.after_close.len(), read.left_over), (0, 0), "{read:?}");
    assert_eq!(stats.disconnects_for(Disconnect::TooBig), 1);
    assert_eq!(
        read.events,
        stats.frames_sent + stats.unconfirmed_frames,
        "{stats:?}"
    );
}

/// A client's close is answered with a close (RFC 6455 §5.5.1), then the server ends the
/// connection; the feed counts a client that closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_before_the_connection_ends() {
    let app = app(orders()).await;
    let mut raw = raw_ws(app.addr, "alice", 64 * 1024).await;
    until("registered", || app.feed.stats().connected == 1).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    raw.write_all(&client_frame(0x8, &close)).await.unwrap();
    let read = read_raw(&mut raw).await;
    assert_eq!(read.close, Some(1000), "{read:?}");
    assert!(read.ended, "the server ends the connection after answering");
    until("ended", || app.feed.stats().connected == 0).await;
    assert_eq!(app.feed.stats().disconnects_for(Disconnect::Client), 1);
}

/// A control message whose error would quote it at length — here 16 KiB of combining marks,
/// each quoted as eight bytes, under the default limits — is answered with an error frame
/// cut to a readable length, and the connection goes on (it was cut off as a slow consumer
/// when the answer passed the write buffer's bound). The longest subscription is echoed
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_message_of_any_size_within_the_limit_gets_an_answer() {
    let app = app(orders()).await;
    let mut ws = ws(&app, "alice", "").await;
    let marks = "\u{300}".repeat((16 * 1024 - 16) / 2);
    let answer = control(&mut ws, serde_json::json!({ "subscribe": marks })).await;
    assert_eq!(answer["type"], "error", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.chars().count() <= 257,
        "{} characters",
        message.len()
    );
    let patterns: Vec<String> = (0..64)
        .map(|i| format!("order_{i:02}_{}", "é".repeat(100)))
        .collect();
    let answer = control(
        &mut ws,
        serde_json::json!({ "subscribe": { "events": patterns } }),
    )
    .await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    assert_eq!(answer["events"].as_array().unwrap().len(), 64);
    let stats = app.feed.stats();
    assert_eq!(
        (stats.connected, stats.disconnects_for(Disconnect::Slow)),
        (1, 0)
    );
}

/// A client that stops taking bytes while frames flow is counted gone (4001) and gives its
/// place back once the write made no progress for the ping interval and timeout — not after
/// the close frame it will never read has had its own grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_write_is_counted_gone_without_waiting_for_its_close() {
    let app = app(orders()
        .ping(Duration::from_millis(300), Duration::from_millis(300))
        .client_queue(10_000, 1 << 30))
    .await;
    let _dead = raw_ws(app.addr, "alice", 4096).await;
    until("registered", || app.feed.stats().connected == 1).await;
    commit_padded(&app.emissions, 300, "alice", 32 * 1024).await;
    let started = std::time::Instant::now();
    until("ended", || app.feed.stats().connected == 0).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let stats = app.feed.stats();
    assert_eq!(
        stats.disconnects_for(Disconnect::PingTimeout),
        1,
        "{stats:?}"
    );
    assert_eq!(
        stats.frames_sent + stats.unconfirmed_frames + stats.dropped_frames,
        300
    );
}

/// After a shutdown that drained early, connections whose clients neither close nor read
/// stop reading them at the shutdown's deadline: past it the server's sockets are gone (a
/// client's writes then meet a reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_by_the_shutdown_deadline_even_when_it_drained_early() {
    let app = app(orders()).await;
    let mut raw = raw_ws(app.addr, "alice", 64 * 1024).await;
    until("registered", || app.feed.stats().connected == 1).await;
    commit(&app.emissions, &[("order_created", "alice")]).await;
    let started = tokio::time::Instant::now();
    app.feed.shutdown(Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "drained early"
    );
    let read = read_raw(&mut raw).await;
    assert_eq!((read.events, read.close, read.ended), (1, Some(1001), true));
    tokio::time::sleep_until(started + Duration::from_millis(800)).await;
    let ping = client_frame(0x9, b"anyone?");
    let mut refused = false;
    for _ in 0..10 {
        if raw.write_all(&ping).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused,
        "the server's socket outlived the shutdown deadline"
    );
}

/// A text message that is not UTF-8 fails the connection with 1007, a frame that breaks the
/// protocol (unmasked, from a client) with 1002; each is counted as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_breaches_get_their_close_codes() {
    let app = app(orders()).await;
    let mut not_utf8 = raw_ws(app.addr, "alice", 64 * 1024).await;
    let mut unmasked = raw_ws(app.addr, "bob", 64 * 1024).await;
    until("registered", || app.feed.stats().connected == 2).await;
    not_utf8
        .write_all(&client_frame(0x1, b"{\"subscribe\xff\xfe"))
        .await
        .unwrap();
    unmasked.write_all(&[0x81, 2, b'{', b'}']).await.unwrap();
    assert_eq!(read_raw(&mut not_utf8).await.close, Some(1007));
    assert_eq!(read_raw(&mut unmasked).await.close, Some(1002));
    let stats = app.feed.stats();
    assert_eq!(stats.disconnects_for(Disconnect::NotUtf8), 1, "{stats:?}");
    assert_eq!(stats.disconnects_for(Disconnect::Protocol), 1, "{stats:?}");
}
