//! Endpoint configuration: plain data with documented defaults, checked by `build`.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use emissions_core::{
    AdapterOptions, CloudEvents, DeadLetter, Event, IntoAdapter, Registration, RetryPolicy,
    TopicRouter,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::Error;
use crate::adapter::WebhookAdapter;
use crate::signature::Secret;
use crate::ssrf::{self, AddressPolicy, GuardedResolver};

/// The default retry schedule (as Svix): after the first attempt, 5 s, 5 min, 30 min, 2 h, 5 h,
/// 10 h and 10 h — eight attempts over about 27.5 hours. Each delay is jittered into
/// `[delay / 2, delay]`.
///
/// ```
/// assert_eq!(emissions_webhook::default_retry_schedule().attempts(), 8);
/// ```
pub fn default_retry_schedule() -> RetryPolicy {
    RetryPolicy::schedule([5, 300, 1800, 7200, 18_000, 36_000, 36_000].map(Duration::from_secs))
}

/// Which events an endpoint receives.
#[derive(Clone)]
pub(crate) enum Filter {
    All,
    Events(HashSet<String>),
    Topics(Arc<dyn TopicRouter + Send + Sync>, HashSet<String>),
}

impl Filter {
    pub(crate) fn wants(&self, event: &Event) -> bool {
        match self {
            Filter::All => true,
            Filter::Events(names) => names.contains(event.name()),
            Filter::Topics(router, topics) => router
                .topic_for_event(event.name())
                .is_some_and(|topic| topics.contains(topic)),
        }
    }
}

