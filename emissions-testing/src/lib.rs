//! Test helpers for applications that use `emissions`: a recording [`TestAdapter`], an isolated
//! per-test instance ([`TestEmissions`]), and assertions that wait for delivery instead of
//! sleeping: [`assert_emitted!`], [`refute_emitted!`], [`assert_emitted_in_order!`].
//!
//! # Isolation
//!
//! Every [`TestEmissions`] is its own instance with its own pipeline and recorder. Code under
//! test that uses the ambient style (`emissions_core::emit`, `emissions_core::transaction`) runs
//! inside [`TestEmissions::run`], which makes this instance the task's default. Tests running in
//! parallel threads of one process never see each other's events, and no global reset is needed.
//!
//! # Waiting
//!
//! Every assertion first waits until everything committed so far has settled at every adapter
//! ([`Emissions::settled`]), so `refute_emitted!` is as reliable as `assert_emitted!`.
//!
//! # Example: the orders test
//!
//! ```
//! use emissions_testing::{assert_emitted, refute_emitted, TestEmissions};
//! use serde_json::{json, Value};
//!
//! mod my_app {
//!     pub mod orders {
//!         use serde_json::{json, Value};
//!
//!         #[derive(Debug)]
//!         #[allow(dead_code)] // the wrapped error is for the caller's logs
//!         pub enum OrderError {
//!             Invalid,
//!             Emissions(emissions_core::Error),
//!         }
//!
//!         impl From<emissions_core::Error> for OrderError {
//!             fn from(e: emissions_core::Error) -> Self {
//!                 OrderError::Emissions(e)
//!             }
//!         }
//!
//!         /// Creates an order; `order_created` is emitted only if the request succeeds.
//!         pub async fn create(params: Value) -> Result<Value, OrderError> {
//!             emissions_core::transaction(async {
//!                 if params.get("invalid").is_some() {
//!                     return Err(OrderError::Invalid);
//!                 }
//!                 let order = json!({"item": params["item"], "qty": params["qty"]});
//!                 let mut meta = emissions_core::Metadata::new();
//!                 meta.insert("source".into(), "api".into());
//!                 emissions_core::emit_with_metadata("order_created", &order, meta)?;
//!                 Ok(order)
//!             })
//!             .await
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // test "creating an order emits order_created"
//! let t = TestEmissions::start().await;
//! t.run(my_app::orders::create(json!({"item": "widget", "qty": 5}))).await.unwrap();
//! assert_emitted!(t, "order_created");
//! assert_emitted!(t, "order_created", |event| event.payload_json()["item"] == "widget");
//!
//! // test "failed order does not emit events"
//! let t = TestEmissions::start().await;
//! let result: Result<Value, _> = t.run(my_app::orders::create(json!({"invalid": true}))).await;
//! assert!(result.is_err());
//! refute_emitted!(t, "order_created");
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "outbox")]
pub mod outbox;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use emissions_core::{
    Adapter, AdapterOptions, BatchError, Emissions, EmissionsBuilder, Error, Event, OverflowPolicy,
    RetryPolicy, async_trait,
};

/// The name under which [`TestEmissions`] registers its [`TestAdapter`].
pub const TEST_ADAPTER: &str = "test";

/// A shared, append-only record of the events a [`TestAdapter`] received.
///
/// ```
/// let recorder = emissions_testing::Recorder::default();
/// assert!(recorder.events().is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// A snapshot of the events received so far, in delivery order.
    ///
    /// See [`Recorder`].
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn push(&self, events: &[Event]) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(events);
    }
}

/// An adapter that records every event it receives and always succeeds.
///
/// ```
/// use emissions_core::Emissions;
/// use emissions_testing::TestAdapter;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let adapter = TestAdapter::new();
/// let recorder = adapter.recorder();
/// let emissions = Emissions::builder().adapter(emissions_core::Named::new("test", adapter))?.start().await?;
/// emissions.emit_now("ping", &1).await?.settled().await;
/// assert_eq!(recorder.events()[0].name(), "ping");
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct TestAdapter {
    recorder: Recorder,
}

impl TestAdapter {
    /// A new adapter with an empty recorder.
    ///
    /// See [`TestAdapter`].
    pub fn new() -> Self {
        TestAdapter::default()
    }

    /// The recorder this adapter appends to (clone it before registering the adapter).
    ///
    /// See [`TestAdapter`].
    pub fn recorder(&self) -> Recorder {
        self.recorder.clone()
    }
}

