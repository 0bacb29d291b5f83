//! [`Receipt`]: await one commit's delivery; [`CommitOutcome`]: how it ended, per adapter.

use std::sync::Arc;

use super::Commit;
use crate::DeliveryCounts;

/// Returned by a commit: await [`settled`](Self::settled) until every adapter is done with the
/// commit's events (delivered, filtered, failed or dropped). Dropping a receipt changes nothing.
///
/// ```
/// # use emissions_core::Emissions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = Emissions::builder().start().await?;
/// let buffer = emissions.start();
/// buffer.emit("order_created", &serde_json::json!({"id": 1}))?;
/// let receipt = buffer.commit().await?;
/// assert_eq!(receipt.event_count(), 1);
/// let outcome = receipt.settled().await;
/// assert!(outcome.is_delivered());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Receipt {
    inner: Inner,
}

impl Clone for Receipt {
    fn clone(&self) -> Self {
        if let Inner::Commit(commit) = &self.inner {
            commit.add_receipt();
        }
        Receipt {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Inner::Commit(commit) = &self.inner {
            commit.drop_receipt();
        }
    }
}

#[derive(Clone, Debug)]
enum Inner {
    /// Nothing to wait for: no adapter is registered.
    Settled {
        event_count: usize,
    },
    Commit(Arc<Commit>),
}

impl Receipt {
    /// The receipt of a commit just opened (it owns the commit's initial receipt count).
    pub(crate) fn new(commit: Arc<Commit>) -> Self {
        Receipt {
            inner: Inner::Commit(commit),
        }
    }

    pub(crate) fn without_adapters(event_count: usize) -> Self {
        Receipt {
            inner: Inner::Settled { event_count },
        }
    }

    /// Events in the commit.
    ///
    /// See [`Receipt`] for an example.
    pub fn event_count(&self) -> usize {
        match &self.inner {
            Inner::Settled { event_count } => *event_count,
            Inner::Commit(commit) => commit.events().len(),
        }
    }

    /// Whether every adapter is done with the commit's events.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().start().await?;
    /// let receipt = emissions.start().commit().await?;
    /// assert!(receipt.is_settled()); // nothing to deliver
    /// # Ok(()) }
    /// ```
    pub fn is_settled(&self) -> bool {
        match &self.inner {
            Inner::Settled { .. } => true,
            Inner::Commit(commit) => commit.is_settled(),
        }
    }

    /// Waits until every adapter is done with the commit's events and returns the outcome.
    /// Cancel-safe: dropping the future changes nothing, and it can be awaited again.
    ///
    /// See [`Receipt`] for an example.
    pub async fn settled(&self) -> CommitOutcome {
        match &self.inner {
            Inner::Settled { .. } => CommitOutcome::new(Vec::new()),
            Inner::Commit(commit) => {
                commit.wait().await;
                commit.outcome()
            }
        }
    }
}

/// The outcome of one commit, per adapter.
///
/// ```
/// # use emissions_core::Emissions;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// # let emissions = Emissions::builder().start().await?;
/// let outcome = emissions.emit_now("ping", &()).await?.settled().await;
/// for (adapter, counts) in outcome.iter() {
///     println!("{adapter}: {} delivered", counts.delivered);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    adapters: Vec<(Arc<str>, DeliveryCounts)>,
}

impl CommitOutcome {
    pub(crate) fn new(adapters: Vec<(Arc<str>, DeliveryCounts)>) -> Self {
        CommitOutcome { adapters }
    }

    /// The counts of one adapter, by registered name.
    ///
    /// ```
    /// # use emissions_core::Emissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder().adapter(emissions_core::Named::new("test", emissions_testing::TestAdapter::new()))?.start().await?;
    /// let outcome = emissions.emit_now("ping", &()).await?.settled().await;
    /// assert_eq!(outcome.adapter("test").unwrap().delivered, 1);
    /// assert!(outcome.adapter("kafka").is_none());
    /// # Ok(()) }
    /// ```
    pub fn adapter(&self, name: &str) -> Option<DeliveryCounts> {
        self.adapters
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, c)| *c)
    }

    /// Each adapter's name and counts, in registration order.
    ///
    /// See [`CommitOutcome`].
    pub fn iter(&self) -> impl Iterator<Item = (&str, DeliveryCounts)> + '_ {
        self.adapters.iter().map(|(n, c)| (&**n, *c))
    }

    /// True when every adapter delivered (or filtered) every event of the commit.
    ///
    /// See [`Receipt`].
    pub fn is_delivered(&self) -> bool {
        self.adapters
            .iter()
            .all(|(_, c)| c.failed == 0 && c.dropped == 0 && c.is_balanced())
    }
}
