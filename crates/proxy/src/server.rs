//! The listener: HTTP/1.1 and h2c on one port, a tower stack per connection, and a
//! graceful stop that lets requests in flight finish (bounded).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use modelyard_config::Config;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::body::{Body, BoxError};
use crate::conn::{self, Gate};
use crate::error::ApiError;
use crate::idle;
use crate::Router;

/// Request ids unique within a run and unlikely to repeat across runs.
#[derive(Clone)]
struct Ids {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for Ids {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("req-{:08x}-{n:06x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

/// How long an idle connection told to close may take to do so.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long requests in flight get to finish once a stop is asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then stops accepting and waits (bounded) for
/// the connections still answering.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    let ids = Ids {
        prefix: std::process::id() ^ (router.inner.started_unix as u32).rotate_left(16),
        next: Arc::new(AtomicU64::new(1)),
    };
    let closing = router.inner.closing.clone();
    let inner = router.inner.clone();
    // One stack per connection, so the handler knows the peer it answers.
    let stack = move |peer: std::net::SocketAddr, activity: Arc<idle::Activity>| {
        let router = router.clone();
        let handler = tower::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            let id = request_id(&req);
            let busy = activity.begin();
            async move {
                // Boxed: a service future's state stays allocated for as long as
                // its response streams (hyper keeps an h1 connection's slot and an
                // h2 stream's task), while a box is freed once the head is sent.
                let answer = Box::pin(router.traced(req, peer));
                let resp = caught(&id, answer).await;
                // The connection stays busy until the response's last byte.
                Ok::<Response<Body>, Infallible>(
                    resp.map(|b| idle::Tracked::new(b, busy).boxed_unsync()),
                )
            }
        });
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(ids.clone()))
            .layer(PropagateRequestIdLayer::x_request_id())
            .service(handler)
    };
    let gate = Gate::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Read per connection, so a reload's limits apply to the next one.
        let config = inner.config();
        let Some(slot) = gate.enter(config.max_connections) else {
            tracing::warn!(%peer, "refused a connection: {} already open (max_connections)", config.max_connections);
            tokio::spawn(conn::refuse(stream, config.max_connections));
            continue;
        };
        let activity = idle::Activity::new();
        let service = TowerToHyperService::new(stack(peer, activity.clone()));
        let mut stopping = closing.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let header_timeout = config.header_timeout;
            let (socket, spare) = conn::split(stream);
            match conn::opening(&spare.stream, header_timeout).await {
                conn::Opening::Request => {}
                conn::Opening::Silent => return,
                conn::Opening::Stalled => {
                    return ended(Ended::Stalled, spare, peer, header_timeout).await;
                }
            }
            let conn = builder(&config)
                .serve_connection(TokioIo::new(socket), service)
                .into_owned();
            let mut conn = std::pin::pin!(conn);
            let idle_limit = config.idle_connection_timeout;
            let idle = activity.idle_for(idle_limit);
            let mut idle = std::pin::pin!(idle);
            let mut ending = false;
            let mut idle_ended = false;
            // A stop, or a connection idle past idle_connection_timeout: hyper
            // ends it gracefully (an HTTP/2 GOAWAY; requests in flight finish).
            // An idle HTTP/2 connection whose client does not answer the
            // GOAWAY's PING is dropped after a moment, as it has nothing in flight.
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    () = &mut idle, if !ending => {
                        tracing::debug!(%peer, "idle connection closed after {idle_limit:?} (idle_connection_timeout)");
                        conn.as_mut().graceful_shutdown();
                        ending = true;
                        idle_ended = true;
                    }
                    () = tokio::time::sleep(IDLE_GRACE), if idle_ended => {
                        if activity.in_flight() == 0 {
                            break Ok(());
                        }
                    }
                    _ = stopping.wait_for(|stop| *stop), if !ending => {
                        conn.as_mut().graceful_shutdown();
                        ending = true;
                    }
                }
            };
            if let Err(e) = result {
                ended(Ended::Error(e), spare, peer, header_timeout).await;
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every connection holds its slot until it has ended.
    let drained = async {
        while gate.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}; closing them");
    }
}

/// hyper's own limits sit well above the configured ones, so that nearly every
/// oversized request reaches `limits::check_head` and hears why in JSON; only a
/// head past these gets hyper's bare 431 (or 414, past 64 KiB of URI).
fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let head = usize::try_from(
        config
            .max_header_size
            .bytes()
            .saturating_add(config.max_uri_length.bytes()),
    )
    .unwrap_or(usize::MAX);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers.saturating_mul(4).max(100))
        .max_buf_size(head.saturating_mul(2).max(128 << 10));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head.saturating_mul(2)).unwrap_or(u32::MAX));
    b
}

/// A connection hyper gave up on. One whose client stalled inside a request's
/// headers is told so (408) before it closes; an idle one just closes.
async fn ended(e: Ended, spare: conn::Spare, peer: SocketAddr, header_timeout: Duration) {
    let timed_out = match &e {
        Ended::Stalled => true,
        Ended::Error(e) => e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout),
    };
    let owed = matches!(e, Ended::Stalled) || spare.owed();
    if timed_out && owed {
        let refusal = ApiError::HeaderTimeout {
            after: header_timeout,
        };
        tracing::info!(%peer, "refused: {refusal}");
        spare.answer(&refusal).await;
    } else if timed_out {
        tracing::debug!(%peer, "idle connection closed after {header_timeout:?} (header_timeout)");
    } else if let Ended::Error(e) = e {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

enum Ended {
    Stalled,
    Error(BoxError),
}

fn request_id<B>(req: &Request<B>) -> String {
    crate::echo::request_id(req.headers().get(crate::echo::X_REQUEST_ID))
}

/// A handler that panics costs its own request a 500, never the router: the
/// panic is logged with the request id and the connection keeps serving.
async fn caught(id: &str, answer: impl Future<Output = Response<Body>>) -> Response<Body> {
    match AssertUnwindSafe(answer).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(%id, "request handler panicked: {what}");
            ApiError::Internal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500_in_json() {
        let resp = caught("req-1", async { panic!("boom") }).await;
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["x-modelyard-error"], "internal_error");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "internal_error");
        let fine = caught("req-2", async {
            crate::body::json_response(http::StatusCode::OK, &serde_json::json!({}))
        })
        .await;
        assert_eq!(fine.status(), 200);
    }
}
