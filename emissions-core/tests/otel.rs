//! OpenTelemetry: metrics through the SDK's in-memory exporter, and W3C trace context captured
//! at emit time and continued in handler spans.
#![cfg(feature = "opentelemetry")]

mod support;

use std::collections::HashMap;

use emissions_core::otel::{TRACEPARENT, TRACESTATE};
use emissions_core::{
    BatchError, BoxError, Emissions, Event, Handled, Handler, HandlerContext, HandlerOptions,
    RetryPolicy, async_trait,
};
use emissions_testing::TestEmissions;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use support::{Scripted, names};

struct Fixed(&'static [&'static str], fn() -> Result<Handled, BoxError>);

#[async_trait]
impl Handler for Fixed {
    fn events(&self) -> &[&str] {
        self.0
    }
    async fn handle(&self, _: &Event, _: &HandlerContext) -> Result<Handled, BoxError> {
        (self.1)()
    }
}

fn attrs_match(attributes: &mut dyn Iterator<Item = &KeyValue>, wanted: &[(&str, &str)]) -> bool {
    let have: Vec<(String, String)> = attributes
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    wanted
        .iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

fn named<'a>(metrics: &'a [ResourceMetrics], name: &'a str) -> impl Iterator<Item = &'a Metric> {
    metrics
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .filter(move |m| m.name() == name)
}

/// Sum of a u64 counter's points whose attributes include `wanted`.
fn counter(metrics: &[ResourceMetrics], name: &str, wanted: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for metric in named(metrics, name) {
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
            panic!("{name} is not a u64 counter");
        };
        total += sum
            .data_points()
            .filter(|p| attrs_match(&mut p.attributes(), wanted))
            .map(|p| p.value())
            .sum::<u64>();
    }
    total
}

/// Number of recordings of an f64 histogram whose attributes include `wanted`.
fn histogram_count(metrics: &[ResourceMetrics], name: &str, wanted: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for metric in named(metrics, name) {
        assert_eq!(metric.unit(), "s");
        let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
            panic!("{name} is not an f64 histogram");
        };
        total += h
            .data_points()
            .filter(|p| attrs_match(&mut p.attributes(), wanted))
            .map(|p| p.count())
            .sum::<u64>();
    }
    total
}

/// The last value of a u64 gauge whose attributes include `wanted`.
fn gauge_u64(metrics: &[ResourceMetrics], name: &str, wanted: &[(&str, &str)]) -> Option<u64> {
    named(metrics, name)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|metric| {
            let AggregatedMetrics::U64(MetricData::Gauge(g)) = metric.data() else {
                panic!("{name} is not a u64 gauge");
            };
            g.data_points()
                .filter(|p| attrs_match(&mut p.attributes(), wanted))
                .map(|p| p.value())
                .last()
        })
}

/// The last value of an f64 gauge whose attributes include `wanted`.
fn gauge_f64(metrics: &[ResourceMetrics], name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
    named(metrics, name)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|metric| {
            let AggregatedMetrics::F64(MetricData::Gauge(g)) = metric.data() else {
                panic!("{name} is not an f64 gauge");
            };
            g.data_points()
                .filter(|p| attrs_match(&mut p.attributes(), wanted))
                .map(|p| p.value())
                .last()
        })
}

