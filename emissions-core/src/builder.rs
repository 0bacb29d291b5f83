//! [`EmissionsBuilder`]: registers adapters and handlers with their options, validates them,
//! and starts the instance.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::extension::Attached;
use crate::handler::{DISPATCHER, Dispatcher, Handlers};
use crate::ledger::{HandlerBook, LaneBook, Ledger};
use crate::pipeline::consumer::Consumer;
use crate::pipeline::{Control, Lane, Pipeline};
use crate::shutdown::Engine;
use crate::{
    Adapter, AdapterOptions, Emissions, Error, Handler, HandlerOptions, OverflowPolicy, panic,
};

/// An adapter ready to be registered: its name (unique in the instance), the adapter, and its
/// queue options (the builder's [`default_options`](EmissionsBuilder::default_options) when
/// none). What [`IntoAdapter::into_adapter`] returns.
pub struct Registration {
    name: String,
    adapter: Box<dyn Adapter>,
    options: Option<AdapterOptions>,
}

impl Registration {
    /// `adapter` under `name`, with the builder's default options.
    pub fn new(name: impl Into<String>, adapter: impl Adapter) -> Self {
        Registration {
            name: name.into(),
            adapter: Box::new(adapter),
            options: None,
        }
    }

    /// With its own queue options.
    pub fn options(mut self, options: AdapterOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// The adapter's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What [`EmissionsBuilder::adapter`] registers, naming the adapter once: an adapter crate's
/// endpoint (`KafkaEndpoint`, `WebhookEndpoint`, a live feed), which checks its configuration
/// here and fails with its crate's error naming the adapter and the field, or any
/// [`Adapter`] with a name through [`Named`].
pub trait IntoAdapter {
    /// The error of a configuration that does not check out.
    type Error;

    /// Checks the configuration and builds the adapter.
    fn into_adapter(self) -> Result<Registration, Self::Error>;
}

/// A user adapter with its name, and optionally its own queue options: how an [`Adapter`] of
/// your own is registered.
///
/// ```
/// use emissions_core::{async_trait, Adapter, AdapterOptions, BatchError, Emissions, Event, Named};
///
/// struct Audit;
/// #[async_trait]
/// impl Adapter for Audit {
///     async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let emissions = Emissions::builder()
///     .adapter(Named::new("audit", Audit).options(AdapterOptions::default().max_demand(10)))?
///     .start()
///     .await?;
/// # let _ = emissions;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Named<A> {
    name: String,
    adapter: A,
    options: Option<AdapterOptions>,
}

impl<A: Adapter> Named<A> {
    /// `adapter` under `name`.
    pub fn new(name: impl Into<String>, adapter: A) -> Self {
        Named {
            name: name.into(),
            adapter,
            options: None,
        }
    }

    /// With its own queue options instead of the builder's defaults.
    pub fn options(mut self, options: AdapterOptions) -> Self {
        self.options = Some(options);
        self
    }
}

impl<A: Adapter> IntoAdapter for Named<A> {
    /// Names and options are checked when the instance starts (as [`Error::Config`]).
    type Error = std::convert::Infallible;

    fn into_adapter(self) -> Result<Registration, Self::Error> {
        Ok(Registration {
            name: self.name,
            adapter: Box::new(self.adapter),
            options: self.options,
        })
    }
}

/// Registers adapters with their options, then [`start`](Self::start)s the instance.
///
/// ```
/// use emissions_core::{async_trait, Adapter, AdapterOptions, BatchError, Emissions, Event, Named, OverflowPolicy};
///
/// struct Noop;
/// #[async_trait]
/// impl Adapter for Noop {
///     async fn handle_events(&mut self, _: &[Event]) -> Result<(), BatchError> { Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let emissions = Emissions::builder()
///     .default_options(AdapterOptions::default().max_demand(100))
///     .adapter(Named::new("audit", Noop))?
///     .adapter(Named::new("kafka", Noop).options(AdapterOptions::default().overflow(OverflowPolicy::Block)))?
///     .start()
///     .await?;
/// # let _ = emissions;
///
/// let err = Emissions::builder()
///     .adapter(Named::new("kafka", Noop).options(AdapterOptions::default().capacity(0)))?
///     .start()
///     .await
///     .unwrap_err();
/// assert_eq!(err.to_string(), "adapter `kafka`: invalid `capacity`: must be at least 1");
/// # Ok(()) }
/// ```
pub struct EmissionsBuilder {
    extensions: Vec<Attached>,
    adapters: Vec<Registration>,
    defaults: AdapterOptions,
    handlers: Vec<(String, Box<dyn Handler>, HandlerOptions)>,
    handler_queue: AdapterOptions,
    cascade_depth_limit: u32,
}

impl Default for EmissionsBuilder {
    fn default() -> Self {
        EmissionsBuilder {
            extensions: Vec::new(),
            adapters: Vec::new(),
            defaults: AdapterOptions::default(),
            handlers: Vec::new(),
            handler_queue: AdapterOptions::default(),
            cascade_depth_limit: 8,
        }
    }
}

impl fmt::Debug for EmissionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.adapters.iter().map(|r| r.name.as_str()).collect();
        let handlers: Vec<&str> = self.handlers.iter().map(|h| h.0.as_str()).collect();
        f.debug_struct("EmissionsBuilder")
            .field("adapters", &names)
            .field("defaults", &self.defaults)
            .field("handlers", &handlers)
            .field("handler_queue", &self.handler_queue)
            .field("cascade_depth_limit", &self.cascade_depth_limit)
            .finish()
    }
}