#[async_trait]
impl Adapter for TestAdapter {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        self.recorder.push(events);
        Ok(())
    }
}

/// An isolated emissions instance for one test, with a recording adapter.
///
/// The test adapter blocks committers rather than dropping on overflow and never retries, so a
/// test sees exactly what was committed.
///
/// ```
/// use emissions_testing::{assert_emitted, assert_emitted_in_order, TestEmissions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let t = TestEmissions::start().await;
/// let buffer = t.emissions().start();
/// buffer.emit("cart_created", &1)?;
/// buffer.emit("cart_checked_out", &1)?;
/// buffer.commit().await?;
/// assert_emitted!(t, "cart_created");
/// assert_emitted_in_order!(t, ["cart_created", "cart_checked_out"]);
/// assert_eq!(t.events().await.len(), 2);
/// # Ok(()) }
/// ```
pub struct TestEmissions {
    emissions: Emissions,
    recorder: Recorder,
}

impl fmt::Debug for TestEmissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestEmissions")
            .field("emissions", &self.emissions)
            .finish()
    }
}

fn test_adapter_options() -> AdapterOptions {
    AdapterOptions::default()
        .overflow(OverflowPolicy::Block)
        .retry(RetryPolicy::none())
}

impl TestEmissions {
    /// Starts an instance whose only adapter is a [`TestAdapter`] named [`TEST_ADAPTER`].
    ///
    /// See [`TestEmissions`].
    pub async fn start() -> Self {
        match Self::start_with(Emissions::builder()).await {
            Ok(t) => t,
            Err(err) => panic!("starting the test instance failed: {err}"),
        }
    }

    /// Adds a [`TestAdapter`] named [`TEST_ADAPTER`] to `builder` (which may hold the
    /// application's own adapters) and starts it.
    ///
    /// ```
    /// # use emissions_testing::TestEmissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let t = TestEmissions::start_with(emissions_core::Emissions::builder()).await?;
    /// # let _ = t;
    /// # Ok(()) }
    /// ```
    pub async fn start_with(builder: EmissionsBuilder) -> Result<Self, Error> {
        let adapter = TestAdapter::new();
        let recorder = adapter.recorder();
        let emissions = builder
            .adapter(
                emissions_core::Named::new(TEST_ADAPTER, adapter).options(test_adapter_options()),
            )
            .unwrap()
            .start()
            .await?;
        Ok(TestEmissions {
            emissions,
            recorder,
        })
    }

    /// The instance under test.
    ///
    /// See [`TestEmissions`].
    pub fn emissions(&self) -> &Emissions {
        &self.emissions
    }

    /// Runs `future` with this instance as the task's default, for code that uses the ambient
    /// style (`emissions_core::emit`, `emissions_core::transaction`).
    ///
    /// See the [crate docs](crate).
    pub async fn run<F: Future>(&self, future: F) -> F::Output {
        emissions_core::with_default(self.emissions.clone(), future).await
    }

    /// Waits for delivery, then returns every event the test adapter received, in order.
    ///
    /// See [`TestEmissions`].
    pub async fn events(&self) -> Vec<Event> {
        self.emissions.settled().await;
        self.recorder.events()
    }

