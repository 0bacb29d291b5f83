//! The outbox's guarantee, proven with real parts: the orders service (`orders --load`) commits
//! orders and their events in transactions at a steady rate, delivering to a real webhook
//! receiver (signatures verified) and to Kafka (`EMISSIONS_KAFKA_BROKERS`), and is killed with
//! SIGKILL at 20 random moments and restarted each time; a last run drains what is left. Then:
//! every committed order reached every destination at least once, no rolled-back one ever did,
//! duplicates are counted (by event id), and each customer's orders arrived in commit order.
//! On PostgreSQL, three instances share the store and one is killed mid-run; no customer ever
//! had two deliveries in flight to the receiver at once.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use emissions_webhook::{Secret, Verifier};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::process::{Child, Command};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const KILLS: usize = 20;
const PARTITIONS: i32 = 4;

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) => Some(value),
        Err(_) if std::env::var("EMISSIONS_REQUIRE_SERVICES").is_ok() => {
            panic!("{var} is not set: `cargo xtask ci` provisions it")
        }
        Err(_) => None,
    }
}

// ------------------------------------------------------------------ the receiver

#[derive(Default)]
struct Received {
    /// (webhook-id, reference, customer), in arrival order.
    deliveries: Vec<(String, String, String)>,
    in_flight: HashMap<String, usize>,
    overlaps: Vec<String>,
    bad_signatures: usize,
}

struct Receiver {
    verifier: Verifier,
    received: Mutex<Received>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if receiver.verifier.verify(&headers, &body).is_err() {
        receiver.received.lock().unwrap().bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let customer = envelope["data"]["customer"].as_str().unwrap().to_owned();
    {
        let mut received = receiver.received.lock().unwrap();
        let n = received.in_flight.entry(customer.clone()).or_default();
        *n += 1;
        if *n > 1 {
            received.overlaps.push(customer.clone());
        }
    }
    // Ends the delivery's time in flight when the handler returns — or is dropped because
    // the sender went away (a killed instance): that delivery is over too.
    struct InFlight<'a>(&'a Receiver, &'a str);
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            let mut received = self.0.received.lock().unwrap_or_else(|e| e.into_inner());
            *received.in_flight.get_mut(self.1).unwrap() -= 1;
        }
    }
    let in_flight = InFlight(&receiver, &customer);
    // Hold it a moment (so overlapping deliveries would show); now and then fail (retries).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let fail = fastrand::u8(..) < 12;
    drop(in_flight);
    let mut received = receiver.received.lock().unwrap();
    if fail {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let reference = envelope["data"]["reference"].as_str().unwrap().to_owned();
    received.deliveries.push((id, reference, customer));
    StatusCode::NO_CONTENT
}

async fn receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver {
        verifier: Verifier::new([Secret::parse(SECRET).unwrap()]),
        received: Mutex::new(Received::default()),
    });
    let app = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, url)
}

// ------------------------------------------------------------------ Kafka

async fn create_topic(brokers: &str) -> String {
    let topic = format!("orders-crash-{:08x}", fastrand::u32(..));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for result in admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    topic
}

/// Every record of `topic`, per partition in offset order: (event id, reference, customer).
fn read_back(brokers: &str, topic: &str) -> Vec<Vec<(String, String, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "crash-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut partitions = vec![Vec::new(); PARTITIONS as usize];
    let mut quiet = 0;
    while quiet < 20 {
        match consumer.poll(Duration::from_millis(250)) {
            Some(Ok(message)) => {
                quiet = 0;
                let value: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                let id = message
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "event-id")
                            .and_then(|h| h.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                    .unwrap();
                partitions[message.partition() as usize].push((
                    id,
                    value["reference"].as_str().unwrap().to_owned(),
                    value["customer"].as_str().unwrap().to_owned(),
                ));
            }
            Some(Err(err)) => panic!("reading back: {err}"),
            None => quiet += 1,
        }
    }
    partitions
}

// ------------------------------------------------------------------ the runs

struct Run {
    database: String,
    webhook: String,
    kafka: Option<(String, String)>,
}

impl Run {
    fn command(&self, mode: &str, instance: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orders"));
        command
            .args([
                mode,
                "--database",
                &self.database,
                "--webhook",
                &self.webhook,
            ])
            .args([
                "--instance",
                instance,
                "--interval-ms",
                "3",
                "--customers",
                "6",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some((brokers, topic)) = &self.kafka {
            command.args(["--kafka", brokers, "--topic", topic]);
        }
        command
    }

    fn load(&self, instance: &str) -> Child {
        self.command("--load", instance).spawn().unwrap()
    }

    async fn drain(&self) {
        let status = tokio::time::timeout(
            Duration::from_secs(180),
            self.command("--drain", "drain").status(),
        )
        .await
        .expect("the drain run finishes")
        .unwrap();
        assert!(status.success(), "the drain run failed: {status}");
    }
}

/// Kills `child` with SIGKILL after a random moment, and starts it again; `KILLS` times.
async fn kill_and_restart(run: &Run, instance: &str) {
    let mut child = run.load(instance);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(..450))).await;
        child.kill().await.unwrap(); // SIGKILL
        child = run.load(instance);
    }
    // Enough orders to prove something, however loaded the machine: the last instance runs
    // until there are (within a minute), then dies like the others.
    let started = std::time::Instant::now();
    while committed(&run.database).await.len() <= 250 && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().await.unwrap();
}

