//! The one error type of `emissions-websocket`.

/// Everything that can go wrong in `emissions-websocket`.
///
/// ```
/// let err = emissions_websocket::Error::Config { field: "history", reason: "must be greater than zero".into() };
/// assert_eq!(err.to_string(), "live feed: invalid `history`: must be greater than zero");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the field.
    #[error("live feed: invalid `{field}`: {reason}")]
    Config {
        /// The option at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The standalone listener could not be opened.
    #[error("live feed: cannot listen on {address}")]
    Bind {
        /// The address asked for.
        address: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The Kafka source could not start (metadata, topics, consumer).
    #[cfg(feature = "kafka")]
    #[error("live feed: Kafka source: {reason}")]
    Kafka {
        /// What failed.
        reason: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<rdkafka::error::KafkaError>,
    },
}
