//! Idle connections to backends, kept for the next request to the same address.
//!
//! A parked connection is hyper's handle to it; the socket stays with its task,
//! which closes it as soon as the backend closes its side, so a backend that
//! stops or restarts (on a new port) leaves no descriptor behind. What is left
//! of it here, a handle to a closed connection, is dropped on the next visit to
//! that address or by the sweep, which also ends connections idle for longer
//! than `keep_idle`.
//!
//! A backend that has sent a reply nobody asked for is distrusted: for
//! [`DISTRUST_FOR`], none of its connections is kept, so every request to it
//! goes out on a connection of its own and a late stray reply can only ever
//! land on the connection that provoked it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Shared;
use super::Sender;

/// Idle connections kept per backend: enough for the concurrency a burst left
/// behind without holding thousands of descriptors after one.
const MAX_IDLE: usize = 512;

/// How long a backend that sent a stray reply goes without kept connections.
/// A backend is restarted on a new port, a new address to the pool, so this
/// lasts at most as long as one run of a remote server with the fault; a new
/// connection per request costs it tens of microseconds on loopback.
pub(crate) const DISTRUST_FOR: Duration = Duration::from_secs(3600);

pub(crate) struct Idle {
    pub sender: Sender,
    pub shared: Arc<Shared>,
    since: Instant,
}

pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    keep_idle: Duration,
    /// Backends (by authority) whose connections are not kept, and until when.
    distrusted: Mutex<HashMap<String, Instant>>,
}

impl Pool {
    pub(crate) fn new(keep_idle: Duration) -> Pool {
        Pool {
            idle: Mutex::default(),
            keep_idle,
            distrusted: Mutex::default(),
        }
    }

    /// `authority` sent bytes nobody asked for (`what`): its kept connections
    /// are closed and no connection to it is kept for [`DISTRUST_FOR`].
    pub(crate) fn distrust(&self, authority: &str, what: &str) {
        let until = Instant::now() + DISTRUST_FOR;
        let first = self
            .distrusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(authority.to_string(), until)
            .is_none();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(authority);
        if first {
            tracing::warn!(
                backend = authority,
                "{what}; its connections are no longer reused, so that no reply can reach a client it was not meant for"
            );
        }
    }

    pub(crate) fn is_distrusted(&self, authority: &str) -> bool {
        let distrusted = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
        distrusted
            .get(authority)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The most recently parked connection to `authority` that is still open;
    /// it checks its socket before it writes. It may still be finishing its
    /// last reply (hyper signals readiness a moment after the body's end):
    /// the caller waits for that.
    pub(crate) fn take(&self, authority: &str) -> Option<Idle> {
        if self.is_distrusted(authority) {
            return None;
        }
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
        if sender.is_closed() || self.is_distrusted(authority) {
            return;
        }
        shared.park();
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
        drop(idle);
        self.distrusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| now < *until);
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
