//! Per-adapter options: queue capacity, batching, overflow, retries, dead letters.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::DropReason;
use crate::{Error, Event, Failure};

/// What happens when an adapter's queue is full at commit time.
///
/// ```
/// use emissions_core::OverflowPolicy;
/// assert_eq!(OverflowPolicy::default(), OverflowPolicy::DropNewest);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Drop the incoming events that do not fit (reason `queue_full`). The commit never waits.
    /// The default.
    #[default]
    DropNewest,
    /// Evict the oldest queued events to make room (reason `queue_evicted`). The commit never
    /// waits.
    DropOldest,
    /// Make the committer wait until there is room for the whole commit. A stalled adapter then
    /// stalls commits (all adapters see commits in one global order), so use it only where
    /// losing an event is worse. A commit that waits can be cancelled: nothing is committed
    /// and the buffer keeps its events. A commit larger than the whole queue waits until the
    /// queue is empty, then goes in whole. A commit made from inside an adapter's
    /// `handle_events` never waits and fails with [`Error::QueueFull`](crate::Error::QueueFull)
    /// instead (waiting there could deadlock).
    Block,
}

/// Retries of failed events: exponential backoff with jitter, capped by attempts and elapsed time.
///
/// The delay before attempt `n + 1` is `initial_backoff × multiplierⁿ⁻¹`, capped at
/// `max_backoff`, then jittered uniformly into `[delay / 2, delay]`. Time is tokio's, so tests
/// with a paused clock run hour-long schedules instantly.
///
/// Defaults: 5 attempts, 100 ms initial backoff, ×2, 30 s maximum backoff, no elapsed-time cap.
///
/// ```
/// use std::time::Duration;
/// use emissions_core::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(8)
///     .backoff(Duration::from_millis(50), Duration::from_secs(10))
///     .max_elapsed(Duration::from_secs(60));
/// assert_eq!(policy.attempts(), 8);
/// assert_eq!(RetryPolicy::none().attempts(), 1);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    max_elapsed: Option<Duration>,
    /// Explicit delays between attempts, replacing the exponential ones.
    schedule: Option<Vec<Duration>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            max_elapsed: None,
            schedule: None,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries: failures go to the dead-letter hook at once.
    ///
    /// ```
    /// assert_eq!(emissions_core::RetryPolicy::none().attempts(), 1);
    /// ```
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Total attempts including the first; must be at least 1. Defaults to 5.
    ///
    /// ```
    /// assert_eq!(emissions_core::RetryPolicy::default().max_attempts(3).attempts(), 3);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The first delay and the cap on any delay. Defaults to 100 ms and 30 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// let p = emissions_core::RetryPolicy::default()
    ///     .backoff(Duration::from_secs(1), Duration::from_secs(60));
    /// # let _ = p;
    /// ```
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Growth factor between delays; must be finite and at least 1. Defaults to 2.
    ///
    /// ```
    /// let p = emissions_core::RetryPolicy::default().multiplier(3.0);
    /// # let _ = p;
    /// ```
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Explicit delays between attempts instead of exponential ones: attempt `n + 1` comes
    /// `delays[n - 1]` (jittered into `[delay / 2, delay]`) after attempt `n`, and there are
    /// `delays.len() + 1` attempts in all.
    ///
    /// ```
    /// use std::time::Duration;
    /// let svix_like = emissions_core::RetryPolicy::schedule([
    ///     Duration::from_secs(5),
    ///     Duration::from_secs(300),
    ///     Duration::from_secs(1800),
    /// ]);
    /// assert_eq!(svix_like.attempts(), 4);
    /// ```
    pub fn schedule(delays: impl IntoIterator<Item = Duration>) -> Self {
        let delays: Vec<Duration> = delays.into_iter().collect();
        RetryPolicy {
            max_attempts: u32::try_from(delays.len() + 1).unwrap_or(u32::MAX),
            max_backoff: delays.iter().copied().max().unwrap_or_default(),
            initial_backoff: Duration::ZERO,
            schedule: Some(delays),
            ..RetryPolicy::default()
        }
    }

    /// Stop retrying once the next attempt would come later than this after the event's first
    /// attempt. Defaults to none.
    ///
    /// ```
    /// let p = emissions_core::RetryPolicy::default()
    ///     .max_elapsed(std::time::Duration::from_secs(3600));
    /// # let _ = p;
    /// ```
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// How long to wait before the next attempt, after `attempts` attempts of which the first
    /// was `since_first` ago and the last failed asking (optionally) to wait `retry_after` — or
    /// `None` to give up: the attempts are used up, the next attempt would come later than
    /// `max_elapsed` after the first, or the wait is too long to represent. The longer of the
    /// policy's jittered delay and `retry_after` wins. In-memory retries and the durable outbox
    /// both decide by this rule.
    ///
    /// ```
    /// use std::time::Duration;
    /// use emissions_core::RetryPolicy;
    /// let policy = RetryPolicy::schedule([Duration::from_secs(10)]).max_elapsed(Duration::from_secs(60));
    /// let wait = policy.next_delay(1, Duration::ZERO, None).unwrap();
    /// assert!(wait >= Duration::from_secs(5) && wait <= Duration::from_secs(10));
    /// assert_eq!(policy.next_delay(2, Duration::ZERO, None), None); // used up
    /// assert_eq!(policy.next_delay(1, Duration::ZERO, Some(Duration::from_secs(120))), None); // too late
    /// ```
    pub fn next_delay(
        &self,
        attempts: u32,
        since_first: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        self.next_delay_with(attempts, since_first, retry_after, jitter())
    }

    pub(crate) fn next_delay_with(
        &self,
        attempts: u32,
        since_first: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = self
            .jittered(attempts, jitter)
            .max(retry_after.unwrap_or_default());
        if let Some(limit) = self.max_elapsed {
            // Overflow means "later than any limit".
            match since_first.checked_add(delay) {
                Some(at) if at <= limit => {}
                _ => return None,
            }
        }
        Some(delay)
    }

    /// The configured number of attempts.
    ///
    /// ```
    /// assert_eq!(emissions_core::RetryPolicy::default().attempts(), 5);
    /// ```
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The un-jittered delay after failed attempt `attempt` (1-based).
    pub(crate) fn base_delay(&self, attempt: u32) -> Duration {
        if let Some(delays) = &self.schedule {
            let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
            return delays
                .get(index)
                .or(delays.last())
                .copied()
                .unwrap_or_default();
        }
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max_backoff.as_secs_f64() {
            return self.max_backoff;
        }
        // Saturates instead of panicking for values too large to represent.
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_backoff)
    }

    /// The jittered delay after failed attempt `attempt`: uniform in `[base / 2, base]`.
    #[cfg(test)]
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.jittered(attempt, jitter())
    }

    /// The delay after failed attempt `attempt` for a jitter draw from [`jitter`]: events that
    /// failed together share one draw, so they come due (and are retried) together.
    pub(crate) fn jittered(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self.base_delay(attempt);
        Duration::try_from_secs_f64(base.as_secs_f64() * jitter.clamp(0.5, 1.0))
            .map_or(base, |delay| delay.min(base))
    }

    pub(crate) fn validate(&self, adapter: &str) -> Result<(), Error> {
        if self.max_attempts == 0 {
            return Err(Error::config(
                adapter,
                "retry.max_attempts",
                "must be at least 1 (1 means no retries)",
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(Error::config(
                adapter,
                "retry.multiplier",
                "must be a finite number of at least 1.0",
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::config(
                adapter,
                "retry.initial_backoff",
                "must not exceed retry.max_backoff",
            ));
        }
        Ok(())
    }
}

/// Why events reached the dead-letter hook.
///
/// ```
/// use emissions_core::{telemetry::DropReason, DeadLetterCause};
/// let cause = DeadLetterCause::Dropped(DropReason::QueueFull);
/// assert_ne!(cause, DeadLetterCause::Failed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterCause {
    /// The destination failed them permanently, or their retries ran out (counted as failed).
    Failed,
    /// The engine could not deliver them: a full queue or backlog, or the shutdown deadline
    /// (counted as dropped).
    Dropped(DropReason),
}

/// The largest queue capacity (events), so that any reservation fits a semaphore request.
const MAX_CAPACITY: usize = 1 << 30;

/// A jitter draw for [`RetryPolicy::jittered`]: uniform in `[0.5, 1]`.
pub(crate) fn jitter() -> f64 {
    0.5 + fastrand::f64() * 0.5
}

/// Events an adapter or a handler gave up on, handed back to the application — failed ones
/// and dropped ones alike, so an application can persist whatever the engine could not
/// deliver.
///
/// ```
/// use emissions_core::{AdapterOptions, DeadLetterCause};
/// let options = AdapterOptions::default().dead_letter(|dead| match dead.cause {
///     DeadLetterCause::Failed => eprintln!("{} failed {} events: {}", dead.destination, dead.events.len(), dead.failure),
///     DeadLetterCause::Dropped(reason) => eprintln!("{} dropped {} events ({reason})", dead.destination, dead.events.len()),
///     _ => {}
/// });
/// # let _ = options;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The registered name of the adapter or handler that gave up.
    pub destination: Arc<str>,
    /// The events, in emit order.
    pub events: Vec<Event>,
    /// The last failure (for drops: a permanent failure naming the drop reason).
    pub failure: Failure,
    /// How many attempts each event really got (0 when none was made, e.g. dropped on
    /// arrival, or refused by `interested` or a key function that panicked).
    pub attempts: u32,
    /// Whether they failed or were dropped.
    pub cause: DeadLetterCause,
}

