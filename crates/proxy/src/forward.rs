//! One model request, in the order it happens: read the body (bounded), find the
//! model, wait for a lease on it, send the request upstream with the model renamed,
//! and pass the response back as it streams.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use modelyard_config::LoadingProgress;
use modelyard_supervisor::Lease;
use tokio::time::Instant;

use crate::body::Body;
use crate::client::{Failure, Outgoing, Reply};
use crate::error::ApiError;
use crate::fallback;
use crate::limits::read_body;
use crate::record::{Draft, Slot};
use crate::rewrite::{peek_model, Routed};
use crate::Inner;

/// Answers one model request; every outcome is counted once in the metrics.
pub(crate) async fn model_request(
    state: Arc<Inner>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let mut draft = Draft::begin(&state, req.uri(), req.headers(), peer, started);
    // Unknown names stay "-" so a client cannot mint label values.
    let mut model = String::from("-");
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::multipart::form_boundary);
    let dialect = crate::error::Dialect::of(req.uri().path());
    let outcome = match form {
        Some(boundary) => match boundary {
            Ok(b) => crate::upload::form(&state, req, &b, started, &mut model, &mut draft).await,
            Err(e) => Err(ApiError::BadForm(e)),
        },
        None => forward(&state, req, started, &mut model, &mut draft).await,
    };
    match outcome {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(d) = &mut draft {
                d.failed(&e);
            }
            let resp = e.render(dialect);
            state
                .metrics
                .request(&model, resp.status().as_u16(), started.elapsed());
            resp
        }
    }
}

async fn forward(
    state: &Arc<Inner>,
    req: Request<Incoming>,
    started: Instant,
    label: &mut String,
    draft: &mut Slot,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let config = state.config();
    let bytes = read_body(&config, parts.uri.path(), &parts.headers, body).await?;
    let routed = peek_model(&bytes)?;
    if let Some(d) = draft {
        d.asked(&routed.model, routed.stream, &bytes);
    }
    let asked_for = routable(state, &routed.model).await?;
    let choice = fallback::route(state, &config, &asked_for, parts.uri.path(), &bytes).await?;
    let note = choice.note(&asked_for);
    let model = choice.model;
    // A request that went elsewhere is answered in the name of the model that
    // answered it, and says why.
    let client_name = match note {
        None => routed.model.clone(),
        Some(_) => model.clone(),
    };
    label.clone_from(&model);
    if let Some(d) = draft {
        let ask = crate::asker::of(&parts.extensions).for_model(&config, &model);
        d.served(&model, ask.priority);
    }
    let asked = (
        Instant::now(),
        draft.as_ref().map(|_| modelyard_reqlog::now_ms()),
    );
    let acquire = {
        let (state, model) = (state.clone(), model.clone());
        let ask = crate::asker::of(&parts.extensions);
        async move { lease(&state, &model, ask).await }
    };
    let send = Upstream {
        state: state.clone(),
        parts,
        bytes,
        routed,
        client_name,
        model,
        started,
        asked,
        draft: draft.take(),
    };
    let mut resp = answer(state, send, acquire).await?;
    if let Some(note) = note {
        if let Ok(v) = HeaderValue::from_str(&note) {
            resp.headers_mut().insert("x-modelyard-fallback", v);
        }
    }
    Ok(resp)
}

/// The model a client's name stands for: a configured model or alias, or a model
/// a remote backend lists under that name.
pub(crate) async fn routable(state: &Inner, name: &str) -> Result<String, ApiError> {
    match crate::models::resolve(&state.config(), name) {
        Ok(m) => Ok(m),
        Err(e) => match state.supervisor.snapshot().await {
            Some(s) if s.remote_model(name).is_some() => Ok(name.to_string()),
            _ => Err(e),
        },
    }
}

/// Where a request becomes a lease, for every API front (OpenAI, Ollama,
/// uploads, direct passthrough): waits up to queue_timeout for `model` to be
/// ready, leases it, and counts the wait in the metrics. The lease then lives in
/// the response body and is given back when the body ends or is dropped.
pub(crate) async fn lease(
    state: &Inner,
    model: &str,
    asker: crate::asker::Asker,
) -> Result<Lease, ApiError> {
    let config = state.config();
    let ask = asker.for_model(&config, model);
    // Background work waits longer: it yields to people, not to a clock.
    let patience = match ask.priority {
        modelyard_config::Priority::Interactive => config.queue_timeout,
        modelyard_config::Priority::Background => config.background_queue_timeout,
    };
    drop(config);
    let deadline = Instant::now() + patience;
    let asked = Instant::now();
    let lease = state.supervisor.acquire_as(model, deadline, ask).await?;
    state.metrics.queue_wait(model, asked.elapsed());
    Ok(lease)
}

