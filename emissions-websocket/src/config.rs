//! Configuration: what the feed carries, its limits, and who may see what. Plain data and
//! checks; no I/O.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use emissions_core::envelope::ContentMode;
use emissions_core::{CloudEvents, Event, TopicRouter};

use crate::Error;
use crate::selection::Selection;

#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) client_queue_events: usize,
    pub(crate) client_queue_bytes: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) max_inbound_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) history: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_queue_events: 1024,
            client_queue_bytes: 1024 * 1024,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            max_inbound_bytes: 16 * 1024,
            max_connections: 10_000,
            history: 1024,
        }
    }
}

/// Who is connecting, and what they may see. Implement it for the app's own principal type;
/// [`Public`] is the explicit choice of a feed without users.
///
/// `authenticate` runs before a WebSocket upgrade or an SSE response, with the request's
/// head: it may look up a session or a token asynchronously and use the app's own axum
/// extractors (`Extractor::from_request_parts(parts, &state)`). A refusal is answered with
/// its status (401, 403) and nothing is upgraded. `may_see` is asked for every frame a
/// connection could receive — live, replayed, resumed, after every subscription change — and
/// must be quick (it runs in the fan-out); a panic counts as "no".
///
/// ```
/// use axum::http::request::Parts;
/// use emissions_core::Event;
/// use emissions_websocket::{Authorize, Refusal};
///
/// struct ByUser;
///
/// impl Authorize for ByUser {
///     type Principal = String;
///
///     async fn authenticate(&self, request: &mut Parts) -> Result<String, Refusal> {
///         let user = request.headers.get("x-user").and_then(|v| v.to_str().ok());
///         user.map(str::to_owned).ok_or_else(|| Refusal::unauthorized("log in first"))
///     }
///
///     fn may_see(&self, user: &String, event: &Event) -> bool {
///         event.metadata().get("user_id").and_then(|v| v.as_str()) == Some(user.as_str())
///     }
/// }
///
/// let feed = emissions_websocket::LiveFeed::builder().events(["order_*"]).build(ByUser)?;
/// # let _ = feed;
/// # Ok::<(), emissions_websocket::Error>(())
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// The connection's identity, as the app models it.
    type Principal: Send + Sync + 'static;

    /// Authenticates a request for the feed; `Err` answers it with the refusal.
    fn authenticate(
        &self,
        request: &mut Parts,
    ) -> impl Future<Output = Result<Self::Principal, Refusal>> + Send;

    /// Whether this connection may receive this event.
    fn may_see(&self, principal: &Self::Principal, event: &Event) -> bool;
}

/// A feed without users: every connection may see every event the feed carries. Choosing it
/// is explicit; there is no default authorization.
///
/// ```
/// use emissions_websocket::{LiveFeed, Public};
/// let feed = LiveFeed::builder().events(["status_*"]).build(Public)?;
/// assert_eq!(feed.stats().connected, 0);
/// # Ok::<(), emissions_websocket::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Public;

impl Authorize for Public {
    type Principal = ();

    async fn authenticate(&self, _: &mut Parts) -> Result<(), Refusal> {
        Ok(())
    }

    fn may_see(&self, (): &(), _: &Event) -> bool {
        true
    }
}

/// A refused feed request: its status and a message for the client.
///
/// ```
/// use emissions_websocket::Refusal;
/// assert_eq!(Refusal::unauthorized("log in").status().as_u16(), 401);
/// assert_eq!(Refusal::forbidden("not yours").status().as_u16(), 403);
/// ```
#[derive(Clone, Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    /// 401: not authenticated.
    ///
    /// See [`Refusal`].
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    /// 403: authenticated, not allowed.
    ///
    /// See [`Refusal`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }

    /// Any status (for example 503 from a session store that is down).
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// let busy = emissions_websocket::Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "try later");
    /// assert_eq!(busy.message(), "try later");
    /// ```
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    /// The status it is answered with.
    ///
    /// See [`Refusal`].
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent to the client.
    ///
    /// See [`Refusal::new`].
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, self.message).into_response()
    }
}

/// What a feed carries at all.
#[derive(Clone, Default)]
pub(crate) enum Carried {
    /// Nothing chosen yet: building fails.
    #[default]
    Unset,
    Some(Selection),
    All,
}

/// Builds a [`LiveFeed`](crate::LiveFeed): what it carries (required), limits, origins.
///
/// Defaults: a connection may fall 1 024 frames or 1 MiB behind; an idle connection is pinged
/// every 20 s and closed when its client does not answer within 10 s; inbound messages up to
/// 16 KiB; 10 000
/// connections; a history of the last 1 024 events for resume and replay; any `Origin`.
#[must_use]
#[derive(Clone, Default)]
pub struct FeedBuilder {
    pub(crate) carried: Carried,
    pub(crate) limits: Limits,
    pub(crate) origins: Option<Vec<String>>,
    pub(crate) router: Option<Arc<dyn TopicRouter + Send + Sync>>,
    pub(crate) cloudevents: Option<CloudEvents>,
}

impl std::fmt::Debug for FeedBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedBuilder")
            .field("limits", &self.limits)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

impl FeedBuilder {
    fn selection(&mut self) -> &mut Selection {
        if !matches!(self.carried, Carried::Some(_)) {
            self.carried = Carried::Some(Selection::default());
        }
        match &mut self.carried {
            Carried::Some(selection) => selection,
            _ => unreachable!("set just above"),
        }
    }

