//! The one error type of `emissions-core`.

use std::fmt;

/// A boxed error from an adapter or other user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a buffer is in its lifecycle.
///
/// ```
/// use emissions_core::BufferState;
/// assert_eq!(BufferState::Committed.to_string(), "committed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BufferState {
    /// Accepting events (also after a `flush`).
    Open,
    /// Handed to the pipeline by `commit`; closed.
    Committed,
    /// Being committed elsewhere (a durable store writing it in a database transaction):
    /// closed until that ends, then committed, or open again with its events if it failed.
    Committing,
    /// Discarded by `terminate` or by being dropped; closed.
    Terminated,
}

impl fmt::Display for BufferState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BufferState::Open => "open",
            BufferState::Committed => "committed",
            BufferState::Committing => "committing",
            BufferState::Terminated => "terminated",
        })
    }
}

/// Everything that can go wrong in `emissions-core`.
///
/// ```
/// use emissions_core::Error;
/// let err = Error::NoBuffer;
/// assert_eq!(err.to_string(), "no open buffer in this task");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload could not be serialized to JSON; nothing was buffered.
    #[error("payload of event `{name}` failed to serialize")]
    Serialize {
        /// The event name that was being emitted.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A payload read back from a store is not JSON; the event cannot be restored.
    #[error("payload of event `{name}` is not valid JSON")]
    InvalidPayload {
        /// The event's name.
        name: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An envelope or CloudEvent read back from a wire is not one this crate writes; the
    /// reason says what is missing or malformed.
    #[error("not an event envelope: {0}")]
    InvalidEnvelope(String),
    /// Event names must not be empty.
    #[error("event name must not be empty")]
    EmptyName,
    /// Event names must not contain control characters (U+0000–U+001F, U+007F–U+009F): every
    /// wire carries the name as text (a header, a CloudEvents `type`), where they are
    /// forbidden or dangerous.
    #[error("event name {name:?} contains control characters")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// An emit time read back from a store lies outside what every wire can write
    /// (1970-01-01 to 9999-12-31, UTC).
    #[error("emit time of event `{name}` is outside 1970–9999")]
    InvalidTime {
        /// The event's name.
        name: String,
    },
    /// The buffer was already committed or terminated.
    #[error("buffer is {state}")]
    BufferClosed {
        /// The state the buffer is in.
        state: BufferState,
    },
    /// An ambient `emit`/`commit` ran outside any buffer scope; the event was dropped and reported.
    #[error("no open buffer in this task")]
    NoBuffer,
    /// No `Emissions` instance: neither a scoped default nor a global default is set.
    #[error("no emissions instance: set a global default or use with_default")]
    NoInstance,
    /// A handler emitted a follow-up event deeper than the cascade depth limit; the event was
    /// dropped and reported (`emissions.event.dropped`, reason `cascade_depth`). A handler may
    /// ignore this error to end the cascade quietly.
    #[error("cascade depth {depth} exceeds the limit of {limit}; event dropped")]
    CascadeDepth {
        /// The depth the event would have had.
        depth: u32,
        /// The configured limit.
        limit: u32,
    },
    /// `set_global_default` was called twice.
    #[error("a global default emissions instance is already set")]
    GlobalDefaultAlreadySet,
    /// The instance is shut down (or shutting down) and accepts no more events.
    /// A buffer whose commit failed this way keeps its events.
    #[error("emissions is shut down")]
    ShutDown,
    /// A commit made from inside an adapter's `handle_events` found a block-policy queue full.
    /// It never waits there (the adapter could be waiting on itself), so nothing was committed
    /// and the buffer keeps its events.
    #[error("queue of adapter `{adapter}` is full; a commit from inside an adapter does not wait")]
    QueueFull {
        /// The adapter whose queue is full.
        adapter: String,
    },
    /// A handler tried to commit, flush or terminate the buffer of its own run; that buffer
    /// is committed by the run when the handler succeeds and discarded when it fails.
    #[error("a handler's follow-up events are committed by its run, not by the handler")]
    HandlerBuffer,
    /// An adapter's options are invalid; the message says how to fix them.
    #[error("adapter `{adapter}`: invalid `{field}`: {reason}")]
    Config {
        /// The adapter's registered name.
        adapter: String,
        /// The option at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An adapter's `init` failed, so the instance did not start.
    #[error("adapter `{adapter}` failed to initialise")]
    Init {
        /// The adapter's registered name.
        adapter: String,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
}

/// What registering a [`Named`](crate::Named) adapter can fail with: nothing, so that `?`
/// works in functions returning this crate's error.
impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl Error {
    pub(crate) fn config(adapter: &str, field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            adapter: adapter.to_owned(),
            field,
            reason: reason.into(),
        }
    }
}
