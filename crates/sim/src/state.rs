use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::args::Args;
use crate::flavor::FlavorState;
use crate::stats::Stats;

/// What every request handler needs: the configured behaviour plus the
/// mutable bits (readiness, counters, the resident memory block).
#[derive(Debug)]
pub struct SimState {
    pub models: Vec<String>,
    pub tokens: u64,
    pub token_delay: Duration,
    pub crash_after: Option<u64>,
    pub stall_after: Option<u64>,
    pub fail: Option<crate::misbehave::Failure>,
    pub stats: Arc<Stats>,
    pub flavor: FlavorState,
    ready: AtomicBool,
    /// Held only so the allocation stays resident for the process lifetime.
    memory: Mutex<Vec<u8>>,
}

impl SimState {
    pub fn new(args: &Args, flavor: FlavorState) -> Self {
        Self {
            models: args.models.clone(),
            tokens: args.tokens,
            token_delay: args.token_delay,
            crash_after: args.crash_after,
            stall_after: args.stall_after,
            fail: args.fail,
            stats: Arc::default(),
            flavor,
            ready: AtomicBool::new(false),
            memory: Mutex::new(Vec::new()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn finish_loading(&self, memory: Vec<u8>) {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = memory;
        // Stamped just before: a benchmark then counts the write as the router's time, not the backend's.
        crate::timeline::mark(crate::timeline::Step::Ready);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether request `number` is the one that must take the process down.
    pub fn should_crash(&self, number: u64) -> bool {
        self.crash_after.is_some_and(|served| number > served)
    }

    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}
