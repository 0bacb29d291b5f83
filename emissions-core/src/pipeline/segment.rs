//! [`Segment`]: a run of one commit's events on their way to one adapter — the unit that
//! queues, batches, retries and settles.
//!
//! A segment settles itself through the ledger. One that is dropped without having settled (an
//! aborted consumer, a queue freed at exit, a panic unwinding through the engine) counts its
//! events as dropped with reason `shutdown` and hands them to the dead-letter hook, so no path
//! can leave a committed event without a final state.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::durable::AttemptOutcome;
use crate::ledger::{Commit, Destination, Final};
use crate::options::DeadLetterCause;
use crate::pipeline::retry::Attempts;
use crate::telemetry::DropReason;
use crate::{Event, Failure};

/// Events `start..end` of one commit, for adapter `lane`.
pub(crate) struct Segment {
    commit: Arc<Commit>,
    lane: usize,
    start: usize,
    end: usize,
    /// Attempts made at this adapter (shared by every event of the segment).
    attempts: Attempts,
    /// The ordering key, for adapters with `ordered_by` (such segments hold one event).
    key: Option<Arc<str>>,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("lane", &self.lane)
            .field("events", &(self.start..self.end))
            .field("attempts", &self.attempts.made())
            .field("key", &self.key)
            .finish()
    }
}

impl Segment {
    /// When its commit was recorded.
    pub(crate) fn opened(&self) -> std::time::Instant {
        self.commit.opened()
    }

    /// All of `commit`'s events, for `lane`.
    pub(crate) fn new(commit: Arc<Commit>, lane: usize) -> Self {
        let end = commit.events().len();
        Segment {
            commit,
            lane,
            start: 0,
            end,
            attempts: Attempts::default(),
            key: None,
        }
    }

    pub(crate) fn attempts(&self) -> Attempts {
        self.attempts
    }

    /// Counts an attempt that is being made now.
    pub(crate) fn attempted(&mut self, now: tokio::time::Instant) {
        self.attempts.attempted(now);
    }

    pub(crate) fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }

    pub(crate) fn set_key(&mut self, key: Arc<str>) {
        self.key = Some(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn events(&self) -> &[Event] {
        &self.commit.events()[self.start..self.end]
    }

    /// The segment's events, kept alive on their own (for lending them to an adapter call
    /// without cloning each event).
    pub(crate) fn shared_events(&self) -> SharedEvents {
        SharedEvents {
            commit: self.commit.clone(),
            start: self.start,
            end: self.end,
        }
    }

    /// Splits off the first `n` events (`n < len`) as a segment of their own.
    pub(crate) fn split_front(&mut self, n: usize) -> Segment {
        debug_assert!(n <= self.len());
        let front = Segment {
            commit: self.commit.clone(),
            lane: self.lane,
            start: self.start,
            end: self.start + n,
            attempts: self.attempts,
            key: self.key.clone(),
        };
        self.start += n;
        front
    }

    /// Splits into runs of consecutive events for which `decide` (called once per event, in
    /// order) gives the same answer.
    pub(crate) fn split_by<T: PartialEq>(
        mut self,
        decide: impl FnMut(&Event) -> T,
    ) -> Vec<(T, Segment)> {
        let decisions: Vec<T> = self.events().iter().map(decide).collect();
        let mut runs: Vec<(T, Segment)> = Vec::new();
        let mut decisions = decisions.into_iter().peekable();
        while let Some(first) = decisions.next() {
            let mut n = 1;
            while decisions.next_if(|next| *next == first).is_some() {
                n += 1;
            }
            runs.push((first, self.split_front(n)));
        }
        runs
    }

    /// Whether these are attempts handed over by a durable store (one attempt each: no retry,
    /// key or dead letter here; outcomes go back to the store).
    pub(crate) fn is_durable(&self) -> bool {
        self.commit.is_durable()
    }

    /// Records every event of the segment as having reached `state`. (For a durable segment,
    /// `state` must be one that needs no detail: delivered, filtered or dropped.)
    pub(crate) fn settle(self, state: Final) {
        let outcome = match state {
            Final::Delivered => AttemptOutcome::Delivered,
            Final::Filtered => AttemptOutcome::Filtered,
            _ => AttemptOutcome::Dropped {
                reason: DropReason::Shutdown,
            },
        };
        self.settle_as(state, &outcome);
    }

    /// Records every event as having reached `state`; a durable store is told `outcome`.
    pub(crate) fn settle_as(mut self, state: Final, outcome: &AttemptOutcome) {
        let range = self.start..self.end;
        self.start = self.end;
        self.commit
            .settle_durable(self.lane, range, self.attempts.made(), state, outcome);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.len() > 0 && self.is_durable() {
            // The store still has these: it hears they were dropped, nothing is lost.
            let range = self.start..self.end;
            self.start = self.end;
            let outcome = AttemptOutcome::Dropped {
                reason: DropReason::Shutdown,
            };
            self.commit.settle_durable(
                self.lane,
                range,
                self.attempts.made(),
                Final::Dropped,
                &outcome,
            );
        } else if self.len() > 0 {
            // Abandoned: an aborted consumer, a queue freed at exit, an unwinding panic.
            let ledger = self.commit.ledger().clone();
            ledger.report_dropped(
                Destination::Adapter(self.lane),
                self.events(),
                DropReason::Shutdown,
                self.attempts.made(),
            );
            let n = self.len();
            self.start = self.end;
            self.commit.settle(self.lane, Final::Dropped, n);
        }
    }
}

/// A segment's events, borrowed from their commit.
pub(crate) struct SharedEvents {
    commit: Arc<Commit>,
    start: usize,
    end: usize,
}

impl std::ops::Deref for SharedEvents {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.commit.events()[self.start..self.end]
    }
}

