//! Bad configuration fails at build time, naming the endpoint and the field or property.

use emissions_core::AdapterOptions;
use emissions_kafka::{Error, KafkaEndpoint};

fn error(endpoint: KafkaEndpoint) -> (String, String, String) {
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
fn invalid_configuration_names_the_property() {
    let base = || KafkaEndpoint::new("orders", "127.0.0.1:9092").topic("events");
    let cases: Vec<(KafkaEndpoint, &str, &str)> = vec![
        (base().property("acks", "1"), "acks", "requires acks=all"),
        (
            base().property("max.in.flight.requests.per.connection", "10"),
            "max.in.flight.requests.per.connection",
            "at most 5",
        ),
        (base().property("retries", "0"), "retries", "retries > 0"),
        (
            base().property("bootstrap.servers", "x:1"),
            "bootstrap.servers",
            "KafkaEndpoint::new",
        ),
        (
            base().property("no.such.property", "1"),
            "properties",
            "no.such.property",
        ),
        (
            base().property("linger.ms", "not-a-number"),
            "properties",
            "linger.ms",
        ),
        (
            KafkaEndpoint::new("orders", "127.0.0.1:9092"),
            "destination",
            "set a topic",
        ),
        (
            KafkaEndpoint::new("orders", " ").topic("events"),
            "bootstrap_servers",
            "host:port",
        ),
        (
            KafkaEndpoint::new("orders", "127.0.0.1:9092").topic("bad topic!"),
            "topic",
            "not a valid topic name",
        ),
        (base().key_from_payload("order.id"), "key", "JSON pointer"),
        (
            base().queue(AdapterOptions::default().capacity(10)),
            "max_demand",
            "exceeds capacity",
        ),
    ];
    for (endpoint, field, reason) in cases {
        let (name, got_field, got_reason) = error(endpoint);
        assert_eq!(name, "orders");
        assert_eq!(got_field, field, "{got_reason}");
        assert!(got_reason.contains(reason), "{got_field}: {got_reason}");
    }
    // Idempotence can be turned off, and then acks=1 is accepted.
    assert!(
        base()
            .property("enable.idempotence", "false")
            .property("acks", "1")
            .build()
            .is_ok()
    );
}
