//! The response body: the backend's bytes, passed on frame by frame as they
//! arrive. It owns the lease, so the model counts as busy exactly as long as the
//! client is being answered; dropping it (client gone) closes the upstream
//! connection, which is how the backend learns of the cancellation.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::client::Reply;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use modelyard_supervisor::Lease;

use crate::body::BoxError;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::rewrite::ModelRewriter;
use memchr::memmem::Finder;
use std::sync::{Arc, LazyLock};
use tokio::time::Instant;

/// What a body is made of, which says how to tell its client that it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Sse,
    Ndjson,
    Other,
}

pub struct Relay {
    /// Reset by every frame; a backend silent past it has hung.
    idle: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
    observe: Observe,
    upstream: Reply,
    rewriter: Option<ModelRewriter>,
    /// How a stream that breaks ends: an SSE `error` event, an NDJSON `error`
    /// line (Ollama's way), or, for anything else, a cut.
    framing: Framing,
    /// The last byte sent was not a newline: a line is cut short.
    mid_line: bool,
    done: bool,
    model: String,
    _lease: Lease,
}

impl Relay {
    pub fn new(
        upstream: Reply,
        rewriter: Option<ModelRewriter>,
        framing: Framing,
        lease: Lease,
        observe: Observe,
        idle: Option<std::time::Duration>,
    ) -> Self {
        let mut observe = observe;
        observe.streamed = framing != Framing::Other;
        Relay {
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            observe,
            upstream,
            rewriter,
            framing,
            mid_line: false,
            done: false,
            model: lease.model.clone(),
            _lease: lease,
        }
    }
}

impl Relay {
    /// The length the backend declared for its body, if it did.
    pub fn declared_len(&self) -> Option<u64> {
        self.upstream.size_hint().exact()
    }

    /// Why the backend's connection broke, if it did: once the body has ended,
    /// bytes past the end of the reply (its framing cannot be trusted).
    pub fn upstream_broken(&self) -> Option<String> {
        self.upstream.broken()
    }

    /// The request's outcome is not this body's to count: its caller answers
    /// (and counts) an error instead, with this code.
    pub fn uncount(&mut self, code: &'static str) {
        self.observe.counted = false;
        if let Some(d) = &mut self.observe.draft {
            d.failed_with(502, code);
        }
    }

