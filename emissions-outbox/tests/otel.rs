//! The outbox's OpenTelemetry metrics: backlog, oldest-pending age and deliveries by state per
//! destination, read through a real SDK meter provider.
#![cfg(all(feature = "sqlite", feature = "opentelemetry"))]

mod support;

use std::time::Duration;

use emissions_core::{Emissions, RetryPolicy};
use emissions_outbox::DurableCommit;
use emissions_testing::TestAdapter;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use serde_json::json;
use support::{Answer, Db, Scripted, options, start};

/// The last value of a gauge for the data point whose attributes are exactly `wanted`.
fn gauge(metrics: &[ResourceMetrics], name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for metric in metrics
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
    {
        let matches = |attributes: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
            let have: Vec<(String, String)> = attributes
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect();
            have.len() == wanted.len()
                && wanted
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        };
        match metric.data() {
            AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                if let Some(p) = g.data_points().find(|p| matches(&mut p.attributes())) {
                    found = Some(p.value() as f64);
                }
            }
            AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                if let Some(p) = g.data_points().find(|p| matches(&mut p.attributes())) {
                    found = Some(p.value());
                }
            }
            AggregatedMetrics::U64(MetricData::Sum(s)) => {
                if let Some(p) = s.data_points().find(|p| matches(&mut p.attributes())) {
                    found = Some(p.value() as f64);
                }
            }
            _ => panic!("{name}: unexpected kind"),
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_and_oldest_pending_age_are_exported_per_destination() {
    let db = Db::new().await;
    let outbox = db.outbox().await;
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    emissions_outbox::otel::record_metrics(
        &outbox,
        &provider.meter("emissions"),
        Duration::from_millis(100),
    );
    // "hook" fails every first attempt and retries only in an hour; "test" delivers (and reads
    // 0, although its finished rows are gone).
    let (hook, _, _) = Scripted::new(|_, _| Answer::Retry);
    let slow = RetryPolicy::default()
        .max_attempts(5)
        .backoff(Duration::from_secs(3600), Duration::from_secs(3600));
    let emissions = start(
        Emissions::builder()
            .adapter(emissions_core::Named::new("hook", hook).options(options(slow)))
            .unwrap()
            .adapter(emissions_core::Named::new("test", TestAdapter::new()))
            .unwrap(),
        &outbox,
    )
    .await;
    let buffer = emissions.start();
    for n in 1..=3u64 {
        buffer.emit("e", &json!({ "n": n })).unwrap();
    }
    buffer.commit_durably().await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        provider.force_flush().unwrap();
        let metrics = exporter.get_finished_metrics().unwrap();
        let hook_backlog = gauge(
            &metrics,
            "emissions.outbox.backlog",
            &[("destination", "hook")],
        );
        let test_backlog = gauge(
            &metrics,
            "emissions.outbox.backlog",
            &[("destination", "test")],
        );
        let attempted = outbox
            .deliveries(Some("hook"), Some("pending"), 10)
            .await
            .unwrap()
            .iter()
            .all(|d| d.attempts == 1);
        if hook_backlog == Some(3.0) && test_backlog == Some(0.0) && attempted {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog never reached 3 for hook and 0 for test: {hook_backlog:?} {test_backlog:?}"
        );
        exporter.reset();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let age = gauge(
        &metrics,
        "emissions.outbox.oldest_pending_age",
        &[("destination", "hook")],
    )
    .expect("an age for hook");
    assert!(age > 0.0 && age < 20.0, "{age}");
    assert_eq!(
        gauge(
            &metrics,
            "emissions.outbox.deliveries",
            &[("destination", "hook"), ("state", "pending")]
        ),
        Some(3.0)
    );
    assert_eq!(
        gauge(
            &metrics,
            "emissions.outbox.deliveries",
            &[("destination", "hook"), ("state", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        gauge(&metrics, "emissions.outbox.redeliveries", &[]),
        Some(0.0)
    );
    // The age grows while the deliveries wait.
    tokio::time::sleep(Duration::from_millis(600)).await;
    exporter.reset();
    provider.force_flush().unwrap();
    let later = gauge(
        &exporter.get_finished_metrics().unwrap(),
        "emissions.outbox.oldest_pending_age",
        &[("destination", "hook")],
    )
    .unwrap();
    assert!(later >= age + 0.3, "{age} then {later}");
    emissions.shutdown(Duration::from_secs(5)).await;
}
