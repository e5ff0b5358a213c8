//! One Ollama model request, in the order it happens: read the body, find the
//! model, wait for a lease, apply `keep_alive`, then either answer a load-only
//! request at once, pass the request to an Ollama backend, or translate it for
//! an OpenAI one. Counted once in the metrics, like the OpenAI path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use modelyard_config::BackendKind;
use modelyard_supervisor::Lease;
use serde_json::Value;
use tokio::time::Instant;

use super::catalog::rfc3339;
use super::reply::{self, Timing};
use super::request::{self, Endpoint, Parsed};
use super::stream::NdjsonBody;
use crate::body::{self, Body};
use crate::error::{ApiError, Dialect};
use crate::fallback;
use crate::record::{Draft, Slot};
use crate::relay::{Framing, Observe, Relay};
use crate::Inner;

/// How much of a backend's error body is read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(crate) async fn respond(
    state: Arc<Inner>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    // Unknown names stay "-" so a client cannot mint label values.
    let mut label = String::from("-");
    let mut draft = Draft::begin(&state, req.uri(), req.headers(), peer, started);
    match run(&state, req, endpoint, started, &mut label, &mut draft).await {
        Ok(resp) => {
            // Answered by the router itself (a load, an unload, a backend's error).
            if let Some(d) = &mut draft {
                d.done(resp.status().as_u16());
            }
            resp
        }
        Err(e) => {
            if let Some(d) = &mut draft {
                d.failed(&e);
            }
            let resp = e.render(Dialect::Ollama);
            state
                .metrics
                .request(&label, resp.status().as_u16(), started.elapsed());
            resp
        }
    }
}

fn now() -> String {
    rfc3339(SystemTime::now())
}

async fn run(
    state: &Arc<Inner>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    started: Instant,
    label: &mut String,
    draft: &mut Slot,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let config = state.config();
    let bytes = crate::limits::read_body(&config, parts.uri.path(), &parts.headers, body).await?;
    let mut parsed = request::parse(endpoint, &bytes)?;
    if let Some(d) = draft {
        d.asked(&parsed.model, parsed.stream, &bytes);
    }
    let mut model = super::resolve(&config, &parsed.model)?;
    // apfel's limits hold whichever API a request comes in on.
    let mut note = None;
    if let Some((path, body)) = parsed
        .openai
        .as_ref()
        .filter(|_| fallback::can_fall_back(&config, &model))
    {
        let body = serde_json::to_vec(body).expect("a Value always encodes");
        let choice = fallback::route(state, &config, &model, path, &body).await?;
        note = choice.note(&model);
        if note.is_some() {
            parsed.model.clone_from(&choice.model);
        }
        model = choice.model;
    }
    label.clone_from(&model);
    if let Some(d) = draft {
        let ask = crate::asker::of(&parts.extensions).for_model(&config, &model);
        d.served(&model, ask.priority);
    }

    if parsed.load_only && parsed.keep_alive.is_some_and(|k| k.is_zero()) {
        // Ollama's unload: a model is never loaded only to be unloaded. A loaded
        // one goes once its requests finish; a cold one stays cold.
        state.supervisor.keep_alive(&model, Some(Duration::ZERO));
        return Ok(done(state, &model, started, &parsed, true));
    }

    // The one way any API front turns a request into a lease.
    let asked = Instant::now();
    let asked_ms = modelyard_reqlog::now_ms();
    let lease = crate::forward::lease(state, &model, crate::asker::of(&parts.extensions)).await?;
    let leased = Instant::now();
    if let Some(d) = draft {
        d.leased(state, leased - asked, asked_ms);
    }
    // Sent while the lease is held, so it is in place before the lease's release
    // lets the model idle (a zero unloads it right after this request).
    if let Some(k) = parsed.keep_alive {
        state.supervisor.keep_alive(&model, k.idle());
    }
    if parsed.load_only {
        drop(lease);
        return Ok(done(state, &model, started, &parsed, false));
    }
    let call = Call {
        state,
        model,
        lease,
        started,
        leased,
        draft,
    };
    let mut resp = if call.lease.kind == BackendKind::Ollama {
        call.passthrough(&parts, &bytes, &parsed).await?
    } else {
        call.translated(&parts, parsed).await?
    };
    if let Some(v) = note.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-modelyard-fallback", v);
    }
    Ok(resp)
}