/// Sends once the lease is held; a streamed request that has to wait hears progress.
async fn answer(
    state: &Arc<Inner>,
    send: Upstream,
    acquire: impl std::future::Future<Output = Result<Lease, ApiError>> + Send + 'static,
) -> Result<Response<Body>, ApiError> {
    if routed_stream(&send) && state.config().loading_progress != LoadingProgress::Off {
        let mut acquire = Box::pin(acquire);
        // A ready model's lease comes back at once; only a wait earns progress.
        // A failure within the grace (missing program, crash at start, backoff,
        // full queue) keeps its real status, Retry-After and x-modelyard-error;
        // only a longer wait earns a committed 200 and progress.
        let grace = state.config().progress_after;
        match tokio::time::timeout(grace, &mut acquire).await {
            Ok(lease) => send.send(lease?).await,
            Err(_) => {
                // Said in the progress comments: how long this model's loads
                // take, and the request's place in its model's line (its lane:
                // interactive requests are served before background ones).
                let snap = state.supervisor.snapshot().await;
                let model = snap.as_ref().and_then(|s| s.model(&send.model));
                let usually = model.and_then(|m| m.typical_load);
                let priority = crate::asker::of(&send.parts.extensions)
                    .for_model(&state.config(), &send.model)
                    .priority;
                let place = model.map(|m| match priority {
                    modelyard_config::Priority::Interactive => m.queued - m.queued_background,
                    modelyard_config::Priority::Background => m.queued,
                });
                Ok(crate::progress::respond(acquire, send, usually, place))
            }
        }
    } else {
        send.send(acquire.await?).await
    }
}

/// A streamed request on a route whose clients read SSE: the completions,
/// Anthropic's Messages and OpenAI's Responses.
fn routed_stream(u: &Upstream) -> bool {
    u.routed.stream && crate::progress::Framing::of(u.parts.uri.path()).is_some()
}

/// Everything needed to send a request upstream once its model is leased.
pub(crate) struct Upstream {
    state: Arc<Inner>,
    parts: Parts,
    bytes: Bytes,
    routed: Routed,
    pub client_name: String,
    pub model: String,
    started: Instant,
    /// When the lease was asked for (and, with a request log, the wall clock then).
    asked: (Instant, Option<u64>),
    draft: Slot,
}

impl Upstream {
    pub(crate) fn metrics_handle(&self) -> Arc<crate::metrics::Metrics> {
        self.state.metrics.clone()
    }

    /// The request's id, for the log line of a failure after the 200 was sent.
    pub(crate) fn request_id(&self) -> String {
        crate::echo::request_id(self.parts.headers.get(crate::echo::X_REQUEST_ID))
    }

