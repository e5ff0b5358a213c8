//! The requests waiting for one model, in arrival order, with their deadlines
//! kept in an ordered index beside them (as mini-redis keeps its expirations):
//! the owner asks for the next deadline after every message, and with
//! `max_queue` up to a million a scan of every waiter would cost more than the
//! message. Every way in or out of the queue goes through this type, so the
//! index never names a waiter that has left.

use std::collections::{BTreeSet, VecDeque};

use tokio::time::Instant;

use super::Reply;

pub(super) struct Waiter {
    pub reply: Reply,
    pub deadline: Instant,
    pub since: Instant,
    /// Arrival order; instants can tie, this cannot. Increases along the queue.
    pub seq: u64,
    pub ask: crate::Ask,
}

#[derive(Default)]
pub(super) struct Queue {
    waiters: VecDeque<Waiter>,
    /// (deadline, seq) of every waiter in `waiters`.
    deadlines: BTreeSet<(Instant, u64)>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub fn front(&self) -> Option<&Waiter> {
        self.waiters.front()
    }

    pub fn push_back(&mut self, w: Waiter) {
        debug_assert!(self.waiters.back().is_none_or(|b| b.seq < w.seq));
        self.deadlines.insert((w.deadline, w.seq));
        self.waiters.push_back(w);
    }

    pub fn pop_front(&mut self) -> Option<Waiter> {
        let w = self.waiters.pop_front()?;
        self.deadlines.remove(&(w.deadline, w.seq));
        Some(w)
    }

    /// The earliest deadline of any waiter: O(log n).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Takes out every waiter whose deadline is at or before `now`, earliest
    /// first: O(log n) each.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Waiter> {
        let mut out = Vec::new();
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Ok(i) = self.waiters.binary_search_by_key(&seq, |w| w.seq) {
                out.extend(self.waiters.remove(i));
            }
        }
        out
    }

    /// Drops the waiters whose client has gone away.
    pub fn retain_open(&mut self) {
        let deadlines = &mut self.deadlines;
        self.waiters.retain(|w| {
            let open = !w.reply.is_closed();
            if !open {
                deadlines.remove(&(w.deadline, w.seq));
            }
            open
        });
    }

    /// Takes out every waiter, in arrival order.
    pub fn drain(&mut self) -> impl Iterator<Item = Waiter> + '_ {
        self.deadlines.clear();
        self.waiters.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn waiter(
        seq: u64,
        after_s: u64,
        t0: Instant,
    ) -> (
        Waiter,
        tokio::sync::oneshot::Receiver<Result<crate::Lease, crate::SupervisorError>>,
    ) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let w = Waiter {
            reply,
            deadline: t0 + Duration::from_secs(after_s),
            since: t0,
            seq,
            ask: crate::Ask::default(),
        };
        (w, rx)
    }

    #[test]
    fn the_next_deadline_follows_waiters_in_and_out() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        let mut keep = Vec::new();
        for (seq, after) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            let (w, rx) = waiter(seq, after, t0);
            q.push_back(w);
            keep.push(rx);
        }
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(10)));
        let expired = q.take_expired(t0 + Duration::from_secs(10));
        assert_eq!(
            expired.iter().map(|w| w.seq).collect::<Vec<_>>(),
            vec![2, 4],
            "both due, and only those"
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_front().map(|w| w.seq), Some(1));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(20)));
        drop(keep.remove(2)); // waiter 3's client goes away
        q.retain_open();
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None, "nothing left names a deadline");
    }
}