    /// Frames carry each event as a structured CloudEvent 1.0 (`{"type":"event","position",
    /// "event":{"specversion":"1.0","id",…}}`) instead of the envelope. Binary mode has no
    /// meaning for a frame and is a configuration error.
    ///
    /// ```
    /// use emissions_core::CloudEvents;
    /// use emissions_websocket::{LiveFeed, Public};
    /// let feed = LiveFeed::builder()
    ///     .all_events()
    ///     .cloudevents(CloudEvents::structured("/live"))
    ///     .build(Public);
    /// assert!(feed.is_ok());
    /// let binary = LiveFeed::builder()
    ///     .all_events()
    ///     .cloudevents(CloudEvents::binary("/live"))
    ///     .build(Public);
    /// assert!(binary.is_err());
    /// ```
    pub fn cloudevents(mut self, cloudevents: CloudEvents) -> Self {
        self.cloudevents = Some(cloudevents);
        self
    }

    /// Carries events with these names (a trailing `*` for a prefix). Nothing else leaves
    /// the process through this feed.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn events<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection()
            .events
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Carries events of these topics (resolved through [`router`](Self::router) for
    /// in-process events; the record's topic for a Kafka source).
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection()
            .topics
            .extend(topics.into_iter().map(Into::into));
        self
    }

    /// Carries every event (each still passes `may_see`). Explicit, never the default.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn all_events(mut self) -> Self {
        self.carried = Carried::All;
        self
    }

    /// Resolves `topics` through a router (in-process events).
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn router(mut self, router: impl TopicRouter + Send + Sync + 'static) -> Self {
        self.router = Some(Arc::new(router));
        self
    }

    /// How far a connection may fall behind: at most `events` frames and `bytes` bytes of
    /// the feed (counted over every frame the feed carries, whether or not it may see them).
    /// A client further behind is cut off (close code 4000); the others never wait for it.
    /// Frames live once, in a ring shared by every connection (`max(history, events)`
    /// frames), so memory does not grow with the number of connections. One commit larger
    /// than the limit puts every connection over it at once: keep the limit above the
    /// largest commit the feed carries. Defaults to 1 024 and 1 MiB.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn client_queue(mut self, events: usize, bytes: usize) -> Self {
        self.limits.client_queue_events = events;
        self.limits.client_queue_bytes = bytes;
        self
    }

    /// WebSocket: ping a connection once it has been idle for `interval` and close (4001) a
    /// client that does not answer a ping within `timeout`, or that takes no bytes of a
    /// write for `interval + timeout` (a connection busy writing is not pinged: its client
    /// proves itself alive by taking its frames); SSE: a keep-alive comment every `interval`.
    /// Defaults to 20 s and 10 s.
    ///
    /// A client answers a ping only after reading what was sent before it, kernel buffers
    /// included (megabytes on a fast link): give `interval + timeout` room for a client to
    /// read that at its slowest.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.limits.ping_interval = interval;
        self.limits.pong_timeout = timeout;
        self
    }

    /// Largest inbound WebSocket message (clients only send control messages); bigger closes
    /// with 1009. Defaults to 16 KiB.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn max_inbound_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_inbound_bytes = bytes;
        self
    }

    /// Most simultaneous connections; more are answered 503. Defaults to 10 000.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.limits.max_connections = connections;
        self
    }

    /// How many recent events, at least, are kept for `since` resume and `replay` (the ring
    /// holds `max(history, client_queue events)`). Defaults to 1 024.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn history(mut self, events: usize) -> Self {
        self.limits.history = events;
        self
    }

    /// Only these `Origin` values may connect; others get 403.
    ///
    /// See [`LiveFeed`](crate::LiveFeed).
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Checks the configuration.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &'static str, reason: &str| Error::Config {
            field,
            reason: reason.to_owned(),
        };
        match &self.carried {
            Carried::Unset => {
                return Err(invalid(
                    "events",
                    "the feed carries nothing: choose events(..), topics(..) or all_events()",
                ));
            }
            Carried::Some(selection) => selection
                .check()
                .map_err(|reason| invalid("events", &reason))?,
            Carried::All => {}
        }
        if let Some(ce) = &self.cloudevents {
            if ce.mode() == ContentMode::Binary {
                return Err(invalid(
                    "cloudevents",
                    "a frame carries the structured form; use CloudEvents::structured",
                ));
            }
            ce.validate("live feed").map_err(|e| match e {
                emissions_core::Error::Config { reason, .. } => invalid("cloudevents", &reason),
                other => invalid("cloudevents", &other.to_string()),
            })?;
        }
        let l = &self.limits;
        let zero = [
            (
                "client_queue",
                l.client_queue_events == 0 || l.client_queue_bytes == 0,
            ),
            (
                "ping",
                l.ping_interval.is_zero() || l.pong_timeout.is_zero(),
            ),
            ("max_inbound_bytes", l.max_inbound_bytes == 0),
            ("max_connections", l.max_connections == 0),
            ("history", l.history == 0),
        ];
        if let Some((field, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(invalid(field, "must be greater than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_must_choose_what_it_carries() {
        let err = FeedBuilder::default().validate().unwrap_err();
        assert!(err.to_string().contains("carries nothing"), "{err}");
        assert!(FeedBuilder::default().events(["a"]).validate().is_ok());
        assert!(FeedBuilder::default().all_events().validate().is_ok());
        let err = FeedBuilder::default()
            .events(["a*b"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`events`"), "{err}");
        let err = FeedBuilder::default()
            .all_events()
            .history(0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`history`"), "{err}");
    }
}