    /// The request ends in `e` before it was sent (its record says so).
    pub(crate) fn failed(&mut self, e: &ApiError) {
        if let Some(d) = &mut self.draft {
            d.failed(e);
        }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn path(&self) -> &str {
        self.parts.uri.path()
    }

    pub(crate) fn progress_mode(&self) -> LoadingProgress {
        self.state.config().loading_progress
    }

    pub(crate) async fn send(self, lease: Lease) -> Result<Response<Body>, ApiError> {
        let Upstream {
            state,
            parts,
            bytes,
            routed,
            client_name,
            model,
            started,
            asked,
            mut draft,
        } = self;
        if let (Some(d), (at, Some(at_ms))) = (&mut draft, asked) {
            d.leased(&state, at.elapsed(), at_ms);
        }
        let upstream_body = routed.with_model(&bytes, &lease.upstream_model);
        drop(bytes);
        let request = upstream_request(&parts, &lease, None, upstream_body);
        crate::deliver::round_trip(
            &state,
            model,
            lease,
            request,
            Some(&client_name),
            started,
            draft,
        )
        .await
    }
}

/// Sends a request upstream and waits (up to upstream_timeout) for its headers.
pub(crate) async fn exchange(
    state: &Inner,
    model: &str,
    lease: &Lease,
    request: Request<Outgoing>,
) -> Result<Response<Reply>, ApiError> {
    let pending = state.client.send(request);
    let sent =
        match state.config().upstream_timeout.duration() {
            Some(limit) => tokio::time::timeout(limit, pending).await.map_err(|_| {
                ApiError::UpstreamTimeout {
                    model: model.to_string(),
                    after: limit,
                }
            })?,
            None => pending.await,
        };
    match sent {
        Ok(reply) => Ok(reply),
        // A connection that broke, or none at all, to a ready backend: most
        // likely it died.
        Err(Failure::Lost(why)) => Err(ApiError::Unreachable {
            model: model.to_string(),
            reason: with_crash(state, model, format!("{} ({why})", lease.authority)).await,
        }),
        Err(Failure::Connect(e)) => Err(ApiError::Unreachable {
            model: model.to_string(),
            reason: with_crash(
                state,
                model,
                format!("{} (cannot connect: {e})", lease.authority),
            )
            .await,
        }),
        Err(e) => Err(failed(e, model, lease, state.connect_timeout)),
    }
}

/// A connection that broke because the backend died says so, with the exit
/// ("killed by signal 9") rather than only "reset by peer". The supervisor hears
/// of the exit a moment after the socket closes, so it is asked for a short while;
/// only this error path waits.
async fn with_crash(state: &Inner, model: &str, reason: String) -> String {
    use modelyard_supervisor::policy::Phase;
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    loop {
        let snap = state.supervisor.snapshot().await;
        let Some(m) = snap.as_ref().and_then(|s| s.model(model)) else {
            return reason;
        };
        let gone = !matches!(m.phase, Phase::Ready | Phase::Draining);
        if let Some(exit) = m.last_error.as_deref().filter(|_| gone) {
            return format!("{reason}: it crashed ({exit})");
        }
        // No process of ours serves it (another machine's, a server someone else
        // runs): there is no exit to wait for.
        if m.pid.is_none() || Instant::now() >= deadline {
            return reason;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Why a request got no response: no connection in time (504), a reply that is
/// not HTTP or has a head too large to read (502, the backend's fault), or no
/// connection at all (502).
fn failed(
    e: Failure,
    model: &str,
    lease: &Lease,
    connect_timeout: std::time::Duration,
) -> ApiError {
    let model = model.to_string();
    let backend = &lease.authority;
    match e {
        Failure::ConnectTimeout => ApiError::ConnectTimeout {
            model,
            backend: backend.to_string(),
            after: connect_timeout,
        },
        Failure::Connect(e) => ApiError::Unreachable {
            model,
            reason: format!("{backend} (cannot connect: {e})"),
        },
        Failure::Lost(why) => ApiError::Unreachable {
            model,
            reason: format!("{backend} ({why})"),
        },
        Failure::BadReply(why) => ApiError::BadReply {
            model,
            reason: format!("{backend} ({why})"),
        },
        Failure::Body(why) => ApiError::BodyRead(why),
        Failure::BodyStalled(after) => ApiError::BodyTimeout { after },
        Failure::RepeatedPart => crate::upload::repeated_part(),
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), and
/// `expect`: the router already answered the client's 100-continue by reading.
/// Typed names, so removing them does not parse ten strings on every request.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::EXPECT,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The backend's URI for a request: the common case (no base path, the client's
/// own path) reuses the parsed pieces instead of formatting and parsing again.
fn upstream_uri(parts: &Parts, lease: &Lease, path: Option<&str>) -> http::Uri {
    if lease.base_path.is_empty() && path.is_none() {
        if let Some(pq) = parts.uri.path_and_query() {
            let built = http::Uri::builder()
                .scheme(lease.scheme.clone())
                .authority(lease.authority.clone())
                .path_and_query(pq.clone())
                .build();
            if let Ok(uri) = built {
                return uri;
            }
        }
    }
    let path = path.unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    });
    format!(
        "{}://{}{}{}",
        lease.scheme, lease.authority, lease.base_path, path
    )
    .parse()
    .expect("lease endpoints and request paths form a valid URI")
}

/// The client's request for the backend: its path (or `path`, for a request
/// translated to another API) under the backend's URL, its headers but for
/// hop-by-hop ones and the client's credentials, and `body`.
pub(crate) fn upstream_request(
    parts: &Parts,
    lease: &Lease,
    path: Option<&str>,
    body: Bytes,
) -> Request<Outgoing> {
    upstream_with(parts, lease, path, Outgoing::Whole(body), None)
}

/// As [`upstream_request`], with a body that streams: `length` when known, else
/// it goes chunked.
pub(crate) fn upstream_streamed(
    parts: &Parts,
    lease: &Lease,
    path: Option<&str>,
    body: Body,
    length: Option<u64>,
) -> Request<Outgoing> {
    upstream_with(parts, lease, path, Outgoing::Streamed(body), length)
}

fn upstream_with(
    parts: &Parts,
    lease: &Lease,
    path: Option<&str>,
    body: Outgoing,
    length: Option<u64>,
) -> Request<Outgoing> {
    let uri = upstream_uri(parts, lease, path);
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    // The reply's model name is rewritten as it passes, which a compressed
    // reply would hide: backends are asked for it as it is. (Loopback has no
    // use for compression anyway.)
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // The client's credentials are for the router; the backend gets its own, if any.
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    if let Some(key) = &lease.api_key {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    match length {
        Some(n) => headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n)),
        None => headers.remove(header::CONTENT_LENGTH),
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}