    /// Waits for delivery, then returns the received events named `name`, in order.
    ///
    /// ```
    /// # use emissions_testing::TestEmissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let t = TestEmissions::start().await;
    /// t.emissions().emit_now("a", &1).await?;
    /// assert_eq!(t.emitted("a").await.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn emitted(&self, name: &str) -> Vec<Event> {
        self.events()
            .await
            .into_iter()
            .filter(|e| e.name() == name)
            .collect()
    }

    /// The check behind [`assert_emitted!`]: the first event named `name` that satisfies
    /// `predicate`, or a message saying what was emitted instead.
    ///
    /// ```
    /// # use emissions_testing::TestEmissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let t = TestEmissions::start().await;
    /// let err = t.expect_emitted("missing", |_| true).await.unwrap_err();
    /// assert!(err.contains("missing"));
    /// # }
    /// ```
    pub async fn expect_emitted(
        &self,
        name: &str,
        predicate: impl Fn(&Event) -> bool,
    ) -> Result<Event, String> {
        let events = self.events().await;
        let named: Vec<&Event> = events.iter().filter(|e| e.name() == name).collect();
        if let Some(found) = named.iter().find(|e| predicate(e)) {
            return Ok((*found).clone());
        }
        if named.is_empty() {
            Err(format!(
                "expected `{name}` to be emitted; emitted: {:?}",
                names(&events)
            ))
        } else {
            Err(format!(
                "`{name}` was emitted {} time(s) but none matched the predicate; payloads: {:?}",
                named.len(),
                named
                    .iter()
                    .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
                    .collect::<Vec<_>>()
            ))
        }
    }

    /// The check behind [`refute_emitted!`]: `Ok` when no event named `name` satisfies
    /// `predicate`.
    ///
    /// ```
    /// # use emissions_testing::TestEmissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let t = TestEmissions::start().await;
    /// assert!(t.expect_not_emitted("anything", |_| true).await.is_ok());
    /// # }
    /// ```
    pub async fn expect_not_emitted(
        &self,
        name: &str,
        predicate: impl Fn(&Event) -> bool,
    ) -> Result<(), String> {
        let events = self.events().await;
        match events.iter().find(|e| e.name() == name && predicate(e)) {
            None => Ok(()),
            Some(event) => Err(format!(
                "expected `{name}` not to be emitted, but it was: {event:?}"
            )),
        }
    }

    /// The check behind [`assert_emitted_in_order!`]: `Ok` when events with these names were
    /// emitted in this order (other events may come between them).
    ///
    /// ```
    /// # use emissions_testing::TestEmissions;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let t = TestEmissions::start().await;
    /// assert!(t.expect_in_order(&["a"]).await.is_err());
    /// # }
    /// ```
    pub async fn expect_in_order(&self, expected: &[&str]) -> Result<(), String> {
        let events = self.events().await;
        let mut wanted = expected.iter().peekable();
        for event in &events {
            if wanted.peek().is_some_and(|name| **name == event.name()) {
                wanted.next();
            }
        }
        match wanted.next() {
            None => Ok(()),
            Some(missing) => Err(format!(
                "expected events in order {expected:?}; `{missing}` not found in order; emitted: {:?}",
                names(&events)
            )),
        }
    }
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(Event::name).collect()
}

/// Asserts that an event with this name (and, optionally, matching a predicate over the
/// [`Event`]) was delivered. Waits for delivery first; use inside an async test.
///
/// ```
/// # use emissions_testing::{assert_emitted, TestEmissions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let t = TestEmissions::start().await;
/// t.emissions().emit_now("order_created", &serde_json::json!({"qty": 5})).await?;
/// assert_emitted!(t, "order_created");
/// assert_emitted!(t, "order_created", |event| event.payload_json()["qty"] == 5);
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! assert_emitted {
    ($harness:expr, $name:expr $(,)?) => {
        $crate::assert_emitted!($harness, $name, |_| true)
    };
    ($harness:expr, $name:expr, $predicate:expr $(,)?) => {
        match $harness.expect_emitted($name, $predicate).await {
            Ok(event) => event,
            Err(message) => panic!("{}", message),
        }
    };
}

/// Asserts that no event with this name (optionally: matching a predicate) was delivered.
/// Waits for delivery first, so it cannot pass merely because delivery was slow.
///
/// ```
/// # use emissions_testing::{refute_emitted, TestEmissions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let t = TestEmissions::start().await;
/// t.emissions().emit_now("order_created", &serde_json::json!({"qty": 5})).await?;
/// refute_emitted!(t, "order_cancelled");
/// refute_emitted!(t, "order_created", |event| event.payload_json()["qty"] == 6);
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! refute_emitted {
    ($harness:expr, $name:expr $(,)?) => {
        $crate::refute_emitted!($harness, $name, |_| true)
    };
    ($harness:expr, $name:expr, $predicate:expr $(,)?) => {
        if let Err(message) = $harness.expect_not_emitted($name, $predicate).await {
            panic!("{}", message)
        }
    };
}

/// Asserts that events with these names were delivered in this order (others may come between).
///
/// ```
/// # use emissions_testing::{assert_emitted_in_order, TestEmissions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let t = TestEmissions::start().await;
/// let buffer = t.emissions().start();
/// buffer.emit("a", &1)?;
/// buffer.emit("b", &2)?;
/// buffer.emit("c", &3)?;
/// buffer.commit().await?;
/// assert_emitted_in_order!(t, ["a", "c"]);
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! assert_emitted_in_order {
    ($harness:expr, [$($name:expr),+ $(,)?] $(,)?) => {
        if let Err(message) = $harness.expect_in_order(&[$($name),+]).await {
            panic!("{}", message)
        }
    };
}
