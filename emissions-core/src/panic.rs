//! Containing user code: every call into an adapter, handler, hook, observer or key function
//! goes through here, so a panic is turned into an error charged to the one event (or batch)
//! concerned and never unwinds through the engine.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// The message of a caught panic.
pub(crate) fn message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs `f`; a panic becomes `Err(message)`.
pub(crate) fn contain<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| message(&*panic))
}

/// Awaits `future`; a panic while polling it becomes `Err(message)`.
pub(crate) async fn contain_async<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|panic| message(&*panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_messages() {
        assert_eq!(contain(|| 1), Ok(1));
        assert_eq!(contain(|| -> u8 { panic!("boom") }), Err("boom".to_owned()));
        let n = 7;
        assert_eq!(
            contain(|| -> u8 { panic!("boom {n}") }),
            Err("boom 7".to_owned())
        );
        assert_eq!(
            contain(|| std::panic::panic_any(3u8)),
            Err("non-string panic payload".to_owned())
        );
    }
}
