//! [`Tenants`]: webhook endpoints added, changed and removed while the service runs — one per
//! customer, each with its own URL, secrets, event selection, queue, retries and counts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use emissions_core::{
    Adapter, AdapterReport, BatchError, BoxError, Emissions, Event, IntoAdapter, OverflowPolicy,
    Registration, async_trait,
};

use crate::Error;
use crate::config::{Filter, WebhookEndpoint};

/// One tenant's endpoint: an instance of its own with the endpoint as its one adapter.
#[derive(Clone)]
struct Tenant {
    filter: Filter,
    emissions: Emissions,
}

struct Inner {
    name: String,
    tenants: RwLock<HashMap<String, Tenant>>,
    /// Reports of the tenants removed so far (and of all of them after shutdown).
    ended: RwLock<Vec<AdapterReport>>,
    /// Set by the adapter's shutdown: no endpoint is added after it.
    closed: std::sync::atomic::AtomicBool,
}

/// Webhook endpoints managed at runtime, for a service that sends each customer's events to
/// that customer's URL: [`add`](Self::add) one when a customer configures a webhook,
/// [`replace`](Self::replace) it when they change it, [`remove`](Self::remove) it when they
/// delete it. Registered once, as one adapter, with
/// [`EmissionsBuilder::adapter`](emissions_core::EmissionsBuilder::adapter).
///
/// Each endpoint runs as an instance of its own (its own queue, consumer, retries on its
/// schedule, dead letters and counts), so a slow or failing customer never holds up another.
/// The registered adapter hands each committed event to every endpoint whose selection wants
/// it ([`WebhookEndpoint::events`], [`WebhookEndpoint::topics`]), with the same id, time and
/// payload; its own counts are those hand-overs (an event no endpoint wants is counted
/// filtered). What each endpoint did with them is its [`AdapterReport`]:
/// [`stats`](Self::stats) while it runs, and [`remove`](Self::remove)'s answer — after which
/// every event it was handed is in a counted state: delivered, failed, or dropped when the
/// drain time ran out. At shutdown every endpoint is drained within the deadline; any event
/// that was not delivered is named in the adapter's `shutdown_error`, and
/// [`ended`](Self::ended) has every endpoint's report; adding one after that fails.
///
/// ```
/// use std::time::Duration;
/// use emissions_core::Emissions;
/// use emissions_webhook::{Tenants, WebhookEndpoint};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tenants = Tenants::new("customer-webhooks");
/// let emissions = Emissions::builder().adapter(&tenants)?.start().await?;
///
/// // Later, while serving: a customer configures a webhook …
/// tenants
///     .add(WebhookEndpoint::new("acme", "https://hooks.acme.example/orders")
///         .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///         .events(["order_created"]))
///     .await?;
/// assert_eq!(tenants.names(), ["acme"]);
/// // … and deletes it: what was queued for it ends counted.
/// let report = tenants.remove("acme", Duration::from_secs(5)).await.unwrap();
/// assert!(report.counts.is_balanced());
/// # emissions.shutdown(Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tenants {
    inner: Arc<Inner>,
}

impl fmt::Debug for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenants")
            .field("name", &self.inner.name)
            .field("endpoints", &self.names())
            .finish()
    }
}

