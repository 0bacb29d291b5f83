//! The feed: building it, serving a request (axum handler, or the standalone listener through
//! the same handler), statistics and shutdown.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use emissions_core::{Event, TopicRouter};
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::Error;
use crate::adapter::FeedAdapter;
use crate::config::{Authorize, Carried, FeedBuilder, Public};
use crate::hub::{FeedStats, Hub, Visible};
use crate::service::{self, FeedRequest, Joining, Transport};
use crate::socket;

/// A WebSocket connection's read buffer: clients send only small control messages.
const READ_BUFFER: usize = 4 * 1024;

/// A live feed of committed events for browsers and other clients, over WebSocket and
/// Server-Sent Events, with every frame authorized. Cheap to clone.
///
/// Build it with what it carries and who may see what, mount [`handler`](Self::handler) in
/// the app's axum router, and register its [`adapter`](Self::adapter) (events of this
/// instance) — or build it on a Kafka source (every instance's events; feature `kafka`).
///
/// ```
/// use axum::Router;
/// use emissions_core::Emissions;
/// use emissions_websocket::{LiveFeed, Public};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let feed = LiveFeed::builder().events(["order_*"]).build(Public)?;
/// let emissions = Emissions::builder().adapter(emissions_core::Named::new("live", feed.adapter()?))?.start().await?;
/// let app: Router = Router::new().route("/live", feed.handler());
/// // axum::serve(listener, app).await?;
/// # let _ = (app, emissions);
/// # Ok(()) }
/// ```
pub struct LiveFeed<A: Authorize = Public> {
    inner: Arc<Inner<A>>,
}

struct Inner<A> {
    hub: Arc<Hub>,
    auth: Arc<A>,
    origins: Option<Vec<String>>,
    /// What the adapter or the Kafka source carries.
    pub(crate) carried: Carried,
    pub(crate) router: Option<Arc<dyn TopicRouter + Send + Sync>>,
    adapter_taken: AtomicBool,
    from_kafka: bool,
}

