//! Fan-out to 1 000 WebSocket clients: the live feed — mounted in an axum router, every
//! frame authorized — against a bare tokio-tungstenite server that forwards a
//! `tokio::sync::broadcast` channel to every connection, same clients, same frames' size;
//! throughput and publish → receive latency (p50/p99). With `--features kafka` and
//! `EMISSIONS_KAFKA_BROKERS`, also the cross-instance latency: commit on instance B → frame on
//! a client of instance A, both feeds reading the topic B's Kafka adapter writes.
//!
//! Run: `cargo bench -p emissions-websocket --features kafka --bench websocket` (or
//! `cargo xtask bench`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::request::Parts;
use emissions_core::{AdapterOptions, Emissions, Event, OverflowPolicy};
use emissions_websocket::{Authorize, LiveFeed, Refusal};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Tenants: a connection's principal is its `x-tenant` header; it may see events whose
/// metadata `tenant` is its own. Every event of the benchmark is the clients' tenant's, so
/// every frame is checked and passes.
struct Tenants;

impl Authorize for Tenants {
    type Principal = String;

    async fn authenticate(&self, request: &mut Parts) -> Result<String, Refusal> {
        request
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Refusal::unauthorized("no tenant"))
    }

    fn may_see(&self, tenant: &String, event: &Event) -> bool {
        event.metadata().get("tenant").and_then(|v| v.as_str()) == Some(tenant.as_str())
    }
}

/// A reader's connection, kept open until the run is measured.
type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a reader returns: the latencies it saw, and its connection.
type Reader = tokio::task::JoinHandle<(Vec<u64>, Client)>;

/// Connects `clients` readers to `url`; each reads `events` frames carrying `"t":<µs>` and
/// returns the latencies it saw with its connection, still open: connections close only
/// after the run is measured, so that no server spends the measured window tearing down
/// connections (the feed notices a client leave; the bare servers, which never read, do not).
async fn readers(url: &str, clients: usize, events: usize) -> Vec<Reader> {
    let mut handles = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("x-tenant", "acme".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(events);
            while latencies.len() < events {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let received = now_micros();
                        let at = text.find("\"t\":").expect("timestamp") + 4;
                        let sent: u64 = text[at..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect::<String>()
                            .parse()
                            .unwrap();
                        latencies.push(received.saturating_sub(sent));
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            (latencies, ws)
        }));
    }
    handles
}

struct Run {
    secs: f64,
    delivered: usize,
    p50: u64,
    p99: u64,
}

