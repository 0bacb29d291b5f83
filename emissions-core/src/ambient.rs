//! The ambient style: emit without passing a handle around.
//!
//! Two task-scoped values stand behind the free functions of the crate root:
//!
//! - the **current instance**: the one set by [`with_default`] for a future, else the global
//!   default set once by [`set_global_default`] (the way `tracing` has a global dispatcher and
//!   a scoped override). Parallel tests each scope their own instance and never share state.
//! - the **current buffer**: set by [`Buffer::scope`] or [`transaction`] for a future.
//!
//! Task-locals do not follow `tokio::spawn`: pass [`current_buffer`] to a spawned task and
//! [`Buffer::scope`] it there.
//!
//! # Example
//!
//! ```
//! use emissions_core::Emissions;
//!
//! #[derive(Debug)]
//! #[allow(dead_code)] // the wrapped error is for the caller's logs
//! enum AppError { Invalid, Emissions(emissions_core::Error) }
//! impl From<emissions_core::Error> for AppError {
//!     fn from(e: emissions_core::Error) -> Self { AppError::Emissions(e) }
//! }
//!
//! async fn create_order(qty: u32) -> Result<u32, AppError> {
//!     if qty == 0 {
//!         return Err(AppError::Invalid);
//!     }
//!     emissions_core::emit("order_created", &serde_json::json!({"qty": qty}))?;
//!     Ok(qty)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), emissions_core::Error> {
//! let emissions = Emissions::builder().start().await?;
//! emissions_core::with_default(emissions.clone(), async {
//!     // Committed: the request succeeded.
//!     assert!(emissions_core::transaction(create_order(5)).await.is_ok());
//!     // Discarded: the request failed.
//!     assert!(emissions_core::transaction(create_order(0)).await.is_err());
//!     // Outside any buffer: a typed error, reported as `event.dropped` (reason `no_buffer`).
//!     assert!(matches!(
//!         emissions_core::emit("stray", &1),
//!         Err(emissions_core::Error::NoBuffer)
//!     ));
//! })
//! .await;
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;

use serde::Serialize;

use crate::telemetry::{self, DropReason, TelemetryEvent};
use crate::{Buffer, Emissions, Error, Metadata, Receipt};

tokio::task_local! {
    static CURRENT_BUFFER: Buffer;
    static CURRENT_INSTANCE: Emissions;
}

static GLOBAL_DEFAULT: OnceLock<Emissions> = OnceLock::new();

/// Sets the process-wide default instance, used where no [`with_default`] scope applies.
/// Fails with [`Error::GlobalDefaultAlreadySet`] the second time.
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), emissions_core::Error> {
///     let emissions = emissions_core::Emissions::builder().start().await?;
///     emissions_core::set_global_default(emissions)?;
///     // … serve requests; `emissions_core::start()` now finds this instance.
///     Ok(())
/// }
/// ```
pub fn set_global_default(emissions: Emissions) -> Result<(), Error> {
    GLOBAL_DEFAULT
        .set(emissions)
        .map_err(|_| Error::GlobalDefaultAlreadySet)
}

/// Runs `future` with `emissions` as the current instance (overriding the global default).
///
/// See the [module docs](crate::ambient).
pub async fn with_default<F: Future>(emissions: Emissions, future: F) -> F::Output {
    CURRENT_INSTANCE.scope(emissions, future).await
}

/// The current instance: the scoped one, else the global default.
///
/// ```
/// assert!(matches!(emissions_core::current(), Err(emissions_core::Error::NoInstance)));
/// ```
pub fn current() -> Result<Emissions, Error> {
    CURRENT_INSTANCE
        .try_with(Emissions::clone)
        .ok()
        .or_else(|| GLOBAL_DEFAULT.get().cloned())
        .ok_or(Error::NoInstance)
}

/// Opens a buffer on the current instance.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = emissions_core::Emissions::builder().start().await?;
/// emissions_core::with_default(emissions, async {
///     let buffer = emissions_core::start()?;
///     buffer.scope(async { emissions_core::emit("a", &1) }).await?;
///     buffer.commit().await.map(drop)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub fn start() -> Result<Buffer, Error> {
    Ok(current()?.start())
}

/// The ambient buffer of this task, if any.
///
/// ```
/// assert!(emissions_core::current_buffer().is_none());
/// ```
pub fn current_buffer() -> Option<Buffer> {
    CURRENT_BUFFER.try_with(Buffer::clone).ok()
}

pub(crate) async fn scope_buffer<F: Future>(buffer: Buffer, future: F) -> F::Output {
    let emissions = buffer.emissions().clone();
    CURRENT_INSTANCE
        .scope(emissions, CURRENT_BUFFER.scope(buffer, future))
        .await
}

