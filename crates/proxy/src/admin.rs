//! `/admin`: what is loaded and why, and loading or unloading by hand. Reads are
//! open; calls that change state need the admin key when one is set, and come
//! from this machine unless `admin_remote` allows others.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use modelyard_config::{ByteSize, Config};
use modelyard_supervisor::ModelStatus;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::error::ApiError;
use crate::Inner;

pub(crate) async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_string();
    route(
        &inner,
        req.method().clone(),
        req.uri().path().to_string(),
        &query,
        req.headers(),
        peer,
    )
    .await
    .unwrap_or_else(ApiError::into_response)
}

async fn route(
    inner: &Inner,
    method: Method,
    path: String,
    query: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let config = inner.config();
    let parts: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["status"]) => status(inner).await,
        (&Method::GET, ["requests"]) => {
            allowed(&config, headers, peer)?;
            crate::requests::list(inner, query).await
        }
        (&Method::GET, ["requests", "summary"]) => {
            allowed(&config, headers, peer)?;
            crate::requests::summary(inner, query).await
        }
        (&Method::GET, ["events"]) => Ok(events(inner)),
        (&Method::GET, ["models", id, "logs"]) => {
            // Backends print prompts and paths: their output is as private as a change.
            allowed(&config, headers, peer)?;
            let model = crate::models::resolve(&config, &crate::percent_decode(id))?;
            let ring = inner
                .supervisor
                .logs(&model)
                .await
                .ok_or(ApiError::Supervisor(
                    modelyard_supervisor::SupervisorError::ShuttingDown,
                ))?;
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            };
            let lines = match param("lines") {
                None => 200,
                Some(n) => n.parse().map_err(|_| ApiError::InvalidField {
                    field: "lines".into(),
                    reason: format!(
                        "`{n}` is not a number of lines such as 200 (0 with follow: only new ones)"
                    ),
                })?,
            };
            Ok(logs(
                ring,
                lines,
                param("follow") == Some("true"),
                inner.closing.subscribe(),
            ))
        }
        (&Method::POST, ["models", id, action @ ("load" | "unload")]) => {
            allowed(&config, headers, peer)?;
            let model = crate::models::resolve(&config, &crate::percent_decode(id))?;
            if *action == "load" {
                let deadline = Instant::now() + config.queue_timeout;
                inner.supervisor.load(&model, deadline).await?;
                Ok(ok(json!({"model": model, "loaded": true})))
            } else {
                let gone = inner.supervisor.unload(Some(&model)).await?;
                Ok(ok(json!({"model": model, "unloading": gone})))
            }
        }
        (&Method::POST, ["reload"]) => {
            allowed(&config, headers, peer)?;
            let changes = inner.reload().await.map_err(ApiError::Reload)?;
            Ok(ok(json!({"reloaded": true, "changes": changes})))
        }
        (&Method::POST, ["unload"]) => {
            allowed(&config, headers, peer)?;
            let gone = inner.supervisor.unload(None).await?;
            Ok(ok(json!({"unloading": gone})))
        }
        _ => Err(ApiError::NoRoute {
            method: method.to_string(),
            path: crate::echo::shown(&path),
        }),
    }
}

fn ok(v: Value) -> Response<Body> {
    body::json_response(StatusCode::OK, &v)
}

/// Mutating calls: from this machine (unless allowed), with the key (if set).
fn allowed(config: &Config, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    // A dual-stack listener sees an IPv4 client as ::ffff:127.0.0.1.
    if !peer.ip().to_canonical().is_loopback() && !config.admin_remote {
        return Err(ApiError::AdminRemote);
    }
    if let Some(key) = &config.admin_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::keys::bearer)
            .unwrap_or("");
        if !crate::keys::same(given.as_bytes(), key.as_bytes()) {
            return Err(ApiError::AdminKey);
        }
    }
    Ok(())
}

/// A backend's last `lines` lines as text; with `follow`, then every new line.
fn logs(
    ring: modelyard_supervisor::LogRing,
    lines: usize,
    follow: bool,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Response<Body> {
    use http_body_util::BodyExt;
    use tokio::sync::broadcast::error::RecvError;
    let text = |ls: Vec<String>| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let body = if follow {
        let (tail, rx) = ring.follow(lines);
        let first = futures_util::stream::once(async move {
            Ok(http_body::Frame::data(bytes::Bytes::from(text(tail))))
        });
        let live =
            futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
                let line = tokio::select! {
                    _ = closing.wait_for(|c| *c) => return None,
                    l = rx.recv() => match l {
                        Ok(l) => format!("{l}\n"),
                        Err(RecvError::Lagged(n)) => format!("[modelyard: {n} lines skipped]\n"),
                        Err(RecvError::Closed) => return None,
                    },
                };
                Some((
                    Ok(http_body::Frame::data(bytes::Bytes::from(line))),
                    (rx, closing),
                ))
            });
        http_body_util::StreamBody::new(futures_util::StreamExt::chain(first, live)).boxed_unsync()
    } else {
        body::full(text(ring.tail(lines)))
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Comments keep idle event streams open through proxies and client timeouts.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// `/admin/events`: model events as SSE, `event: <kind>` and the event as JSON.
fn events(inner: &Inner) -> Response<Body> {
    use http_body_util::BodyExt;
    use tokio::sync::broadcast::error::RecvError;
    let rx = (inner.supervisor.subscribe(), inner.closing.subscribe());
    let hello = futures_util::stream::once(async {
        Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b": connected\n\n",
        )))
    });
    let live = futures_util::stream::unfold(rx, |(mut rx, mut closing)| async move {
        let text = tokio::select! {
            _ = closing.wait_for(|c| *c) => return None,
            ev = rx.recv() => match ev {
                Ok(e) => format!("event: {}\ndata: {}\n\n", e.kind, serde_json::to_string(&e).unwrap_or_default()),
                Err(RecvError::Lagged(n)) => format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"),
                Err(RecvError::Closed) => return None,
            },
            _ = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_string(),
        };
        Some((
            Ok(http_body::Frame::data(bytes::Bytes::from(text))),
            (rx, closing),
        ))
    });
    let stream = futures_util::StreamExt::chain(hello, live);
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    resp
}