impl<A: Authorize> Clone for LiveFeed<A> {
    fn clone(&self) -> Self {
        LiveFeed {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Authorize> std::fmt::Debug for LiveFeed<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFeed")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl LiveFeed {
    /// Starts building a feed. See [`LiveFeed`].
    pub fn builder() -> FeedBuilder {
        FeedBuilder::default()
    }
}

impl FeedBuilder {
    /// Checks the configuration and builds the feed, with `auth` deciding who connects and
    /// what each connection may see ([`Public`] for a feed without users).
    ///
    /// See [`LiveFeed`].
    pub fn build<A: Authorize>(self, auth: A) -> Result<LiveFeed<A>, Error> {
        self.validate()?;
        let epoch = uuid::Uuid::now_v7().simple().to_string();
        Ok(self.into_feed(auth, epoch, vec![0], false))
    }

    pub(crate) fn into_feed<A: Authorize>(
        self,
        auth: A,
        epoch: String,
        starts: Vec<u64>,
        from_kafka: bool,
    ) -> LiveFeed<A> {
        LiveFeed {
            inner: Arc::new(Inner {
                hub: Arc::new(Hub::new(self.limits, self.cloudevents, epoch, starts)),
                auth: Arc::new(auth),
                origins: self.origins,
                carried: self.carried,
                router: self.router,
                adapter_taken: AtomicBool::new(false),
                from_kafka,
            }),
        }
    }
}

impl<A: Authorize> LiveFeed<A> {
    #[cfg(feature = "kafka")]
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    #[cfg(feature = "kafka")]
    pub(crate) fn carried(&self) -> &Carried {
        &self.inner.carried
    }

    /// The adapter that publishes this instance's committed events to the feed; register it
    /// with the engine. Its shutdown drains the feed (see [`shutdown`](Self::shutdown)). One
    /// per feed; a feed on a Kafka source has none (its events come from Kafka).
    ///
    /// See [`LiveFeed`].
    pub fn adapter(&self) -> Result<FeedAdapter, Error> {
        if self.inner.from_kafka {
            return Err(Error::Config {
                field: "adapter",
                reason: "this feed reads its events from Kafka; register the Kafka adapter instead"
                    .into(),
            });
        }
        if self.inner.adapter_taken.swap(true, Ordering::AcqRel) {
            return Err(Error::Config {
                field: "adapter",
                reason: "a feed has one adapter, and it was already taken".into(),
            });
        }
        Ok(FeedAdapter::new(
            self.inner.hub.clone(),
            self.inner.carried.clone(),
            self.inner.router.clone(),
        ))
    }

    /// An axum handler for the app's router (`.route("/live", feed.handler())`): it
    /// authenticates with [`Authorize::authenticate`], reads the [`FeedRequest`] and
    /// [`serve`](Self::serve)s it.
    ///
    /// See [`LiveFeed`].
    pub fn handler<S: Clone + Send + Sync + 'static>(&self) -> MethodRouter<S> {
        let feed = self.clone();
        axum::routing::get(move |request: axum::extract::Request| {
            let feed = feed.clone();
            async move { feed.authenticate_and_serve(request).await }
        })
    }

    async fn authenticate_and_serve(&self, request: axum::extract::Request) -> Response {
        let (mut parts, _body) = request.into_parts();
        let authenticating = AssertUnwindSafe(self.inner.auth.authenticate(&mut parts));
        let principal = match authenticating.catch_unwind().await {
            Ok(Ok(principal)) => principal,
            Ok(Err(refusal)) => {
                self.inner.hub.rejected(refusal.message());
                return refusal.into_response();
            }
            Err(_) => {
                self.inner.hub.rejected("authenticate panicked");
                tracing::error!(target: "emissions::websocket", "the feed's authenticate panicked; the request is refused");
                return (StatusCode::INTERNAL_SERVER_ERROR, "authentication failed")
                    .into_response();
            }
        };
        match FeedRequest::from_request_parts(&mut parts, &()).await {
            Ok(request) => self.serve(request, principal),
            Err(response) => {
                self.inner.hub.rejected("malformed feed request");
                response
            }
        }
    }

    /// Serves a feed request for an authenticated principal: a WebSocket upgrade or an SSE
    /// response. For handlers of the app's own, where its extractors authenticate:
    ///
    /// ```
    /// use axum::extract::State;
    /// use axum::response::Response;
    /// use emissions_websocket::{FeedRequest, LiveFeed, Public};
    ///
    /// async fn live(State(feed): State<LiveFeed<Public>>, request: FeedRequest) -> Response {
    ///     feed.serve(request, ())
    /// }
    /// let feed = LiveFeed::builder().events(["order_*"]).build(Public)?;
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/live", axum::routing::get(live))
    ///     .with_state(feed);
    /// # let _ = app;
    /// # Ok::<(), emissions_websocket::Error>(())
    /// ```
    pub fn serve(&self, request: FeedRequest, principal: A::Principal) -> Response {
        let hub = &self.inner.hub;
        let refuse = |status: StatusCode, why: &'static str| {
            hub.rejected(why);
            (status, why).into_response()
        };
        if hub.is_shutting_down() {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        if let Some(origins) = &self.inner.origins {
            let allowed = request
                .origin
                .as_deref()
                .is_some_and(|o| origins.iter().any(|allowed| allowed == o));
            if !allowed {
                return refuse(StatusCode::FORBIDDEN, "origin not allowed");
            }
        }
        let Some(slot) = hub.slot() else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        };
        let auth = self.inner.auth.clone();
        let visible: Visible = Arc::new(move |event: &Event| auth.may_see(&principal, event));
        let FeedRequest {
            transport,
            subscription,
            start,
            ..
        } = request;
        let joining = Joining {
            slot,
            visible,
            subscription,
            start,
        };
        match transport {
            Transport::WebSocket(upgrade) => {
                let failed = hub.clone();
                let hub = hub.clone();
                let limit = hub.limits.max_inbound_bytes;
                // tungstenite zeroes the whole read buffer (128 KiB by default) on every
                // read attempt, and a connection reads whenever it is idle.
                let config = socket::config(limit, READ_BUFFER);
                upgrade.respond(
                    config,
                    move |err| failed.rejected(&err.to_string()),
                    move |mut socket| async move {
                        match joining.register(&hub).await {
                            Some(registration) => {
                                service::websocket(socket, hub, registration).await;
                            }
                            None => {
                                let close = CloseFrame {
                                    code: 1001.into(),
                                    reason: Utf8Bytes::from_static("server shutting down"),
                                };
                                let _ = socket::close(&mut socket, close).await;
                            }
                        }
                    },
                )
            }
            Transport::Sse => Sse::new(service::sse(hub.clone(), joining))
                .keep_alive(KeepAlive::new().interval(hub.limits.ping_interval))
                .into_response(),
        }
    }

    /// Serves the feed on a port of its own (at `/`), through the same handler — for apps
    /// that want the feed apart from their router. Accept errors back off (axum's server).
    /// Returns the bound address; the listener stops at [`shutdown`](Self::shutdown).
    ///
    /// ```
    /// use emissions_websocket::{LiveFeed, Public};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let feed = LiveFeed::builder().all_events().build(Public)?;
    /// let address = feed.listen("127.0.0.1:0").await?;
    /// println!("ws://{address}/ or curl -N -H 'Accept: text/event-stream' http://{address}/");
    /// feed.shutdown(std::time::Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    pub async fn listen(&self, address: &str) -> Result<SocketAddr, Error> {
        let bind = |source| Error::Bind {
            address: address.to_owned(),
            source,
        };
        let listener = TcpListener::bind(address).await.map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let app = axum::Router::new().route("/", self.handler());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(target: "emissions::websocket", %err, "the feed's listener stopped");
            }
        });
        self.inner.hub.own_task(task);
        Ok(local)
    }

    /// Connection and frame counts so far.
    ///
    /// See [`FeedStats`].
    pub fn stats(&self) -> FeedStats {
        self.inner.hub.stats()
    }

    /// Stops taking connections; each connection gets what was queued for it, then a 1001
    /// close (SSE: the end of the response); at the deadline the rest are cut off and their
    /// unsent frames counted in [`FeedStats::dropped_frames`]. Returns when every
    /// connection has ended or been counted; a connection still reading what its client
    /// sends after the close (so that the close is not lost to a reset) stops at the
    /// deadline. Safe to call again, or after a cancelled call; the adapter's shutdown
    /// calls it with the engine's deadline.
    ///
    /// See [`LiveFeed::listen`].
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner
            .hub
            .shutdown(tokio::time::Instant::now() + timeout)
            .await;
    }
}
