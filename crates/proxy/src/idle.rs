//! When a client connection is idle: no request in flight (a streamed response
//! counts until its last byte) since some time. An idle connection is closed
//! after `idle_connection_timeout`, HTTP/2 ones with a GOAWAY, so connections
//! that opened and then went quiet cannot hold `max_connections` for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{Body, BoxError};

/// One connection's requests in flight and when the last one ended.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        })
    }

    /// A request has begun; the returned guard, put in its response, ends it.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once the connection has been idle for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        loop {
            let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
            let idle = self.in_flight.load(Ordering::Acquire) == 0;
            let due = since + limit;
            if idle && Instant::now() >= due {
                return;
            }
            // Busy: look again a whole period on, which is the soonest it
            // could have been idle for that long.
            let next = if idle { due } else { Instant::now() + limit };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A request in flight on its connection.
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it ends or is dropped.
pub(crate) struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl Tracked {
    pub(crate) fn new(inner: Body, busy: Busy) -> Tracked {
        Tracked { inner, _busy: busy }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight_for_the_whole_period() {
        let a = Activity::new();
        let limit = Duration::from_secs(60);
        let busy = a.begin();
        let watch = {
            let a = a.clone();
            tokio::spawn(async move {
                a.idle_for(limit).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!watch.is_finished(), "a request in flight is not idleness");
        let ended = Instant::now();
        drop(busy);
        let closed_at = watch.await.unwrap();
        assert!(
            closed_at >= ended + limit,
            "closed {:?} after the end",
            closed_at - ended
        );
        assert!(closed_at <= ended + limit * 2);
    }
}
