//! Idle connections to backends, kept for the next request to the same address.
//! Parked connections hold no buffer: a socket and the time it was parked.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle connection is kept; backends close theirs sooner or later
/// (uvicorn after 5 s), which the check on reuse notices.
const KEEP_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per backend: enough for the concurrency a burst left
/// behind without holding thousands of descriptors after one.
const MAX_IDLE: usize = 512;

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, VecDeque<(TcpStream, Instant)>>>,
}

impl Pool {
    /// The most recently parked live connection to `authority`, if any.
    pub(crate) fn take(&self, authority: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let parked = idle.get_mut(authority)?;
        let now = Instant::now();
        while let Some((conn, since)) = parked.pop_back() {
            // Every time: a close (or stray bytes) that came in since the
            // connection was parked is only a readiness flag to look at until
            // the socket is seen readable, and then one peek.
            if now.duration_since(since) < KEEP_IDLE && quiet(&conn) {
                return Some(conn);
            }
        }
        None
    }

    pub(crate) fn put(&self, authority: &str, conn: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let parked = match idle.get_mut(authority) {
            Some(p) => p,
            None => idle.entry(authority.to_string()).or_default(),
        };
        while parked
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= KEEP_IDLE)
            || parked.len() >= MAX_IDLE
        {
            parked.pop_front();
        }
        parked.push_back((conn, now));
    }
}

/// An idle connection must have nothing to read: a backend that closed it (or
/// sent bytes nobody asked for) makes it unusable.
fn quiet(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(conn.poll_peek(&mut cx, &mut buf), Poll::Pending)
}