/// One webhook endpoint: where, how signed, which events, and how patiently.
///
/// Defaults: every event; connect timeout 5 s; request timeout 15 s; one request at a time;
/// unordered under retries (a failed event is retried beside the queue; see
/// [`ordered_by`](Self::ordered_by)); retries on
/// [`default_retry_schedule`]; `Retry-After` honoured up to 1 hour; payloads up to 1 MiB;
/// response bodies read up to 64 KiB; the SSRF guard on ([`AddressPolicy::default`]); the core's
/// queue defaults (capacity 10 000, `max_demand` 50, drop newest).
///
/// ```
/// use std::time::Duration;
/// use emissions_core::Emissions;
/// use emissions_webhook::WebhookEndpoint;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let billing = WebhookEndpoint::new("billing", "https://billing.example.com/hooks")
///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///     .events(["order_created", "order_refunded"])
///     .header("x-tenant", "acme")
///     .timeout(Duration::from_secs(10));
/// let emissions = Emissions::builder().adapter(billing)?.start().await?;
/// # let _ = emissions;
///
/// let err = WebhookEndpoint::new("crm", "ftp://crm.example.com").secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").build().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "webhook endpoint `crm`: invalid `url`: scheme `ftp` is not supported; use http or https"
/// );
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct WebhookEndpoint {
    pub(crate) name: String,
    url: String,
    secrets: Vec<String>,
    pub(crate) filter: Filter,
    headers: Vec<(String, String)>,
    cloudevents: Option<CloudEvents>,
    connect_timeout: Duration,
    timeout: Duration,
    concurrency: usize,
    retry_after_cap: Duration,
    max_payload: usize,
    max_response_body: usize,
    address_policy: AddressPolicy,
    client: Option<reqwest::Client>,
    proxy: Option<String>,
    pub(crate) queue: AdapterOptions,
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secrets", &self.secrets.len())
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl WebhookEndpoint {
    /// An endpoint named `name` (its adapter name) at `url`.
    ///
    /// See [`WebhookEndpoint`].
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        WebhookEndpoint {
            name: name.into(),
            url: url.into(),
            secrets: Vec::new(),
            filter: Filter::All,
            headers: Vec::new(),
            cloudevents: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            concurrency: 1,
            retry_after_cap: Duration::from_secs(3600),
            max_payload: 1024 * 1024,
            max_response_body: 64 * 1024,
            address_policy: AddressPolicy::default(),
            client: None,
            proxy: None,
            queue: AdapterOptions::default().retry(default_retry_schedule()),
        }
    }

    /// Adds a signing secret (`whsec_…`). With several, every request carries one signature per
    /// secret, for rotation. At least one is required.
    ///
    /// See [`WebhookEndpoint`].
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secrets.push(secret.into());
        self
    }

    /// Sends only events with these names.
    ///
    /// See [`WebhookEndpoint`].
    pub fn events<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.filter = Filter::Events(names.into_iter().map(Into::into).collect());
        self
    }

    /// Sends only events that `router` maps to one of `topics`.
    ///
    /// ```
    /// emissions_core::topic_router! {
    ///     pub struct Topics { "orders" => ["order_created"], "users" => ["user_created"] }
    /// }
    /// let e = emissions_webhook::WebhookEndpoint::new("o", "https://o.example.com")
    ///     .topics(Topics, ["orders"]);
    /// # let _ = e;
    /// ```
    pub fn topics<R, I, S>(mut self, router: R, topics: I) -> Self
    where
        R: TopicRouter + Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.filter = Filter::Topics(
            Arc::new(router),
            topics.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Adds a static header to every request (not `content-type` or `webhook-*`).
    ///
    /// See [`WebhookEndpoint`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends events as CloudEvents 1.0 (HTTP protocol binding). **Structured** mode — the
    /// one to choose when signing, as every endpoint does — POSTs the whole event as
    /// `application/cloudevents+json`, so the Standard Webhooks signature covers every
    /// attribute; `webhook-id` equals the CloudEvents `id`. **Binary** mode POSTs the payload
    /// as emitted with the attributes in percent-encoded `ce-*` headers, which the signature
    /// does not cover — one header per metadata entry that becomes an attribute, so keep
    /// binary mode for small metadata (receivers cap the number and size of headers, hyper at
    /// 100). See [`CloudEvents`] for how metadata maps to attributes.
    ///
    /// ```
    /// use emissions_core::CloudEvents;
    /// let hook = emissions_webhook::WebhookEndpoint::new("crm", "https://crm.example.com/events")
    ///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ///     .cloudevents(CloudEvents::structured("https://shop.example.com/orders"));
    /// assert!(hook.build().is_ok());
    /// ```
    pub fn cloudevents(mut self, cloudevents: CloudEvents) -> Self {
        self.cloudevents = Some(cloudevents);
        self
    }

    /// Sends through `client` instead of one built for this endpoint: to share one connection
    /// pool among many endpoints (one per tenant, say), or for a TLS setup of your own. The
    /// client's own redirect, proxy and resolver settings then apply, so the SSRF guard checks
    /// only literal-IP URLs — give the client a resolver that refuses internal addresses, or
    /// an egress proxy that does. The endpoint's [`timeout`](Self::timeout) still bounds
    /// every request.
    ///
    /// ```
    /// let shared = reqwest::Client::builder().proxy(reqwest::Proxy::all("http://10.0.0.5:4750")?).build()?;
    /// let hook = emissions_webhook::WebhookEndpoint::new("acme", "https://acme.example.com/hooks")
    ///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ///     .client(shared.clone());
    /// assert!(hook.build().is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Sends every request through an egress proxy (`http://smokescreen.internal:4750`),
    /// which then decides which destinations are reachable: host names are resolved by the
    /// proxy, not checked here (literal-IP URLs still are), and the proxy's own address may be
    /// internal. Not with [`client`](Self::client) (set the proxy on that client).
    ///
    /// ```
    /// let hook = emissions_webhook::WebhookEndpoint::new("acme", "https://acme.example.com/hooks")
    ///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    ///     .proxy("http://10.0.0.5:4750");
    /// assert!(hook.build().is_ok());
    /// ```
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Limit on establishing the connection. Defaults to 5 s.
    ///
    /// See [`WebhookEndpoint`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit on a whole request, response included. Defaults to 15 s.
    ///
    /// See [`WebhookEndpoint`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Requests in flight at once. Defaults to 1, which keeps commit order; more lets events
    /// of a batch overtake one another (and a retried event stop holding back later ones).
    ///
    /// ```
    /// let e = emissions_webhook::WebhookEndpoint::new("fast", "https://x.example.com").concurrency(8);
    /// # let _ = e;
    /// ```
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests;
        self
    }

    /// The retry policy. Defaults to [`default_retry_schedule`].
    ///
    /// ```
    /// use emissions_core::RetryPolicy;
    /// let e = emissions_webhook::WebhookEndpoint::new("x", "https://x.example.com")
    ///     .retry(RetryPolicy::default().max_attempts(3));
    /// # let _ = e;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.queue = self.queue.retry(policy);
        self
    }

    /// The longest `Retry-After` honoured. Defaults to 1 hour.
    ///
    /// See [`WebhookEndpoint`].
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Largest body sent; larger events fail at once with [`Error::PayloadTooLarge`]. Defaults
    /// to 1 MiB.
    ///
    /// See [`WebhookEndpoint`].
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Which addresses may be connected to. Defaults to refusing internal addresses.
    ///
    /// ```
    /// use emissions_webhook::{AddressPolicy, WebhookEndpoint};
    /// let local = WebhookEndpoint::new("dev", "http://127.0.0.1:9000/hooks")
    ///     .address_policy(AddressPolicy::default().allow("127.0.0.1/32".parse().unwrap()));
    /// # let _ = local;
    /// ```
    pub fn address_policy(mut self, policy: AddressPolicy) -> Self {
        self.address_policy = policy;
        self
    }

    /// The core queue options (capacity, `max_demand`, overflow). The retry policy set with
    /// [`retry`](Self::retry) and the dead-letter hook set with [`dead_letter`](Self::dead_letter)
    /// are kept.
    ///
    /// ```
    /// use emissions_core::AdapterOptions;
    /// let e = emissions_webhook::WebhookEndpoint::new("x", "https://x.example.com")
    ///     .queue(AdapterOptions::default().capacity(1_000).max_demand(20));
    /// # let _ = e;
    /// ```
    pub fn queue(mut self, options: AdapterOptions) -> Self {
        self.queue = self.queue.with_queue_of(options);
        self
    }

    /// Keeps the events of one key in commit order at this endpoint, under retries: at most
    /// one event of a key is in flight, and a retrying event holds back only the later events
    /// of its key (they are not sent, and not charged an attempt, until it is delivered or
    /// given up on); other keys flow. Defaults to unordered.
    ///
    /// ```
    /// let e = emissions_webhook::WebhookEndpoint::new("x", "https://x.example.com")
    ///     .ordered_by(|event| event.payload_json()["order_id"].as_u64().map(|id| id.to_string()));
    /// # let _ = e;
    /// ```
    pub fn ordered_by(
        mut self,
        key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.queue = self.queue.ordered_by(key);
        self
    }

    /// Receives events given up on, with the last status or error.
    ///
    /// ```
    /// let e = emissions_webhook::WebhookEndpoint::new("x", "https://x.example.com")
    ///     .dead_letter(|dead| eprintln!("{}: {}", dead.destination, dead.failure));
    /// # let _ = e;
    /// ```
    pub fn dead_letter(mut self, hook: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        self.queue = self.queue.dead_letter(hook);
        self
    }

    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> Error {
        Error::Config {
            endpoint: self.name.clone(),
            field,
            reason: reason.into(),
        }
    }

    /// Checks the configuration and builds the adapter; errors name the endpoint and field.
    ///
    /// See [`WebhookEndpoint`].
    pub fn build(self) -> Result<WebhookAdapter, Error> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("name", "must not be empty"));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| self.invalid("url", format!("`{}` is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.invalid(
                "url",
                format!(
                    "scheme `{}` is not supported; use http or https",
                    url.scheme()
                ),
            ));
        }
        if url.host().is_none() {
            return Err(self.invalid("url", "has no host"));
        }
        ssrf::check_literal(&self.address_policy, &url)
            .map_err(|e| self.invalid("url", e.to_string()))?;
        if self.secrets.is_empty() {
            return Err(self.invalid(
                "secrets",
                "at least one signing secret (whsec_…) is required",
            ));
        }
        let secrets = self
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Secret::parse(s)
                    .map_err(|e| self.invalid("secrets", format!("secret #{}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.invalid("headers", format!("`{name}` is not a header name")))?;
            // With CloudEvents on, a `ce-` header is an attribute (binary mode) or makes a
            // receiver read the request as binary mode (structured): the adapter's own.
            let cloudevent_attribute =
                self.cloudevents.is_some() && header.as_str().starts_with("ce-");
            if header == http::header::CONTENT_TYPE
                || header.as_str().starts_with("webhook-")
                || cloudevent_attribute
            {
                return Err(self.invalid("headers", format!("`{name}` is set by the adapter")));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                self.invalid(
                    "headers",
                    format!("value of `{name}` is not a header value"),
                )
            })?;
            headers.append(header, value);
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(self.invalid("timeout", "timeouts must be longer than zero"));
        }
        if self.connect_timeout > self.timeout {
            return Err(self.invalid("connect_timeout", "must not exceed timeout"));
        }
        if self.concurrency == 0 {
            return Err(self.invalid("concurrency", "must be at least 1"));
        }
        if self.max_payload == 0 {
            return Err(self.invalid("max_payload_bytes", "must be at least 1"));
        }
        let core = |e| match e {
            emissions_core::Error::Config { field, reason, .. } => self.invalid(field, reason),
            other => self.invalid("queue", other.to_string()),
        };
        if let Some(ce) = &self.cloudevents {
            ce.validate(&self.name).map_err(core)?;
        }
        self.queue.validate(&self.name).map_err(core)?;
        let client = match (&self.client, &self.proxy) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "proxy",
                    "a client of your own carries its proxy; set it on that client",
                ));
            }
            (Some(client), None) => client.clone(),
            (None, proxy) => {
                let builder = reqwest::Client::builder()
                    .connect_timeout(self.connect_timeout)
                    .timeout(self.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("emissions-webhook/", env!("CARGO_PKG_VERSION")));
                let builder = match proxy {
                    Some(proxy) => builder.proxy(
                        reqwest::Proxy::all(proxy.as_str())
                            .map_err(|e| self.invalid("proxy", format!("`{proxy}`: {e}")))?,
                    ),
                    None => builder
                        .no_proxy()
                        .dns_resolver(Arc::new(GuardedResolver::new(
                            self.address_policy.clone(),
                            // Within the connect timeout, so that it, not the timeout, answers.
                            (self.connect_timeout / 2).min(Duration::from_secs(3)),
                        ))),
                };
                builder
                    .build()
                    .map_err(|e| self.invalid("client", e.to_string()))?
            }
        };
        Ok(WebhookAdapter::new(
            self.name,
            url,
            secrets,
            self.filter,
            headers,
            self.cloudevents,
            client,
            crate::adapter::Limits {
                timeout: self.timeout,
                concurrency: self.concurrency,
                max_payload: self.max_payload,
                max_response_body: self.max_response_body,
                retry_after_cap: self.retry_after_cap,
            },
            self.queue,
        ))
    }
}

/// Registers the endpoint with [`EmissionsBuilder::adapter`](emissions_core::EmissionsBuilder::adapter)
/// under its name, with its queue and retry options; its configuration is checked there
/// ([`WebhookEndpoint::build`]).
impl IntoAdapter for WebhookEndpoint {
    type Error = Error;

    fn into_adapter(self) -> Result<Registration, Error> {
        let adapter = self.build()?;
        let options = adapter.adapter_options();
        Ok(Registration::new(adapter.name().to_owned(), adapter).options(options))
    }
}
