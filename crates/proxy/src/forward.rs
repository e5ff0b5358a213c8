//! One model request, in the order it happens: read the body (bounded), find the
//! model, wait for a lease on it, send the request upstream with the model renamed,
//! and pass the response back as it streams.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use modelyard_config::LoadingProgress;
use modelyard_supervisor::Lease;
use tokio::time::Instant;

use crate::body::Body;
use crate::error::ApiError;
use crate::fallback;
use crate::relay::{Framing, Observe, Relay};
use crate::rewrite::{peek_model, ModelRewriter, Routed};
use crate::Inner;

/// Answers one model request; every outcome is counted once in the metrics.
pub(crate) async fn model_request(state: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    // Unknown names stay "-" so a client cannot mint label values.
    let mut model = String::from("-");
    match forward(&state, req, started, &mut model).await {
        Ok(resp) => resp,
        Err(e) => {
            let resp = e.into_response();
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
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = read_body(declared, body, state.config().max_body.bytes()).await?;
    let routed = peek_model(&bytes)?;
    let config = state.config();
    let asked_for = match crate::models::resolve(&config, &routed.model) {
        Ok(m) => m,
        // Not ours by name: perhaps another machine's, listed by a remote backend.
        Err(e) => match state.supervisor.snapshot().await {
            Some(s) if s.remote_model(&routed.model).is_some() => routed.model.clone(),
            _ => return Err(e),
        },
    };
    let window = if fallback::needs_window(&config, &asked_for) {
        let snap = state.supervisor.snapshot().await;
        snap.and_then(|s| s.model(&asked_for).and_then(|m| m.context_window))
    } else {
        None
    };
    let choice = fallback::choose(&config, &asked_for, parts.uri.path(), &bytes, window)?;
    let model = choice.model;
    // A request that went elsewhere is answered in the name of the model that
    // answered it, and says why.
    let client_name = match &choice.fell_back {
        None => routed.model.clone(),
        Some(_) => model.clone(),
    };
    label.clone_from(&model);
    let deadline = Instant::now() + state.config().queue_timeout;
    let asked = Instant::now();
    let acquire = {
        let (state, model) = (state.clone(), model.clone());
        async move {
            let lease = state.supervisor.acquire(&model, deadline).await?;
            state.metrics.queue_wait(&model, asked.elapsed());
            Ok::<_, ApiError>(lease)
        }
    };
    let send = Upstream {
        state: state.clone(),
        parts,
        bytes,
        routed,
        client_name,
        model,
        started,
    };
    let note = choice
        .fell_back
        .map(|why| format!("{asked_for} -> {}: {why}", send.model));
    let mut resp = answer(state, send, acquire).await?;
    if let Some(note) = note {
        if let Ok(v) = HeaderValue::from_str(&note) {
            resp.headers_mut().insert("x-modelyard-fallback", v);
        }
    }
    Ok(resp)
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
        match tokio::time::timeout(PROGRESS_AFTER, &mut acquire).await {
            Ok(lease) => send.send(lease?).await,
            Err(_) => {
                // Said in the progress comments: how long this model's loads take.
                let usually = state
                    .supervisor
                    .snapshot()
                    .await
                    .and_then(|s| s.model(&send.model).and_then(|m| m.typical_load));
                Ok(crate::progress::respond(acquire, send, usually))
            }
        }
    } else {
        send.send(acquire.await?).await
    }
}

/// How long a streamed request waits for its lease before progress is sent.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

fn routed_stream(u: &Upstream) -> bool {
    u.routed.stream && u.parts.uri.path().ends_with("/completions")
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
}

impl Upstream {
    pub(crate) fn metrics_handle(&self) -> Arc<crate::metrics::Metrics> {
        self.state.metrics.clone()
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
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
        } = self;
        let upstream_body = routed.with_model(&bytes, &lease.upstream_model);
        drop(bytes);
        let request = upstream_request(&parts, &lease, None, upstream_body);
        let response = exchange(&state, &model, &lease, request).await?;
        let observe = Observe::new(
            state.metrics.clone(),
            model,
            response.status().as_u16(),
            started,
        );
        let idle = state.config().upstream_idle_timeout.duration();
        Ok(relay(response, &client_name, lease, observe, idle))
    }
}

/// Sends a request upstream and waits (up to upstream_timeout) for its headers.
pub(crate) async fn exchange(
    state: &Inner,
    model: &str,
    lease: &Lease,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, ApiError> {
    let pending = state.client.request(request);
    match state.config().upstream_timeout.duration() {
        Some(limit) => {
            tokio::time::timeout(limit, pending)
                .await
                .map_err(|_| ApiError::UpstreamTimeout {
                    model: model.to_string(),
                    after: limit,
                })?
        }
        None => pending.await,
    }
    .map_err(|e| ApiError::Unreachable {
        model: model.to_string(),
        reason: describe(&e, lease),
    })
}

/// The request body, read whole but never past `limit` (declared or streamed).
pub(crate) async fn read_body(
    declared: Option<u64>,
    body: Incoming,
    limit: u64,
) -> Result<Bytes, ApiError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, limit_usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1). Typed
/// names, so removing them does not parse nine strings on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
) -> Request<Full<Bytes>> {
    let uri = upstream_uri(parts, lease, path);
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    // The client's credentials are for the router; the backend gets its own, if any.
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    if let Some(key) = &lease.api_key {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// The backend's response for the client: its status and headers, and a body that
/// renames the model in any JSON, holds the lease and counts the request.
pub(crate) fn relay(
    response: Response<Incoming>,
    client_name: &str,
    lease: Lease,
    observe: Observe,
    idle: Option<std::time::Duration>,
) -> Response<Body> {
    let (mut parts, upstream) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let starts = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let sse = starts(b"text/event-stream");
    let framing = if sse {
        Framing::Sse
    } else if starts(b"application/x-ndjson") {
        Framing::Ndjson
    } else {
        Framing::Other
    };
    let textual = sse
        || content_type
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json"));
    let rewriter = textual.then(|| {
        // The name changes length, so the upstream's length no longer holds.
        parts.headers.remove(header::CONTENT_LENGTH);
        ModelRewriter::new(client_name)
    });
    if framing != Framing::Other {
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    parts.version = Version::HTTP_11;
    let body = Relay::new(upstream, rewriter, framing, lease, observe, idle);
    Response::from_parts(parts, BodyExt::boxed_unsync(body))
}

fn describe(e: &hyper_util::client::legacy::Error, lease: &Lease) -> String {
    let mut msg = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
        source = s.source();
    }
    format!("{} ({msg})", lease.authority)
}