impl EmissionsBuilder {
    /// Registers an adapter, named once by what is registered: an adapter crate's endpoint
    /// (checked now; its error names the adapter and the field) or a [`Named`] adapter of your
    /// own. Names must be unique; that, and the options, are checked by
    /// [`start`](Self::start).
    ///
    /// See [`EmissionsBuilder`].
    pub fn adapter<C: IntoAdapter>(mut self, adapter: C) -> Result<Self, C::Error> {
        self.adapters.push(adapter.into_adapter()?);
        Ok(self)
    }

    /// Options for adapters registered with [`adapter`](Self::adapter). Defaults to
    /// [`AdapterOptions::default`].
    ///
    /// See [`EmissionsBuilder`].
    pub fn default_options(mut self, options: AdapterOptions) -> Self {
        self.defaults = options;
        self
    }

    /// Attaches an [`Extension`](crate::Extension) for the instance's whole life (one per
    /// type: [`Emissions::extension`] finds it again).
    ///
    /// See [`Extension`](crate::Extension).
    pub fn extension(mut self, extension: impl crate::Extension) -> Self {
        self.extensions.push(Attached::new(extension));
        self
    }

    /// Registers a handler under a unique name, with the default [`HandlerOptions`].
    ///
    /// See the [handler module](crate::handler).
    pub fn handler(self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.handler_with(name, handler, HandlerOptions::default())
    }

    /// Registers a handler under a unique name, with its own options.
    ///
    /// ```
    /// # use emissions_core::{async_trait, BoxError, Emissions, Event, Handled, Handler, HandlerContext, HandlerOptions};
    /// # struct Audit;
    /// # #[async_trait]
    /// # impl Handler for Audit {
    /// #     fn events(&self) -> &[&str] { &["order_created"] }
    /// #     async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> { Ok(Handled::Done) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// let emissions = Emissions::builder()
    ///     .handler_with("audit", Audit, HandlerOptions::default().concurrency(1))
    ///     .cascade_depth_limit(4)
    ///     .start()
    ///     .await?;
    /// # let _ = emissions;
    /// # Ok(()) }
    /// ```
    pub fn handler_with(
        mut self,
        name: impl Into<String>,
        handler: impl Handler,
        options: HandlerOptions,
    ) -> Self {
        self.handlers
            .push((name.into(), Box::new(handler), options));
        self
    }

    /// Queue options of the handler dispatcher (the adapter named `handlers`). Defaults to
    /// [`AdapterOptions::default`]. [`OverflowPolicy::Block`](crate::OverflowPolicy::Block) is
    /// refused: a handler committing follow-up events into its own full queue would deadlock.
    ///
    /// See [`handler_with`](Self::handler_with).
    pub fn handler_queue(mut self, options: AdapterOptions) -> Self {
        self.handler_queue = options;
        self
    }

    /// The deepest cascade allowed: a follow-up event more than `limit` handler hops from its
    /// root is dropped and reported. Defaults to 8.
    ///
    /// See [`handler_with`](Self::handler_with).
    pub fn cascade_depth_limit(mut self, limit: u32) -> Self {
        self.cascade_depth_limit = limit;
        self
    }

