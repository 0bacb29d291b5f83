//! Per-request buffering for HTTP services: a tower [`Layer`] (feature `tower`).
//!
//! # Lifecycle
//!
//! For each request, [`EmissionsLayer`] opens a [`Buffer`], makes it the ambient buffer while the
//! inner service handles the request (so [`emit`](crate::emit) works anywhere in the handler),
//! and also puts it in the request's extensions — with the `axum` feature a handler takes it
//! as an extractor (`buffer: Buffer`), rejected with a 500 that says so when the layer is
//! missing. Then the response decides ([`Decision`]); by default ([`default_decision`]):
//!
//! - a [`CommitEvents`] or [`DiscardEvents`] marker the handler put in the response's
//!   extensions decides first — after its database transaction committed, a handler marks
//!   the response so that its events go out even if something later turns it into a 5xx;
//! - a **2xx or 3xx** status commits the buffer; a **4xx or 5xx** terminates it;
//! - a **1xx** (a `101 Switching Protocols` WebSocket upgrade) is neutral: the buffer is left
//!   to the upgraded connection if it holds it (to commit later), and otherwise committed with
//!   what the handler emitted before the upgrade — never counted as terminated;
//! - an **error** from the inner service terminates it;
//! - a **panic** in the handler, or the request's future being **dropped** (client gone,
//!   timeout), discards it and reports `emissions.buffer.terminated` with reason `drop`.
//!
//! [`EmissionsLayer::classify`] replaces the default with a function of the status and the
//! response's extensions.
//!
//! The commit happens before the response is returned, so a client that sees a 2xx knows its
//! events are committed. With the default overflow policy a commit never waits for adapters.
//!
//! # Errors
//!
//! A commit that fails because the instance is shutting down is logged (`tracing`, target
//! `emissions`) and the response is returned unchanged; the discarded events are reported as
//! the buffer is dropped.
//!
//! Task-locals do not follow `tokio::spawn`: hand the buffer from the extensions (or
//! [`current_buffer`](crate::current_buffer)) to a task you spawn.
//!
//! # Example
//!
//! ```no_run
//! use axum::{routing::post, Router};
//! use emissions_core::{layer::EmissionsLayer, Emissions};
//!
//! async fn create_order() -> Result<&'static str, axum::http::StatusCode> {
//!     emissions_core::emit("order_created", &serde_json::json!({"id": 1}))
//!         .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
//!     Ok("created")
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let emissions = Emissions::builder().start().await?;
//!     let app = Router::new()
//!         .route("/orders", post(create_order))
//!         .layer(EmissionsLayer::new(emissions));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Extensions, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Buffer, Emissions};

/// What a response does with its request's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Commit the events.
    Commit,
    /// Discard them (`emissions.buffer.terminated`).
    Discard,
    /// Leave the buffer to whoever else holds it (an upgraded connection that commits it
    /// later); held by nobody else, it is committed — the request did what it did before it
    /// switched protocols — so a WebSocket upgrade is never counted as a terminated buffer.
    Leave,
}

/// A response extension that commits the request's events whatever the status: set it once
/// what the events describe is durable (the database transaction committed).
///
/// ```
/// use emissions_core::layer::{default_decision, CommitEvents, Decision};
/// let mut extensions = http::Extensions::new();
/// extensions.insert(CommitEvents);
/// assert_eq!(default_decision(http::StatusCode::BAD_GATEWAY, &extensions), Decision::Commit);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitEvents;

/// A response extension that discards the request's events whatever the status.
///
/// ```
/// use emissions_core::layer::{default_decision, Decision, DiscardEvents};
/// let mut extensions = http::Extensions::new();
/// extensions.insert(DiscardEvents);
/// assert_eq!(default_decision(http::StatusCode::OK, &extensions), Decision::Discard);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardEvents;

/// The default decision: a [`CommitEvents`] or [`DiscardEvents`] marker first, then 1xx leaves
/// the buffer, 2xx/3xx commit, 4xx/5xx discard.
///
/// ```
/// use emissions_core::layer::{default_decision, Decision};
/// use http::StatusCode;
/// let none = http::Extensions::new();
/// assert_eq!(default_decision(StatusCode::CREATED, &none), Decision::Commit);
/// assert_eq!(default_decision(StatusCode::SEE_OTHER, &none), Decision::Commit);
/// assert_eq!(default_decision(StatusCode::SWITCHING_PROTOCOLS, &none), Decision::Leave);
/// assert_eq!(default_decision(StatusCode::CONFLICT, &none), Decision::Discard);
/// ```
pub fn default_decision(status: StatusCode, extensions: &Extensions) -> Decision {
    if extensions.get::<CommitEvents>().is_some() {
        Decision::Commit
    } else if extensions.get::<DiscardEvents>().is_some() {
        Decision::Discard
    } else if status.is_informational() {
        Decision::Leave
    } else if status.is_success() || status.is_redirection() {
        Decision::Commit
    } else {
        Decision::Discard
    }
}

