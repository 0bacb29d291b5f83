//! The one error type of `emissions-outbox`.

/// Everything that can go wrong in the outbox. When a commit fails, the buffer keeps its events
/// (it is open again), so nothing is lost.
///
/// ```
/// let err = emissions_outbox::Error::SchemaTooNew { found: 9, supported: 1 };
/// assert!(err.to_string().contains("newer"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or could not be reached.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database holds an outbox schema from a newer version of this crate.
    #[error(
        "the outbox schema in this database is version {found}, newer than the {supported} this \
         emissions-outbox knows; upgrade emissions-outbox"
    )]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this crate knows.
        supported: i64,
    },
    /// The outbox schema is missing or older than this crate needs, and migrations were set to
    /// run explicitly.
    #[error(
        "the outbox schema in this database is version {found}, older than {supported}; run \
         Outbox::migrate (or let the outbox migrate at start)"
    )]
    SchemaTooOld {
        /// The version found (0 when there is none).
        found: i64,
        /// The version this crate needs.
        supported: i64,
    },
    /// An event's payload is larger than the outbox accepts; nothing was committed.
    #[error("event `{name}` has a {size}-byte payload, over the outbox limit of {limit} bytes")]
    PayloadTooLarge {
        /// The event's name.
        name: String,
        /// Its payload size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The buffer's instance has no outbox attached.
    #[error(
        "no outbox is attached to this emissions instance; attach it with EmissionsBuilder::extension"
    )]
    NoOutbox,
    /// This `Outbox` was attached to an instance before (one that has shut down, or another
    /// one): an outbox serves one instance for its life.
    #[error(
        "this Outbox was already attached to an emissions instance; build a new Outbox (from the \
         same configuration) for each instance"
    )]
    AlreadyAttached,
    /// The buffer refused (closed, or a handler's own buffer).
    #[error(transparent)]
    Emissions(#[from] emissions_core::Error),
    /// The configuration is invalid; the message says how to fix it.
    #[error("outbox: invalid `{field}`: {reason}")]
    Config {
        /// The option at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl Error {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }
}