/// A callback that receives dead letters. It runs on the adapter's consumer task (for events
/// dropped on arrival, on the committing task; at shutdown, on the task that shuts down): keep
/// it short (hand the events to a channel or a store). A panic in it is caught and logged.
///
/// ```
/// use emissions_core::DeadLetterHook;
/// let hook = DeadLetterHook::new(|dead| eprintln!("{} lost {} events", dead.destination, dead.events.len()));
/// # let _ = hook;
/// ```
#[derive(Clone)]
pub struct DeadLetterHook(Arc<dyn Fn(DeadLetter) + Send + Sync>);

impl DeadLetterHook {
    /// Wraps a callback.
    ///
    /// ```
    /// let hook = emissions_core::DeadLetterHook::new(|_dead| {});
    /// # let _ = hook;
    /// ```
    pub fn new(hook: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        DeadLetterHook(Arc::new(hook))
    }

    pub(crate) fn call(&self, dead: DeadLetter) {
        (self.0)(dead)
    }
}

impl fmt::Debug for DeadLetterHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterHook(..)")
    }
}

type KeyFnInner = dyn Fn(&Event) -> Option<String> + Send + Sync;

/// A function giving an event's ordering key (see [`AdapterOptions::ordered_by`]).
#[derive(Clone)]
pub(crate) struct KeyFn(Arc<KeyFnInner>);

