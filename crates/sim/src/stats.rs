use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Counters exposed at `/sim/stats`. Tests of the router read them to prove
/// which requests reached this backend and whether cancellation propagated.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
    last_request: Mutex<Option<Value>>,
}

impl Stats {
    /// Numbers a newly accepted inference request (1-based) and tracks it
    /// until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        let number = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard {
            stats: Arc::clone(self),
            number,
            completed: false,
        }
    }

    pub fn record_last_request(&self, request: Value) {
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
    }

    pub fn last_request(&self) -> Value {
        self.last_request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(Value::Null)
    }

    pub fn snapshot(&self) -> Value {
        json!({
            "requests": self.requests.load(Ordering::SeqCst),
            "completed": self.completed.load(Ordering::SeqCst),
            "cancelled": self.cancelled.load(Ordering::SeqCst),
            "in_flight": self.in_flight.load(Ordering::SeqCst),
            "pid": std::process::id(),
        })
    }
}

/// Lives as long as the work for one request. Dropping it without
/// [`RequestGuard::complete`] means the client went away first (hyper dropped
/// the handler future or the streamed body), which is exactly what
/// `cancelled` must count.
#[derive(Debug)]
pub struct RequestGuard {
    stats: Arc<Stats>,
    number: u64,
    completed: bool,
}

impl RequestGuard {
    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.completed {
            self.stats.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
            eprintln!("request {} cancelled", self.number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_completed_and_cancelled() {
        let stats = Arc::new(Stats::default());
        let first = stats.begin();
        let second = stats.begin();
        assert_eq!((first.number(), second.number()), (1, 2));
        assert_eq!(stats.snapshot()["in_flight"], 2);
        first.complete();
        drop(second);
        let snap = stats.snapshot();
        assert_eq!(snap["requests"], 2);
        assert_eq!(snap["completed"], 1);
        assert_eq!(snap["cancelled"], 1);
        assert_eq!(snap["in_flight"], 0);
        assert_eq!(snap["pid"], std::process::id());
    }
}
