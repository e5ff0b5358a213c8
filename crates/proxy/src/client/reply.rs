//! A backend's response body as hyper reads it. Once the body has ended as its
//! framing says, the connection goes back to the pool for the next request; a
//! body that fails, or is dropped before its end (the client went away), takes
//! its connection down with it, which is how the backend learns of the
//! cancellation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use super::conn::Shared;
use super::pool::Pool;
use super::Sender;
use crate::body::BoxError;

pub(crate) struct Reply {
    body: Incoming,
    /// The connection's handle, until the body ends and it is parked.
    sender: Option<Sender>,
    shared: Arc<Shared>,
    park: (Arc<Pool>, String),
}

impl Reply {
    pub(crate) fn new(
        body: Incoming,
        sender: Sender,
        shared: Arc<Shared>,
        park: (Arc<Pool>, String),
    ) -> Reply {
        let mut reply = Reply {
            body,
            sender: Some(sender),
            shared,
            park,
        };
        if reply.body.is_end_stream() {
            reply.finish();
        }
        reply
    }

    /// Why the connection broke, if it did: asked once the body has ended, it
    /// says whether the backend sent more than its reply's framing allowed (a
    /// reply still held by the router is then not to be trusted).
    pub(crate) fn broken(&self) -> Option<String> {
        self.shared.broken()
    }

    fn finish(&mut self) {
        if let Some(sender) = self.sender.take() {
            let (pool, authority) = &self.park;
            pool.put(authority, sender, self.shared.clone());
        }
    }
}

impl HttpBody for Reply {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // The connection is done for; its handle goes with it.
                this.sender = None;
            }
            // Trailers are the last frame, and whoever relays them may not
            // ask for the end after them.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.body.is_end_stream() => {
                this.finish()
            }
            _ => {}
        }
        polled.map(|frame| {
            frame.map(|r| r.map_err(|e| format!("connection lost: {}", super::describe(&e)).into()))
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