/// Drops `segments` for `reason`: reported, dead-lettered (one dead letter per adapter and
/// number of attempts), then counted as dropped.
pub(crate) fn drop_all(segments: Vec<Segment>, reason: DropReason) {
    let (durable, segments): (Vec<Segment>, Vec<Segment>) =
        segments.into_iter().partition(Segment::is_durable);
    for segment in durable {
        // Not lost: the store still has them.
        segment.settle_as(Final::Dropped, &AttemptOutcome::Dropped { reason });
    }
    for ((lane, attempts), group) in group_by_lane_and_attempts(segments) {
        let ledger = group[0].commit.ledger().clone();
        let events: Vec<Event> = group.iter().flat_map(|s| s.events().to_vec()).collect();
        ledger.report_dropped(Destination::Adapter(lane), &events, reason, attempts);
        for segment in group {
            segment.settle(Final::Dropped);
        }
    }
}

/// Gives up on `segments` after `failure`: dead-lettered (one dead letter per adapter and
/// number of attempts), then counted as failed.
pub(crate) fn fail_all(segments: Vec<Segment>, failure: Failure) {
    let (durable, segments): (Vec<Segment>, Vec<Segment>) =
        segments.into_iter().partition(Segment::is_durable);
    if !durable.is_empty() {
        // The store decides what giving up means; no dead letter from here.
        let outcome = AttemptOutcome::Failed {
            error: failure.to_string(),
        };
        for segment in durable {
            segment.settle_as(Final::Failed, &outcome);
        }
    }
    if segments.is_empty() {
        return;
    }
    let mut failure = Some(failure);
    let groups = group_by_lane_and_attempts(segments);
    let last = groups.len().saturating_sub(1);
    for (i, ((lane, attempts), group)) in groups.into_iter().enumerate() {
        let ledger = group[0].commit.ledger().clone();
        let events: Vec<Event> = group.iter().flat_map(|s| s.events().to_vec()).collect();
        let this = match &failure {
            Some(f) if i < last => f.duplicate(),
            _ => failure.take().expect("one failure per group"),
        };
        ledger.dead_letter(
            Destination::Adapter(lane),
            events,
            this,
            attempts,
            DeadLetterCause::Failed,
        );
        for segment in group {
            segment.settle(Final::Failed);
        }
    }
}

fn group_by_lane_and_attempts(segments: Vec<Segment>) -> BTreeMap<(usize, u32), Vec<Segment>> {
    let mut groups: BTreeMap<(usize, u32), Vec<Segment>> = BTreeMap::new();
    for segment in segments {
        if segment.len() > 0 {
            groups
                .entry((segment.lane, segment.attempts.made()))
                .or_default()
                .push(segment);
        }
    }
    groups
}
