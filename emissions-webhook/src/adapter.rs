//! [`WebhookAdapter`]: wires the envelope, the signature and the HTTP client into the core's
//! adapter contract.

use std::fmt;
use std::time::{Duration, SystemTime};

use emissions_core::{
    Adapter, AdapterOptions, BatchError, CloudEvents, Event, Failure, async_trait,
};
use futures_util::StreamExt;
use http::HeaderMap;

use crate::Error;
use crate::config::Filter;
use crate::request_builder::{body, headers};
use crate::service::{Attempt, Outcome};
use crate::signature::{Secret, unix_seconds};

pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) concurrency: usize,
    pub(crate) max_payload: usize,
    pub(crate) max_response_body: usize,
    pub(crate) retry_after_cap: Duration,
}

/// Delivers events to one webhook endpoint. Built by
/// [`WebhookEndpoint::build`](crate::WebhookEndpoint::build); see the [crate docs](crate) for
/// the delivery policy. Registering the endpoint itself (`.adapter(endpoint)?`) builds it too.
///
/// ```
/// let adapter = emissions_webhook::WebhookEndpoint::new("billing", "https://billing.example.com/hooks")
///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///     .build()?;
/// assert_eq!(adapter.name(), "billing");
/// // Retried per event on the default schedule: eight attempts over about a day.
/// assert_eq!(adapter.adapter_options().retry.attempts(), 8);
/// # Ok::<(), emissions_webhook::Error>(())
/// ```
pub struct WebhookAdapter {
    name: String,
    url: reqwest::Url,
    secrets: Vec<Secret>,
    filter: Filter,
    headers: HeaderMap,
    cloudevents: Option<CloudEvents>,
    client: reqwest::Client,
    limits: Limits,
    options: AdapterOptions,
    /// Set by a 410 Gone: later events fail at once.
    disabled: bool,
}

impl fmt::Debug for WebhookAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAdapter")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl WebhookAdapter {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        url: reqwest::Url,
        secrets: Vec<Secret>,
        filter: Filter,
        headers: HeaderMap,
        cloudevents: Option<CloudEvents>,
        client: reqwest::Client,
        limits: Limits,
        options: AdapterOptions,
    ) -> Self {
        WebhookAdapter {
            name,
            url,
            secrets,
            filter,
            headers,
            cloudevents,
            client,
            limits,
            options,
            disabled: false,
        }
    }

    /// The endpoint's name (its adapter name).
    ///
    /// See [`WebhookEndpoint`](crate::WebhookEndpoint).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The core options to register this adapter with (queue, retry policy, dead-letter hook).
    ///
    /// See [`WebhookEndpoint`](crate::WebhookEndpoint).
    pub fn adapter_options(&self) -> AdapterOptions {
        self.options.clone()
    }

    async fn deliver(&self, event: &Event) -> Outcome {
        if self.disabled {
            return Outcome::Permanent(Failure::permanent(Error::Disabled));
        }
        let body = body(event, self.cloudevents.as_ref());
        if body.len() > self.limits.max_payload {
            return Outcome::Permanent(Failure::permanent(Error::PayloadTooLarge {
                size: body.len(),
                limit: self.limits.max_payload,
            }));
        }
        let timestamp = unix_seconds(SystemTime::now());
        Attempt {
            endpoint: &self.name,
            client: &self.client,
            url: &self.url,
            headers: headers(
                event,
                &body,
                timestamp,
                &self.secrets,
                &self.headers,
                self.cloudevents.as_ref(),
            ),
            body,
            timeout: self.limits.timeout,
            max_response_body: self.limits.max_response_body,
            retry_after_cap: self.limits.retry_after_cap,
        }
        .send(event)
        .await
    }

    /// Up to `concurrency` requests at once, a new one starting as soon as any finishes (a
    /// slow request does not hold the free slots back); outcomes in batch order.
    async fn deliver_concurrently(&self, events: &[Event]) -> Vec<Outcome> {
        let attempts: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(index, event)| async move { (index, self.deliver(event).await) })
            .collect();
        let mut outcomes: Vec<(usize, Outcome)> = futures_util::stream::iter(attempts)
            .buffer_unordered(self.limits.concurrency)
            .collect()
            .await;
        outcomes.sort_unstable_by_key(|(index, _)| *index);
        outcomes.into_iter().map(|(_, outcome)| outcome).collect()
    }
}

#[async_trait]
impl Adapter for WebhookAdapter {
    fn interested(&self, event: &Event) -> bool {
        self.filter.wants(event)
    }

    /// Every event of the batch is sent (one request each) and answered on its own: a failed
    /// one is reported for the core to retry beside the queue, and never holds back the
    /// others. The body is built per attempt from the event (nothing is kept between calls).
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let outcomes = if self.limits.concurrency == 1 {
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let outcome = self.deliver(event).await;
                if matches!(outcome, Outcome::Gone(_)) {
                    self.disable();
                }
                outcomes.push(outcome);
            }
            outcomes
        } else {
            let outcomes = self.deliver_concurrently(events).await;
            if outcomes.iter().any(|o| matches!(o, Outcome::Gone(_))) {
                self.disable();
            }
            outcomes
        };
        let failures: Vec<(usize, Failure)> = outcomes
            .into_iter()
            .enumerate()
            .filter_map(|(index, outcome)| match outcome {
                Outcome::Delivered => None,
                Outcome::Retry(failure) | Outcome::Permanent(failure) | Outcome::Gone(failure) => {
                    Some((index, failure))
                }
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BatchError::partial(failures))
        }
    }
}

impl WebhookAdapter {
    fn disable(&mut self) {
        if !self.disabled {
            tracing::error!(
                target: "emissions::webhook",
                endpoint = %self.name,
                url = %self.url,
                "receiver answered 410 Gone; endpoint disabled, later events fail at once"
            );
        }
        self.disabled = true;
    }
}
