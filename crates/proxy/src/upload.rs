//! Uploads: multipart forms (`/v1/audio/transcriptions`, `/v1/images/edits`, …)
//! routed by their `model` field and streamed on. Only the body up to the end of
//! that field is held; the rest goes upstream chunk by chunk as the client sends it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::error::ApiError;
use crate::forward;
use crate::multipart::{FormScanner, LaterModel, Scan};
use crate::Inner;

/// Routes and forwards one multipart request. The body read to find `model` is
/// bounded by max_body; when `model` comes first that is a few hundred bytes.
pub(crate) async fn form(
    state: &Arc<Inner>,
    req: Request<Incoming>,
    boundary: &[u8],
    started: Instant,
    label: &mut String,
    draft: &mut crate::record::Slot,
) -> Result<Response<Body>, ApiError> {
    let (parts, mut body) = req.into_parts();
    let limit = state.config().max_body.bytes();
    let (head, asked, span) =
        read_to_model(&mut body, boundary, limit, state.config().body_timeout).await?;
    // What was read past the first `model` part may already hold a second.
    let mut watch = LaterModel::new(boundary);
    if watch.feed(&head[span.end..]) {
        return Err(repeated_part());
    }
    let config = state.config();
    let asked_for = forward::routable(state, &asked).await?;
    let choice =
        crate::fallback::route(state, &config, &asked_for, parts.uri.path(), &head).await?;
    let note = choice.note(&asked_for);
    let model = choice.model;
    let client_name = match note {
        None => asked,
        Some(_) => model.clone(),
    };
    label.clone_from(&model);
    if let Some(d) = draft {
        // The form's file is never kept, whatever `capture` says.
        d.asked(&client_name, false, &[]);
        let ask = crate::asker::of(&parts.extensions).for_model(&config, &model);
        d.served(&model, ask.priority);
    }
    let asked = (Instant::now(), modelyard_reqlog::now_ms());
    let lease = forward::lease(state, &model, crate::asker::of(&parts.extensions)).await?;
    if let Some(d) = draft {
        d.leased(state, asked.0.elapsed(), asked.1);
    }
    let upstream = lease.upstream_model.as_bytes();
    let mut spliced = BytesMut::with_capacity(head.len() + upstream.len());
    spliced.extend_from_slice(&head[..span.start]);
    spliced.extend_from_slice(upstream);
    spliced.extend_from_slice(&head[span.end..]);
    // The field changed length, and with it the whole body; unknown stays chunked.
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|n| n.saturating_sub(span.len() as u64) + upstream.len() as u64);
    let body = Prefixed::new(spliced.freeze(), body, config.body_timeout)
        .watching(watch)
        .boxed_unsync();
    let request = forward::upstream_streamed(&parts, &lease, None, body, length);
    let mut resp = crate::deliver::round_trip(
        state,
        model.clone(),
        lease,
        request,
        Some(&client_name),
        started,
        draft.take(),
    )
    .await?;
    if let Some(v) = note.and_then(|n| http::HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-modelyard-fallback", v);
    }
    Ok(resp)
}

/// Reads the body until the form's `model` field has ended: what was read, the
/// name, and where it stands in what was read.
async fn read_to_model(
    body: &mut Incoming,
    boundary: &[u8],
    limit: u64,
    every: std::time::Duration,
) -> Result<(Bytes, String, std::ops::Range<usize>), ApiError> {
    let mut scanner = FormScanner::new(boundary);
    let mut head = BytesMut::new();
    loop {
        match scanner.scan(&head) {
            Scan::Found { model, span } => return Ok((head.freeze(), model, span)),
            Scan::NoModel => return Err(ApiError::FormWithoutModel),
            Scan::Malformed(why) => return Err(ApiError::BadForm(why)),
            Scan::NeedMore if head.len() as u64 > limit => {
                return Err(ApiError::ModelFieldTooLate { limit })
            }
            Scan::NeedMore => {}
        }
        let next = tokio::time::timeout(every, body.frame())
            .await
            .map_err(|_| ApiError::BodyTimeout { after: every })?;
        match next {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(ApiError::BodyRead(e.to_string())),
            None => {
                return Err(ApiError::BadForm(
                    "the body ends before the form's closing boundary".into(),
                ))
            }
        }
    }
}

/// What was already read, then the rest of the client's body as it arrives. A
/// client that breaks off breaks the upstream request too, so the backend never
/// takes a truncated file for a whole one; one that goes silent for longer than
/// `body_timeout` while its body is asked for does too ([`Stalled`]), so a
/// stalled upload holds neither a model's lease nor a connection slot.
pub(crate) struct Prefixed {
    head: Option<Bytes>,
    rest: Incoming,
    /// A form's later parts, watched for a second `model`.
    watch: Option<LaterModel>,
    every: std::time::Duration,
    /// Started when a wait for the client begins, not while the backend is
    /// not asking (its own pace is not the client's fault).
    clock: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The client stopped sending its body for longer than `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request's body stalled for {:.1}s (body_timeout in routes.yaml)", .0.as_secs_f64())]
pub(crate) struct Stalled(pub std::time::Duration);

impl Prefixed {
    pub(crate) fn new(head: Bytes, rest: Incoming, every: std::time::Duration) -> Self {
        Prefixed {
            head: (!head.is_empty()).then_some(head),
            rest,
            watch: None,
            every,
            clock: None,
        }
    }

    pub(crate) fn watching(mut self, watch: LaterModel) -> Self {
        self.watch = Some(watch);
        self
    }
}

/// A form whose `model` part comes twice: refused, as a JSON body with two
/// `model` keys is.
pub(crate) fn repeated_part() -> ApiError {
    ApiError::RepeatedKey {
        first: "model".into(),
        second: "model (a second form part)".into(),
    }
}

/// A second `model` part turned up in the streamed rest of a form.
#[derive(Debug, thiserror::Error)]
#[error("the form has a second `model` part")]
pub(crate) struct RepeatedPart;

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        match Pin::new(&mut this.rest).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.clock = None;
                if let (Some(watch), Some(Ok(f))) = (&mut this.watch, &frame) {
                    if f.data_ref().is_some_and(|d| watch.feed(d)) {
                        // Cut off: the backend never sees a whole form with both.
                        return Poll::Ready(Some(Err(Box::new(RepeatedPart))));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => {
                let every = this.every;
                let clock = this
                    .clock
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                std::task::ready!(clock.as_mut().poll(cx));
                this.clock = None;
                Poll::Ready(Some(Err(Box::new(Stalled(every)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}
