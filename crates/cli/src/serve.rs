//! Running the router: bind first, then say where, then serve until SIGTERM or
//! SIGINT, then stop every backend before exiting.

use std::net::SocketAddr;
use std::sync::Arc;

use modelyard_config::Config;
use modelyard_proxy::Router;
use modelyard_supervisor::Supervisor;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

pub async fn run(
    config: Config,
    source: Option<std::path::PathBuf>,
    banner: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another modelyard or an Ollama already running there? set `listen` in routes.yaml, MODELYARD_LISTEN or --listen)"
        } else {
            ""
        };
        format!("cannot listen on {}: {e}{hint}", config.listen)
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "listening on {addr}: other machines can reach every model, the status page and /metrics; \
             mutating admin calls stay loopback-only unless admin_remote is set"
        );
    }
    // Before the banner: whoever saw it may run the CLI at once.
    let _recorded = crate::runtime::record(addr, source.as_deref());
    banner(addr);
    let config = Arc::new(config);
    let supervisor = Supervisor::start(config.clone());
    let router = Router::new(config, source, supervisor.clone());
    // After the bind and the banner: the listener never waits for a preload.
    router.preload();
    reload_on_sighup(router.clone());
    modelyard_proxy::serve(listener, router, stop_signal()).await;
    tracing::info!("stopping backends");
    supervisor.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn stop_signal() {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// SIGHUP reads routes.yaml again; a bad file is refused and logged, the old
/// config stays.
fn reload_on_sighup(router: Router) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            if let Err(e) = router.reload().await {
                tracing::error!("{e}");
            }
        }
    });
}
