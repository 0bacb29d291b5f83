//! `Emissions::backlog`: what each adapter has queued, in flight and waiting, and the age of
//! the oldest of it, read while an adapter is stuck and a retry is pending.

use std::sync::Arc;
use std::time::Duration;

use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, Event, Failure, Named, RetryPolicy, async_trait,
};
use tokio::sync::Semaphore;

/// Holds each batch until a permit is given.
struct Gated(Arc<Semaphore>);

#[async_trait]
impl Adapter for Gated {
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        self.0.acquire().await.unwrap().forget();
        Ok(())
    }
}

/// Fails every event once, retryably.
struct FailsOnce(bool);

#[async_trait]
impl Adapter for FailsOnce {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        if std::mem::replace(&mut self.0, true) {
            return Ok(());
        }
        Err(BatchError::partial(
            (0..events.len())
                .map(|i| (i, Failure::retryable("not yet")))
                .collect::<Vec<_>>(),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_shows_queued_in_flight_waiting_and_the_oldest_age() {
    let gate = Arc::new(Semaphore::new(0));
    let emissions = Emissions::builder()
        .adapter(
            Named::new("stuck", Gated(gate.clone()))
                .options(AdapterOptions::default().max_demand(2)),
        )
        .unwrap()
        .adapter(Named::new("retrying", FailsOnce(false)).options(
            AdapterOptions::default().retry(RetryPolicy::schedule([Duration::from_secs(3600)])),
        ))
        .unwrap()
        .start()
        .await
        .unwrap();
    let buffer = emissions.start();
    for n in 0..3 {
        buffer.emit("e", &n).unwrap();
    }
    buffer.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backlog = emissions.backlog();
    let stuck = backlog.iter().find(|b| b.name == "stuck").unwrap();
    assert_eq!(
        (stuck.queued, stuck.in_flight, stuck.waiting),
        (1, 2, 0),
        "{stuck:?}"
    );
    assert!(stuck.oldest_pending.unwrap() >= Duration::from_millis(250));
    let retrying = backlog.iter().find(|b| b.name == "retrying").unwrap();
    assert_eq!(
        (retrying.queued, retrying.in_flight, retrying.waiting),
        (0, 0, 3),
        "{retrying:?}"
    );
    assert!(retrying.oldest_pending.is_some());

    gate.add_permits(2);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let stuck = emissions
                .backlog()
                .into_iter()
                .find(|b| b.name == "stuck")
                .unwrap();
            if stuck.queued + stuck.in_flight + stuck.waiting == 0 {
                assert_eq!(stuck.oldest_pending, None);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stuck adapter's backlog empties once released");
    let report = emissions.shutdown(Duration::from_millis(200)).await;
    assert!(report.is_balanced());
}
