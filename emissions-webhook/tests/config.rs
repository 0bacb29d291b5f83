//! Bad endpoint configuration fails at build time, naming the endpoint and the field.

use std::time::Duration;

use emissions_core::{AdapterOptions, Emissions};
use emissions_webhook::{Error, WebhookEndpoint};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn field_of(endpoint: WebhookEndpoint) -> (String, &'static str, String) {
    match endpoint.build() {
        Err(Error::Config {
            endpoint,
            field,
            reason,
        }) => (endpoint, field, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn invalid_endpoints_name_the_endpoint_and_field() {
    let ok = || WebhookEndpoint::new("crm", "https://crm.example.com/hooks").secret(SECRET);
    let cases: Vec<(WebhookEndpoint, &str, &str)> = vec![
        (
            WebhookEndpoint::new("crm", "not a url").secret(SECRET),
            "url",
            "is not a URL",
        ),
        (
            WebhookEndpoint::new("crm", "ftp://crm.example.com").secret(SECRET),
            "url",
            "scheme `ftp`",
        ),
        (
            WebhookEndpoint::new("crm", "file:///etc/passwd").secret(SECRET),
            "url",
            "scheme `file`",
        ),
        (
            WebhookEndpoint::new("crm", "https://crm.example.com"),
            "secrets",
            "at least one",
        ),
        (
            ok().secret(""),
            "secrets",
            "secret #2: invalid signing secret: empty",
        ),
        (
            ok().secret("whsec_c2hvcnQ="),
            "secrets",
            "shorter than 24 bytes",
        ),
        (ok().secret("whsec_***"), "secrets", "not base64"),
        (
            ok().header("webhook-id", "x"),
            "headers",
            "set by the adapter",
        ),
        (
            ok().header("content-type", "text/plain"),
            "headers",
            "set by the adapter",
        ),
        (
            ok().header("bad header", "x"),
            "headers",
            "not a header name",
        ),
        (ok().timeout(Duration::ZERO), "timeout", "longer than zero"),
        (
            ok().connect_timeout(Duration::from_secs(30)),
            "connect_timeout",
            "must not exceed",
        ),
        (ok().concurrency(0), "concurrency", "at least 1"),
        (ok().max_payload_bytes(0), "max_payload_bytes", "at least 1"),
        (
            ok().queue(AdapterOptions::default().capacity(0)),
            "capacity",
            "at least 1",
        ),
        (
            WebhookEndpoint::new(" ", "https://crm.example.com").secret(SECRET),
            "name",
            "empty",
        ),
    ];
    for (endpoint, field, reason) in cases {
        let (name, got_field, got_reason) = field_of(endpoint);
        assert!(name == "crm" || field == "name");
        assert_eq!(got_field, field, "{got_reason}");
        assert!(got_reason.contains(reason), "{got_field}: {got_reason}");
    }
    assert!(ok().build().is_ok());
}

#[tokio::test]
async fn the_builder_extension_fails_before_start() {
    let err = Emissions::builder()
        .adapter(WebhookEndpoint::new("billing", "gopher://x").secret(SECRET))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook endpoint `billing`: invalid `url`: scheme `gopher` is not supported; use http or https"
    );
}