type Classifier = Arc<dyn Fn(StatusCode, &Extensions) -> Decision + Send + Sync>;

/// Opens, scopes and commits (or discards) a buffer per request. See the
/// [module docs](crate::layer).
#[derive(Clone)]
pub struct EmissionsLayer {
    emissions: Emissions,
    classify: Classifier,
}

impl fmt::Debug for EmissionsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmissionsLayer")
            .field("emissions", &self.emissions)
            .finish_non_exhaustive()
    }
}

impl EmissionsLayer {
    /// A layer that opens buffers on `emissions` and decides by [`default_decision`].
    ///
    /// See the [module docs](crate::layer).
    pub fn new(emissions: Emissions) -> Self {
        EmissionsLayer {
            emissions,
            classify: Arc::new(default_decision),
        }
    }

    /// Decides by `classify` instead: a function of the response's status and extensions.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), emissions_core::Error> {
    /// # let emissions = emissions_core::Emissions::builder().start().await?;
    /// use emissions_core::layer::{default_decision, Decision, EmissionsLayer};
    /// // Also commit on 409 Conflict (an idempotent replay that already succeeded).
    /// let layer = EmissionsLayer::new(emissions).classify(|status, extensions| {
    ///     if status == http::StatusCode::CONFLICT {
    ///         Decision::Commit
    ///     } else {
    ///         default_decision(status, extensions)
    ///     }
    /// });
    /// # let _ = layer;
    /// # Ok(()) }
    /// ```
    pub fn classify(
        mut self,
        classify: impl Fn(StatusCode, &Extensions) -> Decision + Send + Sync + 'static,
    ) -> Self {
        self.classify = Arc::new(classify);
        self
    }
}

impl<S> Layer<S> for EmissionsLayer {
    type Service = EmissionsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EmissionsService {
            inner,
            emissions: self.emissions.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service produced by [`EmissionsLayer`].
#[derive(Clone)]
pub struct EmissionsService<S> {
    inner: S,
    emissions: Emissions,
    classify: Classifier,
}

impl<S: fmt::Debug> fmt::Debug for EmissionsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmissionsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EmissionsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let buffer = self.emissions.start();
        request.extensions_mut().insert(buffer.clone());
        // The inner service's synchronous `call` (where a `service_fn` may already emit) sees
        // the buffer too, not only the future it returns.
        let inner = &mut self.inner;
        let response = crate::ambient::sync_scope_buffer(buffer.clone(), || inner.call(request));
        let classify = self.classify.clone();
        Box::pin(async move {
            let result = buffer.scope(response).await;
            let decision = match &result {
                Ok(response) => {
                    let classify = || classify(response.status(), response.extensions());
                    // A classifier that panics decides nothing it should not: the events go.
                    crate::panic::contain(classify).unwrap_or_else(|panic| {
                        tracing::error!(target: "emissions", panic, "the layer's classifier panicked; the request's events are discarded");
                        Decision::Discard
                    })
                }
                Err(_) => Decision::Discard,
            };
            finish(&buffer, decision).await;
            result
        })
    }
}

async fn finish(buffer: &Buffer, decision: Decision) {
    match decision {
        Decision::Commit => {
            if let Err(err) = buffer.commit().await {
                tracing::warn!(target: "emissions", error = %err, "request succeeded but its events were not committed");
            }
        }
        Decision::Discard => {
            if let Err(err) = buffer.terminate() {
                // The handler closed the buffer itself (committed or terminated explicitly).
                tracing::debug!(target: "emissions", error = %err, "buffer already closed by the handler");
            }
        }
        Decision::Leave => {
            // Held by the upgraded connection: its to commit. Held by nobody else: commit.
            if !buffer.is_shared()
                && let Err(err) = buffer.commit().await
            {
                tracing::debug!(target: "emissions", error = %err, "buffer left after an upgrade was not committed");
            }
        }
    }
}

/// The request's buffer as an axum extractor (feature `axum`): `async fn h(buffer: Buffer)`.
/// Without [`EmissionsLayer`] on the route it is rejected with [`MissingBuffer`].
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for Buffer {
    type Rejection = MissingBuffer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Buffer>()
            .cloned()
            .ok_or(MissingBuffer)
    }
}

/// The rejection of the [`Buffer`] extractor on a route without [`EmissionsLayer`]: a 500
/// whose body says so (a configuration mistake of the service, not the client's).
///
/// ```
/// use axum_core::response::IntoResponse;
/// let response = emissions_core::layer::MissingBuffer.into_response();
/// assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
/// ```
#[cfg(feature = "axum")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingBuffer;

#[cfg(feature = "axum")]
impl fmt::Display for MissingBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no emissions buffer on this request: add EmissionsLayer to the router")
    }
}

#[cfg(feature = "axum")]
impl std::error::Error for MissingBuffer {}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for MissingBuffer {
    fn into_response(self) -> axum_core::response::Response {
        tracing::error!(target: "emissions", "{self}");
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}