    /// Ends the response on a backend failure: an SSE error event or an NDJSON
    /// error line for a stream, an error (the connection is cut) for anything else.
    fn broken(&mut self, msg: String) -> Result<Frame<Bytes>, BoxError> {
        self.done = true;
        if let Some(d) = &mut self.observe.draft {
            d.broken();
        }
        tracing::warn!(model = %self.model, "{msg}");
        match self.framing {
            Framing::Sse => {
                let event = ApiError::json(&msg, "server_error", None, "backend_stream_broken");
                Ok(Frame::data(Bytes::from(format!("data: {event}\n\n"))))
            }
            Framing::Ndjson => {
                // A line cut short is ended first, so the error is a line of its own.
                let line = serde_json::json!({ "error": msg });
                let lead = if self.mid_line { "\n" } else { "" };
                Ok(Frame::data(Bytes::from(format!("{lead}{line}\n"))))
            }
            Framing::Other => Err(msg.into()),
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
            let polled = Pin::new(&mut this.upstream).poll_frame(cx);
            if polled.is_ready() {
                if let Some((d, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(Instant::now() + *d);
                }
            } else if let Some((d, sleep)) = &mut this.idle {
                ready!(sleep.as_mut().poll(cx));
                let msg = format!(
                    "the backend for model `{}` sent nothing for {:.1}s (upstream_idle_timeout)",
                    this.model,
                    d.as_secs_f64()
                );
                return Poll::Ready(Some(this.broken(msg)));
            }
            match ready!(polled) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.observe.saw(&data);
                        let mut data = match &mut this.rewriter {
                            Some(r) => r.feed(data),
                            None => data,
                        };
                        // A reply of known length that has all arrived ends with
                        // this frame: the client's response is then finished in
                        // the same write, not after one more wake-up.
                        if this.upstream.is_end_stream() {
                            this.done = true;
                            if let Some(rest) =
                                this.rewriter.as_mut().and_then(ModelRewriter::finish)
                            {
                                data = join(data, rest);
                            }
                        }
                        // A chunk held back whole waits for the next one.
                        if !data.is_empty() {
                            this.mid_line = data.last() != Some(&b'\n');
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if this.done {
                            return Poll::Ready(None);
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
                    let msg = format!(
                        "the backend for model `{}` broke off the stream: {e}",
                        this.model
                    );
                    return Poll::Ready(Some(this.broken(msg)));
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

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (the record says so).
        if let (true, Some(d)) = (self.done, &mut self.observe.draft) {
            d.ended();
        }
    }
}

fn join(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    let mut out = bytes::BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(&a);
    out.extend_from_slice(&b);
    out.freeze()
}

/// Records a request in the metrics once, when its response ends or is dropped:
/// duration to the last byte, time to the first, and the tokens its usage reports.
pub struct Observe {
    metrics: Arc<Metrics>,
    model: String,
    status: u16,
    started: Instant,
    /// When the first byte of the body came.
    first: Option<std::time::Duration>,
    /// SSE or NDJSON: its first byte is its first token, and tokens come after.
    streamed: bool,
    usage: Option<(u64, u64)>,
    /// Prompt tokens the backend took from its cache (llama.cpp's `timings.cache_n`).
    cached: Option<u64>,
    counted: bool,
    /// The request log's record, completed as the response passes.
    draft: crate::record::Slot,
}

impl Observe {
    pub fn new(metrics: Arc<Metrics>, model: String, status: u16, started: Instant) -> Self {
        Observe {
            metrics,
            model,
            status,
            started,
            first: None,
            streamed: false,
            usage: None,
            cached: None,
            counted: true,
            draft: None,
        }
    }

    /// Completes `draft` (and writes it) as this response passes and ends.
    pub fn with_draft(mut self, mut draft: crate::record::Slot) -> Self {
        if let Some(d) = &mut draft {
            d.status(self.status);
        }
        self.draft = draft;
        self
    }

    fn saw(&mut self, data: &[u8]) {
        if self.first.is_none() && !data.is_empty() {
            let after = self.started.elapsed();
            self.first = Some(after);
            self.metrics.first_byte(&self.model, after);
            if let Some(d) = &mut self.draft {
                d.first_byte(after);
            }
        }
        let f = &*FINDERS;
        if f.usage.find(data).is_some() {
            if let (Some(p), Some(c)) = (
                number_after(data, &f.prompt_tokens),
                number_after(data, &f.completion_tokens),
            ) {
                self.usage = Some((p, c));
            } else if let Some(c) = number_after(data, &f.output_tokens) {
                // The Responses API and Anthropic's count input and output;
                // Anthropic's stream says its input first, its output last.
                let p = number_after(data, &f.input_tokens)
                    .or(self.usage.map(|(p, _)| p))
                    .unwrap_or(0);
                self.usage = Some((p, c));
            }
        }
        if let Some(n) = number_after(data, &f.cache_n) {
            self.cached = Some(n);
        }
        // Ollama's native replies count on their final object instead.
        if let (Some(p), Some(c)) = (
            number_after(data, &f.prompt_eval_count),
            number_after(data, &f.eval_count),
        ) {
            self.usage = Some((p, c));
        }
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        if let (Some(d), Some((p, c))) = (&mut self.draft, self.usage) {
            d.tokens(p, c);
        }
        if !self.counted {
            return;
        }
        self.metrics
            .request(&self.model, self.status, self.started.elapsed());
        if let Some((p, c)) = self.usage {
            self.metrics.tokens(&self.model, p, c);
        }
        if let Some(n) = self.cached {
            self.metrics.cached_tokens(&self.model, n);
        }
        if let (true, Some(first)) = (self.streamed, self.first) {
            let rest = self.started.elapsed().saturating_sub(first).as_secs_f64();
            let speed = self.usage.map(|(_, c)| c as f64 / rest);
            let speed = speed.filter(|s| s.is_finite() && *s > 0.0);
            self.metrics.stream(&self.model, first, speed);
        }
    }
}

/// The keys usage is read from, each searcher built once: building one costs
/// more than searching a small reply with it.
struct Finders {
    usage: Finder<'static>,
    prompt_tokens: Finder<'static>,
    completion_tokens: Finder<'static>,
    prompt_eval_count: Finder<'static>,
    eval_count: Finder<'static>,
    cache_n: Finder<'static>,
    input_tokens: Finder<'static>,
    output_tokens: Finder<'static>,
}

static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
    usage: Finder::new(b"\"usage\""),
    prompt_tokens: Finder::new(b"\"prompt_tokens\""),
    completion_tokens: Finder::new(b"\"completion_tokens\""),
    prompt_eval_count: Finder::new(b"\"prompt_eval_count\""),
    eval_count: Finder::new(b"\"eval_count\""),
    cache_n: Finder::new(b"\"cache_n\""),
    input_tokens: Finder::new(b"\"input_tokens\""),
    output_tokens: Finder::new(b"\"output_tokens\""),
});

/// No reply counts this many tokens (a trillion): a larger number is a
/// backend's garbage, not a count, and would wrap the sums made of it (the
/// metrics' counters, the request log's summary).
const MOST_TOKENS: u64 = 1 << 40;

/// The token count after `"key":` in `data`, if there is one.
fn number_after(data: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(data)? + key.needle().len();
    let rest = &data[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(&rest[start..], |end| &rest[start..start + end]);
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (n <= MOST_TOKENS).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_no_reply_can_carry_is_not_taken() {
        let f = &FINDERS.prompt_tokens;
        assert_eq!(number_after(br#"{"prompt_tokens": 12}"#, f), Some(12));
        assert_eq!(
            number_after(br#"{"prompt_tokens":1099511627776}"#, f),
            Some(MOST_TOKENS)
        );
        assert_eq!(number_after(br#"{"prompt_tokens":1099511627777}"#, f), None);
        assert_eq!(
            number_after(br#"{"prompt_tokens":18446744073709551615}"#, f),
            None
        );
        assert_eq!(
            number_after(br#"{"prompt_tokens":18446744073709551616}"#, f),
            None
        );
    }
}
