//! The HTTP front of modelyard: one listener, routing by the request's `model`,
//! a streaming forwarder, OpenAI's API and Ollama's native one, and errors in
//! the shape of whichever API the client spoke.

mod admin;
mod asker;
mod body;
mod body_keys;
mod client;
mod conn;
mod deliver;
mod direct;
mod echo;
mod error;
mod fallback;
mod forward;
mod guard;
mod idle;
mod keys;
mod learned;
mod limits;
mod metrics;
mod models;
mod multipart;
mod ollama;
mod progress;
#[cfg(test)]
mod proptests;
mod record;
mod relay;
mod requests;
mod rewrite;
mod server;
mod upload;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use modelyard_config::Config;
use modelyard_supervisor::Supervisor;

pub use body::Body;
pub use error::ApiError;
pub use server::serve;

/// The live status page: one file, no build step, nothing fetched from elsewhere.
const STATUS_PAGE: &str = include_str!("page.html");

/// How long /healthz waits for the supervisor's owner to answer a ping: it
/// answers in microseconds unless it is stuck.
const HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Swapped whole by a reload; each request works on the one it started with.
    config: std::sync::RwLock<Arc<Config>>,
    /// The file a reload reads again; None for a config with no file (the demo).
    pub source: Option<std::path::PathBuf>,
    pub supervisor: Supervisor,
    pub client: client::Client,
    /// The client's connect timeout, fixed when the client is built.
    pub connect_timeout: std::time::Duration,
    pub started_unix: u64,
    /// Turns true when the router starts to stop: endless streams (events, logs)
    /// end then, instead of holding the drain open.
    pub closing: tokio::sync::watch::Sender<bool>,
    pub metrics: Arc<metrics::Metrics>,
    /// What backends said about their models (capabilities, context).
    pub learned: learned::Learned,
    /// Where each model request is recorded; None with `request_log: off`.
    pub requests: Option<modelyard_reqlog::RequestLog>,
    /// `request_log.capture`: records keep the request's body.
    pub capture: bool,
}

impl Router {
    /// A router on `config`; `requests` is the request log it writes, opened by
    /// the caller (so a file that cannot be opened stops the start, naming it).
    pub fn new(
        config: Arc<Config>,
        source: Option<std::path::PathBuf>,
        supervisor: Supervisor,
        requests: Option<modelyard_reqlog::RequestLog>,
    ) -> Router {
        let connect_timeout = config.upstream_connect_timeout;
        let client = client::Client::new(connect_timeout, config.upstream_pool_idle);
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let metrics = Arc::new(metrics::Metrics::new());
        metrics::follow_events(metrics.clone(), &supervisor);
        let capture = config.request_log.settings().is_some_and(|s| s.capture);
        Router {
            inner: Arc::new(Inner {
                metrics,
                requests,
                capture,
                config: std::sync::RwLock::new(config),
                source,
                supervisor,
                client,
                connect_timeout,
                started_unix,
                closing: tokio::sync::watch::channel(false).0,
                learned: learned::Learned::default(),
            }),
        }
    }

