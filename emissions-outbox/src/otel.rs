//! OpenTelemetry metrics of the outbox (feature `opentelemetry`): the backlog and the age of
//! the oldest waiting delivery, per destination.
//!
//! [`record_metrics`] registers observable instruments on a [`Meter`] the application provides
//! (it chooses the exporter). Their values come from [`Outbox::stats`], read by a background
//! task every `refresh` (one grouped query), never from inside the exporter's callback:
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `emissions.outbox.backlog` | gauge (deliveries): pending + in flight | `destination` |
//! | `emissions.outbox.oldest_pending_age` | gauge (s): since the oldest waiting delivery's commit; 0 when none waits | `destination` |
//! | `emissions.outbox.deliveries` | gauge (deliveries) | `destination`, `state` (`pending`, `in_flight`, `delivered`, `failed`, `abandoned`) |
//! | `emissions.outbox.redeliveries` | counter (deliveries): taken over from an expired lease by this instance | — |
//!
//! The refresh task ends when the instance the outbox is attached to shuts down, or when every
//! handle to the outbox is gone. If the store cannot be read, the last values stay and a
//! `tracing` warning says why.
//!
//! ```
//! use opentelemetry::global;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let path = std::env::temp_dir().join(format!("otel-doc-{}.db", std::process::id()));
//! let outbox = emissions_outbox::OutboxConfig::sqlite(&path).build().await?;
//! emissions_outbox::otel::record_metrics(
//!     &outbox,
//!     &global::meter("emissions"),
//!     std::time::Duration::from_secs(10),
//! );
//! # let _ = std::fs::remove_file(&path);
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::{DestinationStats, Outbox};

type Snapshot = Arc<Mutex<Vec<DestinationStats>>>;

/// Registers the outbox's instruments on `meter` and starts the task that reads
/// [`Outbox::stats`] every `refresh` (at least 100 ms). Call it inside a tokio runtime.
///
/// See the [module docs](crate::otel).
pub fn record_metrics(outbox: &Outbox, meter: &Meter, refresh: Duration) {
    let snapshot: Snapshot = Arc::default();
    let read = |snapshot: &Snapshot| {
        snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    };

    let backlog = snapshot.clone();
    meter
        .u64_observable_gauge("emissions.outbox.backlog")
        .with_unit("{delivery}")
        .with_description("Deliveries pending or in flight")
        .with_callback(move |observer| {
            for stats in read(&backlog) {
                observer.observe(stats.pending + stats.in_flight, &[destination(&stats)]);
            }
        })
        .build();
    let age = snapshot.clone();
    meter
        .f64_observable_gauge("emissions.outbox.oldest_pending_age")
        .with_unit("s")
        .with_description("Age of the oldest pending or in-flight delivery")
        .with_callback(move |observer| {
            for stats in read(&age) {
                let age = stats.oldest_pending_age.unwrap_or_default();
                observer.observe(age.as_secs_f64(), &[destination(&stats)]);
            }
        })
        .build();
    let states = snapshot.clone();
    meter
        .u64_observable_gauge("emissions.outbox.deliveries")
        .with_unit("{delivery}")
        .with_description("Stored deliveries by state")
        .with_callback(move |observer| {
            for stats in read(&states) {
                for (state, count) in [
                    ("pending", stats.pending),
                    ("in_flight", stats.in_flight),
                    ("delivered", stats.delivered),
                    ("failed", stats.failed),
                    ("abandoned", stats.abandoned),
                ] {
                    observer.observe(count, &[destination(&stats), KeyValue::new("state", state)]);
                }
            }
        })
        .build();
    let taken_over = Arc::downgrade(outbox.inner());
    meter
        .u64_observable_counter("emissions.outbox.redeliveries")
        .with_unit("{delivery}")
        .with_description("Deliveries taken over from an expired lease")
        .with_callback(move |observer| {
            if let Some(inner) = taken_over.upgrade() {
                observer.observe(
                    inner
                        .redeliveries
                        .load(std::sync::atomic::Ordering::Relaxed),
                    &[],
                );
            }
        })
        .build();

    let weak = Arc::downgrade(outbox.inner());
    let stop = outbox.inner().stop.clone();
    let refresh = refresh.max(Duration::from_millis(100));
    tokio::spawn(async move {
        // Every destination seen or served, so that one whose deliveries are all done reads 0
        // (finished rows are deleted, and `stats` lists only destinations with rows).
        let mut known = std::collections::BTreeSet::new();
        loop {
            let Some(inner) = weak.upgrade() else { return };
            match inner.store.stats().await {
                Ok(mut stats) => {
                    known.extend(
                        inner
                            .destinations()
                            .iter()
                            .map(|d| d.lane.adapter().to_owned()),
                    );
                    known.extend(stats.iter().map(|s| s.destination.clone()));
                    for destination in &known {
                        if !stats.iter().any(|s| &s.destination == destination) {
                            let mut zero = DestinationStats::default();
                            zero.destination.clone_from(destination);
                            stats.push(zero);
                        }
                    }
                    *snapshot.lock().unwrap_or_else(PoisonError::into_inner) = stats;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "outbox metrics: the store could not be read")
                }
            }
            drop(inner);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(refresh) => {}
            }
        }
    });
}

fn destination(stats: &DestinationStats) -> KeyValue {
    KeyValue::new("destination", stats.destination.clone())
}
