use std::any::Any;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::completions::sse_event;
use crate::reply::Reply;
use crate::stats::RequestGuard;

/// How long a crashing stream lingers after its first token was handed to
/// hyper, so the bytes reach the client before the process dies.
const CRASH_FLUSH_GRACE: Duration = Duration::from_millis(100);

/// A response body fed one SSE event per frame by the generating task.
///
/// Hyper drops it when the client goes away; the generator sees its sender
/// close and stops, which is how cancellation reaches `/sim/stats`.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self { rx }
    }
}

/// What a flavor adds to a plain OpenAI stream.
#[derive(Default)]
pub struct StreamExtras {
    /// Kept until the stream ends: a model lease or a concurrency permit.
    pub hold: Option<Box<dyn Any + Send>>,
    /// Changes when the model is unloaded under the stream, which ends it
    /// with an error event.
    pub abort: Option<watch::Receiver<u64>>,
    /// Sent before anything else, like oMLX's keep-alive chunk.
    pub prelude: Option<Value>,
}

/// Resolves once `abort` changes; never if there is nothing to watch.
pub async fn aborted(abort: &mut Option<watch::Receiver<u64>>) {
    match abort {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn has_aborted(abort: &Option<watch::Receiver<u64>>) -> bool {
    abort
        .as_ref()
        .is_some_and(|rx| rx.has_changed().unwrap_or(false))
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Starts generating `reply` as server-sent events, with a flavor's
/// additions, and returns the body that carries them.
pub fn spawn_stream(
    reply: impl Reply,
    guard: RequestGuard,
    token_delay: Duration,
    crash: bool,
    stall_after: Option<u64>,
    extras: StreamExtras,
) -> ChannelBody {
    // Capacity 1: the generator runs at most one event ahead of the client,
    // and a full channel means the previous event has not been taken yet.
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(generate(
        tx,
        reply,
        guard,
        token_delay,
        crash,
        stall_after,
        extras,
    ));
    ChannelBody { rx }
}

async fn generate(
    tx: mpsc::Sender<Bytes>,
    reply: impl Reply,
    guard: RequestGuard,
    token_delay: Duration,
    crash: bool,
    stall_after: Option<u64>,
    extras: StreamExtras,
) {
    let StreamExtras {
        hold: _hold,
        mut abort,
        prelude,
    } = extras;
    // Every early return drops `guard` uncompleted, counting a cancellation.
    if let Some(prelude) = prelude {
        if tx.send(sse_event(&prelude)).await.is_err() {
            return;
        }
    }
    if !send_all(&tx, reply.opening_events()).await {
        return;
    }
    for i in 0..reply.tokens() {
        if !token_delay.is_zero() {
            // Watching `closed` notices a departed client during the delay
            // instead of only at the next send.
            // `changed()` marks the abort as seen, so remember it here.
            let mut unloaded = false;
            tokio::select! {
                () = tokio::time::sleep(token_delay) => {}
                () = tx.closed() => return,
                () = aborted(&mut abort) => unloaded = true,
            }
            if unloaded {
                send_all(&tx, reply.abort_events(i)).await;
                return;
            }
        }
        if has_aborted(&abort) {
            send_all(&tx, reply.abort_events(i)).await;
            return;
        }
        if tx.send(reply.token_event(i)).await.is_err() {
            return;
        }
        if crash {
            crash_after_flush(&tx, guard.number()).await;
        }
        if stall_after == Some(i + 1) {
            // Hung: nothing more, until the other side gives up.
            tx.closed().await;
            return;
        }
    }
    if crash {
        crash_after_flush(&tx, guard.number()).await;
    }
    if !send_all(&tx, reply.closing_events()).await {
        return;
    }
    // Only once hyper has taken the last event is the response complete; a
    // client leaving before that still counts as cancelled.
    if tx.reserve().await.is_err() {
        return;
    }
    guard.complete();
}

/// False once the client has gone.
async fn send_all(tx: &mpsc::Sender<Bytes>, events: Vec<Bytes>) -> bool {
    for event in events {
        if tx.send(event).await.is_err() {
            return false;
        }
    }
    true
}

async fn crash_after_flush(tx: &mpsc::Sender<Bytes>, number: u64) -> ! {
    // A free slot means hyper has taken the event just sent.
    let _ = tx.reserve().await;
    tokio::time::sleep(CRASH_FLUSH_GRACE).await;
    eprintln!("request {number}: crashing as instructed by --crash-after");
    std::process::exit(1);
}