#[tokio::test]
async fn every_telemetry_event_has_an_instrument() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let adapter = Scripted::new(|_, events| {
        if events.iter().any(|e| e.name() == "bad") {
            Err(BatchError::permanent("rejected"))
        } else {
            Ok(())
        }
    });
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new("kafka", adapter))
        .unwrap()
        .handler("ok", Fixed(&["order_created"], || Ok(Handled::Done)))
        .handler_with(
            "err",
            Fixed(&["order_created"], || Err("boom".into())),
            HandlerOptions::default().retry(RetryPolicy::none()),
        )
        .handler("skip", Fixed(&["order_created"], || Ok(Handled::Ignored)))
        .start()
        .await
        .unwrap();
    emissions_core::otel::record_metrics(
        &emissions,
        &opentelemetry::metrics::MeterProvider::meter(&provider, "emissions"),
    );

    let buffer = emissions.start();
    buffer.emit("order_created", &1).unwrap();
    buffer.emit("other", &1).unwrap();
    // Settle first so the failing event gets a batch of its own.
    buffer.commit().await.unwrap().settled().await;
    emissions.start().terminate().unwrap();
    emissions.emit_now("bad", &1).await.unwrap();
    let _ = emissions_core::with_default(emissions.clone(), async {
        emissions_core::emit("stray", &1)
    })
    .await;
    emissions.settled().await;

    provider.force_flush().unwrap();
    let m = exporter.get_finished_metrics().unwrap();
    // Two request buffers, plus one child buffer per handler run (three runs); the failed
    // run's child buffer is terminated.
    assert_eq!(counter(&m, "emissions.buffer.started", &[]), 5);
    assert_eq!(counter(&m, "emissions.buffer.committed", &[]), 2);
    assert_eq!(
        counter(
            &m,
            "emissions.buffer.terminated",
            &[("reason", "terminate")]
        ),
        2
    );
    assert_eq!(
        counter(&m, "emissions.event.dropped", &[("reason", "no_buffer")]),
        1
    );
    assert_eq!(
        counter(&m, "emissions.event.dropped", &[("event_name", "stray")]),
        0,
        "event names are opt-in"
    );
    let duration = |adapter: &'static str, outcome: &'static str| {
        histogram_count(
            &m,
            "emissions.adapter.duration",
            &[("adapter", adapter), ("outcome", outcome)],
        )
    };
    assert_eq!(duration("kafka", "success"), 1);
    assert_eq!(duration("kafka", "error"), 1);
    assert_eq!(duration("handlers", "success"), 1);
    // One latency per delivered event: order_created and other (bad failed).
    assert_eq!(
        histogram_count(&m, "emissions.adapter.latency", &[("adapter", "kafka")]),
        2
    );
    let handler = |h: &'static str, outcome: &'static str| {
        [
            ("handler", h),
            ("event", "order_created"),
            ("outcome", outcome),
        ]
    };
    assert_eq!(
        histogram_count(&m, "emissions.handler.duration", &handler("ok", "success")),
        1
    );
    assert_eq!(
        histogram_count(&m, "emissions.handler.duration", &handler("err", "error")),
        1
    );
    // The backlog gauges, read at collection: everything settled, so all zero.
    for name in [
        "emissions.adapter.queued",
        "emissions.adapter.in_flight",
        "emissions.adapter.waiting",
    ] {
        assert_eq!(
            gauge_u64(&m, name, &[("adapter", "kafka")]),
            Some(0),
            "{name}"
        );
    }
    assert_eq!(
        gauge_f64(
            &m,
            "emissions.adapter.oldest_pending_age",
            &[("adapter", "kafka")]
        ),
        Some(0.0)
    );
    assert_eq!(
        counter(
            &m,
            "emissions.handler.ignored",
            &[("handler", "skip"), ("event", "order_created")]
        ),
        1
    );
}

fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

#[tokio::test]
async fn the_current_trace_context_is_captured_at_emit_time() {
    let t = TestEmissions::start().await;
    let remote = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "abc")]).unwrap(),
    );
    let cx = Context::new().with_remote_span_context(remote);
    let buffer = t.emissions().start();
    {
        let _guard = cx.clone().attach();
        buffer.emit("in_trace", &1).unwrap();
        let mut explicit = emissions_core::Metadata::new();
        explicit.insert(
            TRACEPARENT.into(),
            json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        buffer.emit_with_metadata("explicit", &1, explicit).unwrap();
    }
    buffer.emit("outside", &1).unwrap();
    buffer.commit().await.unwrap();
    let events = t.events().await;

    // Same header the SDK's W3C propagator writes for this context.
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    assert_eq!(
        events[0].metadata()[TRACEPARENT],
        json!(carrier["traceparent"])
    );
    assert_eq!(
        events[0].metadata()[TRACEPARENT],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(
        events[0].metadata()[TRACESTATE],
        json!(carrier["tracestate"])
    );
    assert_eq!(events[0].metadata()[TRACESTATE], "vendor=abc");
    // A traceparent given by the caller is kept.
    assert_eq!(
        events[1].metadata()[TRACEPARENT],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    // No active span, no header.
    assert!(events[2].metadata().get(TRACEPARENT).is_none());
}

struct Invoicing;

#[async_trait]
impl Handler for Invoicing {
    fn events(&self) -> &[&str] {
        &["order_created"]
    }
    async fn handle(&self, _: &Event, ctx: &HandlerContext) -> Result<Handled, BoxError> {
        ctx.emit("invoice_requested", &1)?;
        Ok(Handled::Done)
    }
}

#[tokio::test]
async fn handlers_run_in_a_child_span_of_the_emitting_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    let t = TestEmissions::start_with(Emissions::builder().handler("invoicing", Invoicing))
        .await
        .unwrap();

    let request = provider.tracer("app").start("POST /orders");
    let cx = Context::current_with_span(request);
    let emitting = cx.span().span_context().clone();
    let buffer = t.emissions().start();
    {
        let _guard = cx.clone().attach();
        buffer.emit("order_created", &1).unwrap();
    }
    buffer.commit().await.unwrap();
    let events = t.events().await;
    assert_eq!(names(&events), ["order_created", "invoice_requested"]);
    assert_eq!(
        events[0].metadata()[TRACEPARENT],
        json!(traceparent(&emitting))
    );

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let handler_span = spans
        .iter()
        .find(|s| {
            s.name == "handle order_created" && s.span_context.trace_id() == emitting.trace_id()
        })
        .expect("handler span exported");
    assert_eq!(handler_span.parent_span_id, emitting.span_id());
    assert!(
        handler_span
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "emissions.handler" && kv.value.as_str() == "invoicing")
    );
    // The follow-up event continues the trace from the handler's span.
    assert_eq!(
        events[1].metadata()[TRACEPARENT],
        json!(traceparent(&handler_span.span_context))
    );
}
