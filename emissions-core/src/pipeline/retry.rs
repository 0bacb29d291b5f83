//! Retries out of line: each event's own attempt count and clock ([`Attempts`], shared with
//! handler runs), and the [`Backlog`] where failed events wait for their retry beside the
//! queue — and, for ordered adapters, where later events of a retrying key wait behind it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::RetryPolicy;
use crate::pipeline::segment::Segment;

/// The attempts one event (or one handler run) has had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attempts {
    made: u32,
    first: Option<Instant>,
}

impl Attempts {
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// Counts an attempt that is really being made, at `now`.
    pub(crate) fn attempted(&mut self, now: Instant) {
        self.made = self.made.saturating_add(1);
        self.first.get_or_insert(now);
    }

    /// When to try again after a failed attempt, or `None` to give up: the attempts are used
    /// up, the next attempt would come later than `max_elapsed` after the first, or the wait
    /// is too long to represent. `hint` is the destination's own wait (`Retry-After`); the
    /// longer of it and the policy's delay wins. Never overflows.
    pub(crate) fn next(
        &self,
        policy: &RetryPolicy,
        jitter: f64,
        hint: Option<Duration>,
        now: Instant,
    ) -> Option<Instant> {
        let since_first = now.saturating_duration_since(self.first.unwrap_or(now));
        let delay = policy.next_delay_with(self.made, since_first, hint, jitter)?;
        now.checked_add(delay)
    }
}

/// A failed segment waiting for its retry.
#[derive(Debug)]
struct Due {
    at: Instant,
    seq: u64,
    segment: Segment,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What an adapter's consumer holds besides its queue: the batch in flight, events waiting for
/// a retry, and (ordered adapters) events waiting behind a busy key. It sits behind a lock so
/// that shutdown can take it all from a consumer that never returns ([`Backlog::fence`]).
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    fenced: bool,
    in_flight: Vec<Segment>,
    retries: BinaryHeap<Reverse<Due>>,
    seq: u64,
    /// Keys with an event in flight, waiting for a retry, or ready to go.
    busy: HashMap<Arc<str>, VecDeque<Segment>>,
    /// Events released from behind their key, to be attempted next, in order.
    ready: VecDeque<Segment>,
    /// Events waiting: in `retries`, behind a key, or in `ready`.
    waiting: usize,
}

/// Whether a keyed event may go now.
pub(crate) enum Admission {
    /// Its key was free (and is now busy): attempt it.
    Go(Segment),
    /// An earlier event of its key is busy: it waits behind it.
    Held,
}

impl Backlog {
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Events in flight, events waiting (for a retry, behind their key, or ready), and when
    /// the oldest of all of them was committed.
    pub(crate) fn pending(&self) -> (usize, usize, Option<std::time::Instant>) {
        let in_flight = self.in_flight.iter().map(Segment::len).sum();
        let oldest = self
            .in_flight
            .iter()
            .chain(self.retries.iter().map(|Reverse(due)| &due.segment))
            .chain(self.busy.values().flatten())
            .chain(self.ready.iter())
            .map(Segment::opened)
            .min();
        (in_flight, self.waiting, oldest)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting == 0 && self.in_flight.is_empty()
    }

    /// Parks the batch being delivered, so that a fence can reach it.
    pub(crate) fn send(&mut self, batch: Vec<Segment>) {
        self.in_flight = batch;
    }

    /// Takes the delivered batch back (empty when fenced meanwhile).
    pub(crate) fn returned(&mut self) -> Vec<Segment> {
        std::mem::take(&mut self.in_flight)
    }

