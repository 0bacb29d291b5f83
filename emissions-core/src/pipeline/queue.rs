//! [`Inbox`]: one adapter's bounded queue of committed events.
//!
//! A commit enters every inbox as one [`Segment`] (not one item per event), so fan-out costs
//! one push per adapter per commit. Capacity is counted in events by a semaphore whose permits
//! are the free places: a blocking commit waits for its permits *before* anything is recorded
//! (cancel-safe, fair; a commit larger than the whole queue waits for all of it, then goes in
//! whole), drop-newest takes what is free, drop-oldest evicts exactly as many of
//! the oldest queued events as it needs (splitting a queued segment if it must). The consumer
//! takes up to `max_demand` events at a time and frees their places as it takes them.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{AcquireError, Notify, Semaphore, SemaphorePermit};

use crate::OverflowPolicy;
use crate::pipeline::segment::Segment;
use crate::telemetry::DropReason;

#[derive(Debug, Default)]
struct State {
    segments: VecDeque<Segment>,
    /// Events queued.
    len: usize,
    /// Events queued beyond capacity by a blocking commit larger than the whole queue (it
    /// waited for an empty queue); their places are not given back when they are taken.
    overdraft: usize,
    closed: bool,
}

/// One adapter's queue.
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// One permit per free place.
    room: Semaphore,
    capacity: usize,
    policy: OverflowPolicy,
    /// Wakes the consumer (a stored permit means "look again").
    wake: Notify,
}

impl Inbox {
    pub(crate) fn new(capacity: usize, policy: OverflowPolicy) -> Self {
        Inbox {
            state: Mutex::new(State::default()),
            room: Semaphore::new(capacity),
            capacity,
            policy,
            wake: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// Gives back the places of a reservation for `n` events that was not used.
    pub(crate) fn unreserve(&self, n: usize) {
        self.room.add_permits(self.places(n) as usize);
    }

    /// Waits for room for `n` events — for the whole queue when `n` exceeds it — (block
    /// policy). Cancel-safe: dropping the future or the permit gives the places back. Fails
    /// once the inbox is closed.
    pub(crate) async fn reserve(&self, n: usize) -> Result<SemaphorePermit<'_>, AcquireError> {
        self.room.acquire_many(self.places(n)).await
    }

    /// Room for `n` events now (the whole queue when `n` exceeds it), or `None`.
    pub(crate) fn try_reserve(&self, n: usize) -> Option<SemaphorePermit<'_>> {
        self.room.try_acquire_many(self.places(n)).ok()
    }

    fn places(&self, n: usize) -> u32 {
        // Capacity is validated to fit in a u32.
        u32::try_from(n.min(self.capacity)).unwrap_or(u32::MAX)
    }

    /// Queues `segment` (under the pipeline's fan-out lock). `reserved` is the room a blocking
    /// commit waited for; otherwise the overflow policy makes room. What does not fit is
    /// returned in `overflow`, to be dropped once the fan-out lock is released.
    pub(crate) fn push(
        &self,
        mut segment: Segment,
        reserved: Option<usize>,
        overflow: &mut Vec<(Segment, DropReason)>,
    ) {
        let n = segment.len();
        let mut state = self.state();
        if state.closed {
            if let Some(events) = reserved {
                self.unreserve(events);
            }
            if n > 0 {
                overflow.push((segment, DropReason::Shutdown));
            }
            return;
        }
        match (reserved, self.policy) {
            (Some(events), _) => {
                // The reservation was for `events` (or the whole queue when that exceeds it);
                // more may have been waited for than were taken.
                let reserved = self.places(events) as usize;
                if reserved > n {
                    self.room.add_permits(reserved - n);
                } else {
                    state.overdraft += n - reserved;
                }
                if n == 0 {
                    return;
                }
            }
            (None, _) if n == 0 => return,
            (None, OverflowPolicy::DropOldest) => {
                if n > self.capacity {
                    // The commit's own oldest events make way for its newer ones.
                    overflow.push((
                        segment.split_front(n - self.capacity),
                        DropReason::QueueEvicted,
                    ));
                }
                let n = segment.len();
                let free = self.take_free(n);
                let mut evict = n - free;
                while evict > 0 {
                    let Some(mut oldest) = state.segments.pop_front() else {
                        break;
                    };
                    let evicted = if oldest.len() > evict {
                        let front = oldest.split_front(evict);
                        state.segments.push_front(oldest);
                        front
                    } else {
                        oldest
                    };
                    evict -= evicted.len();
                    state.len -= evicted.len();
                    overflow.push((evicted, DropReason::QueueEvicted));
                }
                if evict > 0 {
                    // Cannot happen while queued + free == capacity; never queue past it.
                    overflow.push((segment.split_front(evict), DropReason::QueueFull));
                }
            }
            (None, _) => {
                let free = self.take_free(n);
                if free < n {
                    let fits = segment.split_front(free);
                    let newest = std::mem::replace(&mut segment, fits);
                    overflow.push((newest, DropReason::QueueFull));
                }
            }
        }
        if segment.len() > 0 {
            state.len += segment.len();
            state.segments.push_back(segment);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Takes up to `n` free places at once (no waiting); returns how many.
    fn take_free(&self, n: usize) -> usize {
        loop {
            let free = self.room.available_permits().min(n);
            if free == 0 {
                return 0;
            }
            let want = u32::try_from(free).unwrap_or(u32::MAX);
            match self.room.try_acquire_many(want) {
                Ok(permit) => {
                    permit.forget();
                    return want as usize;
                }
                Err(tokio::sync::TryAcquireError::Closed) => return 0,
                Err(tokio::sync::TryAcquireError::NoPermits) => {}
            }
        }
    }

    /// Takes up to `max` events for the consumer and frees their places.
    pub(crate) fn take(&self, max: usize, out: &mut Vec<Segment>) -> usize {
        let mut state = self.state();
        let mut taken = 0;
        while taken < max {
            let Some(mut segment) = state.segments.pop_front() else {
                break;
            };
            let room = max - taken;
            if segment.len() > room {
                out.push(segment.split_front(room));
                state.segments.push_front(segment);
                taken += room;
                break;
            }
            taken += segment.len();
            out.push(segment);
        }
        state.len -= taken;
        let unpaid = taken.min(state.overdraft);
        state.overdraft -= unpaid;
        if taken > unpaid && !state.closed {
            // Freed under the lock, so that queued + free == capacity whenever the lock is free
            // (drop-oldest relies on it).
            self.room.add_permits(taken - unpaid);
        }
        taken
    }

    /// Stops accepting: waiting committers fail, the consumer is woken to drain.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.room.close();
        self.wake.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Closed and nothing queued: the consumer may finish.
    pub(crate) fn is_drained(&self) -> bool {
        let state = self.state();
        state.closed && state.len == 0
    }

    /// Events queued, and when the oldest of them was committed (the queue is in commit
    /// order).
    pub(crate) fn pending(&self) -> (usize, Option<std::time::Instant>) {
        let state = self.state();
        let events = state.segments.iter().map(Segment::len).sum();
        (events, state.segments.front().map(Segment::opened))
    }

    /// Takes everything queued.
    pub(crate) fn drain(&self) -> Vec<Segment> {
        let mut state = self.state();
        state.len = 0;
        state.overdraft = 0;
        state.segments.drain(..).collect()
    }

    /// Makes the consumer look again (a stored permit if it is busy).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes when a commit arrived (or the inbox closed) since the consumer last looked.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
