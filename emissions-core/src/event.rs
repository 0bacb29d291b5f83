//! The event model: one emitted fact, serialized once and shared by every adapter.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::Error;
use crate::envelope::Envelope;

/// The last id timestamp handed out: Unix milliseconds << 12 | a 12-bit sub-millisecond part.
static LAST_STAMP: AtomicU64 = AtomicU64::new(0);

/// A UUID v7 (RFC 9562): 48-bit Unix milliseconds, then 12 bits of sub-millisecond time
/// (§6.2 method 3) kept strictly increasing process-wide, then 62 random bits.
///
/// One atomic update and a thread-local generator: the `uuid` crate's v7 context takes a lock
/// and 128-bit arithmetic per id, which showed in the per-request profile.
fn time_ordered_id(at: SystemTime) -> Uuid {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let millis = since_epoch.as_secs() * 1000 + u64::from(since_epoch.subsec_millis());
    let sub_milli = u64::from(since_epoch.subsec_nanos() % 1_000_000) * 4096 / 1_000_000;
    let candidate = (millis << 12) | sub_milli;
    let previous = LAST_STAMP
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(candidate.max(last + 1))
        })
        .unwrap_or_else(|last| last);
    let stamp = candidate.max(previous + 1);
    let high = ((stamp >> 12) << 16) | 0x7000 | (stamp & 0xfff);
    let low = (0b10 << 62) | (fastrand::u64(..) >> 2);
    Uuid::from_u64_pair(high, low)
}

/// A name every wire can carry: not empty, no control characters.
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::EmptyName);
    }
    if name.chars().any(crate::envelope::is_control) {
        return Err(Error::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
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
    /// JSON text written by serde_json (or checked when restored): valid UTF-8 and JSON.
    payload: Box<RawValue>,
    metadata: Metadata,
    emitted_at: SystemTime,
}

impl Event {
    /// Creates an event, serializing `payload` now. Fails with [`Error::EmptyName`],
    /// [`Error::InvalidName`] (control characters in the name) or
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
        check_name(&name)?;
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

    /// An event as it was emitted, read back from a durable store: same id, name, payload bytes,
    /// metadata and emit time. Fails with [`Error::EmptyName`], [`Error::InvalidName`],
    /// [`Error::InvalidTime`] (an emit time outside 1970–9999), or [`Error::InvalidPayload`]
    /// when `payload` is not JSON (a corrupted store row, say).
    ///
    /// ```
    /// use emissions_core::{Event, Metadata};
    /// let sent = Event::new("order_created", &serde_json::json!({"id": 7}), Metadata::new())?;
    /// let back = Event::restore(
    ///     sent.id(),
    ///     sent.name().to_owned(),
    ///     sent.payload().to_vec(),
    ///     sent.metadata().clone(),
    ///     sent.emitted_at(),
    /// )?;
    /// assert_eq!((back.id(), back.payload()), (sent.id(), sent.payload()));
    /// assert!(Event::restore(sent.id(), "x".into(), b"{not json".to_vec(), Metadata::new(), sent.emitted_at()).is_err());
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn restore(
        id: Uuid,
        name: String,
        payload: Vec<u8>,
        metadata: Metadata,
        emitted_at: SystemTime,
    ) -> Result<Self, Error> {
        check_name(&name)?;
        if !crate::envelope::in_range(emitted_at) {
            return Err(Error::InvalidTime { name });
        }
        let invalid = |source| Error::InvalidPayload {
            name: name.clone(),
            source,
        };
        let text = String::from_utf8(payload)
            .map_err(|e| invalid(serde::de::Error::custom(e.utf8_error())))?;
        let payload = RawValue::from_string(text).map_err(invalid)?;
        Ok(Event {
            inner: Arc::new(EventInner {
                id,
                name: Cow::Owned(name),
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

    /// The payload as JSON text, as serialized at emit time: what an envelope embeds as its
    /// `data` (see [`Envelope`](crate::Envelope)).
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// let e = Event::new("a", &serde_json::json!({"qty": 5}), Metadata::new())?;
    /// assert_eq!(e.payload_raw().get(), r#"{"qty":5}"#);
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn payload_raw(&self) -> &RawValue {
        &self.inner.payload
    }

    /// The event's JSON envelope, as every adapter writes it (see [`Envelope`]).
    ///
    /// ```
    /// # use emissions_core::{Event, Metadata};
    /// let e = Event::new("a", &[1, 2], Metadata::new())?;
    /// assert!(e.envelope().to_vec().ends_with(br#","data":[1,2]}"#));
    /// # Ok::<(), emissions_core::Error>(())
    /// ```
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope::new(self)
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
        assert_eq!(e.id().get_version_num(), 7);
        assert_eq!(e.id().get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn ids_are_unique_and_increasing_across_threads() {
        let per_thread: Vec<Vec<Uuid>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..20_000)
                            .map(|_| time_ordered_id(SystemTime::now()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for ids in &per_thread {
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
        let mut all: Vec<Uuid> = per_thread.concat();
        all.sort();
        all.dedup_by_key(|id| id.as_u64_pair().0);
        assert_eq!(
            all.len(),
            80_000,
            "the 60-bit time stamps are unique process-wide"
        );
    }

    #[test]
    fn large_payloads_keep_little_slack() {
        let big = "x".repeat(10_000);
        let e = Event::new("x", &big, Metadata::new()).unwrap();
        assert_eq!(e.payload().len(), 10_002);
    }

    #[test]
    fn clones_share_payload_bytes() {
        let a = Event::new("x", &"payload", Metadata::new()).unwrap();
        let b = a.clone();
        assert!(a.same(&b));
        assert_eq!(a.payload().as_ptr(), b.payload().as_ptr());
    }
}
