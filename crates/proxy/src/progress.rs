//! Loading progress for streamed requests: while the model loads, the client
//! already has a 200 `text/event-stream` and hears from the router every few
//! seconds, so a 30–60 s client timeout does not give up during a swap. The body
//! drives the whole request — waiting for the lease, sending upstream, relaying —
//! so a client that leaves cancels whichever stage it is in.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use modelyard_config::LoadingProgress;
use modelyard_supervisor::Lease;
use tokio::time::{Instant, Interval};

use crate::body::{Body, BoxError};
use crate::error::ApiError;
use crate::forward::Upstream;

type Pending<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send>>;

/// How a stream's clients read an error that comes after the 200: each API's
/// SDKs parse their own, and one that does not see its own shape raises
/// something the caller cannot act on (or nothing at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `data: {"error": {…}}`, the object a non-streamed error would carry.
    OpenAi,
    /// `event: error` with `{"type": "error", "code", "message", "param"}`.
    Responses,
    /// `event: error` with `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

impl Framing {
    /// The framing of a streaming route, or None for a route that does not
    /// stream SSE (embeddings, uploads).
    pub(crate) fn of(path: &str) -> Option<Framing> {
        if path.ends_with("/completions") {
            Some(Framing::OpenAi)
        } else if path == "/v1/messages" {
            Some(Framing::Anthropic)
        } else if path == "/v1/responses" {
            Some(Framing::Responses)
        } else {
            None
        }
    }

    /// `error` (OpenAI's `{"error": {…}}`, or a backend's own object) as this
    /// framing's error event, whole with its blank line.
    pub(crate) fn error_event(self, status: u16, error: &serde_json::Value) -> String {
        let inner = &error["error"];
        let message = inner["message"]
            .as_str()
            .or_else(|| inner.as_str())
            .unwrap_or("the backend failed");
        match self {
            Framing::OpenAi => format!("data: {error}\n\n"),
            Framing::Anthropic => {
                let event = if error["type"] == "error" && inner["type"].is_string() {
                    error.clone()
                } else {
                    let kind = http::StatusCode::from_u16(status)
                        .map_or("api_error", crate::error::anthropic_type);
                    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
                };
                format!("event: error\ndata: {event}\n\n")
            }
            Framing::Responses => {
                let event = serde_json::json!({
                    "type": "error",
                    "code": inner["code"].as_str().or_else(|| inner["type"].as_str()),
                    "message": message,
                    "param": inner.get("param").cloned().unwrap_or(serde_json::Value::Null),
                    "sequence_number": 0,
                });
                format!("event: error\ndata: {event}\n\n")
            }
        }
    }
}

/// How often a waiting client hears from the router.
const EVERY: Duration = Duration::from_secs(2);
/// How much of a backend's error body is passed on as the error event.
const ERROR_BODY_MAX: usize = 64 * 1024;

enum Stage {
    Acquiring(Pending<Lease>, Option<Box<Upstream>>),
    Sending(Pending<Response<Body>>),
    Streaming(Body),
    /// The backend refused: its body becomes one error event.
    Refused(Body, u16, Vec<u8>),
    Done,
}

