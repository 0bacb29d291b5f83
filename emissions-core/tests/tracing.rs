//! Telemetry reaches `tracing` under target `emissions`. Alone in its binary: tracing caches
//! callsite interest process-wide, so a scoped subscriber must not race other tests.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use emissions_core::Emissions;
use emissions_core::telemetry::names;
use support::Scripted;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Collects `tracing` events as (target, fields).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(String, Fields)>>>);

/// A tracing event's fields, rendered.
type Fields = BTreeMap<String, String>;

struct Visitor(Fields);
impl Visit for Visitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Visitor(BTreeMap::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((event.metadata().target().to_owned(), fields.0));
    }
}

#[test]
fn telemetry_is_emitted_as_tracing_events_under_target_emissions() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let emissions = Emissions::builder()
                .adapter(emissions_core::Named::new("k", Scripted::ok()))
                .unwrap()
                .start()
                .await
                .unwrap();
            let buffer = emissions.start();
            buffer.emit("order_created", &1).unwrap();
            buffer.commit().await.unwrap().settled().await;
            let _ = emissions.with_no_buffer_drop().await;
        });
    });
    let events = capture.0.lock().unwrap();
    let by_name = |name: &str| {
        events
            .iter()
            .find(|(target, f)| {
                target == "emissions" && f.get("event").map(String::as_str) == Some(name)
            })
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no tracing event {name}"))
    };
    assert_eq!(by_name(names::BUFFER_STARTED)["count"], "1");
    assert_eq!(by_name(names::BUFFER_COMMITTED)["event_count"], "1");
    let success = by_name(names::ADAPTER_SUCCESS);
    assert_eq!(success["adapter"], "k");
    assert!(success.contains_key("duration"));
    let dropped = by_name(names::EVENT_DROPPED);
    assert_eq!(dropped["event_name"], "stray");
    assert_eq!(dropped["reason"], "no_buffer");
}

trait NoBufferDrop {
    async fn with_no_buffer_drop(&self) -> Result<(), emissions_core::Error>;
}
impl NoBufferDrop for Emissions {
    async fn with_no_buffer_drop(&self) -> Result<(), emissions_core::Error> {
        emissions_core::with_default(self.clone(), async { emissions_core::emit("stray", &1) })
            .await
    }
}
