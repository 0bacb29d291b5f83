//! The event model: one emitted fact, serialized once and shared by every adapter.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::timestamp::context::ContextV7;
use uuid::{Timestamp, Uuid};

use crate::Error;

/// Process-wide UUID v7 counter: ids stay strictly increasing within a millisecond.
static ID_CONTEXT: Mutex<ContextV7> = Mutex::new(ContextV7::new());

fn time_ordered_id(at: SystemTime) -> Uuid {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let context = ID_CONTEXT.lock().unwrap_or_else(|e| e.into_inner());
    Uuid::new_v7(Timestamp::from_unix(
        &*context,
        since_epoch.as_secs(),
        since_epoch.subsec_nanos(),
    ))
}

/// Event metadata: string keys to JSON values.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// One emitted event.
///
/// The payload is serialized to JSON once, when the event is created; cloning an `Event` is a
/// reference-count increment, so every adapter shares the same bytes.
///
/// ```
/// use emissions_core::{Event, Metadata};
/// use serde_json::json;
///
/// let mut meta = Metadata::new();
/// meta.insert("source".into(), json!("api"));
/// let event = Event::new("order_created", &json!({"id": 7}), meta)?;
/// assert_eq!(event.name(), "order_created");
/// assert_eq!(event.payload(), br#"{"id":7}"#);
/// assert_eq!(event.payload_json()["id"], 7);
/// assert_eq!(event.metadata()["source"], "api");
/// # Ok::<(), emissions_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Event {
    inner: Arc<EventInner>,
}

struct EventInner {
    id: Uuid,
    name: Cow<'static, str>,
    payload: Box<RawValue>,
    metadata: Metadata,
    emitted_at: SystemTime,
}

impl Event {
    /// Creates an event, serializing `payload` now. Fails with [`Error::EmptyName`] or
    /// [`Error::Serialize`]. With the `opentelemetry` feature, the current trace context is
    /// added to the metadata as `traceparent`/`tracestate`.
    ///
    /// ```
    /// use emissions_core::{Event, Metadata};
    /// let event = Event::new("ping", &(), Metadata::new())?;
    /// assert_eq!(event.payload(), b"null");
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn new<P>(
        name: impl Into<Cow<'static, str>>,
        payload: &P,
        #[cfg_attr(not(feature = "opentelemetry"), allow(unused_mut))] mut metadata: Metadata,
    ) -> Result<Self, Error>
    where
        P: Serialize + ?Sized,
    {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::EmptyName);
        }
        let payload = match serde_json::value::to_raw_value(payload) {
            Ok(raw) => raw,
            Err(source) => {
                return Err(Error::Serialize {
                    name: name.into_owned(),
                    source,
                });
            }
        };
        #[cfg(feature = "opentelemetry")]
        crate::otel::capture_current(&mut metadata);
        // One clock read serves both the id and the emit time.
        let emitted_at = SystemTime::now();
        Ok(Event {
            inner: Arc::new(EventInner {
                id: time_ordered_id(emitted_at),
                name,
                payload,
                metadata,
                emitted_at,
            }),
        })
    }

    /// The event id: a UUID v7, so ids sort by emit time.
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// let a = Event::new("a", &1, Metadata::new())?;
    /// let b = Event::new("b", &2, Metadata::new())?;
    /// assert!(a.id() < b.id());
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// The event name.
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// assert_eq!(Event::new("a", &1, Metadata::new())?.name(), "a");
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The payload as the JSON bytes serialized at emit time.
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// assert_eq!(Event::new("a", &[1, 2], Metadata::new())?.payload(), b"[1,2]");
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn payload(&self) -> &[u8] {
        self.inner.payload.get().as_bytes()
    }

    /// The payload as raw JSON text, ready to embed in an envelope without re-serializing.
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// assert_eq!(Event::new("a", "x", Metadata::new())?.payload_raw().get(), "\"x\"");
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn payload_raw(&self) -> &RawValue {
        &self.inner.payload
    }

    /// The payload parsed into a [`serde_json::Value`] (convenient in tests).
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// let e = Event::new("a", &serde_json::json!({"qty": 5}), Metadata::new())?;
    /// assert_eq!(e.payload_json()["qty"], 5);
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn payload_json(&self) -> serde_json::Value {
        // The bytes were produced by serde_json, so they always parse.
        serde_json::from_str(self.inner.payload.get()).unwrap_or(serde_json::Value::Null)
    }

    /// The payload deserialized into `T`.
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// let e = Event::new("a", &vec![1u8, 2], Metadata::new())?;
    /// let v: Vec<u8> = e.payload_as().unwrap();
    /// assert_eq!(v, [1, 2]);
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.inner.payload.get())
    }

    /// The metadata given at emit time.
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// assert!(Event::new("a", &1, Metadata::new())?.metadata().is_empty());
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    /// When the event was emitted (wall clock).
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// let e = Event::new("a", &1, Metadata::new())?;
    /// assert!(e.emitted_at() <= std::time::SystemTime::now());
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn emitted_at(&self) -> SystemTime {
        self.inner.emitted_at
    }

    /// True when both values are the same event (same shared allocation).
    #[cfg(test)]
    pub(crate) fn same(&self, other: &Event) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("payload", &self.inner.payload.get())
            .field("metadata", &self.inner.metadata)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unserializable;
    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }

    #[test]
    fn serialization_failure_is_typed() {
        let err = Event::new("x", &Unserializable, Metadata::new()).unwrap_err();
        assert!(matches!(err, Error::Serialize { ref name, .. } if name == "x"));
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn empty_name_is_rejected() {
        assert!(matches!(
            Event::new("", &1, Metadata::new()),
            Err(Error::EmptyName)
        ));
    }

    #[test]
    fn ids_increase_strictly_and_carry_the_emit_time() {
        let events: Vec<Event> = (0..1000)
            .map(|i| Event::new("x", &i, Metadata::new()).unwrap())
            .collect();
        for pair in events.windows(2) {
            assert!(pair[0].id() < pair[1].id());
        }
        let e = &events[0];
        let (secs, _) = e.id().get_timestamp().unwrap().to_unix();
        let emitted = e.emitted_at().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(secs.abs_diff(emitted) <= 1);
    }

    #[test]
    fn clones_share_payload_bytes() {
        let a = Event::new("x", &"payload", Metadata::new()).unwrap();
        let b = a.clone();
        assert!(a.same(&b));
        assert_eq!(a.payload().as_ptr(), b.payload().as_ptr());
    }
}
