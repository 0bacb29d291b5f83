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
//! | `emissions.buffer.started` | counter (`{buffer}`) | — |
//! | `emissions.buffer.committed` | counter (`{event}`) | — |
//! | `emissions.buffer.terminated` | counter (`{buffer}`) | `reason` |
//! | `emissions.event.dropped` | counter (`{event}`) | `reason`, `adapter` or `handler`; `event_name` only with [`MetricsOptions::event_name`] |
//! | `emissions.adapter.duration` | histogram (s): one `handle_events` call | `adapter`, `outcome` (`success`, `error`) |
//! | `emissions.adapter.latency` | histogram (s): commit → delivered, per event | `adapter` |
//! | `emissions.adapter.queued` | gauge (`{event}`): in the queue | `adapter` |
//! | `emissions.adapter.in_flight` | gauge (`{event}`): in `handle_events` now | `adapter` |
//! | `emissions.adapter.waiting` | gauge (`{event}`): waiting for a retry or behind their key | `adapter` |
//! | `emissions.adapter.oldest_pending_age` | gauge (s): the oldest unfinished event's age (0 when none) | `adapter` |
//! | `emissions.handler.duration` | histogram (s): one run | `handler`, `event`, `outcome` (`success`, `error`) |
//! | `emissions.handler.ignored` | counter (`{run}`) | `handler`, `event` |
//!
//! What to page on: `oldest_pending_age` (lag: an adapter that stopped delivering grows it
//! steadily), `queued + waiting` (backlog), and `event.dropped` (loss, by reason).
//!
//! Error reasons and (by default) event names are left out of the attributes: reasons are free
//! text and names can be dynamic, either would explode cardinality (both are in the `tracing`
//! events and observer calls).
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
    adapter_duration: Histogram<f64>,
    adapter_latency: Histogram<f64>,
    handler_duration: Histogram<f64>,
    handler_ignored: Counter<u64>,
    options: MetricsOptions,
}

/// Choices for [`record_metrics_with`].
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct MetricsOptions {
    event_name: bool,
}

impl MetricsOptions {
    /// Adds `event_name` to `emissions.event.dropped`: fine when event names are a fixed set,
    /// not when they are made from data (each name is a time series). Off by default.
    ///
    /// ```
    /// let options = emissions_core::otel::MetricsOptions::default().event_name(true);
    /// # let _ = options;
    /// ```
    pub fn event_name(mut self, on: bool) -> Self {
        self.event_name = on;
        self
    }
}

fn counter(meter: &Meter, name: &'static str, unit: &'static str) -> Counter<u64> {
    meter.u64_counter(name).with_unit(unit).build()
}

/// Bucket bounds in seconds, from a millisecond to ten minutes (the SDK's default bounds are
/// made for milliseconds).
const SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 600.0,
];

fn histogram(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS.to_vec())
        .build()
}

/// Records every telemetry event of `emissions` through `meter`, and observes each adapter's
/// backlog as gauges; returns the observer's id (for [`Emissions::detach_observer`]).
///
/// See the [module docs](crate::otel).
pub fn record_metrics(emissions: &Emissions, meter: &Meter) -> ObserverId {
    record_metrics_with(emissions, meter, MetricsOptions::default())
}

/// [`record_metrics`] with [`MetricsOptions`].
///
/// ```
/// use emissions_core::otel::{record_metrics_with, MetricsOptions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), emissions_core::Error> {
/// let emissions = emissions_core::Emissions::builder().start().await?;
/// let meter = opentelemetry::global::meter("emissions");
/// record_metrics_with(&emissions, &meter, MetricsOptions::default().event_name(true));
/// # Ok(()) }
/// ```
pub fn record_metrics_with(
    emissions: &Emissions,
    meter: &Meter,
    options: MetricsOptions,
) -> ObserverId {
    let instruments = Instruments {
        buffer_started: counter(meter, names::BUFFER_STARTED, "{buffer}"),
        buffer_committed: counter(meter, names::BUFFER_COMMITTED, "{event}"),
        buffer_terminated: counter(meter, names::BUFFER_TERMINATED, "{buffer}"),
        event_dropped: counter(meter, names::EVENT_DROPPED, "{event}"),
        adapter_duration: histogram(
            meter,
            "emissions.adapter.duration",
            "One handle_events call",
        ),
        adapter_latency: histogram(
            meter,
            "emissions.adapter.latency",
            "Commit to delivered, per event",
        ),
        handler_duration: histogram(meter, "emissions.handler.duration", "One handler run"),
        handler_ignored: counter(meter, names::HANDLER_IGNORED, "{run}"),
        options,
    };
    observe_backlog(emissions, meter);
    emissions.attach_observer(move |event| instruments.record(event))
}

