//! The orders service: an axum + sqlx app where an order and its `order_created` event commit
//! in **one database transaction** (emissions-outbox), then reach a webhook receiver signed per
//! Standard Webhooks — at least once, across crashes.
//!
//! ```text
//! cargo run -p emissions-examples --bin orders                      # 8 orders, delivered, summary
//! cargo run -p emissions-examples --bin orders -- --crash-after 5   # dies after the 5th order,
//!                                                                   # deliveries still pending
//! cargo run -p emissions-examples --bin orders                      # the next start delivers them
//! ```
//!
//! The demo keeps its SQLite file in `target/orders-example/` (or `EMISSIONS_DATA_DIR`), runs its
//! own receiver (slow on purpose, so that a crash leaves work behind), and places its orders
//! over HTTP against its own axum app.
//!
//! Load mode, for the crash tests (any number of instances on one PostgreSQL):
//!
//! ```text
//! orders --load  --database URL --webhook URL [--kafka BROKERS --topic T] [--instance NAME]
//!                [--customers N] [--interval-ms M] [--rollback-every K]
//! orders --drain --database URL --webhook URL [--kafka BROKERS --topic T]
//! ```
//!
//! `--load` places orders until it is killed (every K-th transaction is rolled back after its
//! event was written); `--drain` places none and exits once every delivery has ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use emissions_core::{Emissions, RetryPolicy};
use emissions_kafka::KafkaEndpoint;
use emissions_outbox::{CommitIn, Outbox, OutboxConfig};
use emissions_webhook::{AddressPolicy, Secret, Verifier, WebhookEndpoint};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, SqlitePool};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

type AnyError = Box<dyn std::error::Error + Send + Sync>;

// ------------------------------------------------------------------ the service

/// The application's own database: orders live here, and so does the outbox.
#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone)]
struct App {
    db: Db,
    emissions: Emissions,
    instance: String,
}

#[derive(Deserialize)]
struct NewOrder {
    customer: String,
    item: String,
    qty: u32,
}

/// The event: a reference (unique across instances and retries), the customer (the ordering
/// key), and what was ordered.
#[derive(Serialize)]
struct OrderCreated<'a> {
    reference: &'a str,
    customer: &'a str,
    item: &'a str,
    qty: u32,
    instance: &'a str,
}

/// Writes the order and its event in one transaction; `roll_back` simulates a request that
/// fails after emitting (nothing of it may ever leave).
async fn place_order(app: &App, order: &NewOrder, roll_back: bool) -> Result<String, AnyError> {
    let reference = uuid::Uuid::now_v7().to_string();
    let buffer = app.emissions.start();
    buffer.emit(
        "order_created",
        &OrderCreated {
            reference: &reference,
            customer: &order.customer,
            item: &order.item,
            qty: order.qty,
            instance: &app.instance,
        },
    )?;
    macro_rules! in_transaction {
        ($pool:expr, $insert:expr) => {{
            let mut tx = $pool.begin().await?;
            sqlx::query($insert)
                .bind(&reference)
                .bind(&order.customer)
                .bind(&order.item)
                .bind(i64::from(order.qty))
                .execute(&mut *tx)
                .await?;
            buffer.commit_in(&mut tx).await?;
            if roll_back {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
        }};
    }
    match &app.db {
        Db::Sqlite(pool) => in_transaction!(
            pool,
            "INSERT INTO orders (reference, customer, item, qty) VALUES (?1, ?2, ?3, ?4)"
        ),
        Db::Postgres(pool) => in_transaction!(
            pool,
            "INSERT INTO orders (reference, customer, item, qty) VALUES ($1, $2, $3, $4)"
        ),
    }
    Ok(reference)
}

/// `POST /orders`: 201 with the reference once the order and its event are committed.
async fn create_order(
    State(app): State<App>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, String), (StatusCode, String)> {
    if order.qty == 0 {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "qty must be positive".into(),
        ));
    }
    place_order(&app, &order, false)
        .await
        .map(|reference| (StatusCode::CREATED, reference))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn open(database: &str) -> Result<(Db, Outbox), AnyError> {
    if database.starts_with("postgres") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(database)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, reference TEXT NOT NULL \
             UNIQUE, customer TEXT NOT NULL, item TEXT NOT NULL, qty BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let outbox = OutboxConfig::postgres_pool(pool.clone())
            .poll_interval(Duration::from_millis(200))
            .lease(Duration::from_secs(5))
            .build()
            .await?;
        Ok((Db::Postgres(pool), outbox))
    } else {
        let options: sqlx::sqlite::SqliteConnectOptions = database.parse()?;
        let options = options
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePool::connect_with(options).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, reference \
             TEXT NOT NULL UNIQUE, customer TEXT NOT NULL, item TEXT NOT NULL, qty INTEGER NOT \
             NULL)",
        )
        .execute(&pool)
        .await?;
        let outbox = OutboxConfig::sqlite_pool(pool.clone())
            .poll_interval(Duration::from_millis(200))
            .lease(Duration::from_secs(5))
            .build()
            .await?;
        Ok((Db::Sqlite(pool), outbox))
    }
}

