//! The listener: HTTP/1.1 and h2c on one port, a tower stack per connection, and a
//! graceful stop that lets requests in flight finish (bounded).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::body::Body;
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
    // One stack per connection, so the handler knows the peer it answers.
    let stack = move |peer: std::net::SocketAddr| {
        let router = router.clone();
        let handler = tower::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            async move { Ok::<Response<Body>, Infallible>(router.traced(req, peer).await) }
        });
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(ids.clone()))
            .layer(PropagateRequestIdLayer::x_request_id())
            .service(handler)
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
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
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(stack(peer)))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; closing them");
    }
}