/// Waits until every reader has its frames, then closes the connections.
async fn collect(started: Instant, handles: Vec<Reader>) -> Run {
    let mut all = Vec::new();
    let mut connections = Vec::with_capacity(handles.len());
    for handle in handles {
        let (latencies, connection) = handle.await.unwrap();
        all.extend(latencies);
        connections.push(connection);
    }
    let secs = started.elapsed().as_secs_f64();
    drop(connections);
    all.sort_unstable();
    let pick = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    Run {
        secs,
        delivered: all.len(),
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

/// Serves `feed` at `/live` in an axum router on a loopback port; connects `clients` readers
/// and waits until the feed has registered them.
async fn mounted(
    feed: &LiveFeed<Tenants>,
    clients: usize,
    events: usize,
) -> (tokio::task::JoinHandle<()>, Vec<Reader>) {
    let app = axum::Router::new().route("/live", feed.handler());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let readers = readers(&format!("ws://{addr}/live"), clients, events).await;
    while feed.stats().connected < clients {
        tokio::task::yield_now().await;
    }
    (server, readers)
}

/// Commits one `tick` of the clients' tenant, stamped with the time.
async fn tick(emissions: &Emissions, seq: usize) {
    let mut metadata = emissions_core::Metadata::new();
    metadata.insert("tenant".into(), "acme".into());
    let buffer = emissions.start();
    buffer
        .emit_with_metadata(
            "tick",
            &serde_json::json!({"t": now_micros(), "seq": seq}),
            metadata,
        )
        .unwrap();
    buffer.commit().await.unwrap();
}

async fn emissions_run(clients: usize, events: usize) -> Run {
    let feed = LiveFeed::builder()
        .events(["tick"])
        .client_queue(events + 16, 64 * 1024 * 1024)
        .max_connections(clients + 16)
        .build(Tenants)
        .unwrap();
    let emissions = Emissions::builder()
        .adapter(
            emissions_core::Named::new("live", feed.adapter().unwrap())
                .options(AdapterOptions::default().overflow(OverflowPolicy::Block)),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let (server, readers) = mounted(&feed, clients, events).await;
    let started = Instant::now();
    for i in 0..events {
        tick(&emissions, i).await;
    }
    let run = collect(started, readers).await;
    emissions.shutdown(Duration::from_secs(5)).await;
    server.abort();
    run
}

/// The bare servers' frame: the feed's frame in layout and size (the same fields in the same
/// order — id, name, time, the tenant's metadata, the payload, a position of the feed's
/// length), so that the clients find the timestamp as far in and parse the same text;
/// written once per event.
fn bare_frame(seq: usize) -> String {
    format!(
        r#"{{"type":"event","position":"{seq:032x}.{}","event":{{"id":"{seq:036}","type":"tick","time":"2026-11-27T00:00:00.000000Z","metadata":{{"tenant":"acme"}},"data":{{"seq":{seq},"t":{}}}}}}}"#,
        seq + 1,
        now_micros(),
    )
}

/// Forwards the broadcast to one connection, writing whatever is already received (up to 64
/// frames) before one flush.
async fn forward_batched<T, M, S>(
    ws: &mut S,
    rx: &mut tokio::sync::broadcast::Receiver<T>,
    wrap: fn(T) -> M,
) where
    T: Clone,
    S: futures_util::Sink<M> + Unpin,
{
    while let Ok(frame) = rx.recv().await {
        if ws.feed(wrap(frame)).await.is_err() {
            return;
        }
        for _ in 1..64 {
            let Ok(more) = rx.try_recv() else { break };
            if ws.feed(wrap(more)).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// Connects the readers to a bare server at `addr`, waits until it has them all, publishes
/// `events` frames (yielding every 16) and collects the run.
async fn bare_publish<T: From<String>>(
    addr: std::net::SocketAddr,
    tx: tokio::sync::broadcast::Sender<T>,
    connected: &std::sync::atomic::AtomicUsize,
    clients: usize,
    events: usize,
) -> Run {
    let readers = readers(&format!("ws://{addr}/"), clients, events).await;
    while connected.load(std::sync::atomic::Ordering::SeqCst) < clients {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    for i in 0..events {
        let _ = tx.send(T::from(bare_frame(i)));
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    collect(started, readers).await
}

/// The bare server: every connection forwards the broadcast channel. With `batched`, it
/// writes whatever is already received before one flush (as the adapter does); without, it
/// flushes every frame (`SinkExt::send`).
async fn bare_run(clients: usize, events: usize, batched: bool) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(events + 16);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = {
        let (tx, connected) = (tx.clone(), connected.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut rx = tx.subscribe();
                let connected = connected.clone();
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                    connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if batched {
                        forward_batched(&mut ws, &mut rx, Message::Text).await;
                        return;
                    }
                    while let Ok(frame) = rx.recv().await {
                        if ws.send(Message::Text(frame)).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    };
    let run = bare_publish(addr, tx, &connected, clients, events).await;
    server.abort();
    run
}

/// Commit on instance B → frame on a client of instance A, through Kafka: p50/p99 over
/// `events` events committed one every 2 ms. `None` without a broker.
#[cfg(feature = "kafka")]
async fn cluster_latency(events: usize) -> Option<(u64, u64, usize)> {
    use emissions_kafka::{KafkaEndpoint, ValueFormat};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = std::env::var("EMISSIONS_KAFKA_BROKERS").ok()?;
    let topic = format!("feed-bench-{}", now_micros());
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for result in admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    // Instance B writes; instance A's feed reads and serves a client.
    let b = Emissions::builder()
        .adapter(
            KafkaEndpoint::new("kafka", &brokers)
                .topic(&topic)
                .key_from_metadata("tenant")
                .value(ValueFormat::Envelope)
                .property("linger.ms", "0"),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    let a = LiveFeed::builder()
        .events(["tick"])
        .build_on_kafka(
            Tenants,
            emissions_websocket::KafkaSource::new(&brokers, [&topic]),
        )
        .await
        .unwrap();
    // A fresh consumer takes about a second to start fetching: one warm-up event first, so
    // that the figures are the steady state (its own latency is the single largest value).
    let (server, readers) = mounted(&a, 1, events + 1).await;
    tick(&b, usize::MAX).await;
    while a.stats().frames_sent < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..events {
        tick(&b, i).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let run = collect(Instant::now(), readers).await;
    b.shutdown(Duration::from_secs(5)).await;
    a.shutdown(Duration::from_secs(1)).await;
    server.abort();
    Some((run.p50, run.p99, (events + 1).saturating_sub(run.delivered)))
}

/// The bare batched loop again, but served by axum's WebSocket (hyper's upgraded
/// connection) instead of a raw `TcpStream`: what the axum path itself costs.
async fn bare_axum_run(clients: usize, events: usize) -> Run {
    use axum::extract::ws::{Message as AxumMessage, Utf8Bytes as AxumText, WebSocketUpgrade};
    let (tx, _) = tokio::sync::broadcast::channel::<AxumText>(events + 16);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let (tx, connected) = (tx.clone(), connected.clone());
        axum::Router::new().route(
            "/",
            axum::routing::get(move |upgrade: WebSocketUpgrade| {
                let mut rx = tx.subscribe();
                let connected = connected.clone();
                async move {
                    upgrade.on_upgrade(move |mut ws| async move {
                        connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        forward_batched(&mut ws, &mut rx, AxumMessage::Text).await;
                    })
                }
            }),
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let run = bare_publish(addr, tx, &connected, clients, events).await;
    server.abort();
    run
}

fn main() {
    // Two sockets per client in this process: raise the open-files limit to the hard limit
    // (many systems start processes at a soft limit of 1 024).
    let files = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-files limit");
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let (clients, events) = if quick { (20, 20) } else { (1_000, 500) };
    assert!(
        files > 2 * clients as u64 + 64,
        "{clients} clients need {} open files; the hard limit is {files}",
        2 * clients + 64
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The cross-instance latency first, on a quiet machine.
    #[cfg(feature = "kafka")]
    let cluster = rt.block_on(cluster_latency(if quick { 10 } else { 500 }));
    let rate = |r: &Run| r.delivered as f64 / r.secs;
    // Nine rounds, the four servers back to back in each, in an order rotated from round to
    // round (none always first or last). Each row shows its median round; its ratios are the
    // medians of the per-round ratios (a round's servers run under the same conditions, so
    // the ratios spread less than the rates between rounds).
    let rounds_n = if quick { 1 } else { 9 };
    let mut rounds: Vec<[Run; 4]> = Vec::with_capacity(rounds_n);
    for round in 0..rounds_n {
        let mut runs: [Option<Run>; 4] = Default::default();
        for k in 0..4 {
            let server = (round + k) % 4;
            runs[server] = Some(rt.block_on(async {
                match server {
                    0 => bare_run(clients, events, false).await,
                    1 => bare_run(clients, events, true).await,
                    2 => bare_axum_run(clients, events).await,
                    _ => emissions_run(clients, events).await,
                }
            }));
        }
        rounds.push(runs.map(|run| run.expect("every server ran")));
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let ratios = |server: usize, to: usize| -> Vec<f64> {
        rounds
            .iter()
            .map(|round| rate(&round[server]) / rate(&round[to]))
            .collect()
    };
    let row = |label: &str, server: usize| {
        let mut runs: Vec<&Run> = rounds.iter().map(|round| &round[server]).collect();
        runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let r = runs[runs.len() / 2];
        format!(
            "| {label} | {:.0} | {:.2} | {:.2} | {:.1} ms | {:.1} ms | {} |\n",
            rate(r),
            median(ratios(server, 0)),
            median(ratios(server, 1)),
            r.p50 as f64 / 1000.0,
            r.p99 as f64 / 1000.0,
            clients * events - r.delivered,
        )
    };
    let spread = ratios(3, 1);
    let table = format!(
        "{clients} clients × {events} events, published as fast as possible; {rounds_n} rounds.\n\n\
         | implementation | frames delivered/s | ratio to bare loop (target ≥ 0.8) | ratio to bare batched writes | p50 | p99 | frames lost |\n|---|---:|---:|---:|---:|---:|---:|\n\
         {}{}{}{}\nLive feed ÷ bare batched writes, round by round (in order): {}.\n",
        row("bare tokio-tungstenite broadcast, flush per frame", 0),
        row("bare tokio-tungstenite broadcast, batched writes", 1),
        row(
            "the same through axum's WebSocket (upgraded hyper connection)",
            2
        ),
        row("**live feed** (axum-mounted, every frame authorized)", 3),
        spread
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    #[cfg(feature = "kafka")]
    let table = match cluster {
        Some((p50, p99, lost)) => format!(
            "{table}\nAcross instances through Kafka (commit on instance B → frame on a client of \
             instance A; one event every 2 ms): p50 {:.1} ms, p99 {:.1} ms, {lost} frames lost.\n",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
        ),
        None => table,
    };
    println!("{table}");
    if !quick {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("websocket.md"), table);
    }
}
