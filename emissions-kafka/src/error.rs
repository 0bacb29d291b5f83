//! The one error type of `emissions-kafka`.

/// Everything that can go wrong in `emissions-kafka`.
///
/// ```
/// let err = emissions_kafka::Error::NoTopic { event: "order_created".into() };
/// assert_eq!(err.to_string(), "no destination topic for event `order_created`");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the endpoint and the field or property.
    #[error("kafka endpoint `{endpoint}`: invalid `{field}`: {reason}")]
    Config {
        /// The endpoint's (adapter's) name.
        endpoint: String,
        /// The option or librdkafka property at fault.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The destination (topic, router or closure) gave no topic for this event.
    #[error("no destination topic for event `{event}`")]
    NoTopic {
        /// The event name.
        event: String,
    },
    /// librdkafka gave up after `message.timeout.ms`: the message may or may not have been
    /// written.
    #[error(
        "delivery timed out (message.timeout.ms); the message may or may not have been written"
    )]
    TimedOut,
    /// Delivery failed with a broker or client error that librdkafka does not retry (or retried
    /// until giving up).
    #[error("delivery failed: {0}")]
    Delivery(#[source] rdkafka::error::KafkaError),
    /// The producer was dropped before reporting delivery.
    #[error("producer went away before reporting delivery")]
    Cancelled,
}