impl KeyFn {
    pub(crate) fn new(key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static) -> Self {
        KeyFn(Arc::new(key))
    }

    /// The key of `event`; a panic in the user's function is returned as `Err(message)`.
    pub(crate) fn key(&self, event: &Event) -> Result<Option<String>, String> {
        crate::panic::contain(|| (self.0)(event))
    }
}

impl fmt::Debug for KeyFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn(..)")
    }
}

/// Options of one registered adapter. Plain data with documented defaults; checked by
/// [`validate`](Self::validate) when the instance starts.
///
/// ```
/// use emissions_core::{AdapterOptions, OverflowPolicy, RetryPolicy};
///
/// let options = AdapterOptions::default()
///     .max_demand(100)
///     .capacity(50_000)
///     .overflow(OverflowPolicy::DropOldest)
///     .retry(RetryPolicy::default().max_attempts(10));
/// assert!(options.validate("kafka").is_ok());
///
/// let err = AdapterOptions::default().capacity(10).validate("kafka").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "adapter `kafka`: invalid `max_demand`: 50 exceeds capacity 10; lower max_demand or raise capacity"
/// );
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AdapterOptions {
    /// Largest batch passed to `handle_events`. Defaults to 50.
    pub max_demand: usize,
    /// Events the adapter's queue holds. Defaults to 10 000.
    pub capacity: usize,
    /// What a full queue (or a full backlog) does. Defaults to [`OverflowPolicy::DropNewest`].
    pub overflow: OverflowPolicy,
    /// Retries of failed events. Defaults to [`RetryPolicy::default`].
    pub retry: RetryPolicy,
    /// Receives events the adapter gave up on or dropped. Defaults to none (they are logged
    /// and counted).
    pub dead_letter: Option<DeadLetterHook>,
    /// Events that may wait beside the queue — for a retry, or behind a retrying event of
    /// their key. Defaults to 10 000.
    pub backlog: usize,
    key: Option<KeyFn>,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            max_demand: 50,
            capacity: 10_000,
            overflow: OverflowPolicy::DropNewest,
            retry: RetryPolicy::default(),
            dead_letter: None,
            backlog: 10_000,
            key: None,
        }
    }
}

