//! The requests waiting for one model, in arrival order, with their deadlines
//! kept in an ordered index beside them (as mini-redis keeps its expirations):
//! the owner asks for the next deadline after every message, and with
//! `max_queue` up to a million a scan of every waiter would cost more than the
//! message. Every way in or out of the queue goes through this type, so the
//! index never names a waiter that has left. A client that gives up is taken
//! out by its acquire's id, also in O(log n).
//!
//! Two lanes, each in arrival order: interactive requests are served before
//! background ones queued earlier for the same model.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::time::Instant;

use super::Reply;

pub(super) struct Waiter {
    pub reply: Reply,
    pub deadline: Instant,
    pub since: Instant,
    /// Arrival order; instants can tie, this cannot. Increases along the queue.
    pub seq: u64,
    /// The acquire's own number, by which its client gives up its place.
    pub id: u64,
    pub ask: crate::Ask,
}

#[derive(Default)]
pub(super) struct Queue {
    /// Interactive waiters, then background ones; each lane by arrival (seq).
    lanes: [BTreeMap<u64, Waiter>; 2],
    /// (deadline, seq) of every waiter in either lane.
    deadlines: BTreeSet<(Instant, u64)>,
    /// id -> (lane, seq) of every waiter.
    ids: HashMap<u64, (usize, u64)>,
}

fn lane(w: &Waiter) -> usize {
    match w.ask.priority {
        crate::Priority::Interactive => 0,
        crate::Priority::Background => 1,
    }
}

impl Queue {
    pub fn len(&self) -> usize {
        self.lanes[0].len() + self.lanes[1].len()
    }

    /// Background waiters.
    pub fn background(&self) -> usize {
        self.lanes[1].len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(BTreeMap::is_empty)
    }

    /// The next to be served: the first interactive waiter, else the first background one.
    pub fn front(&self) -> Option<&Waiter> {
        self.lanes
            .iter()
            .find_map(|l| l.first_key_value().map(|(_, w)| w))
    }

    pub fn push_back(&mut self, w: Waiter) {
        let l = lane(&w);
        debug_assert!(self.lanes[l]
            .last_key_value()
            .is_none_or(|(s, _)| *s < w.seq));
        self.deadlines.insert((w.deadline, w.seq));
        self.ids.insert(w.id, (l, w.seq));
        self.lanes[l].insert(w.seq, w);
    }

    pub fn pop_front(&mut self) -> Option<Waiter> {
        let (_, w) = match self.lanes[0].pop_first() {
            Some(first) => first,
            None => self.lanes[1].pop_first()?,
        };
        self.forget(&w);
        Some(w)
    }

    fn forget(&mut self, w: &Waiter) {
        self.deadlines.remove(&(w.deadline, w.seq));
        self.ids.remove(&w.id);
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
            for lane in &mut self.lanes {
                if let Some(w) = lane.remove(&seq) {
                    self.ids.remove(&w.id);
                    out.push(w);
                }
            }
        }
        out
    }

    /// Takes out the waiter of acquire `id`, whose client gave up: O(log n).
    /// None if it has left already (served, timed out).
    pub fn remove_id(&mut self, id: u64) -> Option<Waiter> {
        let (lane, seq) = self.ids.remove(&id)?;
        let w = self.lanes[lane].remove(&seq)?;
        self.deadlines.remove(&(w.deadline, w.seq));
        Some(w)
    }

    /// Takes out every waiter: the interactive lane, then the background one,
    /// each in arrival order.
    pub fn drain(&mut self) -> impl Iterator<Item = Waiter> {
        self.deadlines.clear();
        self.ids.clear();
        let [interactive, background] = std::mem::take(&mut self.lanes);
        interactive.into_values().chain(background.into_values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Rx = tokio::sync::oneshot::Receiver<Result<crate::Lease, crate::SupervisorError>>;

    fn waiter(seq: u64, after_s: u64, t0: Instant) -> (Waiter, Rx) {
        waiter_at(seq, after_s, t0, crate::Priority::Interactive)
    }

    fn waiter_at(seq: u64, after_s: u64, t0: Instant, priority: crate::Priority) -> (Waiter, Rx) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let w = Waiter {
            reply,
            deadline: t0 + Duration::from_secs(after_s),
            since: t0,
            seq,
            id: seq + 100,
            ask: crate::Ask {
                priority,
                ..Default::default()
            },
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
        assert!(q.remove_id(103).is_some(), "waiter 3's client gives up");
        assert!(q.remove_id(103).is_none(), "once");
        assert!(q.remove_id(102).is_none(), "waiter 2 timed out already");
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None, "nothing left names a deadline");
    }

    #[test]
    fn interactive_waiters_go_before_background_ones_queued_earlier() {
        use crate::Priority::{Background, Interactive};
        let t0 = Instant::now();
        let mut q = Queue::default();
        let mut keep = Vec::new();
        for (seq, after, p) in [
            (1, 30, Background),
            (2, 5, Background),
            (3, 10, Interactive),
            (4, 40, Background),
        ] {
            let (w, rx) = waiter_at(seq, after, t0, p);
            q.push_back(w);
            keep.push(rx);
        }
        assert_eq!((q.len(), q.background()), (4, 3));
        assert_eq!(
            q.front().map(|w| w.seq),
            Some(3),
            "the interactive one is next"
        );
        let expired = q.take_expired(t0 + Duration::from_secs(5));
        assert_eq!(expired.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![2]);
        assert!(q.remove_id(104).is_some(), "a background client gives up");
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front().map(|w| w.seq)).collect();
        assert_eq!(order, vec![3, 1]);
        assert_eq!(q.next_deadline(), None);
    }
}