/// The backlog gauges, read from [`Emissions::backlog`] at each collection (holding the
/// instance weakly: a dropped instance reports nothing).
fn observe_backlog(emissions: &Emissions, meter: &Meter) {
    type Read = fn(&crate::AdapterBacklog) -> u64;
    let gauges: [(&'static str, &'static str, Read); 3] = [
        ("emissions.adapter.queued", "Events in the queue", |b| {
            b.queued as u64
        }),
        (
            "emissions.adapter.in_flight",
            "Events in handle_events now",
            |b| b.in_flight as u64,
        ),
        (
            "emissions.adapter.waiting",
            "Events waiting for a retry or behind their key",
            |b| b.waiting as u64,
        ),
    ];
    for (name, description, read) in gauges {
        let weak = emissions.downgrade();
        meter
            .u64_observable_gauge(name)
            .with_unit("{event}")
            .with_description(description)
            .with_callback(move |observer| {
                if let Some(emissions) = weak.upgrade() {
                    for backlog in emissions.backlog() {
                        observer.observe(read(&backlog), &[kv(keys::ADAPTER, &backlog.name)]);
                    }
                }
            })
            .build();
    }
    let weak = emissions.downgrade();
    meter
        .f64_observable_gauge("emissions.adapter.oldest_pending_age")
        .with_unit("s")
        .with_description("Age of the oldest event not yet finished (0 when none)")
        .with_callback(move |observer| {
            if let Some(emissions) = weak.upgrade() {
                for backlog in emissions.backlog() {
                    let age = backlog.oldest_pending.unwrap_or_default().as_secs_f64();
                    observer.observe(age, &[kv(keys::ADAPTER, &backlog.name)]);
                }
            }
        })
        .build();
}

fn kv(key: &'static str, value: &str) -> KeyValue {
    KeyValue::new(key, value.to_owned())
}

const OUTCOME: &str = "outcome";

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
                let mut attributes = vec![kv(keys::REASON, reason.as_str())];
                if self.options.event_name {
                    attributes.push(kv(keys::EVENT_NAME, event_name));
                }
                attributes.extend(adapter.map(|a| kv(keys::ADAPTER, a)));
                attributes.extend(handler.map(|h| kv(keys::HANDLER, h)));
                self.event_dropped.add(1, &attributes);
            }
            TelemetryEvent::AdapterSuccess {
                adapter,
                duration,
                commit_ages,
                ..
            } => {
                self.adapter_duration.record(
                    duration.as_secs_f64(),
                    &[kv(keys::ADAPTER, adapter), kv(OUTCOME, "success")],
                );
                let attributes = [kv(keys::ADAPTER, adapter)];
                for &(age, events) in commit_ages {
                    for _ in 0..events {
                        self.adapter_latency.record(age.as_secs_f64(), &attributes);
                    }
                }
            }
            TelemetryEvent::AdapterError {
                adapter, duration, ..
            } => self.adapter_duration.record(
                duration.as_secs_f64(),
                &[kv(keys::ADAPTER, adapter), kv(OUTCOME, "error")],
            ),
            TelemetryEvent::HandlerSuccess {
                handler,
                event,
                duration,
            } => self.handler_duration.record(
                duration.as_secs_f64(),
                &[
                    kv(keys::HANDLER, handler),
                    kv(keys::EVENT, event),
                    kv(OUTCOME, "success"),
                ],
            ),
            TelemetryEvent::HandlerError {
                handler,
                event,
                duration,
                ..
            } => self.handler_duration.record(
                duration.as_secs_f64(),
                &[
                    kv(keys::HANDLER, handler),
                    kv(keys::EVENT, event),
                    kv(OUTCOME, "error"),
                ],
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
