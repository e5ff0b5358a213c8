//! Two relays on the router's CPU, the floors under every proxy's added
//! latency, measured in the same run: one only copies bytes both ways (what
//! the two extra loopback hops of any proxy cost on this machine, before it
//! does any work), the other relays through hyper and does nothing else.

use crate::load::Target;
use crate::procs::Meter;

/// Starts the relay in front of `backend` (`http://HOST:PORT`) on a thread of
/// its own, pinned to `cpu` when given; it lives as long as the bench. The
/// meter reads that thread's CPU time (Linux only: a thread id from gettid).
pub fn start(backend: &str, cpu: Option<usize>) -> Result<(Target, Option<Meter>), String> {
    let backend = backend.trim_start_matches("http://").to_string();
    on_own_thread("tcp-relay", cpu, move |l| async move {
        loop {
            let Ok((mut client, _)) = l.accept().await else {
                continue;
            };
            let backend = backend.clone();
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            });
        }
    })
}

/// Serves `relay` on a listener of its own, on a thread of its own (pinned to
/// `cpu` when given) with a single-threaded runtime, for as long as the bench
/// runs. The meter reads that thread's CPU time (Linux only: a thread id from
/// gettid).
fn on_own_thread<F, Fut>(
    name: &'static str,
    cpu: Option<usize>,
    relay: F,
) -> Result<(Target, Option<Meter>), String>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        #[cfg(target_os = "linux")]
        let tid = Some(nix::unistd::gettid().as_raw());
        #[cfg(not(target_os = "linux"))]
        let tid = None;
        let _ = tid_tx.send(tid);
        if let Some(c) = cpu {
            crate::procs::pin_self(c);
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                relay(l).await;
            }
        });
    });
    let tid = tid_rx.recv().map_err(|e| e.to_string())?;
    Ok((
        Target {
            name,
            base: format!("http://127.0.0.1:{port}"),
            auth: None,
        },
        tid.map(Meter::Thread),
    ))
}

/// A relay of HTTP through hyper's server and hyper-util's pooled client and
/// nothing else, on the router's CPU: what parsing and writing each request
/// and reply twice with the library the router is built on costs, before the
/// router's own work (the body read for `model`, the lease, the rename, the
/// record). Started, pinned and metered as [`start`].
pub fn start_hyper(backend: &str, cpu: Option<usize>) -> Result<(Target, Option<Meter>), String> {
    use hyper::body::Incoming;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let backend = backend.trim_end_matches('/').to_string();
    on_own_thread("hyper-relay", cpu, move |l| async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let Ok((socket, _)) = l.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let (client, backend) = (client.clone(), backend.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        let client = client.clone();
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        // The client's path is a valid path: so is the backend's URI.
                        if let Ok(uri) = format!("{backend}{path}").parse::<hyper::Uri>() {
                            *req.uri_mut() = uri;
                        }
                        async move { client.request(req).await }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    })
}
