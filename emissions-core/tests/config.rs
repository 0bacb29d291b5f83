//! Configuration: invalid options and failing init stop `start`, naming adapter and field.

mod support;

use std::time::Duration;

use emissions_core::{
    Adapter, AdapterOptions, BatchError, BoxError, Emissions, Error, Event, RetryPolicy,
    async_trait,
};
use support::Scripted;

struct FailingInit;
#[async_trait]
impl Adapter for FailingInit {
    async fn init(&mut self) -> Result<(), BoxError> {
        Err("cannot reach broker at 127.0.0.1:1".into())
    }
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        Ok(())
    }
}

struct PanickingInit;
#[async_trait]
impl Adapter for PanickingInit {
    async fn init(&mut self) -> Result<(), BoxError> {
        panic!("bad certificate path")
    }
    async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> {
        Ok(())
    }
}

async fn config_error(options: AdapterOptions) -> (String, &'static str, String) {
    match Emissions::builder()
        .adapter(emissions_core::Named::new("ok", Scripted::ok()))
        .unwrap()
        .adapter(emissions_core::Named::new("kafka", Scripted::ok()).options(options))
        .unwrap()
        .start()
        .await
    {
        Err(Error::Config {
            adapter,
            field,
            reason,
        }) => (adapter, field, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_options_fail_start_naming_adapter_and_field() {
    let cases = [
        (AdapterOptions::default().capacity(0), "capacity"),
        (AdapterOptions::default().max_demand(0), "max_demand"),
        (
            AdapterOptions::default().capacity(10).max_demand(11),
            "max_demand",
        ),
        (
            AdapterOptions::default().retry(RetryPolicy::default().max_attempts(0)),
            "retry.max_attempts",
        ),
        (
            AdapterOptions::default().retry(RetryPolicy::default().multiplier(0.5)),
            "retry.multiplier",
        ),
        (
            AdapterOptions::default().retry(
                RetryPolicy::default().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            ),
            "retry.initial_backoff",
        ),
    ];
    for (options, expected_field) in cases {
        let (adapter, field, reason) = config_error(options).await;
        assert_eq!(adapter, "kafka");
        assert_eq!(field, expected_field);
        assert!(!reason.is_empty());
    }
}

#[tokio::test]
async fn default_options_are_validated_too() {
    let err = Emissions::builder()
        .default_options(AdapterOptions::default().capacity(5))
        .adapter(emissions_core::Named::new("webhook", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "adapter `webhook`: invalid `max_demand`: 50 exceeds capacity 5; lower max_demand or raise capacity"
    );
}

#[tokio::test]
async fn adapter_names_must_be_unique_and_non_empty() {
    let dup = Emissions::builder()
        .adapter(emissions_core::Named::new("kafka", Scripted::ok()))
        .unwrap()
        .adapter(emissions_core::Named::new("kafka", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(dup, Error::Config { ref adapter, field: "name", .. } if adapter == "kafka"));
    let empty = Emissions::builder()
        .adapter(emissions_core::Named::new(" ", Scripted::ok()))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(empty, Error::Config { field: "name", .. }));
}

#[tokio::test]
async fn init_failure_fails_start_naming_the_adapter() {
    let err = Emissions::builder()
        .adapter(emissions_core::Named::new("audit", Scripted::ok()))
        .unwrap()
        .adapter(emissions_core::Named::new("kafka", FailingInit))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "adapter `kafka` failed to initialise");
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.to_string(), "cannot reach broker at 127.0.0.1:1");

    let err = Emissions::builder()
        .adapter(emissions_core::Named::new("tls", PanickingInit))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Init { ref adapter, .. } if adapter == "tls"));
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("bad certificate path")
    );
}
