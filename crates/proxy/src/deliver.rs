//! The backend's response for the client. Streams (SSE, NDJSON) and anything
//! not JSON pass through as they arrive; a whole JSON reply is read first, up to
//! `max_response`, so a backend that sends an endless or broken one costs the
//! router a bounded buffer and the client gets a 502 that says so.

use crate::client::Reply;
use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use modelyard_config::Config;
use modelyard_supervisor::Lease;

use crate::body::{self, Body};
use crate::error::ApiError;
use crate::forward::strip_hop_by_hop;
use crate::relay::{Framing, Observe, Relay};
use crate::rewrite::ModelRewriter;
use crate::Inner;
use tokio::time::Instant;

/// Sends `request` to the backend on `lease` and delivers its reply, counted
/// under `model` from `started`.
pub(crate) async fn round_trip(
    state: &Inner,
    model: String,
    lease: Lease,
    request: Request<crate::client::Outgoing>,
    client_name: Option<&str>,
    started: Instant,
    mut draft: crate::record::Slot,
) -> Result<Response<Body>, ApiError> {
    let response = match crate::forward::exchange(state, &model, &lease, request).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(d) = &mut draft {
                d.failed(&e);
            }
            return Err(e);
        }
    };
    let observe = Observe::new(
        state.metrics.clone(),
        model,
        response.status().as_u16(),
        started,
    )
    .with_draft(draft);
    deliver(&state.config(), response, client_name, lease, observe).await
}

/// The response for the client: a relayed stream, or a whole reply read within
/// `max_response`. The body holds the lease and counts the request; an Err was
/// not counted, so the caller counts it.
pub(crate) async fn deliver(
    config: &Config,
    response: Response<Reply>,
    client_name: Option<&str>,
    lease: Lease,
    observe: Observe,
) -> Result<Response<Body>, ApiError> {
    let (mut parts, upstream) = response.into_parts();
    if matches!(
        parts.status,
        http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
    ) {
        // Neither may have a body: bytes after the head break the connection
        // (hyper reads them in the same pass as the head), and the reply with it.
        tokio::task::yield_now().await;
        if let Some(why) = upstream.broken() {
            return Err(ApiError::BadReply {
                model: lease.model.clone(),
                reason: format!("a {} with a body ({why})", parts.status.as_u16()),
            });
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    let (framing, textual) = framing_of(&parts.headers);
    // None: the client spoke to the backend directly (`/upstream`), names and all.
    let rewriter = client_name.filter(|_| textual).map(|name| {
        // The name changes length, so the upstream's length no longer holds.
        parts.headers.remove(header::CONTENT_LENGTH);
        ModelRewriter::new(name)
    });
    parts.version = Version::HTTP_11;
    let idle = config.upstream_idle_timeout.duration();
    let model = lease.model.clone();
    let relay = Relay::new(upstream, rewriter, framing, lease, observe, idle);
    if framing != Framing::Other {
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    } else if textual {
        let whole = read_whole(relay, &model, config.max_response.bytes()).await?;
        return Ok(Response::from_parts(parts, body::full(whole)));
    }
    Ok(Response::from_parts(parts, BodyExt::boxed_unsync(relay)))
}

/// How a reply is framed, and whether it is text the model name may be in (SSE or
/// any JSON type), read from its content type without copying it.
fn framing_of(headers: &http::HeaderMap) -> (Framing, bool) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let starts = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let framing = if starts(b"text/event-stream") {
        Framing::Sse
    } else if starts(b"application/x-ndjson") {
        Framing::Ndjson
    } else {
        Framing::Other
    };
    let json = content_type
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"json"));
    (framing, framing == Framing::Sse || json)
}

/// A whole reply, never more than `limit` bytes of it held.
async fn read_whole(mut relay: Relay, model: &str, limit: u64) -> Result<bytes::Bytes, ApiError> {
    if relay.declared_len().is_some_and(|n| n > limit) {
        relay.uncount("backend_response_too_large");
        return Err(ApiError::ResponseTooLarge {
            model: model.to_string(),
            limit,
        });
    }
    let mut whole = BytesMut::new();
    while let Some(frame) = relay.frame().await {
        let failure = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) if (whole.len() + d.len()) as u64 <= limit => {
                    whole.extend_from_slice(&d);
                    continue;
                }
                Ok(_) => ApiError::ResponseTooLarge {
                    model: model.to_string(),
                    limit,
                },
                Err(_) => continue,
            },
            Err(e) => ApiError::BadReply {
                model: model.to_string(),
                reason: e.to_string(),
            },
        };
        relay.uncount(failure.code());
        return Err(failure);
    }
    if let Some(why) = relay.upstream_broken() {
        // More bytes than the reply's framing allowed: which of them are the
        // answer cannot be known.
        relay.uncount("backend_bad_reply");
        return Err(ApiError::BadReply {
            model: model.to_string(),
            reason: format!("the reply broke its framing ({why})"),
        });
    }
    Ok(whole.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(content_type: &str) -> (Framing, bool) {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        framing_of(&h)
    }

    #[test]
    fn content_types_decide_framing_and_renaming() {
        assert_eq!(of("text/event-stream; charset=utf-8"), (Framing::Sse, true));
        assert_eq!(of("Application/X-NDJSON"), (Framing::Ndjson, true));
        assert_eq!(of("application/json"), (Framing::Other, true));
        assert_eq!(of("application/problem+JSON"), (Framing::Other, true));
        assert_eq!(of("audio/wav"), (Framing::Other, false));
        assert_eq!(framing_of(&http::HeaderMap::new()), (Framing::Other, false));
    }
}