impl AdapterOptions {
    /// Sets the largest batch. Defaults to 50.
    ///
    /// ```
    /// assert_eq!(emissions_core::AdapterOptions::default().max_demand(10).max_demand, 10);
    /// ```
    pub fn max_demand(mut self, max_demand: usize) -> Self {
        self.max_demand = max_demand;
        self
    }

    /// Sets the queue capacity in events. Defaults to 10 000.
    ///
    /// ```
    /// assert_eq!(emissions_core::AdapterOptions::default().capacity(64).capacity, 64);
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the overflow policy. Defaults to drop newest.
    ///
    /// ```
    /// use emissions_core::{AdapterOptions, OverflowPolicy};
    /// let o = AdapterOptions::default().overflow(OverflowPolicy::Block);
    /// assert_eq!(o.overflow, OverflowPolicy::Block);
    /// ```
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// Sets the retry policy.
    ///
    /// ```
    /// use emissions_core::{AdapterOptions, RetryPolicy};
    /// let o = AdapterOptions::default().retry(RetryPolicy::none());
    /// assert_eq!(o.retry.attempts(), 1);
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the dead-letter hook.
    ///
    /// ```
    /// let o = emissions_core::AdapterOptions::default().dead_letter(|dead| drop(dead));
    /// assert!(o.dead_letter.is_some());
    /// ```
    pub fn dead_letter(mut self, hook: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        self.dead_letter = Some(DeadLetterHook::new(hook));
        self
    }

    /// Sets how many events may wait beside the queue, for a retry or behind a retrying event
    /// of their key. When it is full, the overflow policy applies: drop newest drops the event
    /// that would wait, drop oldest evicts the oldest waiting retry, block stops taking new
    /// events from the queue until there is room (the queue then fills and blocks committers).
    /// Drops are counted with reason `backlog_full`. Must be at least `max_demand`. Defaults
    /// to 10 000.
    ///
    /// ```
    /// assert_eq!(emissions_core::AdapterOptions::default().backlog(100).backlog, 100);
    /// ```
    pub fn backlog(mut self, events: usize) -> Self {
        self.backlog = events;
        self
    }

    /// Keeps the events of one key in commit order at this adapter, under retries: at most one
    /// event of a key is in flight at a time (a batch holds at most one event per key), and an
    /// event waiting for a retry holds back only the later events of its key — they are not
    /// attempted, and not charged an attempt, until it is delivered or given up on. Events
    /// whose key is `None`, and other keys, flow freely. Defaults to unordered: a failed event
    /// waits for its retry beside the queue while every other event goes on.
    ///
    /// A panic in `key` fails that event permanently (dead-lettered, 0 attempts).
    ///
    /// ```
    /// use emissions_core::AdapterOptions;
    /// let options = AdapterOptions::default()
    ///     .ordered_by(|event| event.payload_json()["order_id"].as_u64().map(|id| id.to_string()));
    /// assert!(options.validate("webhook").is_ok());
    /// ```
    pub fn ordered_by(
        mut self,
        key: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Some(KeyFn::new(key));
        self
    }

    /// The queue settings of `queue` (capacity, `max_demand`, overflow, backlog) with this
    /// value's retry policy, dead-letter hook and ordering key: how an adapter crate's
    /// endpoint takes queue options without losing what was set on it before.
    ///
    /// ```
    /// use emissions_core::{AdapterOptions, RetryPolicy};
    /// let endpoint = AdapterOptions::default()
    ///     .retry(RetryPolicy::none())
    ///     .ordered_by(|e| Some(e.name().to_owned()));
    /// let merged = endpoint.with_queue_of(AdapterOptions::default().capacity(7));
    /// assert_eq!((merged.capacity, merged.retry.attempts()), (7, 1));
    /// assert!(merged.is_ordered());
    /// ```
    pub fn with_queue_of(&self, queue: AdapterOptions) -> AdapterOptions {
        AdapterOptions {
            retry: self.retry.clone(),
            dead_letter: self.dead_letter.clone(),
            key: self.key.clone(),
            ..queue
        }
    }

    pub(crate) fn key_fn(&self) -> Option<&KeyFn> {
        self.key.as_ref()
    }

    /// Whether [`ordered_by`](Self::ordered_by) is set.
    ///
    /// ```
    /// assert!(!emissions_core::AdapterOptions::default().is_ordered());
    /// ```
    pub fn is_ordered(&self) -> bool {
        self.key.is_some()
    }

