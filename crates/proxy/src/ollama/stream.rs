//! The body of a translated stream: the backend's SSE, relayed (the lease held,
//! the idle timeout kept, the metrics counted by [`Relay`]), comes out as
//! Ollama's NDJSON as each event arrives; the last line carries the timings the
//! router measured. A stream that breaks ends with an `{"error": …}` line.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tokio::time::Instant;

use super::catalog::rfc3339;
use super::reply::{StreamTranslator, Timing};
use super::request::Shape;
use crate::body::BoxError;
use crate::relay::Relay;

pub struct NdjsonBody {
    relay: Relay,
    translator: StreamTranslator,
    started: Instant,
    leased: Instant,
    sent: Instant,
    first_token: Option<Instant>,
    done: bool,
}

impl NdjsonBody {
    pub fn new(
        relay: Relay,
        shape: Shape,
        client_name: &str,
        started: Instant,
        leased: Instant,
        sent: Instant,
    ) -> Self {
        NdjsonBody {
            relay,
            translator: StreamTranslator::new(shape, client_name),
            started,
            leased,
            sent,
            first_token: None,
            done: false,
        }
    }

    fn timing(&self) -> Timing {
        let end = Instant::now();
        let first = self.first_token.unwrap_or(end);
        Timing {
            total: end - self.started,
            load: self.leased - self.started,
            prompt_eval: first.saturating_duration_since(self.sent),
            eval: end - first,
        }
    }
}

fn data(bytes: Vec<u8>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes)))))
}

impl HttpBody for NdjsonBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.relay).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(chunk) = frame.into_data() else {
                        continue; // trailers: nothing Ollama has a place for
                    };
                    let out = this.translator.feed(&chunk, &rfc3339(SystemTime::now()));
                    if this.first_token.is_none() && this.translator.started {
                        this.first_token = Some(Instant::now());
                    }
                    // The backend's own error event ends the stream.
                    this.done = this.translator.failed;
                    if !out.is_empty() {
                        return data(out);
                    }
                }
                None => {
                    this.done = true;
                    let timing = this.timing();
                    let out = this.translator.finish(&rfc3339(SystemTime::now()), timing);
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return data(out);
                }
                Some(Err(e)) => {
                    // Already logged by the relay (broke off, or went silent).
                    this.done = true;
                    return data(this.translator.error_line(&e.to_string()));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