    /// Up to `max` events to attempt now: released keyed events first, then due retries.
    pub(crate) fn take_due(&mut self, now: Instant, max: usize, out: &mut Vec<Segment>) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(segment) = self.ready.pop_front() else {
                break;
            };
            taken += segment.len();
            out.push(segment);
        }
        while taken < max {
            match self.retries.peek() {
                Some(Reverse(due)) if due.at <= now => {}
                _ => break,
            }
            let Some(Reverse(mut due)) = self.retries.pop() else {
                break;
            };
            let room = max - taken;
            if due.segment.len() > room {
                let front = due.segment.split_front(room);
                taken += room;
                out.push(front);
                self.retries.push(Reverse(due));
                break;
            }
            taken += due.segment.len();
            out.push(due.segment);
        }
        self.waiting -= taken;
        taken
    }

    /// When the next retry comes due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(Instant::now());
        }
        self.retries.peek().map(|Reverse(due)| due.at)
    }

    /// Schedules a retry of `segment` at `at`.
    pub(crate) fn schedule(&mut self, segment: Segment, at: Instant) {
        self.waiting += segment.len();
        self.seq += 1;
        self.retries.push(Reverse(Due {
            at,
            seq: self.seq,
            segment,
        }));
    }

    /// Evicts up to `n` events from the retries that entered the backlog first (drop-oldest
    /// policy), splitting the last one if it is larger than needed; releases their keys.
    pub(crate) fn evict_oldest_retries(&mut self, n: usize) -> Vec<Segment> {
        let mut evicted = Vec::new();
        let mut left = n;
        if left == 0 || self.retries.is_empty() {
            return evicted;
        }
        let mut by_age: Vec<Due> = std::mem::take(&mut self.retries)
            .into_iter()
            .map(|r| r.0)
            .collect();
        by_age.sort_by_key(|due| due.seq);
        let mut kept = BinaryHeap::with_capacity(by_age.len());
        for mut due in by_age {
            if left > 0 {
                let segment = if due.segment.len() > left {
                    let front = due.segment.split_front(left);
                    kept.push(Reverse(due));
                    front
                } else {
                    due.segment
                };
                left -= segment.len();
                self.waiting -= segment.len();
                if let Some(key) = segment.key().cloned() {
                    self.release(&key);
                }
                evicted.push(segment);
            } else {
                kept.push(Reverse(due));
            }
        }
        self.retries = kept;
        evicted
    }

    /// Whether an event of `key` is in flight, waiting for a retry, or ready.
    pub(crate) fn is_busy(&self, key: &Arc<str>) -> bool {
        self.busy.contains_key(key)
    }

    /// Lets a keyed event go if its key is free; else it waits behind the busy one.
    pub(crate) fn admit(&mut self, segment: Segment) -> Admission {
        let key = segment.key().cloned().expect("admit takes keyed events");
        match self.busy.get_mut(&key) {
            Some(behind) => {
                self.waiting += segment.len();
                behind.push_back(segment);
                Admission::Held
            }
            None => {
                self.busy.insert(key, VecDeque::new());
                Admission::Go(segment)
            }
        }
    }

    /// The event of `key` that was busy reached a final state: the next one waiting behind it
    /// (if any) becomes ready.
    pub(crate) fn release(&mut self, key: &Arc<str>) {
        let Some(behind) = self.busy.get_mut(key) else {
            return;
        };
        match behind.pop_front() {
            Some(next) => self.ready.push_back(next),
            None => {
                self.busy.remove(key);
            }
        }
    }

    /// Takes every retry due later than `deadline` (shutting down: they can never be tried).
    pub(crate) fn take_due_after(&mut self, deadline: Instant) -> Vec<Segment> {
        if self.retries.iter().all(|Reverse(d)| d.at <= deadline) {
            return Vec::new();
        }
        let mut late = Vec::new();
        let retries = std::mem::take(&mut self.retries);
        self.retries = retries
            .into_iter()
            .filter_map(|Reverse(due)| {
                if due.at > deadline {
                    late.push(due.segment);
                    None
                } else {
                    Some(Reverse(due))
                }
            })
            .collect();
        self.waiting -= late.iter().map(Segment::len).sum::<usize>();
        late
    }

    /// Takes everything (leftovers at the end of a drain, or a fence).
    pub(crate) fn take_all(&mut self) -> Vec<Segment> {
        let mut all = std::mem::take(&mut self.in_flight);
        all.extend(self.ready.drain(..));
        all.extend(
            std::mem::take(&mut self.retries)
                .into_iter()
                .map(|r| r.0.segment),
        );
        for (_, behind) in self.busy.drain() {
            all.extend(behind);
        }
        self.waiting = 0;
        all
    }

    /// Takes everything and ignores whatever the consumer reports afterwards.
    pub(crate) fn fence(&mut self) -> Vec<Segment> {
        self.fenced = true;
        self.take_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_give_up_when_used_up_or_out_of_time_and_never_overflow() {
        let now = Instant::now();
        let policy = RetryPolicy::default().max_attempts(3);
        let mut a = Attempts::default();
        a.attempted(now);
        assert!(a.next(&policy, 1.0, None, now).is_some());
        a.attempted(now);
        a.attempted(now);
        assert_eq!(a.next(&policy, 1.0, None, now), None);

        let mut a = Attempts::default();
        a.attempted(now);
        let limited = RetryPolicy::default().max_elapsed(Duration::from_secs(1));
        assert_eq!(
            a.next(&limited, 1.0, Some(Duration::from_secs(2)), now),
            None
        );
        assert_eq!(
            a.next(&limited, 1.0, Some(Duration::MAX), now),
            None,
            "a wait too long to represent gives up instead of overflowing"
        );
        let unlimited = RetryPolicy::default().max_elapsed(Duration::MAX);
        assert!(
            a.next(&unlimited, 1.0, Some(Duration::from_secs(5)), now)
                .is_some()
        );
        assert_eq!(a.next(&unlimited, 1.0, Some(Duration::MAX), now), None);
    }

    #[test]
    fn the_longer_of_policy_delay_and_hint_wins() {
        let now = Instant::now();
        let policy = RetryPolicy::default().backoff(Duration::from_secs(1), Duration::from_secs(1));
        let mut a = Attempts::default();
        a.attempted(now);
        assert_eq!(
            a.next(&policy, 1.0, Some(Duration::from_secs(60)), now),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(
            a.next(&policy, 1.0, None, now),
            Some(now + Duration::from_secs(1))
        );
    }
}