/// Runs `f` with `buffer` as the ambient buffer (for synchronous code such as a tower
/// service's `call`).
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) fn sync_scope_buffer<R>(buffer: Buffer, f: impl FnOnce() -> R) -> R {
    let emissions = buffer.emissions().clone();
    CURRENT_INSTANCE.sync_scope(emissions, || CURRENT_BUFFER.sync_scope(buffer, f))
}

fn ambient_buffer(event_name: &str) -> Result<Buffer, Error> {
    current_buffer().ok_or_else(|| {
        let event = TelemetryEvent::EventDropped {
            event_name,
            reason: DropReason::NoBuffer,
            adapter: None,
            handler: None,
        };
        match current() {
            Ok(emissions) => emissions.telemetry(&event),
            Err(_) => telemetry::trace(&event),
        }
        Error::NoBuffer
    })
}

/// Emits into the ambient buffer. With none, returns [`Error::NoBuffer`] and reports
/// `emissions.event.dropped` with reason `no_buffer`.
///
/// See the [module docs](crate::ambient).
pub fn emit<P>(name: impl Into<Cow<'static, str>>, payload: &P) -> Result<(), Error>
where
    P: Serialize + ?Sized,
{
    emit_with_metadata(name, payload, Metadata::new())
}

/// Emits into the ambient buffer, with metadata.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = emissions_core::Emissions::builder().start().await?;
/// let buffer = emissions.start();
/// let mut meta = emissions_core::Metadata::new();
/// meta.insert("source".into(), "cron".into());
/// buffer.scope(async { emissions_core::emit_with_metadata("tick", &1, meta) }).await?;
/// # Ok(()) }
/// ```
pub fn emit_with_metadata<P>(
    name: impl Into<Cow<'static, str>>,
    payload: &P,
    metadata: Metadata,
) -> Result<(), Error>
where
    P: Serialize + ?Sized,
{
    let name = name.into();
    ambient_buffer(&name)?.emit_with_metadata(name, payload, metadata)
}

/// Commits the ambient buffer. See [`Buffer::commit`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = emissions_core::Emissions::builder().start().await?;
/// let receipt = emissions.start().scope(async {
///     emissions_core::emit("a", &1)?;
///     emissions_core::commit().await
/// }).await?;
/// assert_eq!(receipt.event_count(), 1);
/// # Ok(()) }
/// ```
pub async fn commit() -> Result<Receipt, Error> {
    current_buffer().ok_or(Error::NoBuffer)?.commit().await
}

/// Flushes the ambient buffer. See [`Buffer::flush`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = emissions_core::Emissions::builder().start().await?;
/// let receipt = emissions.start().scope(async {
///     emissions_core::emit("a", &1)?;
///     emissions_core::flush().await
/// }).await?;
/// assert_eq!(receipt.event_count(), 1);
/// # Ok(()) }
/// ```
pub async fn flush() -> Result<Receipt, Error> {
    current_buffer().ok_or(Error::NoBuffer)?.flush().await
}

/// Terminates the ambient buffer. See [`Buffer::terminate`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = emissions_core::Emissions::builder().start().await?;
/// let discarded = emissions.start().scope(async {
///     emissions_core::emit("a", &1)?;
///     emissions_core::terminate()
/// }).await?;
/// assert_eq!(discarded, 1);
/// # Ok(()) }
/// ```
pub fn terminate() -> Result<usize, Error> {
    current_buffer().ok_or(Error::NoBuffer)?.terminate()
}

/// Runs `future` in a new buffer on the current instance: commits when it returns `Ok`,
/// terminates when it returns `Err` (or is dropped, or panics). Returns the future's own
/// result — also when it committed or terminated the ambient buffer itself — or the commit's
/// error when committing its events failed (the events are then discarded and reported).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = emissions_core::Emissions::builder().start().await?;
/// emissions_core::with_default(emissions, async {
///     let result: Result<u32, emissions_core::Error> = emissions_core::transaction(async {
///         emissions_core::emit("order_created", &1)?;
///         emissions_core::commit().await?; // committed early, by the body itself
///         Ok(7)
///     })
///     .await;
///     assert_eq!(result.unwrap(), 7);
/// })
/// .await;
/// # Ok(()) }
/// ```
pub async fn transaction<F, T, E>(future: F) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let buffer = start()?;
    match buffer.scope(future).await {
        Ok(value) => match buffer.commit().await {
            // The body closed its buffer itself: its own result stands.
            Ok(_) | Err(Error::BufferClosed { .. }) => Ok(value),
            Err(err) => Err(err.into()),
        },
        Err(err) => {
            // Already closed by the body, or discarded now: either way the body's error stands.
            let _ = buffer.terminate();
            Err(err)
        }
    }
}
