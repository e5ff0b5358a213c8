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
    // Before anything holds a descriptor, and logged before the banner.
    open_files(&config);
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (is another modelyard or an Ollama already running there? set `listen` in routes.yaml, MODELYARD_LISTEN or --listen)"
        } else {
            ""
        };
        format!("cannot listen on {}: {e}{hint}", config.listen)
    })?;
    // After the bind: a second router started by mistake exits there, before
    // it touches the running one's log (an upgrade of its file would leave
    // an older router unable to write). Before the banner: a log that cannot
    // be opened stops the start, naming it.
    let requests = open_request_log(&config)?;
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
    let router = Router::new(config, source, supervisor.clone(), requests);
    // After the bind and the banner: the listener never waits for a preload.
    router.preload();
    reload_on_sighup(router.clone());
    let (broke, broken) = tokio::sync::oneshot::channel();
    let stop = async {
        tokio::select! {
            _ = stop_signal() => {}
            why = supervisor.failed() => { let _ = broke.send(why); }
        }
    };
    modelyard_proxy::serve(listener, router, stop).await;
    if let Ok(why) = broken.await {
        // Its backends are stopped as their handles drop with the owner (and on
        // Linux die with this process); the next run ends any that remain.
        return Err(format!(
            "the supervisor failed ({why}); exiting so that launchd or systemd start modelyard again"
        ));
    }
    tracing::info!("stopping backends");
    supervisor.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The request log `request_log` asks for, opened; None when it is `off`, or
/// when no path is set and the system names no data dir (said in the log).
fn open_request_log(config: &Config) -> Result<Option<modelyard_reqlog::RequestLog>, String> {
    let Some(settings) = config.request_log.settings() else {
        return Ok(None);
    };
    let Some(path) = settings.path_or_default() else {
        tracing::warn!("request log off: no data directory on this system; set request_log.path");
        return Ok(None);
    };
    // For the end-to-end test of a writer that stalls: a batch of at most N
    // records and a writer that never writes. Not compiled into release builds.
    #[cfg(debug_assertions)]
    let stalled: Option<usize> = std::env::var("MODELYARD_DEBUG_STALL_REQUEST_LOG")
        .ok()
        .and_then(|n| n.parse().ok());
    #[cfg(not(debug_assertions))]
    let stalled: Option<usize> = None;
    let log = modelyard_reqlog::RequestLog::open(modelyard_reqlog::Settings {
        path,
        keep: settings.keep,
        max_bytes: settings.max.bytes(),
        capacity: stalled.unwrap_or(modelyard_reqlog::CAPACITY),
    })
    .map_err(|e| format!("{e} (request_log.path in routes.yaml; `request_log: off` keeps none)"))?;
    if stalled.is_some() {
        std::mem::forget(log.stall());
    }
    tracing::info!(path = %log.path().display(), "recording requests");
    Ok(Some(log))
}

/// Descriptors each client connection may need besides its own: the backend
/// connection of its request in flight.
const FILES_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: the listener, backends' output pipes,
/// the state file, logs.
const FILES_SPARE: u64 = 128;

/// Raises the open-file limit (launchd starts jobs at 256, far below what
/// `max_connections` needs) and says whether `max_connections` fits in it.
fn open_files(config: &Config) {
    let limit = match modelyard_supervisor::raise_open_files() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            return;
        }
    };
    tracing::info!("open-file limit {limit}");
    let needs = (config.max_connections as u64)
        .saturating_mul(FILES_PER_CONNECTION)
        .saturating_add(FILES_SPARE);
    if needs > limit {
        tracing::warn!(
            "max_connections {} may need {needs} open files, more than this process may open ({limit}): \
             connections past the limit fail to be accepted; lower max_connections or raise the hard limit (ulimit -Hn)",
            config.max_connections
        );
    }
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
