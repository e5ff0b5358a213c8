//! The response body: the backend's bytes, passed on frame by frame as they
//! arrive. It owns the lease, so the model counts as busy exactly as long as the
//! client is being answered; dropping it (client gone) closes the upstream
//! connection, which is how the backend learns of the cancellation.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use modelyard_supervisor::Lease;

use crate::body::BoxError;
use crate::error::ApiError;
use crate::rewrite::ModelRewriter;

pub struct Relay {
    upstream: Incoming,
    rewriter: Option<ModelRewriter>,
    /// An SSE stream that breaks gets a final `error` event instead of a cut.
    sse: bool,
    done: bool,
    model: String,
    _lease: Lease,
}

impl Relay {
    pub fn new(
        upstream: Incoming,
        rewriter: Option<ModelRewriter>,
        sse: bool,
        lease: Lease,
    ) -> Self {
        Relay {
            upstream,
            rewriter,
            sse,
            done: false,
            model: lease.model.clone(),
            _lease: lease,
        }
    }
}

impl HttpBody for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.upstream).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let data = match &mut this.rewriter {
                            Some(r) => r.feed(data),
                            None => data,
                        };
                        // A chunk held back whole waits for the next one.
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                None => {
                    this.done = true;
                    let rest = this.rewriter.as_mut().and_then(ModelRewriter::finish);
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    tracing::warn!(model = %this.model, "backend stream broke: {e}");
                    if this.sse {
                        let msg = format!(
                            "the backend for model `{}` broke off the stream: {e}",
                            this.model
                        );
                        let event =
                            ApiError::json(&msg, "server_error", None, "backend_stream_broken");
                        let bytes = format!("data: {event}\n\n");
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes)))));
                    }
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.rewriter.is_some() {
            SizeHint::default()
        } else {
            self.upstream.size_hint()
        }
    }
}