    /// Checks the options; the error names the adapter and the field and says how to fix it.
    ///
    /// ```
    /// let err = emissions_core::AdapterOptions::default().capacity(0).validate("ws").unwrap_err();
    /// assert!(err.to_string().contains("`capacity`"));
    /// ```
    pub fn validate(&self, adapter: &str) -> Result<(), Error> {
        if self.capacity == 0 {
            return Err(Error::config(adapter, "capacity", "must be at least 1"));
        }
        if self.capacity > MAX_CAPACITY {
            return Err(Error::config(
                adapter,
                "capacity",
                format!("must be at most {MAX_CAPACITY}"),
            ));
        }
        if self.max_demand == 0 {
            return Err(Error::config(adapter, "max_demand", "must be at least 1"));
        }
        if self.backlog < self.max_demand {
            return Err(Error::config(
                adapter,
                "backlog",
                format!(
                    "{} is smaller than max_demand {}; raise backlog or lower max_demand",
                    self.backlog, self.max_demand
                ),
            ));
        }
        if self.max_demand > self.capacity {
            return Err(Error::config(
                adapter,
                "max_demand",
                format!(
                    "{} exceeds capacity {}; lower max_demand or raise capacity",
                    self.max_demand, self.capacity
                ),
            ));
        }
        self.retry.validate(adapter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default().backoff(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<_> = (1..=5).map(|a| p.base_delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay() {
        let p = RetryPolicy::default().backoff(Duration::from_secs(8), Duration::from_secs(8));
        for _ in 0..1000 {
            let d = p.delay(1);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
        }
    }

    #[test]
    fn schedules_give_explicit_delays() {
        let p = RetryPolicy::schedule([Duration::from_secs(5), Duration::from_secs(300)]);
        assert_eq!(p.attempts(), 3);
        assert_eq!(p.base_delay(1), Duration::from_secs(5));
        assert_eq!(p.base_delay(2), Duration::from_secs(300));
        assert_eq!(p.base_delay(9), Duration::from_secs(300));
        assert!(p.validate("a").is_ok());
        assert_eq!(RetryPolicy::schedule([]).attempts(), 1);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(30));
    }

    proptest::proptest! {
        /// Any policy that validates computes every delay without panicking, within
        /// `[base / 2, base]` and never above `max_backoff`.
        #[test]
        fn delays_never_panic(
            initial in proptest::prelude::any::<u64>(),
            max in proptest::prelude::any::<u64>(),
            nanos in 0u32..1_000_000_000,
            multiplier in proptest::prelude::any::<f64>(),
            attempt in proptest::prelude::any::<u32>(),
            jitter in proptest::prelude::any::<f64>(),
        ) {
            let initial = Duration::new(initial, nanos).min(Duration::MAX);
            let max = Duration::new(max, nanos).max(initial);
            for max in [max, Duration::MAX] {
                let policy = RetryPolicy::default().backoff(initial, max).multiplier(multiplier);
                if policy.validate("a").is_err() {
                    continue;
                }
                let base = policy.base_delay(attempt);
                proptest::prop_assert!(base <= max);
                let delay = policy.jittered(attempt, jitter);
                proptest::prop_assert!(delay <= base);
            }
        }
    }

    #[test]
    fn invalid_options_name_the_field() {
        let cases = [
            (AdapterOptions::default().capacity(0), "capacity"),
            (AdapterOptions::default().max_demand(0), "max_demand"),
            (AdapterOptions::default().backlog(0), "backlog"),
            (AdapterOptions::default().backlog(10), "backlog"),
            (
                AdapterOptions::default()
                    .capacity(MAX_CAPACITY + 1)
                    .max_demand(1),
                "capacity",
            ),
            (
                AdapterOptions::default().retry(RetryPolicy::default().max_attempts(0)),
                "retry.max_attempts",
            ),
            (
                AdapterOptions::default().retry(RetryPolicy::default().multiplier(f64::NAN)),
                "retry.multiplier",
            ),
            (
                AdapterOptions::default().retry(
                    RetryPolicy::default().backoff(Duration::from_secs(9), Duration::from_secs(1)),
                ),
                "retry.initial_backoff",
            ),
        ];
        for (options, field) in cases {
            match options.validate("a") {
                Err(Error::Config {
                    adapter, field: f, ..
                }) => {
                    assert_eq!(adapter, "a");
                    assert_eq!(f, field);
                }
                other => panic!("expected config error for {field}, got {other:?}"),
            }
        }
    }
}