    /// One line per request at debug level (id, method, path, status, latency),
    /// and one more for a refusal or failure, saying why.
    async fn traced(self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
        let started = tokio::time::Instant::now();
        // Kept by reference count (no copy) for the log lines, which most
        // requests never write.
        let id = req.headers().get(echo::X_REQUEST_ID).cloned();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let mut resp = self.screened(req, peer).await;
        let status = resp.status().as_u16();
        let id = || echo::request_id(id.as_ref());
        let path = uri.path();
        if let Some(error::Refusal(why)) = resp.extensions_mut().remove() {
            let id = id();
            if status >= 500 {
                tracing::warn!(%id, %method, %path, status, "failed: {why}");
            } else {
                tracing::info!(%id, %method, %path, status, "refused: {why}");
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let id = id();
            tracing::debug!(%id, %method, %path, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
        }
        resp
    }

    /// The request's head against the limits, its Host and Origin against the
    /// guard, and only then the handler.
    async fn screened(self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
        let config = self.inner.config();
        let dialect = error::Dialect::of(req.uri().path());
        if let Err(e) = limits::check_head(&config, req.uri(), req.headers()) {
            return e.render(dialect);
        }
        match guard::check(&config, req.version(), req.uri(), req.headers()) {
            Err(e) => e.render(dialect),
            Ok(Some(origin)) if req.method() == Method::OPTIONS => {
                guard::preflight(origin, req.headers())
            }
            Ok(cors) => {
                let mut resp = self.handle(req, peer).await;
                if let Some(origin) = cors {
                    guard::allow(resp.headers_mut(), origin);
                }
                resp
            }
        }
    }

    async fn handle(
        self,
        mut req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Response<Body> {
        // The handlers' futures are boxed: their state (4-5 KiB for a model
        // request) would otherwise be inlined into this one and copied whole at
        // each of the several moves a service future makes before it is pinned.
        // For the end-to-end test of the panic guard; not compiled into release builds.
        #[cfg(debug_assertions)]
        if std::env::var_os("MODELYARD_DEBUG_PANIC_PATH").is_some_and(|p| p == req.uri().path()) {
            panic!("MODELYARD_DEBUG_PANIC_PATH asked for a panic");
        }
        if req.uri().path().starts_with("/admin/") {
            return Box::pin(admin::handle(self.inner, req, peer)).await;
        }
        let path = req.uri().path();
        if path.starts_with("/v1/") || path.starts_with("/api/") || path.starts_with("/upstream/") {
            if let Err(e) = keys::client_allowed(&self.inner.config(), req.headers()) {
                return e.render(error::Dialect::of(path));
            }
            match asker::ask(&self.inner.config(), req.headers(), peer) {
                Ok(ask) => req.extensions_mut().insert(ask),
                Err(e) => return e.render(error::Dialect::of(path)),
            };
        }
        if req.uri().path().starts_with("/api/") {
            return Box::pin(ollama::handle(self.inner, req, peer)).await;
        }
        if req.method() == Method::POST && req.uri().path().starts_with("/v1/") {
            return Box::pin(forward::model_request(self.inner, req, peer)).await;
        }
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Some((model, target)) = direct::upstream_target(target) {
            return Box::pin(direct::upstream(self.inner, req, model, target)).await;
        }
        if req.method() == Method::GET
            && req.uri().path().starts_with("/v1/")
            && !req.uri().path().starts_with("/v1/models")
        {
            if let Some(model) = req.uri().query().and_then(direct::query_model) {
                if let Err(e) = body_keys::check_query(req.uri().query().unwrap_or("")) {
                    return e.into_response();
                }
                return Box::pin(direct::by_query(self.inner, req, model)).await;
            }
        }
        let inner = &*self.inner;
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/v1/models") => {
                let snap = inner.supervisor.snapshot().await;
                models::list(
                    &inner.config(),
                    &inner.learned,
                    snap.as_ref(),
                    inner.started_unix,
                )
            }
            (&Method::GET, p) if p.starts_with("/v1/models/") => {
                let id = percent_decode(&p["/v1/models/".len()..]);
                let snap = inner.supervisor.snapshot().await;
                models::one(
                    &inner.config(),
                    &inner.learned,
                    snap.as_ref(),
                    inner.started_unix,
                    &id,
                )
            }
            // Browsers ask for it on every page view; no icon is no error worth a log line.
            (&Method::GET, "/favicon.ico") => {
                let mut resp = Response::new(body::full(""));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                resp
            }
            (&Method::GET, "/") => {
                let mut resp = Response::new(body::full(STATUS_PAGE));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
            (&Method::GET, "/metrics") => {
                let snap = inner.supervisor.snapshot().await;
                let kv = inner.supervisor.kv_counts();
                if let Some(log) = &inner.requests {
                    inner.metrics.request_log(log.written(), log.dropped());
                }
                let mut resp = Response::new(body::full(inner.metrics.render(snap.as_ref(), &kv)));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (&Method::GET, "/healthz") => {
                // Alive means able to serve: the supervisor's owner answers, not
                // just this task (launchd and systemd see the process either way).
                if inner.supervisor.responds_within(HEALTH_DEADLINE).await {
                    body::json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
                } else {
                    body::json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({
                            "status": "unresponsive",
                            "reason": format!(
                                "the supervisor did not answer within {HEALTH_DEADLINE:?}"
                            ),
                        }),
                    )
                }
            }
            (m, p) => ApiError::NoRoute {
                method: m.to_string(),
                path: echo::shown(p),
            }
            .into_response(),
        }
    }
}

impl Router {
    /// Loads the config's `preload` models in the background.
    pub fn preload(&self) {
        let config = self.inner.config();
        spawn_preload(
            self.inner.supervisor.clone(),
            config.clone(),
            config.preload.clone(),
        );
    }

    /// Reads the config file again and applies it: refused whole (the old one
    /// stays) when it is invalid. Returns what changed.
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        self.inner.reload().await
    }
}

impl Inner {
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) async fn reload(&self) -> Result<Vec<String>, String> {
        let path = self
            .source
            .as_ref()
            .ok_or("this router's config is built in (the demo); there is no file to reload")?;
        // Off the runtime: reading a file is blocking I/O, however bounded.
        let file = path.clone();
        let mut next = tokio::task::spawn_blocking(move || modelyard_config::load_file(&file))
            .await
            .map_err(|e| format!("reading the config failed: {e}"))?
            .map_err(|e| e.to_string())?
            .config;
        let current = self.config();
        // The socket is already bound (maybe from --listen): a new address needs a restart.
        next.listen = current.listen;
        let next = Arc::new(next);
        let changes = self
            .supervisor
            .reload(next.clone())
            .await
            .map_err(|e| e.to_string())?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        self.learned.clear();
        // Preloads the reload brought in: listed now and not before, or new models.
        let fresh = next
            .preload
            .iter()
            .filter(|p| !current.preload.contains(p) || current.resolve(p).is_none())
            .cloned()
            .collect();
        spawn_preload(self.supervisor.clone(), next, fresh);
        tracing::info!(
            "config reloaded from {}: {}",
            path.display(),
            if changes.is_empty() {
                "nothing changed".to_string()
            } else {
                changes.join(", ")
            }
        );
        Ok(changes)
    }
}

/// Loads `names` one after another in the background, holding up nothing else;
/// a failure is logged and the model stays cold.
fn spawn_preload(supervisor: Supervisor, config: Arc<Config>, names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for name in names {
            let Some(model) = config.resolve(&name) else {
                continue;
            };
            tracing::info!(model = %model, "preloading");
            let deadline = tokio::time::Instant::now() + config.queue_timeout;
            if let Err(e) = supervisor.load(model, deadline).await {
                tracing::warn!(model = %model, "preload failed: {e}");
            }
        }
    });
}

/// `%XX` escapes in a path segment, for model ids such as `qwen3%3A8b`. A `%`
/// not followed by two hex digits stays as written; bytes that are not UTF-8
/// become U+FFFD.
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