/// The instance: a signed webhook endpoint (ordered per customer), Kafka when asked, and the
/// outbox behind them.
async fn start(
    outbox: &Outbox,
    webhook: &str,
    kafka: Option<(&str, &str)>,
    retry: RetryPolicy,
) -> Result<Emissions, AnyError> {
    let endpoint = WebhookEndpoint::new("billing", webhook)
        .secret(SECRET)
        .address_policy(
            AddressPolicy::default()
                .allow("127.0.0.0/8".parse()?)
                .allow("::1/128".parse()?),
        )
        .timeout(Duration::from_secs(5))
        .concurrency(8)
        .retry(retry)
        .ordered_by(|e| e.payload_json()["customer"].as_str().map(str::to_owned));
    let mut builder = Emissions::builder().adapter(endpoint)?;
    if let Some((brokers, topic)) = kafka {
        builder = builder.adapter(
            KafkaEndpoint::new("ledger", brokers)
                .topic(topic)
                .key_from_payload("/customer")
                // Each customer's records in order across crashes, too.
                .ordered_by(|e| e.payload_json()["customer"].as_str().map(str::to_owned)),
        )?;
    }
    Ok(builder.extension(outbox.clone()).start().await?)
}

// ------------------------------------------------------------------ the demo's receiver

struct Receiver {
    verifier: Verifier,
    received: AtomicUsize,
    /// How long it takes per delivery (slow on purpose).
    delay: Duration,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if let Err(err) = receiver.verifier.verify(&headers, &body) {
        println!("  [receiver] ✗ bad signature: {err}");
        return StatusCode::UNAUTHORIZED;
    }
    tokio::time::sleep(receiver.delay).await;
    receiver.received.fetch_add(1, Ordering::SeqCst);
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let data = &envelope["data"];
    println!(
        "  [receiver] ✓ {} {} for {} (webhook-id {})",
        envelope["type"].as_str().unwrap_or("?"),
        data["reference"].as_str().unwrap_or("?"),
        data["customer"].as_str().unwrap_or("?"),
        headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?"),
    );
    StatusCode::NO_CONTENT
}

async fn serve(router: Router) -> Result<SocketAddr, AnyError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

