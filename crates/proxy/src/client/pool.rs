//! Idle connections to backends, kept for the next request to the same address.
//!
//! A parked connection is hyper's handle to it; the socket stays with its task,
//! which closes it as soon as the backend closes its side, so a backend that
//! stops or restarts (on a new port) leaves no descriptor behind. What is left
//! of it here, a handle to a closed connection, is dropped on the next visit to
//! that address or by the sweep, which also ends connections idle for longer
//! than `keep_idle`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Shared;
use super::Sender;

/// Idle connections kept per backend: enough for the concurrency a burst left
/// behind without holding thousands of descriptors after one.
const MAX_IDLE: usize = 512;

pub(crate) struct Idle {
    pub sender: Sender,
    pub shared: Arc<Shared>,
    since: Instant,
}

pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    keep_idle: Duration,
}

impl Pool {
    pub(crate) fn new(keep_idle: Duration) -> Pool {
        Pool {
            idle: Mutex::default(),
            keep_idle,
        }
    }

    /// The most recently parked connection to `authority` that is still open;
    /// it checks its socket before it writes. It may still be finishing its
    /// last reply (hyper signals readiness a moment after the body's end):
    /// the caller waits for that.
    pub(crate) fn take(&self, authority: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let parked = idle.get_mut(authority)?;
        let now = Instant::now();
        let mut found = None;
        // Newest first; closed or expired ones are dropped on the way.
        while let Some(conn) = parked.pop() {
            if !conn.sender.is_closed() && now.duration_since(conn.since) < self.keep_idle {
                found = Some(conn);
                break;
            }
        }
        if parked.is_empty() {
            idle.remove(authority);
        }
        let conn = found?;
        conn.shared.check_next_write();
        Some(conn)
    }

    pub(crate) fn put(&self, authority: &str, sender: Sender, shared: Arc<Shared>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let parked = match idle.get_mut(authority) {
            Some(p) => p,
            None => idle.entry(authority.to_string()).or_default(),
        };
        if parked.len() >= MAX_IDLE {
            // The oldest goes: it is the likeliest to be closed by the backend.
            parked.remove(0);
        }
        parked.push(Idle {
            sender,
            shared,
            since: Instant::now(),
        });
    }

    /// Drops every handle to a closed connection and ends those idle past
    /// `keep_idle`.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|_, parked| {
            parked
                .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < self.keep_idle);
            !parked.is_empty()
        });
    }

    /// Sweeps every `every` for as long as the pool is in use.
    pub(crate) fn spawn_sweeper(pool: &Arc<Pool>, every: Duration) {
        let weak = Arc::downgrade(pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
    }
}
