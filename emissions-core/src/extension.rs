//! [`Extension`]: something attached to an instance for its whole life — found again by type
//! ([`Emissions::extension`](crate::Emissions::extension)), told when the instance has started,
//! and shut down with it. The durable outbox attaches itself this way, so that
//! `buffer.commit_in(&mut tx)` finds its store and its relay stops with the instance.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::Emissions;

/// Something attached to an instance with
/// [`EmissionsBuilder::extension`](crate::EmissionsBuilder::extension).
///
/// # Contract
///
/// - `started` is called once, right after the instance starts (from the task that called
///   `start`): start background work there. It must not block.
/// - `shutdown` is called once, by [`Emissions::shutdown`](crate::Emissions::shutdown) (or when
///   the last handle is dropped), after every adapter's consumer and every handler run has
///   ended and before the report is built — so whatever those last moments reported can be
///   persisted first. It is bounded by `deadline` — the shutdown's, or a second from now when
///   that has already passed — and a panic in it is caught and logged.
///
/// ```
/// use emissions_core::{async_trait, Emissions, Extension};
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// #[derive(Default)]
/// struct Marker(AtomicBool);
///
/// #[async_trait]
/// impl Extension for Marker {
///     fn started(&self, _: &Emissions) {
///         self.0.store(true, Ordering::SeqCst);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder().extension(Marker::default()).start().await?;
/// assert!(emissions.extension::<Marker>().unwrap().0.load(Ordering::SeqCst));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Extension: Send + Sync + 'static {
    /// The instance has started. Defaults to doing nothing.
    fn started(&self, emissions: &Emissions) {
        let _ = emissions;
    }

    /// The instance is shutting down; everything it delivered has ended. Defaults to doing
    /// nothing.
    async fn shutdown(&self, deadline: Instant) {
        let _ = deadline;
    }
}

/// One attached extension, as its trait object and as `Any` (to be found by type).
#[derive(Clone)]
pub(crate) struct Attached {
    pub(crate) extension: Arc<dyn Extension>,
    any: Arc<dyn Any + Send + Sync>,
}

impl Attached {
    pub(crate) fn new<T: Extension>(extension: T) -> Self {
        let extension = Arc::new(extension);
        Attached {
            any: extension.clone(),
            extension,
        }
    }

    pub(crate) fn get<T: Extension>(&self) -> Option<Arc<T>> {
        self.any.clone().downcast::<T>().ok()
    }
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Extension(..)")
    }
}