/// The committed orders: reference → (commit position, customer).
async fn committed(database: &str) -> HashMap<String, (i64, String)> {
    let rows: Vec<(i64, String, String)> = if database.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(database).await.unwrap();
        sqlx::query_as("SELECT id, reference, customer FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::SqlitePool::connect(database).await.unwrap();
        sqlx::query_as("SELECT id, reference, customer FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    rows.into_iter()
        .map(|(id, reference, customer)| (reference, (id, customer)))
        .collect()
}

/// At least once, never a rolled-back one, per-customer commit order; returns the duplicates.
fn check(
    destination: &str,
    committed: &HashMap<String, (i64, String)>,
    streams: &[Vec<(String, String, String)>],
) -> usize {
    let mut seen_ids = HashSet::new();
    let mut references = HashSet::new();
    let mut duplicates = 0;
    for stream in streams {
        let mut last: HashMap<&str, i64> = HashMap::new();
        let mut first_seen = HashSet::new();
        for (id, reference, customer) in stream {
            if !seen_ids.insert(id.clone()) {
                duplicates += 1;
            }
            let Some((position, owner)) = committed.get(reference) else {
                panic!(
                    "{destination}: {reference} was delivered but its transaction never committed"
                );
            };
            assert_eq!(owner, customer);
            references.insert(reference.clone());
            if first_seen.insert(reference.clone())
                && let Some(previous) = last.insert(customer, *position)
            {
                assert!(
                    previous < *position,
                    "{destination}: {customer}'s order {position} arrived after {previous}"
                );
            }
        }
    }
    let missing: Vec<&String> = committed
        .keys()
        .filter(|r| !references.contains(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "{destination}: {} of {} committed orders never arrived, e.g. {:?}",
        missing.len(),
        committed.len(),
        missing.first()
    );
    duplicates
}

fn verify(receiver: &Receiver, committed: &HashMap<String, (i64, String)>, run: &Run) {
    assert!(
        committed.len() > 200,
        "too few orders to prove anything: {}",
        committed.len()
    );
    let received = receiver.received.lock().unwrap();
    assert_eq!(received.bad_signatures, 0);
    let webhook_duplicates = check(
        "webhook",
        committed,
        std::slice::from_ref(&received.deliveries),
    );
    assert!(
        received.overlaps.is_empty(),
        "a customer had two deliveries in flight at once: {:?}",
        received.overlaps.first()
    );
    let kafka_duplicates = run
        .kafka
        .as_ref()
        .map(|(brokers, topic)| check("kafka", committed, &read_back(brokers, topic)));
    println!(
        "{} orders committed; duplicates: webhook {webhook_duplicates}, kafka {kafka_duplicates:?}",
        committed.len()
    );
}

async fn kafka_topic() -> Option<(String, String)> {
    let brokers = required("EMISSIONS_KAFKA_BROKERS")?;
    let topic = create_topic(&brokers).await;
    Some((brokers, topic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_committed_order_arrives_across_twenty_kills() {
    let dir = tempfile::tempdir().unwrap();
    let (receiver, webhook) = receiver().await;
    let run = Run {
        database: format!("sqlite://{}", dir.path().join("orders.db").display()),
        webhook,
        kafka: kafka_topic().await,
    };
    kill_and_restart(&run, "solo").await;
    run.drain().await;
    verify(&receiver, &committed(&run.database).await, &run);
}

/// A fresh database on the test server (`EMISSIONS_DATABASE_URL`).
async fn postgres_database() -> Option<String> {
    let url = required("EMISSIONS_DATABASE_URL")?;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let name = format!("crash_{:08x}", fastrand::u32(..));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_committed_order_arrives_across_twenty_kills() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let (receiver, webhook) = receiver().await;
    let run = Run {
        database,
        webhook,
        kafka: kafka_topic().await,
    };
    kill_and_restart(&run, "solo").await;
    run.drain().await;
    verify(&receiver, &committed(&run.database).await, &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_instances_one_killed_mid_run() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let (receiver, webhook) = receiver().await;
    let run = Run {
        database,
        webhook,
        kafka: kafka_topic().await,
    };
    // Each instance places orders for customers of its own (one writer per key).
    let mut a = run.load("a");
    let mut b = run.load("b");
    let mut c = run.load("c");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    b.kill().await.unwrap(); // dies mid-run: its claims are taken over when the leases expire
    tokio::time::sleep(Duration::from_millis(4000)).await;
    a.kill().await.unwrap();
    c.kill().await.unwrap();
    run.drain().await;
    verify(&receiver, &committed(&run.database).await, &run);
}
