//! The one error type of `emissions-webhook`.

use std::net::IpAddr;

/// Everything that can go wrong in `emissions-webhook`: configuration, delivery, verification.
///
/// ```
/// use emissions_webhook::Error;
/// let err = Error::MissingHeader("webhook-id");
/// assert_eq!(err.to_string(), "missing header `webhook-id`");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint's configuration is invalid; the message names the endpoint and the field.
    #[error("webhook endpoint `{endpoint}`: invalid `{field}`: {reason}")]
    Config {
        /// The endpoint's name.
        endpoint: String,
        /// The option at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A signing secret is not `whsec_` + base64 of 24 to 64 bytes.
    #[error("invalid signing secret: {0}")]
    InvalidSecret(&'static str),
    /// The serialized event is larger than the endpoint's payload cap; it is not sent.
    #[error("payload of {size} bytes exceeds the cap of {limit} bytes")]
    PayloadTooLarge {
        /// The body size.
        size: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The SSRF guard refused the address the endpoint resolves to.
    #[error(
        "refused to connect to {host} ({addr}): internal address (allow it explicitly for local use)"
    )]
    Blocked {
        /// The host name or address of the endpoint.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
    /// The endpoint's host name did not resolve within the resolve bound (asked again with
    /// backoff meanwhile); the event fails at once instead of waiting out the retry schedule.
    #[error("host `{host}` does not resolve: {reason}")]
    Unresolvable {
        /// The host name.
        host: String,
        /// The resolver's last answer.
        reason: String,
    },
    /// The receiver answered with a status that is not a success.
    #[error("receiver answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most the endpoint's response-body limit).
        body: String,
    },
    /// The endpoint answered 410 Gone earlier and is disabled.
    #[error("endpoint disabled: the receiver answered 410 Gone")]
    Disabled,
    /// The request failed before a response (connect error, timeout, reset).
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// A runtime-added endpoint's own instance did not start.
    #[error("the endpoint's instance did not start: {0}")]
    Start(#[source] Box<emissions_core::Error>),
    /// Verification: a required header is absent or not valid text.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// Verification: a header is malformed (bad timestamp, oversized signature list).
    #[error("malformed header `{0}`")]
    MalformedHeader(&'static str),
    /// Verification: the timestamp is older than the tolerance.
    #[error("timestamp too old")]
    TimestampTooOld,
    /// Verification: the timestamp is further in the future than the tolerance.
    #[error("timestamp too far in the future")]
    TimestampInFuture,
    /// Verification: no `v1` signature matches any secret.
    #[error("no matching signature")]
    NoMatchingSignature,
}