struct Progress {
    /// ", usually ~18s" when earlier loads tell.
    usually: String,
    /// "; 2nd in line" when the request was queued behind others.
    place: String,
    stage: Stage,
    tick: Interval,
    said_reasoning: bool,
    model: String,
    request_id: String,
    client_name: String,
    mode: LoadingProgress,
    framing: Framing,
    started: Instant,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

pub(crate) fn respond(
    acquire: Pending<Lease>,
    send: Upstream,
    usually: Option<Duration>,
    place: Option<usize>,
) -> Response<Body> {
    let body = Progress {
        place: place
            .filter(|n| *n > 0)
            .map(|n| format!("; {} in line", ordinal(n)))
            .unwrap_or_default(),
        usually: usually
            .map(|d| format!(", usually ~{:.0}s", d.as_secs_f64().max(1.0)))
            .unwrap_or_default(),
        tick: tokio::time::interval(EVERY),
        said_reasoning: false,
        model: send.model.clone(),
        request_id: send.request_id(),
        client_name: send.client_name.clone(),
        mode: send.progress_mode(),
        framing: Framing::of(send.path()).unwrap_or(Framing::OpenAi),
        started: send.started(),
        metrics: send.metrics_handle(),
        stage: Stage::Acquiring(acquire, Some(Box::new(send))),
    };
    let mut resp = Response::new(body.boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// 1st, 2nd, 3rd, 4th, …, 11th, 12th, 13th, 21st.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn frame(text: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
}

impl Progress {
    fn note(&mut self, loading: bool) -> String {
        let secs = self.started.elapsed().as_secs();
        // The reasoning delta is a chat chunk: other APIs hear comments.
        if loading
            && self.mode == LoadingProgress::Reasoning
            && self.framing == Framing::OpenAi
            && !self.said_reasoning
        {
            self.said_reasoning = true;
            let chunk = serde_json::json!({
                "id": "modelyard-loading",
                "object": "chat.completion.chunk",
                "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "model": self.client_name,
                "choices": [{"index": 0, "delta": {"reasoning_content": format!("loading {}…\n", self.model)}, "finish_reason": null}],
            });
            return format!("data: {chunk}\n\n");
        }
        if loading {
            format!(
                ": modelyard: loading {} ({secs}s{}{})\n\n",
                self.model, self.usually, self.place
            )
        } else {
            format!(
                ": modelyard: waiting for {} to answer ({secs}s)\n\n",
                self.model
            )
        }
    }

    fn fail(
        &mut self,
        status: u16,
        event: serde_json::Value,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.stage = Stage::Done;
        self.metrics
            .request(&self.model, status, self.started.elapsed());
        // The client saw 200; the log is where the failure is told once.
        let why = event["error"]["message"].as_str().unwrap_or("");
        tracing::warn!(id = %self.request_id, model = %self.model, status, "failed after the stream began: {why}");
        frame(self.framing.error_event(status, &event))
    }
}

impl HttpBody for Progress {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.stage {
                Stage::Acquiring(acquire, send) => match acquire.as_mut().poll(cx) {
                    Poll::Ready(Ok(lease)) => {
                        let send = send.take().expect("sent once");
                        this.stage = Stage::Sending(Box::pin(send.send(lease)));
                    }
                    Poll::Ready(Err(e)) => return this.fail_with(e),
                    Poll::Pending => {
                        ready!(this.tick.poll_tick(cx));
                        return frame(this.note(true));
                    }
                },
                Stage::Sending(sending) => match sending.as_mut().poll(cx) {
                    Poll::Ready(Ok(resp)) => {
                        let status = resp.status();
                        let body = resp.into_body();
                        this.stage = if status.is_success() {
                            Stage::Streaming(body)
                        } else {
                            Stage::Refused(body, status.as_u16(), Vec::new())
                        };
                    }
                    Poll::Ready(Err(e)) => return this.fail_with(e),
                    Poll::Pending => {
                        ready!(this.tick.poll_tick(cx));
                        return frame(this.note(false));
                    }
                },
                Stage::Streaming(body) => return Pin::new(body).poll_frame(cx),
                Stage::Refused(body, status, buf) => match ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            let room = ERROR_BODY_MAX.saturating_sub(buf.len());
                            buf.extend_from_slice(&d[..d.len().min(room)]);
                        }
                    }
                    _ => {
                        let status = *status;
                        // The backend's own error object when it sent one.
                        let event = serde_json::from_slice::<serde_json::Value>(buf)
                            .ok()
                            .filter(|v| v.get("error").is_some())
                            .unwrap_or_else(|| {
                                let msg = format!(
                                    "the backend for model `{}` answered {status}: {}",
                                    this.model,
                                    String::from_utf8_lossy(buf)
                                );
                                ApiError::json(&msg, "server_error", None, "backend_error")
                            });
                        return this.fail(status, event);
                    }
                },
                Stage::Done => return Poll::Ready(None),
            }
        }
    }
}

impl Progress {
    fn fail_with(&mut self, e: ApiError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Stage::Acquiring(_, Some(send)) = &mut self.stage {
            send.failed(&e);
        }
        let status = e.status().as_u16();
        let event = e.event();
        self.fail(status, event)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn places_read_as_english() {
        let said: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 111]
            .map(super::ordinal)
            .to_vec();
        assert_eq!(
            said,
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]
        );
    }

    use super::*;
    use serde_json::json;

    fn data(event: &str) -> serde_json::Value {
        let line = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn each_api_hears_an_error_in_its_own_framing() {
        let openai = ApiError::json(
            "model `m` failed to start",
            "server_error",
            None,
            "backend_start_failed",
        );
        let e = Framing::OpenAi.error_event(502, &openai);
        assert!(e.starts_with("data: {") && e.ends_with("\n\n"));
        assert_eq!(data(&e), openai);

        let e = Framing::Anthropic.error_event(503, &openai);
        assert!(e.starts_with("event: error\ndata: "), "{e}");
        assert_eq!(
            data(&e),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "model `m` failed to start"}})
        );
        // A backend's own Anthropic error passes as it is.
        let theirs = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens"}});
        assert_eq!(data(&Framing::Anthropic.error_event(400, &theirs)), theirs);

        let e = Framing::Responses.error_event(502, &openai);
        assert!(e.starts_with("event: error\ndata: "), "{e}");
        let v = data(&e);
        assert_eq!(
            (v["type"].clone(), v["code"].clone()),
            (json!("error"), json!("backend_start_failed"))
        );
        assert_eq!(v["message"], "model `m` failed to start");
    }

    #[test]
    fn the_streaming_routes_are_known() {
        assert_eq!(Framing::of("/v1/chat/completions"), Some(Framing::OpenAi));
        assert_eq!(Framing::of("/v1/completions"), Some(Framing::OpenAi));
        assert_eq!(Framing::of("/v1/messages"), Some(Framing::Anthropic));
        assert_eq!(Framing::of("/v1/responses"), Some(Framing::Responses));
        assert_eq!(Framing::of("/v1/embeddings"), None);
        assert_eq!(Framing::of("/v1/messages/count_tokens"), None);
    }
}
