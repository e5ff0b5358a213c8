//! Requests that name their model outside the body: `GET /v1/…?model=NAME`, and
//! `/upstream/{model}/…`, which reaches any path of a model's server (its own
//! UI, a voice list, a health page) for tools that need more than the OpenAI API.
//! Either way the model is loaded if it is not, and leased while the exchange
//! streams; the body goes through untouched.

use std::sync::Arc;

use http::{header, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::Body;
use crate::error::ApiError;
use crate::forward;
use crate::upload::Prefixed;
use crate::Inner;

/// Where `/upstream/{model}/rest?query` goes: the model as named, and the path
/// for its server. None when the path is not under /upstream/.
pub(crate) fn upstream_target(path_and_query: &str) -> Option<(String, String)> {
    let rest = path_and_query.strip_prefix("/upstream/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (model, tail) = rest.split_at(end);
    let tail = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Some((crate::percent_decode(model), tail))
}

/// The `model` of a query string, percent-decoded, if it names one.
pub(crate) fn query_model(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (form_decode(k) == "model").then(|| form_decode(v))
    })
}

/// `query` with its first `model` set to `name`; every other byte as sent.
fn with_query_model(query: &str, name: &str) -> String {
    let mut done = false;
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if !done && form_decode(k) == "model" => {
                done = true;
                format!("{k}={}", encode(name))
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn form_decode(s: &str) -> String {
    crate::percent_decode(&s.replace('+', " "))
}

/// All but RFC 3986's unreserved characters.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// `GET /v1/…?model=NAME`: to NAME's backend, the query naming the upstream model
/// and the reply's JSON naming the model as the client did.
pub(crate) async fn by_query(
    state: Arc<Inner>,
    req: Request<Incoming>,
    asked: String,
) -> Response<Body> {
    let started = Instant::now();
    let result = async {
        let model = forward::routable(&state, &asked).await?;
        let lease = forward::lease(&state, &model, crate::asker::of(req.extensions())).await?;
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        let target = format!("{path}?{}", with_query_model(query, &lease.upstream_model));
        send(&state, req, lease, Some(&target), Some(&asked), started).await
    }
    .await;
    result.unwrap_or_else(|e| counted(&state, e, started))
}

/// `/upstream/{model}/…`: any method, the rest of the path and the query as sent,
/// the reply as the server gives it.
pub(crate) async fn upstream(
    state: Arc<Inner>,
    req: Request<Incoming>,
    asked: String,
    target: String,
) -> Response<Body> {
    let started = Instant::now();
    let result = async {
        let model = forward::routable(&state, &asked).await?;
        let lease = forward::lease(&state, &model, crate::asker::of(req.extensions())).await?;
        send(&state, req, lease, Some(&target), None, started).await
    }
    .await;
    result.unwrap_or_else(|e| counted(&state, e, started))
}

async fn send(
    state: &Inner,
    req: Request<Incoming>,
    lease: modelyard_supervisor::Lease,
    path: Option<&str>,
    client_name: Option<&str>,
    started: Instant,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Without a length the body goes chunked, or not at all when there is none.
    let length = length.filter(|_| !parts.headers.contains_key(header::TRANSFER_ENCODING));
    let body = Prefixed::new(bytes::Bytes::new(), body, state.config().body_timeout).boxed_unsync();
    let model = lease.model.clone();
    let request = forward::upstream_streamed(&parts, &lease, path, body, length);
    crate::deliver::round_trip(state, model, lease, request, client_name, started, None).await
}

fn counted(state: &Inner, e: ApiError, started: Instant) -> Response<Body> {
    let resp = e.into_response();
    state
        .metrics
        .request("-", resp.status().as_u16(), started.elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_paths() {
        let t = |p: &str| upstream_target(p).unwrap();
        assert_eq!(
            t("/upstream/sd/sdapi/v1/txt2img"),
            ("sd".into(), "/sdapi/v1/txt2img".into())
        );
        assert_eq!(
            t("/upstream/qwen3%3A8b/api/ps?x=1"),
            ("qwen3:8b".into(), "/api/ps?x=1".into())
        );
        assert_eq!(t("/upstream/tts"), ("tts".into(), "/".into()));
        assert_eq!(
            t("/upstream/tts?voice=a"),
            ("tts".into(), "/?voice=a".into())
        );
        assert_eq!(upstream_target("/v1/models"), None);
    }

    #[test]
    fn query_models_are_read_and_rewritten_in_place() {
        assert_eq!(
            query_model("a=1&model=kokoro%20v1&b=2").as_deref(),
            Some("kokoro v1")
        );
        assert_eq!(query_model("mod%65l=x+y").as_deref(), Some("x y"));
        assert_eq!(query_model("models=x&a"), None);
        assert_eq!(
            with_query_model("a=%2F&model=tts&model=z", "hexgrad/Kokoro-82M"),
            "a=%2F&model=hexgrad%2FKokoro-82M&model=z"
        );
    }
}
