//! Scriptable adapters and a telemetry collector shared by the behaviour tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use emissions_core::telemetry::TelemetryEvent;
use emissions_core::{Adapter, BatchError, BoxError, Emissions, Event, async_trait};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// One telemetry event, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub name: &'static str,
    pub measurements: Vec<(&'static str, u64)>,
    pub metadata: Vec<(&'static str, Value)>,
}

impl Recorded {
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    pub fn measurement(&self, key: &str) -> Option<u64> {
        self.measurements
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<Recorded>>>);

impl Collected {
    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }
    pub fn named(&self, name: &str) -> Vec<Recorded> {
        self.all().into_iter().filter(|r| r.name == name).collect()
    }
}

pub fn observe(emissions: &Emissions) -> Collected {
    let collected = Collected::default();
    let sink = collected.0.clone();
    emissions.attach_observer(move |e: &TelemetryEvent<'_>| {
        sink.lock().unwrap().push(Recorded {
            name: e.name(),
            measurements: e.measurements(),
            metadata: e.metadata(),
        })
    });
    collected
}

pub fn names(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.name().to_owned()).collect()
}

type Script = Box<dyn FnMut(usize, &[Event]) -> Result<(), BatchError> + Send>;
type Filter = Box<dyn Fn(&Event) -> bool + Send>;
/// Every call: when it happened and the batch it got.
pub type Calls = Arc<Mutex<Vec<(Instant, Vec<Event>)>>>;

/// An adapter whose answer to call number `n` (0-based) is scripted; records every call.
pub struct Scripted {
    pub calls: Calls,
    script: Script,
    interested: Option<Filter>,
    pub shutdown_result: Option<String>,
}

impl Scripted {
    pub fn new(
        script: impl FnMut(usize, &[Event]) -> Result<(), BatchError> + Send + 'static,
    ) -> Self {
        Scripted {
            calls: Arc::default(),
            script: Box::new(script),
            interested: None,
            shutdown_result: None,
        }
    }
    pub fn ok() -> Self {
        Self::new(|_, _| Ok(()))
    }
    pub fn interested(mut self, f: impl Fn(&Event) -> bool + Send + 'static) -> Self {
        self.interested = Some(Box::new(f));
        self
    }
    pub fn failing_shutdown(mut self, msg: &str) -> Self {
        self.shutdown_result = Some(msg.to_owned());
        self
    }
    pub fn calls(&self) -> Calls {
        self.calls.clone()
    }
}

#[async_trait]
impl Adapter for Scripted {
    fn interested(&self, event: &Event) -> bool {
        self.interested.as_ref().is_none_or(|f| f(event))
    }
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((Instant::now(), events.to_vec()));
            calls.len() - 1
        };
        (self.script)(n, events)
    }
    async fn shutdown(&mut self, _deadline: Instant) -> Result<(), BoxError> {
        match &self.shutdown_result {
            Some(msg) => Err(msg.clone().into()),
            None => Ok(()),
        }
    }
}

/// An adapter that reports each batch it receives, then waits for a permit per batch.
/// Never releasing permits makes it a stalled adapter.
pub struct Gated {
    received: mpsc::UnboundedSender<Vec<Event>>,
    permits: Arc<Semaphore>,
}

pub struct GateControl {
    pub received: mpsc::UnboundedReceiver<Vec<Event>>,
    pub permits: Arc<Semaphore>,
}

impl GateControl {
    pub fn release(&self, batches: usize) {
        self.permits.add_permits(batches);
    }
    pub async fn next_batch(&mut self) -> Vec<Event> {
        self.received.recv().await.expect("gated adapter stopped")
    }
}

pub fn gated() -> (Gated, GateControl) {
    let (tx, rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    (
        Gated {
            received: tx,
            permits: permits.clone(),
        },
        GateControl {
            received: rx,
            permits,
        },
    )
}

#[async_trait]
impl Adapter for Gated {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let _ = self.received.send(events.to_vec());
        self.permits.acquire().await.expect("gate closed").forget();
        Ok(())
    }
}

/// An instance whose only adapter, `name`, is gated, with queue capacity and `max_demand` both
/// `capacity`.
pub async fn start_gated(
    name: &str,
    capacity: usize,
    policy: emissions_core::OverflowPolicy,
) -> (Emissions, GateControl) {
    let (adapter, gate) = gated();
    let options = emissions_core::AdapterOptions::default()
        .capacity(capacity)
        .max_demand(capacity)
        .overflow(policy);
    let emissions = Emissions::builder()
        .adapter(emissions_core::Named::new(name, adapter).options(options))
        .unwrap()
        .start()
        .await
        .unwrap();
    (emissions, gate)
}