async fn demo(crash_after: Option<usize>) -> Result<(), AnyError> {
    let dir = std::env::var("EMISSIONS_DATA_DIR").map_or_else(
        |_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/orders-example"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    let database = format!("sqlite://{}", dir.join("orders.db").display());
    println!("database: {database}");
    let (db, outbox) = open(&database).await?;
    let left = outbox
        .stats()
        .await?
        .iter()
        .map(|s| s.pending + s.in_flight)
        .sum::<u64>();
    if left > 0 {
        println!("{left} deliveries left over from the last run: delivering them first");
    }

    let receiver = Arc::new(Receiver {
        verifier: Verifier::new([Secret::parse(SECRET)?]),
        received: AtomicUsize::new(0),
        delay: Duration::from_millis(150),
    });
    let receiver_addr = serve(
        Router::new()
            .route("/hooks", post(receive))
            .with_state(receiver.clone()),
    )
    .await?;
    let retry = RetryPolicy::schedule([1, 2, 5, 10].map(Duration::from_secs));
    let emissions = start(
        &outbox,
        &format!("http://{receiver_addr}/hooks"),
        None,
        retry,
    )
    .await?;
    let app = App {
        db,
        emissions: emissions.clone(),
        instance: "demo".into(),
    };
    let app_addr = serve(
        Router::new()
            .route("/orders", post(create_order))
            .with_state(app),
    )
    .await?;
    println!(
        "orders service on http://{app_addr}/orders; receiver on http://{receiver_addr}/hooks"
    );

    let client = reqwest::Client::new();
    let orders = [
        ("ada", "widget", 2),
        ("grace", "gadget", 1),
        ("ada", "gizmo", 5),
        ("linus", "widget", 1),
        ("grace", "widget", 3),
        ("ada", "gadget", 1),
        ("linus", "gizmo", 2),
        ("grace", "gizmo", 1),
    ];
    for (i, (customer, item, qty)) in orders.iter().enumerate() {
        let body = serde_json::json!({"customer": customer, "item": item, "qty": qty});
        let response = client
            .post(format!("http://{app_addr}/orders"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        println!(
            "[client] POST /orders {customer} {qty} × {item} → {} {}",
            response.status(),
            response.text().await?
        );
        if crash_after == Some(i + 1) {
            println!("[app] crashing now (no shutdown): the next start delivers what is pending");
            std::process::abort();
        }
    }
    tokio::time::timeout(Duration::from_secs(60), outbox.drained()).await??;
    let report = emissions.shutdown(Duration::from_secs(5)).await;
    let billing = report
        .adapter("billing")
        .map(|a| a.counts)
        .unwrap_or_default();
    println!(
        "[app] all delivered: {} this run (the receiver confirmed {}); outbox: {:?}",
        billing.delivered,
        receiver.received.load(Ordering::SeqCst),
        outbox.stats().await?
    );
    Ok(())
}

// ------------------------------------------------------------------ load mode (crash tests)

struct Args(Vec<String>);

impl Args {
    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }
    fn value(&self, name: &str) -> Option<&str> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).map(String::as_str)
    }
    fn number(&self, name: &str, default: u64) -> Result<u64, AnyError> {
        match self.value(name) {
            Some(v) => Ok(v
                .parse()
                .map_err(|_| format!("{name}: not a number: {v}"))?),
            None => Ok(default),
        }
    }
}

async fn load(args: &Args, drain: bool) -> Result<(), AnyError> {
    let database = args
        .value("--database")
        .ok_or("--database URL is required")?;
    let webhook = args.value("--webhook").ok_or("--webhook URL is required")?;
    let kafka = match (args.value("--kafka"), args.value("--topic")) {
        (Some(brokers), Some(topic)) => Some((brokers, topic)),
        _ => None,
    };
    let instance = args.value("--instance").unwrap_or("load").to_owned();
    let customers = args.number("--customers", 8)?;
    let interval = Duration::from_millis(args.number("--interval-ms", 5)?);
    let rollback_every = args.number("--rollback-every", 7)?;
    let (db, outbox) = open(database).await?;
    let retry = RetryPolicy::default()
        .max_attempts(50)
        .backoff(Duration::from_millis(50), Duration::from_millis(500));
    let emissions = start(&outbox, webhook, kafka, retry).await?;
    if drain {
        tokio::time::timeout(Duration::from_secs(120), outbox.drained()).await??;
        let report = emissions.shutdown(Duration::from_secs(10)).await;
        println!("drained: {report:?}");
        return Ok(());
    }
    let app = App {
        db,
        emissions,
        instance: instance.clone(),
    };
    let mut n: u64 = 0;
    loop {
        n += 1;
        let order = NewOrder {
            customer: format!("{instance}-c{}", n % customers),
            item: "widget".into(),
            qty: 1,
        };
        let roll_back = rollback_every > 0 && n.is_multiple_of(rollback_every);
        if let Err(err) = place_order(&app, &order, roll_back).await {
            eprintln!("order {n}: {err}");
        }
        tokio::time::sleep(interval).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args = Args(std::env::args().skip(1).collect());
    if args.flag("--load") {
        return load(&args, false).await;
    }
    if args.flag("--drain") {
        return load(&args, true).await;
    }
    let crash_after = match args.value("--crash-after") {
        Some(n) => Some(n.parse().map_err(|_| "--crash-after takes a number")?),
        None => None,
    };
    demo(crash_after).await
}