async fn status(inner: &Inner) -> Result<Response<Body>, ApiError> {
    let snap = inner
        .supervisor
        .snapshot()
        .await
        .ok_or(ApiError::Supervisor(
            modelyard_supervisor::SupervisorError::ShuttingDown,
        ))?;
    let models: Vec<Value> = snap.models.iter().map(|m| model_json(inner, m)).collect();
    let budget = (snap.budget != u64::MAX).then_some(snap.budget);
    let configured = (snap.configured_budget != u64::MAX).then_some(snap.configured_budget);
    // Apple silicon: a model the GPU cannot wire whole fails or pages.
    let gpu_wired_limit = modelyard_supervisor::gpu_wired_limit();
    let warnings: Vec<String> = gpu_wired_limit
        .map(|limit| {
            snap.models
                .iter()
                .filter_map(|m| modelyard_supervisor::gpu_wired_warning(&m.name, m.declared, limit))
                .collect()
        })
        .unwrap_or_default();
    let reserve = inner.config().reserve;
    // A budget below routes.yaml's is the reserve at work: said where it shows.
    let budget_why = match (budget, configured, snap.available, reserve) {
        (Some(b), c, Some(avail), Some(reserve)) if c.is_none_or(|c| b < c) => Some(format!(
            "down from {}: {} available now, {reserve} reserved for the system",
            c.map_or("no limit".to_string(), |c| ByteSize(c).to_string()),
            ByteSize(avail)
        )),
        _ => None,
    };
    Ok(ok(json!({
        "budget": budget,
        "configured_budget": configured,
        "budget_why": budget_why,
        "gpu_wired_limit": gpu_wired_limit,
        "warnings": warnings,
        "available": snap.available,
        "reserve": reserve.map(|r| r.bytes()),
        "used": snap.used,
        "free": budget.map(|b| b.saturating_sub(snap.used)),
        "servers": snap.servers,
        "models": models,
        "kv_cache": inner.supervisor.kv_counts(),
        "events": inner.supervisor.recent_events(),
    })))
}

fn model_json(inner: &Inner, m: &ModelStatus) -> Value {
    let config = inner.config();
    let def = config.models.get(&m.name);
    let aliases = def.map(|c| c.aliases.clone()).unwrap_or_default();
    let group = def.and_then(|c| c.group.clone());
    json!({
        "name": m.name,
        "state": m.phase.as_str(),
        "backend": m.backend,
        "upstream": m.upstream,
        "aliases": aliases,
        "group": group,
        "pinned": m.pinned,
        "declared": m.declared,
        "measured": m.measured,
        "reserved": m.reserved,
        "in_flight": m.in_flight,
        "queued": m.queued,
        "queued_background": m.queued_background,
        "last_used_secs_ago": m.last_used_ago.as_secs(),
        "idle_unload_in_secs": m.idle_unload_in.map(|d| d.as_secs()),
        "pid": m.pid,
        "endpoint": m.endpoint,
        "typical_load_secs": m.typical_load.map(|d| d.as_secs_f64()),
        "context_window": m.context_window,
        "failures": m.failures,
        "last_error": m.last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        modelyard_config::load_str(
            "t",
            &format!("backends: {{b: {{url: \"http://127.0.0.1:1\"}}}}\n{extra}"),
        )
        .unwrap()
        .config
    }

    fn bearer(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {k}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn mutating_calls_come_from_this_machine_unless_allowed() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lan: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let none = HeaderMap::new();
        assert!(allowed(&config(""), &none, local).is_ok());
        assert!(matches!(
            allowed(&config(""), &none, lan),
            Err(ApiError::AdminRemote)
        ));
        assert!(allowed(&config("admin_remote: true"), &none, lan).is_ok());
        let keyed = config("admin_key: s3cret");
        assert!(matches!(
            allowed(&keyed, &none, local),
            Err(ApiError::AdminKey)
        ));
        assert!(matches!(
            allowed(&keyed, &bearer("s3creT"), local),
            Err(ApiError::AdminKey)
        ));
        assert!(allowed(&keyed, &bearer("s3cret"), local).is_ok());
        // The key does not open the door to other machines.
        assert!(matches!(
            allowed(&keyed, &bearer("s3cret"), lan),
            Err(ApiError::AdminRemote)
        ));
        // A dual-stack listener sees this machine's IPv4 clients as v4-mapped,
        // and other machines' too.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert!(allowed(&config(""), &none, mapped).is_ok());
        let mapped_lan: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
        assert!(matches!(
            allowed(&config(""), &none, mapped_lan),
            Err(ApiError::AdminRemote)
        ));
    }
}
