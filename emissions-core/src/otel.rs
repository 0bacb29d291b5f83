//! OpenTelemetry (feature `opentelemetry`): metrics for the telemetry events, and W3C trace
//! context carried by events.
//!
//! # Metrics
//!
//! [`record_metrics`] attaches an observer that records every telemetry event through an
//! OpenTelemetry [`Meter`] the application provides (it chooses the exporter):
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `emissions.buffer.started` | counter (buffers) | — |
//! | `emissions.buffer.committed` | counter (events) | — |
//! | `emissions.buffer.terminated` | counter (buffers) | `reason` |
//! | `emissions.event.dropped` | counter (events) | `event_name`, `reason`, `adapter` or `handler` |
//! | `emissions.adapter.success` | histogram (s) | `adapter` |
//! | `emissions.adapter.error` | histogram (s) | `adapter` |
//! | `emissions.handler.success` | histogram (s) | `handler`, `event` |
//! | `emissions.handler.error` | histogram (s) | `handler`, `event` |
//! | `emissions.handler.ignored` | counter (runs) | `handler`, `event` |
//!
//! Error reasons are left out of the attributes: they are free text and would explode
//! cardinality (they are in the `tracing` events and observer calls).
//!
//! # Trace context
//!
//! When an event is created, the current OpenTelemetry context ([`Context::current`]) is written
//! into its metadata as W3C [`TRACEPARENT`] (and [`TRACESTATE`] when not empty), unless the
//! metadata already has a `traceparent`. Adapters forward it (Kafka headers, HTTP headers).
//! Handlers run inside a span (`handle <event name>`, kind consumer, from the global tracer
//! provider) whose parent is the emitting span, so follow-up events continue the same trace.
//!
//! With `tracing-opentelemetry`, the OpenTelemetry context lives in the `tracing` span: attach
//! it (`Span::current().context().attach()`) around the code that emits.
//!
//! # Example
//!
//! ```
//! use opentelemetry::global;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), emissions_core::Error> {
//! let emissions = emissions_core::Emissions::builder().start().await?;
//! emissions_core::otel::record_metrics(&emissions, &global::meter("emissions"));
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::str::FromStr;

use opentelemetry::context::FutureExt as _;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{Context, KeyValue, global};

use crate::telemetry::{ObserverId, TelemetryEvent, keys, names};
use crate::{Emissions, Event, Metadata};

/// Metadata key of the W3C `traceparent` captured at emit time.
pub const TRACEPARENT: &str = "traceparent";
/// Metadata key of the W3C `tracestate` captured at emit time.
pub const TRACESTATE: &str = "tracestate";

struct Instruments {
    buffer_started: Counter<u64>,
    buffer_committed: Counter<u64>,
    buffer_terminated: Counter<u64>,
    event_dropped: Counter<u64>,
    adapter_success: Histogram<f64>,
    adapter_error: Histogram<f64>,
    handler_success: Histogram<f64>,
    handler_error: Histogram<f64>,
    handler_ignored: Counter<u64>,
}

fn counter(meter: &Meter, name: &'static str, unit: &'static str) -> Counter<u64> {
    meter.u64_counter(name).with_unit(unit).build()
}

fn histogram(meter: &Meter, name: &'static str) -> Histogram<f64> {
    meter.f64_histogram(name).with_unit("s").build()
}

/// Records every telemetry event of `emissions` through `meter`; returns the observer's id (for
/// [`Emissions::detach_observer`]).
///
/// See the [module docs](crate::otel).
pub fn record_metrics(emissions: &Emissions, meter: &Meter) -> ObserverId {
    let instruments = Instruments {
        buffer_started: counter(meter, names::BUFFER_STARTED, "{buffer}"),
        buffer_committed: counter(meter, names::BUFFER_COMMITTED, "{event}"),
        buffer_terminated: counter(meter, names::BUFFER_TERMINATED, "{buffer}"),
        event_dropped: counter(meter, names::EVENT_DROPPED, "{event}"),
        adapter_success: histogram(meter, names::ADAPTER_SUCCESS),
        adapter_error: histogram(meter, names::ADAPTER_ERROR),
        handler_success: histogram(meter, names::HANDLER_SUCCESS),
        handler_error: histogram(meter, names::HANDLER_ERROR),
        handler_ignored: counter(meter, names::HANDLER_IGNORED, "{run}"),
    };
    emissions.attach_observer(move |event| instruments.record(event))
}

