//! Assertions on the durable outbox (feature `outbox`): how many deliveries of a destination
//! are pending, in flight, failed or abandoned — [`assert_outbox!`](crate::assert_outbox) — and
//! waiting until every delivery has ended — [`expect_drained`].
//!
//! ```
//! use emissions_core::Emissions;
//! use emissions_outbox::{DurableCommit, OutboxConfig};
//! use emissions_testing::{TestAdapter, assert_outbox, outbox::expect_drained};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = std::env::temp_dir().join(format!("outbox-doc-{}.db", std::process::id()));
//! let outbox = OutboxConfig::sqlite(&path).build().await?;
//! let emissions = Emissions::builder()
//!     .adapter(emissions_core::Named::new("billing", TestAdapter::new()))?
//!     .extension(outbox.clone())
//!     .start()
//!     .await?;
//! let buffer = emissions.start();
//! buffer.emit("order_created", &serde_json::json!({"id": 1}))?;
//! buffer.commit_durably().await?;
//!
//! expect_drained(&outbox).await?;
//! assert_outbox!(outbox, "billing", pending = 0, in_flight = 0, failed = 0, abandoned = 0);
//! emissions.shutdown(std::time::Duration::from_secs(5)).await;
//! # let _ = std::fs::remove_file(&path);
//! # Ok(()) }
//! ```

use std::time::Duration;

use emissions_outbox::Outbox;

/// How long [`expect_drained`] waits.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Expected numbers of a destination's deliveries per state; `None` is "any".
///
/// ```
/// let expected = emissions_testing::outbox::OutboxCounts { failed: Some(1), ..Default::default() };
/// assert_eq!(expected.pending, None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting for their first attempt or a retry.
    pub pending: Option<u64>,
    /// Claimed, being attempted.
    pub in_flight: Option<u64>,
    /// Retries used up.
    pub failed: Option<u64>,
    /// Failed permanently.
    pub abandoned: Option<u64>,
}

/// Waits until no delivery is pending or in flight (up to [`DRAIN_TIMEOUT`]); the error lists
/// what is still waiting.
///
/// See the [module docs](crate::outbox).
pub async fn expect_drained(outbox: &Outbox) -> Result<(), String> {
    match tokio::time::timeout(DRAIN_TIMEOUT, outbox.drained()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("the outbox could not be read: {err}")),
        Err(_) => {
            let waiting = outbox
                .deliveries(None, Some("pending"), 20)
                .await
                .map_err(|e| e.to_string())?;
            Err(format!(
                "the outbox did not drain within {DRAIN_TIMEOUT:?}; still pending: {waiting:?}"
            ))
        }
    }
}

/// The check behind [`assert_outbox!`](crate::assert_outbox): `Ok` when `destination`'s
/// deliveries match `expected` now; the error shows the counts and the deliveries. A
/// destination the outbox does not know (a typo) is an error, not zeros.
///
/// See the [module docs](crate::outbox).
pub async fn expect_counts(
    outbox: &Outbox,
    destination: &str,
    expected: OutboxCounts,
) -> Result<(), String> {
    let stats = outbox.stats().await.map_err(|e| e.to_string())?;
    let actual = stats.iter().find(|s| s.destination == destination);
    if actual.is_none() && !outbox.destinations().iter().any(|d| d == destination) {
        return Err(format!(
            "`{destination}` is not a destination of this outbox (it has {:?}) and no delivery \
             names it",
            outbox.destinations()
        ));
    }
    let get = |f: fn(&emissions_outbox::DestinationStats) -> u64| actual.map_or(0, f);
    let checks = [
        ("pending", expected.pending, get(|s| s.pending)),
        ("in_flight", expected.in_flight, get(|s| s.in_flight)),
        ("failed", expected.failed, get(|s| s.failed)),
        ("abandoned", expected.abandoned, get(|s| s.abandoned)),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter_map(|(state, want, got)| {
            want.filter(|w| w != got)
                .map(|w| format!("{state}: expected {w}, found {got}"))
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    let rows = outbox
        .deliveries(Some(destination), None, 50)
        .await
        .map_err(|e| e.to_string())?;
    Err(format!(
        "outbox deliveries of `{destination}`: {}; deliveries: {rows:?}",
        wrong.join(", ")
    ))
}

/// Asserts how many deliveries of a destination are in each named state (`pending`,
/// `in_flight`, `failed`, `abandoned`); states not named are not checked. Use inside an async
/// test, after [`expect_drained`] when retries must have run their course.
///
/// See the [module docs](crate::outbox) for an example.
#[macro_export]
macro_rules! assert_outbox {
    ($outbox:expr, $destination:expr, $($state:ident = $count:expr),+ $(,)?) => {{
        let mut expected = $crate::outbox::OutboxCounts::default();
        $( expected.$state = Some($count); )+
        if let Err(message) = $crate::outbox::expect_counts(&$outbox, $destination, expected).await {
            panic!("{}", message)
        }
    }};
}