impl Tenants {
    /// No endpoints yet; `name` is the adapter's name.
    pub fn new(name: impl Into<String>) -> Self {
        Tenants {
            inner: Arc::new(Inner {
                name: name.into(),
                tenants: RwLock::new(HashMap::new()),
                ended: RwLock::new(Vec::new()),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The endpoint's own instance.
    async fn start(&self, endpoint: WebhookEndpoint) -> Result<Tenant, Error> {
        if self.is_closed() {
            return Err(shut_down());
        }
        if endpoint.queue.overflow == OverflowPolicy::Block {
            return Err(Error::Config {
                endpoint: endpoint.name.clone(),
                field: "overflow",
                reason: "one endpoint's full queue would hold up the others: use DropNewest or DropOldest".into(),
            });
        }
        let filter = endpoint.filter.clone();
        let emissions = Emissions::builder()
            .adapter(endpoint)?
            .start()
            .await
            .map_err(|e| Error::Start(Box::new(e)))?;
        Ok(Tenant { filter, emissions })
    }

    fn tenants(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Tenant>> {
        self.inner.tenants.read().unwrap_or_else(|e| e.into_inner())
    }

    fn tenants_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Tenant>> {
        self.inner
            .tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `endpoint` (errors name it and the field, as [`WebhookEndpoint::build`]) and
    /// starts sending it the events committed from now on. [`Error::Config`] with field
    /// `name` if an endpoint of that name exists.
    pub async fn add(&self, endpoint: WebhookEndpoint) -> Result<(), Error> {
        let name = endpoint.name.clone();
        if self.tenants().contains_key(&name) {
            return Err(Error::Config {
                endpoint: name,
                field: "name",
                reason: "an endpoint of that name exists; replace it instead".into(),
            });
        }
        let tenant = self.start(endpoint).await?;
        // Checked again: another `add` of the same name, or the shutdown, may have come first.
        let Err((tenant, closed)) = self.insert_replacing(name.clone(), tenant, false) else {
            return Ok(());
        };
        tenant.emissions.shutdown(Duration::ZERO).await;
        Err(if closed {
            shut_down()
        } else {
            Error::Config {
                endpoint: name,
                field: "name",
                reason: "an endpoint of that name exists; replace it instead".into(),
            }
        })
    }

    /// Puts `tenant` in — in place of one of that name only if `replace` — unless the
    /// instance shut down. `Ok` with the one replaced; refused, the tenant back and whether
    /// the instance shut down.
    fn insert_replacing(
        &self,
        name: String,
        tenant: Tenant,
        replace: bool,
    ) -> Result<Option<Tenant>, (Tenant, bool)> {
        let mut tenants = self.tenants_mut();
        if self.is_closed() {
            return Err((tenant, true));
        }
        if !replace && tenants.contains_key(&name) {
            return Err((tenant, false));
        }
        Ok(tenants.insert(name, tenant))
    }

    /// Replaces the endpoint of `endpoint`'s name (new URL, secrets, selection…): events
    /// committed from now on go to the new one, and the old one drains what it was handed
    /// within `drain`, then ends; its report is returned (`None` if there was none, in which
    /// case this is an [`add`](Self::add)).
    pub async fn replace(
        &self,
        endpoint: WebhookEndpoint,
        drain: Duration,
    ) -> Result<Option<AdapterReport>, Error> {
        let name = endpoint.name.clone();
        let tenant = self.start(endpoint).await?;
        match self.insert_replacing(name, tenant, true) {
            Ok(Some(old)) => Ok(Some(self.end(old, drain).await)),
            Ok(None) => Ok(None),
            Err((tenant, _)) => {
                tenant.emissions.shutdown(Duration::ZERO).await;
                Err(shut_down())
            }
        }
    }

    /// Stops sending to the endpoint `name`: it gets no event committed from now on, drains
    /// what it was handed within `drain`, and ends; its report says how each of those events
    /// ended (delivered, failed, or dropped when `drain` ran out). `None` if there is no such
    /// endpoint.
    pub async fn remove(&self, name: &str, drain: Duration) -> Option<AdapterReport> {
        let tenant = self.tenants_mut().remove(name)?;
        Some(self.end(tenant, drain).await)
    }

    /// Shuts the tenant's instance down within `drain` and keeps its report. On a task of its
    /// own, so that a caller that stops waiting (a timeout around `remove`) does not stop it:
    /// the report still lands in [`ended`](Self::ended).
    async fn end(&self, tenant: Tenant, drain: Duration) -> AdapterReport {
        let ended = self.inner.clone();
        let task = tokio::spawn(async move {
            let report = tenant.emissions.shutdown(drain).await;
            let report = report
                .adapters
                .into_iter()
                .next()
                .expect("a tenant instance has its endpoint as its one adapter");
            ended
                .ended
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(report.clone());
            report
        });
        match task.await {
            Ok(report) => report,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    /// The endpoints' names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tenants().keys().cloned().collect();
        names.sort();
        names
    }

    /// The counts of endpoint `name` so far.
    pub fn stats(&self, name: &str) -> Option<AdapterReport> {
        let emissions = self.tenants().get(name)?.emissions.clone();
        emissions.stats().adapters.into_iter().next()
    }

    /// The reports of the endpoints that ended: removed or replaced, and after the instance's
    /// shutdown all of them.
    pub fn ended(&self) -> Vec<AdapterReport> {
        self.inner
            .ended
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What adding to the endpoints of a shut-down instance fails with.
fn shut_down() -> Error {
    Error::Start(Box::new(emissions_core::Error::ShutDown))
}

/// Registers the endpoints as one adapter under the name given to [`Tenants::new`].
impl IntoAdapter for &Tenants {
    type Error = std::convert::Infallible;

    fn into_adapter(self) -> Result<Registration, Self::Error> {
        Ok(Registration::new(
            self.inner.name.clone(),
            TenantsAdapter {
                tenants: self.clone(),
            },
        ))
    }
}

struct TenantsAdapter {
    tenants: Tenants,
}

#[async_trait]
impl Adapter for TenantsAdapter {
    fn interested(&self, event: &Event) -> bool {
        self.tenants
            .tenants()
            .values()
            .any(|tenant| tenant.filter.wants(event))
    }

    /// Hands each endpoint the events it wants, in one commit per endpoint; never waits for
    /// a slow endpoint (each has its own queue). An endpoint removed meanwhile gets nothing.
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let tenants: Vec<(String, Tenant)> = self
            .tenants
            .tenants()
            .iter()
            .map(|(name, tenant)| (name.clone(), tenant.clone()))
            .collect();
        for (name, tenant) in tenants {
            let wanted: Vec<Event> = events
                .iter()
                .filter(|e| tenant.filter.wants(e))
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            if let Err(err) = tenant.emissions.forward(wanted).await {
                // Removed (shut down) between the snapshot and now: the endpoint is gone, so
                // these events are no longer meant for it.
                tracing::debug!(target: "emissions::webhook", endpoint = %name, error = %err, "endpoint removed while handing events over");
            }
        }
        Ok(())
    }

    /// Drains every endpoint within the deadline; names each one that did not deliver
    /// everything it was handed.
    async fn shutdown(&mut self, deadline: tokio::time::Instant) -> Result<(), BoxError> {
        let all: Vec<Tenant> = {
            let mut tenants = self.tenants.tenants_mut();
            self.tenants
                .inner
                .closed
                .store(true, std::sync::atomic::Ordering::Release);
            tenants.drain().collect::<Vec<_>>()
        }
        .into_iter()
        .map(|(_, tenant)| tenant)
        .collect();
        // Four fifths of what is left, so that the endpoints' own ends (their reports) fit
        // within the instance's deadline.
        let drain = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .mul_f64(0.8);
        let reports = futures_util::future::join_all(
            all.into_iter()
                .map(|tenant| self.tenants.end(tenant, drain)),
        )
        .await;
        let short: Vec<String> = reports
            .iter()
            .filter(|r| r.counts.delivered + r.counts.filtered < r.counts.committed)
            .map(|r| {
                format!(
                    "{}: {} failed, {} dropped",
                    r.name, r.counts.failed, r.counts.dropped
                )
            })
            .collect();
        if short.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "endpoints that did not deliver everything: {}",
                short.join("; ")
            )
            .into())
        }
    }
}
