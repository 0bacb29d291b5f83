//! Per-request buffering for HTTP services: a tower [`Layer`] (feature `tower`).
//!
//! # Lifecycle
//!
//! For each request, [`EmissionsLayer`] opens a [`Buffer`], makes it the ambient buffer while the
//! inner service handles the request (so [`emit`](crate::emit) works anywhere in the handler),
//! and also puts it in the request's extensions (axum: `Extension<Buffer>`). Then:
//!
//! - a response with a **2xx or 3xx** status commits the buffer;
//! - a **4xx or 5xx** response, or an **error** from the inner service, terminates it;
//! - a **panic** in the handler, or the request's future being **dropped** (client gone,
//!   timeout), discards it and reports `emissions.buffer.terminated` with reason `drop`.
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

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Buffer, Emissions};

/// Opens, scopes and commits (or discards) a buffer per request. See the
/// [module docs](crate::layer).
#[derive(Clone, Debug)]
pub struct EmissionsLayer {
    emissions: Emissions,
}

impl EmissionsLayer {
    /// A layer that opens buffers on `emissions`.
    ///
    /// See the [module docs](crate::layer).
    pub fn new(emissions: Emissions) -> Self {
        EmissionsLayer { emissions }
    }
}

impl<S> Layer<S> for EmissionsLayer {
    type Service = EmissionsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EmissionsService {
            inner,
            emissions: self.emissions.clone(),
        }
    }
}

/// The service produced by [`EmissionsLayer`].
#[derive(Clone, Debug)]
pub struct EmissionsService<S> {
    inner: S,
    emissions: Emissions,
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
        Box::pin(async move {
            let result = buffer.scope(response).await;
            let success = result.as_ref().is_ok_and(|response| {
                let status = response.status();
                status.is_success() || status.is_redirection()
            });
            finish(&buffer, success).await;
            result
        })
    }
}

async fn finish(buffer: &Buffer, success: bool) {
    if success {
        if let Err(err) = buffer.commit().await {
            tracing::warn!(target: "emissions", error = %err, "request succeeded but its events were not committed");
        }
    } else if let Err(err) = buffer.terminate() {
        // The handler closed the buffer itself (committed or terminated explicitly).
        tracing::debug!(target: "emissions", error = %err, "buffer already closed by the handler");
    }
}
