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
    stage: Stage,
    tick: Interval,
    said_reasoning: bool,
    model: String,
    request_id: String,
    client_name: String,
    mode: LoadingProgress,
    started: Instant,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

pub(crate) fn respond(
    acquire: Pending<Lease>,
    send: Upstream,
    usually: Option<Duration>,
) -> Response<Body> {
    let body = Progress {
        usually: usually
            .map(|d| format!(", usually ~{:.0}s", d.as_secs_f64().max(1.0)))
            .unwrap_or_default(),
        tick: tokio::time::interval(EVERY),
        said_reasoning: false,
        model: send.model.clone(),
        request_id: send.request_id(),
        client_name: send.client_name.clone(),
        mode: send.progress_mode(),
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

fn frame(text: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
}

impl Progress {
    fn note(&mut self, loading: bool) -> String {
        let secs = self.started.elapsed().as_secs();
        if loading && self.mode == LoadingProgress::Reasoning && !self.said_reasoning {
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
                ": modelyard: loading {} ({secs}s{})\n\n",
                self.model, self.usually
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
        frame(format!("data: {event}\n\n"))
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
