//! A relay that only copies bytes both ways, on the router's CPU: what the two
//! extra loopback hops of any proxy cost on this machine, before it does any
//! work. The floor under every proxy's added latency, measured in the same run.

use crate::load::Target;
use crate::procs::Meter;

/// Starts the relay in front of `backend` (`http://HOST:PORT`) on a thread of
/// its own, pinned to `cpu` when given; it lives as long as the bench. The
/// meter reads that thread's CPU time (Linux only: a thread id from gettid).
pub fn start(backend: &str, cpu: Option<usize>) -> Result<(Target, Option<Meter>), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let backend = backend.trim_start_matches("http://").to_string();
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
            let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
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
        });
    });
    let tid = tid_rx.recv().map_err(|e| e.to_string())?;
    Ok((
        Target {
            name: "tcp-relay",
            base: format!("http://127.0.0.1:{port}"),
            auth: None,
        },
        tid.map(Meter::Thread),
    ))
}
