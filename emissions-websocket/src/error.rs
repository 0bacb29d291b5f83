//! The one error type of `emissions-websocket`.

/// Everything that can go wrong in `emissions-websocket`.
///
/// ```
/// let err = emissions_websocket::Error::Bind { address: "127.0.0.1:1".into(), source: std::io::Error::other("in use") };
/// assert_eq!(err.to_string(), "cannot listen on 127.0.0.1:1");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the server and the field.
    #[error("websocket server `{server}`: invalid `{field}`: {reason}")]
    Config {
        /// The server's (adapter's) name.
        server: String,
        /// The option at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address asked for.
        address: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}