fn kv(key: &'static str, value: &str) -> KeyValue {
    KeyValue::new(key, value.to_owned())
}

impl Instruments {
    fn record(&self, event: &TelemetryEvent<'_>) {
        match *event {
            TelemetryEvent::BufferStarted => self.buffer_started.add(1, &[]),
            TelemetryEvent::BufferCommitted { event_count } => {
                self.buffer_committed.add(event_count as u64, &[])
            }
            TelemetryEvent::BufferTerminated { reason, .. } => self
                .buffer_terminated
                .add(1, &[kv(keys::REASON, reason.as_str())]),
            TelemetryEvent::EventDropped {
                event_name,
                reason,
                adapter,
                handler,
            } => {
                let mut attributes = vec![
                    kv(keys::EVENT_NAME, event_name),
                    kv(keys::REASON, reason.as_str()),
                ];
                attributes.extend(adapter.map(|a| kv(keys::ADAPTER, a)));
                attributes.extend(handler.map(|h| kv(keys::HANDLER, h)));
                self.event_dropped.add(1, &attributes);
            }
            TelemetryEvent::AdapterSuccess {
                adapter, duration, ..
            } => self
                .adapter_success
                .record(duration.as_secs_f64(), &[kv(keys::ADAPTER, adapter)]),
            TelemetryEvent::AdapterError {
                adapter, duration, ..
            } => self
                .adapter_error
                .record(duration.as_secs_f64(), &[kv(keys::ADAPTER, adapter)]),
            TelemetryEvent::HandlerSuccess {
                handler,
                event,
                duration,
            } => self.handler_success.record(
                duration.as_secs_f64(),
                &[kv(keys::HANDLER, handler), kv(keys::EVENT, event)],
            ),
            TelemetryEvent::HandlerError {
                handler,
                event,
                duration,
                ..
            } => self.handler_error.record(
                duration.as_secs_f64(),
                &[kv(keys::HANDLER, handler), kv(keys::EVENT, event)],
            ),
            TelemetryEvent::HandlerIgnored { handler, event } => self
                .handler_ignored
                .add(1, &[kv(keys::HANDLER, handler), kv(keys::EVENT, event)]),
        }
    }
}

/// Writes the current context's span as `traceparent`/`tracestate`, unless one is present.
pub(crate) fn capture_current(metadata: &mut Metadata) {
    if metadata.contains_key(TRACEPARENT) {
        return;
    }
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    metadata.insert(
        TRACEPARENT.to_owned(),
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
        .into(),
    );
    let state = sc.trace_state().header();
    if !state.is_empty() {
        metadata.insert(TRACESTATE.to_owned(), state.into());
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The remote span context an event carries, if its `traceparent` is valid W3C.
pub(crate) fn remote_context(metadata: &Metadata) -> Option<SpanContext> {
    let header = metadata.get(TRACEPARENT)?.as_str()?;
    let mut parts = header.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four parts; later versions may append fields.
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = metadata
        .get(TRACESTATE)
        .and_then(|v| v.as_str())
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    sc.is_valid().then_some(sc)
}

/// The span a handler run executes in.
pub(crate) struct HandlerSpan {
    cx: Context,
}

impl HandlerSpan {
    pub(crate) fn start(event: &Event, handler: &str, attempt: u32) -> Self {
        let parent = match remote_context(event.metadata()) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::current(),
        };
        let tracer = global::tracer("emissions");
        let span = tracer
            .span_builder(Cow::Owned(format!("handle {}", event.name())))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("emissions.handler", handler.to_owned()),
                KeyValue::new("emissions.event", event.name().to_owned()),
                KeyValue::new("emissions.event_id", event.id().to_string()),
                KeyValue::new("emissions.attempt", i64::from(attempt)),
            ])
            .start_with_context(&tracer, &parent);
        HandlerSpan {
            cx: parent.with_span(span),
        }
    }

    pub(crate) fn wrap<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        future.with_context(self.cx.clone())
    }

    pub(crate) fn finish(self, error: Option<&str>) {
        let span = self.cx.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(traceparent: &str) -> Metadata {
        let mut m = Metadata::new();
        m.insert(TRACEPARENT.into(), json!(traceparent));
        m
    }

    #[test]
    fn parses_valid_traceparent() {
        let sc = remote_context(&meta(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
    }

    #[test]
    fn rejects_malformed_traceparent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(remote_context(&meta(bad)).is_none(), "{bad:?}");
        }
    }
}
