//! A scriptable recording adapter and helpers for the outbox tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, EmissionsBuilder, Event, Failure, RetryPolicy,
    async_trait,
};
use emissions_outbox::{Outbox, OutboxConfig};
use sqlx::SqlitePool;

/// What the adapter answers to attempt `n` (1-based) of an event with payload `id`.
pub type Script = Arc<dyn Fn(u64, u32) -> Answer + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Ok,
    Retry,
    Permanent,
}

/// Every attempt the adapter saw: (payload id, event id, attempt number).
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<(u64, uuid::Uuid, u32)>>>);

impl Seen {
    pub fn all(&self) -> Vec<(u64, uuid::Uuid, u32)> {
        self.0.lock().unwrap().clone()
    }
    /// Payload ids of the attempts that succeeded, in order.
    pub fn delivered(&self, script: &Script) -> Vec<u64> {
        self.all()
            .into_iter()
            .filter(|(id, _, n)| script(*id, *n) == Answer::Ok)
            .map(|(id, _, _)| id)
            .collect()
    }
    pub fn attempts_of(&self, id: u64) -> usize {
        self.all().iter().filter(|(i, _, _)| *i == id).count()
    }
}

pub struct Scripted {
    pub seen: Seen,
    script: Script,
    attempts: HashMap<uuid::Uuid, u32>,
}

impl Scripted {
    pub fn new(
        script: impl Fn(u64, u32) -> Answer + Send + Sync + 'static,
    ) -> (Self, Seen, Script) {
        let seen = Seen::default();
        let script: Script = Arc::new(script);
        (
            Scripted {
                seen: seen.clone(),
                script: script.clone(),
                attempts: HashMap::new(),
            },
            seen,
            script,
        )
    }
}

#[async_trait]
impl Adapter for Scripted {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let mut failures = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let id: u64 = event.payload_json()["n"].as_u64().unwrap_or(0);
            let n = self.attempts.entry(event.id()).or_default();
            *n += 1;
            self.seen.0.lock().unwrap().push((id, event.id(), *n));
            match (self.script)(id, *n) {
                Answer::Ok => {}
                Answer::Retry => failures.push((i, Failure::retryable("try again"))),
                Answer::Permanent => failures.push((i, Failure::permanent("rejected"))),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BatchError::partial(failures))
        }
    }
}

/// A short retry schedule, for tests in real time.
pub fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .backoff(Duration::from_millis(20), Duration::from_millis(40))
}

pub struct Db {
    pub dir: tempfile::TempDir,
    pub pool: SqlitePool,
}

impl Db {
    pub async fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let pool = Self::pool_at(&dir).await;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        Db { dir, pool }
    }

    pub async fn pool_at(dir: &tempfile::TempDir) -> SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("app.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        SqlitePool::connect_with(options).await.unwrap()
    }

    pub fn config(&self) -> OutboxConfig {
        OutboxConfig::sqlite_pool(self.pool.clone())
            .poll_interval(Duration::from_millis(50))
            .purge_interval(Duration::from_secs(3600))
    }

    pub async fn outbox(&self) -> Outbox {
        self.config().build().await.unwrap()
    }
}

/// Starts an instance with `builder`'s adapters and `outbox` attached.
pub async fn start(builder: EmissionsBuilder, outbox: &Outbox) -> Emissions {
    builder.extension(outbox.clone()).start().await.unwrap()
}

/// Starts an instance with one recording adapter, `test`, and `outbox` attached.
pub async fn start_recorded(outbox: &Outbox) -> (Emissions, emissions_testing::Recorder) {
    let test = emissions_testing::TestAdapter::new();
    let recorder = test.recorder();
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("test", test))
            .unwrap(),
        outbox,
    )
    .await;
    (emissions, recorder)
}

pub fn options(retry: RetryPolicy) -> AdapterOptions {
    AdapterOptions::default().retry(retry)
}

/// Waits until `check` holds (polling the store), or panics after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