/// The answer to a load-only request, counted as served.
fn done(
    state: &Inner,
    model: &str,
    started: Instant,
    parsed: &Parsed,
    unload: bool,
) -> Response<Body> {
    state.metrics.request(model, 200, started.elapsed());
    let v = reply::load_reply(parsed.shape, &parsed.model, &now(), unload);
    body::json_response(StatusCode::OK, &v)
}

/// A leased request, for its backend.
struct Call<'a> {
    state: &'a Inner,
    model: String,
    lease: Lease,
    started: Instant,
    leased: Instant,
    draft: &'a mut Slot,
}

impl Call<'_> {
    /// To an Ollama backend: the client's bytes with the model renamed, the reply
    /// relayed as it streams (NDJSON or JSON) with the name renamed back.
    async fn passthrough(
        self,
        parts: &Parts,
        bytes: &[u8],
        parsed: &Parsed,
    ) -> Result<Response<Body>, ApiError> {
        let Call {
            state,
            model,
            lease,
            started,
            draft,
            ..
        } = self;
        let body = super::passthrough::splice(bytes, &lease.upstream_model)?;
        let request = crate::forward::upstream_request(parts, &lease, None, body);
        let client_name = Some(parsed.model.as_str());
        let draft = draft.take();
        crate::deliver::round_trip(state, model, lease, request, client_name, started, draft).await
    }

    async fn translated(self, parts: &Parts, parsed: Parsed) -> Result<Response<Body>, ApiError> {
        let Call {
            state,
            model,
            lease,
            started,
            leased,
            draft,
        } = self;
        let (path, mut openai) = parsed
            .openai
            .expect("load-only requests are answered before");
        openai.insert("model".into(), Value::String(lease.upstream_model.clone()));
        let payload = Bytes::from(serde_json::to_vec(&openai).expect("a Value always encodes"));
        let mut request = crate::forward::upstream_request(parts, &lease, Some(path), payload);
        let h = request.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        // The router reads this reply, so it must come uncompressed.
        h.remove(header::ACCEPT_ENCODING);
        let sent = Instant::now();
        let response = crate::forward::exchange(state, &model, &lease, request).await?;
        let status = response.status();
        if !status.is_success() {
            // Before any output: Ollama's error object, with the backend's status.
            let (_, body) = response.into_parts();
            let text = Limited::new(body, MAX_ERROR_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            drop(lease);
            state
                .metrics
                .request(&model, status.as_u16(), started.elapsed());
            let message = match reply::error_message(&text) {
                m if m.is_empty() => format!("the backend for model `{model}` answered {status}"),
                m => m,
            };
            return Ok(body::json_response(
                status,
                &serde_json::json!({ "error": message }),
            ));
        }
        let sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/event-stream"));
        let observe = Observe::new(
            state.metrics.clone(),
            model.clone(),
            status.as_u16(),
            started,
        )
        .with_draft(draft.take());
        let idle = state.config().upstream_idle_timeout.duration();
        let mut relay = Relay::new(
            response.into_body(),
            None,
            Framing::Other,
            lease,
            observe,
            idle,
        );
        if parsed.stream && sse {
            let body = NdjsonBody::new(relay, parsed.shape, &parsed.model, started, leased, sent);
            return Ok(ndjson(body.boxed_unsync()));
        }
        // A whole reply (or a backend that answered a stream request whole).
        let limit = state.config().max_response.bytes();
        let collected = Limited::new(&mut relay, usize::try_from(limit).unwrap_or(usize::MAX))
            .collect()
            .await;
        if collected.is_err() {
            // The caller answers, and counts, the error instead.
            relay.uncount("backend_bad_reply");
        }
        drop(relay);
        let collected = collected
            .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
                true => ApiError::ResponseTooLarge {
                    model: model.clone(),
                    limit,
                },
                false => ApiError::BadReply {
                    model: model.clone(),
                    reason: e.to_string(),
                },
            })?
            .to_bytes();
        let end = Instant::now();
        let bad = |reason: String| ApiError::BadReply {
            model: model.clone(),
            reason,
        };
        let v: Value = serde_json::from_slice(&collected).map_err(|e| bad(e.to_string()))?;
        let timing = Timing {
            total: end - started,
            load: leased - started,
            prompt_eval: Duration::ZERO,
            eval: end - sent,
        };
        let out = reply::whole(parsed.shape, &parsed.model, &now(), &v, timing).map_err(bad)?;
        if parsed.stream {
            let mut line = serde_json::to_vec(&out).expect("a Value always encodes");
            line.push(b'\n');
            return Ok(ndjson(body::full(line)));
        }
        Ok(body::json_response(StatusCode::OK, &out))
    }
}

fn ndjson(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