    /// Validates every adapter's options, runs each adapter's `init` in registration order, and
    /// starts one consumer task per adapter. Must run inside a tokio runtime.
    ///
    /// Fails with [`Error::Config`] (naming the adapter and the field) or [`Error::Init`].
    ///
    /// See [`EmissionsBuilder`].
    pub async fn start(mut self) -> Result<Emissions, Error> {
        let mut seen = HashSet::new();
        for (name, _, options) in &self.handlers {
            check_name(name, &mut seen)?;
            options.validate(name)?;
        }
        let handler_list = std::mem::take(&mut self.handlers);
        if !handler_list.is_empty() && self.handler_queue.overflow == OverflowPolicy::Block {
            return Err(Error::config(
                DISPATCHER,
                "overflow",
                "Block can deadlock handlers that emit follow-up events; use DropNewest or DropOldest",
            ));
        }
        let mut registrations = Vec::with_capacity(self.adapters.len() + 1);
        for reg in self.adapters {
            check_name(&reg.name, &mut seen)?;
            let options = reg.options.unwrap_or_else(|| self.defaults.clone());
            options.validate(&reg.name)?;
            registrations.push((reg.name, Some(reg.adapter), options));
        }
        if !handler_list.is_empty() {
            // The dispatcher's adapter is made once the ledger exists (its runs book there).
            check_name(DISPATCHER, &mut seen)?;
            self.handler_queue.validate(DISPATCHER)?;
            registrations.push((DISPATCHER.to_owned(), None, self.handler_queue.clone()));
        }
        for (name, adapter, _) in registrations.iter_mut() {
            let Some(adapter) = adapter else { continue };
            let failure = match panic::contain_async(adapter.init()).await {
                Ok(Ok(())) => continue,
                Ok(Err(source)) => source,
                Err(panic) => format!("init panicked: {panic}").into(),
            };
            return Err(Error::Init {
                adapter: name.clone(),
                source: failure,
            });
        }

        let ledger = Arc::new(Ledger::new(
            registrations
                .iter()
                .map(|(name, _, options)| {
                    LaneBook::new(Arc::from(name.as_str()), options.dead_letter.clone())
                })
                .collect(),
            handler_list
                .iter()
                .map(|(name, _, options)| {
                    HandlerBook::new(Arc::from(name.as_str()), options.dead_letter.clone())
                })
                .collect(),
        ));
        let handlers = (!handler_list.is_empty()).then(|| {
            Arc::new(Handlers::new(
                handler_list,
                self.cascade_depth_limit,
                ledger.clone(),
            ))
        });
        let lanes: Vec<Arc<Lane>> = registrations
            .iter()
            .enumerate()
            .map(|(index, (_, _, options))| Arc::new(Lane::new(index, options)))
            .collect();
        let control = Arc::new(Control::new(lanes.clone()));
        let mut consumers = JoinSet::new();
        let mut consumer_lanes = HashMap::new();
        for ((_, adapter, options), lane) in registrations.into_iter().zip(&lanes) {
            let adapter: Box<dyn Adapter> = match adapter {
                Some(adapter) => adapter,
                None => Box::new(Dispatcher::new(
                    handlers.clone().expect("handlers registered"),
                )),
            };
            let consumer = Consumer::new(
                lane.clone(),
                adapter,
                options,
                ledger.clone(),
                control.clone(),
            );
            let handle = consumers.spawn(consumer.run());
            consumer_lanes.insert(handle.id(), lane.index());
        }
        let pipeline = Pipeline::new(ledger, lanes);
        let engine = Arc::new(Engine::new(
            pipeline,
            handlers.clone(),
            control,
            consumers,
            consumer_lanes,
            self.extensions,
        ));
        let emissions = Emissions::from_engine(engine);
        if let Some(handlers) = &handlers {
            handlers.bind(emissions.downgrade());
        }
        for attached in emissions.extensions() {
            let extension = &attached.extension;
            if let Err(panic) = panic::contain(|| extension.started(&emissions)) {
                tracing::error!(target: "emissions", panic, "an extension panicked when the instance started");
            }
        }
        Ok(emissions)
    }
}

fn check_name(name: &str, seen: &mut HashSet<String>) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::config(name, "name", "must not be empty"));
    }
    if !seen.insert(name.to_owned()) {
        return Err(Error::config(
            name,
            "name",
            "is registered twice; give each adapter and handler a unique name",
        ));
    }
    Ok(())
}
