//! The router's client for backends: HTTP/1.1 over TCP, which is what every
//! local model server speaks, spoken by hyper (`hyper::client::conn::http1`)
//! under a pool of our own. The pool is ours because of what a relay must know
//! that a general client hides: whether a request went out on a kept
//! connection (it is then sent again once, on a new one, if that connection
//! turns out to have been closed unanswered), whether anything came back, and
//! whether the backend broke its framing after a reply that is still being
//! held (that reply is then a 502, not a truncated 200).
//!
//! What the pool guarantees: an answer belongs to exactly one request. hyper
//! reads every kept connection while it idles and ends it at the first byte
//! nobody asked for or at the backend's close; a connection is checked at the
//! socket before it is written to again (see [`conn`]); a reply that breaks
//! its framing (bytes past its Content-Length, garbage after the last chunk)
//! ends its connection.

mod conn;
mod pool;
mod reply;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;

use crate::body::{Body, BoxError};
pub(crate) use reply::Reply;

type Sender = http1::SendRequest<Body>;

/// A request's body as it goes upstream.
pub(crate) enum Outgoing {
    /// Held whole: sent with its length, and sent again if a kept connection
    /// turns out to have been closed by the backend.
    Whole(Bytes),
    /// Read from the client as it is sent: with its Content-Length if the
    /// request has one, else chunked.
    Streamed(Body),
}

/// Why an exchange gave no response.
#[derive(Debug)]
pub(crate) enum Failure {
    ConnectTimeout,
    Connect(io::Error),
    /// Not HTTP, a head past the limits, or a reply HTTP does not allow.
    BadReply(String),
    /// The connection broke before the response head.
    Lost(String),
    /// The client's own body failed while it was being sent.
    Body(String),
    /// The client's body stalled past `body_timeout` while it was being sent.
    BodyStalled(Duration),
    /// A form's streamed rest held a second `model` part.
    RepeatedPart,
}

pub(crate) struct Client {
    pool: Arc<pool::Pool>,
    connect_timeout: Duration,
}

/// How long a kept connection may wait for the end of its last reply to be
/// seen by its task before it is passed over for a new one.
const READY_WAIT: Duration = Duration::from_millis(50);

impl Client {
    /// `keep_idle`: how long an unused connection is kept for the next request.
    pub(crate) fn new(connect_timeout: Duration, keep_idle: Duration) -> Client {
        let pool = Arc::new(pool::Pool::new(keep_idle));
        if tokio::runtime::Handle::try_current().is_ok() {
            pool::Pool::spawn_sweeper(
                &pool,
                (keep_idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15)),
            );
        }
        Client {
            pool,
            connect_timeout,
        }
    }

    pub(crate) async fn send(&self, req: Request<Outgoing>) -> Result<Response<Reply>, Failure> {
        let (parts, body) = req.into_parts();
        if parts.uri.scheme_str().is_some_and(|s| s != "http") {
            // routes.yaml refuses such a URL; a request must never go out in
            // clear text to an address that was meant to have TLS.
            return Err(Failure::Connect(io::Error::other(
                "only http:// is spoken to backends",
            )));
        }
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| Failure::Lost("the backend's URL has no address".into()))?;
        // Where to connect: the URL's port, or HTTP's own.
        let address = match parts.uri.port_u16() {
            Some(_) => authority.clone(),
            None => format!("{}:80", parts.uri.host().unwrap_or_default()),
        };
        let mut head = Head {
            method: parts.method,
            // hyper writes the target as given: origin form, and the address in Host.
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone())),
            headers: parts.headers,
        };
        if let Ok(host) = HeaderValue::from_str(&authority) {
            head.headers.insert(header::HOST, host);
        }
        let mut body = match body {
            Outgoing::Streamed(b) if b.is_end_stream() => Outgoing::Whole(Bytes::new()),
            other => other,
        };
        match &body {
            Outgoing::Whole(b) => {
                if !b.is_empty()
                    || matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
                {
                    head.headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                }
            }
            Outgoing::Streamed(_) => {}
        }
        let declared = declared_length(&head.headers);
        let mut retried = false;
        loop {
            // A streamed body cannot be sent twice, so it never risks a kept
            // connection the backend may be closing: a new one costs less than it.
            let kept = match &body {
                Outgoing::Whole(_) if !retried => self.take_ready(&authority).await,
                _ => None,
            };
            let reused = kept.is_some();
            let (mut sender, shared) = match kept {
                Some(c) => c,
                None => {
                    let owner = (Arc::downgrade(&self.pool), authority.clone());
                    conn::open(&address, self.connect_timeout, owner).await?
                }
            };
            let replay = match &body {
                Outgoing::Whole(b) => Some(b.clone()),
                Outgoing::Streamed(_) => None,
            };
            let read_before = shared.bytes_read();
            let request = head.request(body, declared);
            let err = match sender.try_send_request(request).await {
                Ok(mut response) => {
                    check_reply(&mut response)?;
                    let park = (self.pool.clone(), authority);
                    return Ok(response.map(|incoming| Reply::new(incoming, sender, shared, park)));
                }
                Err(e) => e,
            };
            let answered = shared.bytes_read() != read_before;
            let mut err = err;
            // Never written (the connection was found closed first): it goes
            // out on a new connection, whatever its body.
            if let Some(unsent) = err.take_message() {
                if !retried {
                    retried = true;
                    body = match replay {
                        Some(whole) => Outgoing::Whole(whole),
                        None => Outgoing::Streamed(unsent.into_body()),
                    };
                    continue;
                }
            }
            let err = err.into_error();
            // A kept connection closed with no answer at all: the backend
            // closing it as idle while the request went out (or bytes found
            // waiting on it). Once more, on a new connection, which cannot have
            // that race. Model requests have no effect but their compute, so
            // should the backend have taken the request and died, the cost is
            // that it is asked again (and a dead backend refuses the new
            // connection).
            if reused && !answered && !retried && replay.is_some() && body_error(&err).is_none() {
                body = Outgoing::Whole(replay.unwrap_or_default());
                retried = true;
                continue;
            }
            return Err(failure(&err, answered));
        }
    }

    /// A kept connection to `authority` that can take a request now.
    async fn take_ready(&self, authority: &str) -> Option<(Sender, Arc<conn::Shared>)> {
        loop {
            let mut idle = self.pool.take(authority)?;
            if idle.sender.is_ready() {
                return Some((idle.sender, idle.shared));
            }
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, idle.sender.ready()).await {
                return Some((idle.sender, idle.shared));
            }
        }
    }
}

/// The parts of a request that are sent again as they were.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: Outgoing, declared: Option<u64>) -> Request<Body> {
        let body = match body {
            Outgoing::Whole(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
            Outgoing::Streamed(b) => match declared {
                Some(n) => Checked { inner: b, left: n }.boxed_unsync(),
                None => b,
            },
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A reply HTTP does not allow is the backend's fault, whatever hyper made of
/// it: a status outside 100-599, a switch of protocols nobody asked for (the
/// router never asks), a 204 that declares a body.
fn check_reply(response: &mut Response<hyper::body::Incoming>) -> Result<(), Failure> {
    let status = response.status();
    if !(100..600).contains(&status.as_u16()) {
        return Err(Failure::BadReply(format!(
            "status {} is not an HTTP status",
            status.as_u16()
        )));
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Failure::BadReply(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    let declares_body = response.headers().contains_key(header::TRANSFER_ENCODING)
        || declared_length(response.headers()).is_some_and(|n| n > 0);
    if status == StatusCode::NO_CONTENT && declares_body {
        return Err(Failure::BadReply("a 204 (No Content) with a body".into()));
    }
    // A length beside chunks: the chunks decide (RFC 9112 §6.3), and a relay
    // drops the length rather than pass on one the body does not keep.
    if response.headers().contains_key(header::TRANSFER_ENCODING) {
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    Ok(())
}

/// The Content-Length a message declares, if it declares a readable one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The first error of type `E` among `err`'s causes.
fn cause<E: std::error::Error + 'static>(err: &hyper::Error) -> Option<&E> {
    std::iter::successors(std::error::Error::source(err), |s| s.source())
        .find_map(|s| s.downcast_ref::<E>())
}

/// The client's own body's failure, if that is what ended the exchange: a
/// check of ours, or any error of the body the router streams (hyper calls
/// those the user's).
fn body_error(err: &hyper::Error) -> Option<String> {
    cause::<BodyFailed>(err).map(|b| b.0.clone()).or_else(|| {
        err.is_user()
            .then(|| std::error::Error::source(err).map(|s| s.to_string()))
            .flatten()
    })
}

/// hyper's error, said as the router says it.
fn failure(err: &hyper::Error, answered: bool) -> Failure {
    if let Some(crate::upload::Stalled(after)) = cause(err) {
        return Failure::BodyStalled(*after);
    }
    if cause::<crate::upload::RepeatedPart>(err).is_some() {
        return Failure::RepeatedPart;
    }
    if let Some(why) = body_error(err) {
        return Failure::Body(why);
    }
    let why = describe(err);
    if err.is_incomplete_message() || err.is_canceled() {
        return if answered {
            Failure::BadReply(format!(
                "the connection closed after an interim (1xx) reply or in the middle of the response head ({why})"
            ))
        } else {
            Failure::Lost(format!("closed the connection without answering ({why})"))
        };
    }
    if answered || err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
        Failure::BadReply(why)
    } else {
        Failure::Lost(format!("closed the connection without answering ({why})"))
    }
}

/// An error and its causes on one line.
pub(super) fn describe(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyFailed(String);

const TOO_LONG: &str = "the request body is longer than its Content-Length";
const TOO_SHORT: &str = "the request body ended before its Content-Length";

/// A streamed body held to the length it declared: a backend would wait for
/// ever for the rest of a short one, or read a long one's tail as a request.
struct Checked {
    inner: Body,
    left: u64,
}

impl http_body::Body for Checked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    match this.left.checked_sub(data.len() as u64) {
                        Some(n) => this.left = n,
                        None => return Poll::Ready(Some(Err(BodyFailed(TOO_LONG.into()).into()))),
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if this.left > 0 => {
                Poll::Ready(Some(Err(BodyFailed(TOO_SHORT.into()).into())))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use tokio::io::AsyncReadExt;

    /// A streamed body of `pieces`, sent with `declared` as its Content-Length.
    async fn send_streamed(declared: u64, pieces: &[&'static [u8]]) -> Result<(), Failure> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        // A backend that reads and never answers: only the client's checks end it.
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink).await;
        });
        let frames = pieces
            .iter()
            .map(|p| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(p))))
            .collect::<Vec<_>>();
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let req = Request::post(format!("http://{at}/upload"))
            .header(header::CONTENT_LENGTH, declared)
            .body(Outgoing::Streamed(body))
            .unwrap();
        let client = Client::new(Duration::from_secs(1), Duration::from_secs(90));
        match tokio::time::timeout(Duration::from_secs(5), client.send(req)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => panic!("the exchange hung"),
        }
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_content_length_is_stopped() {
        match send_streamed(3, &[b"ab", b"cde"]).await {
            Err(Failure::Body(why)) => assert_eq!(why, TOO_LONG),
            other => panic!("{other:?}"),
        }
        match send_streamed(10, &[b"ab", b"cde"]).await {
            Err(Failure::Body(why)) => assert_eq!(why, TOO_SHORT),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod reuse {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A backend that answers every request on a connection with `wire`,
    /// counting connections.
    async fn backend(wire: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        conn.get_mut().write_all(wire).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{at}/x"), count)
    }

    async fn get(client: &Client, url: &str) -> Bytes {
        let req = Request::get(url)
            .body(Outgoing::Whole(Bytes::new()))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunked_reply_with_trailers_leaves_its_connection_for_the_next() {
        let (url, count) = backend(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .await;
        let client = Client::new(Duration::from_secs(1), Duration::from_secs(90));
        for _ in 0..3 {
            assert_eq!(get(&client, &url).await.as_ref(), b"hello");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    /// Reads a request's head (the tests' requests have no body): false once
    /// the client has closed.
    fn read_head(reader: &mut impl std::io::BufRead) -> bool {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line == "\r\n" {
                return true;
            }
        }
    }

    /// A backend on plain threads (so that it writes while the client's
    /// runtime is busy): `answer(connection, n, socket)` writes the reply to
    /// the connection's `n`th request. Counts connections.
    fn thread_backend(
        answer: impl Fn(usize, usize, &mut std::net::TcpStream) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let (c, answer) = (count.clone(), Arc::new(answer));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let id = c.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut out = conn.try_clone().unwrap();
                    let mut reader = std::io::BufReader::new(conn);
                    for n in 0.. {
                        if !read_head(&mut reader) {
                            return;
                        }
                        answer(id, n, &mut out);
                    }
                });
            }
        });
        (format!("http://{at}/x"), count)
    }

    /// `body`, framed by its length.
    fn framed(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// A backend that follows each answer, a moment later, with a second one
    /// nobody asked for.
    fn stray_backend() -> String {
        thread_backend(|_, n, out| {
            use std::io::Write;
            let _ = out.write_all(framed(&format!("answer-{n}")).as_bytes());
            std::thread::sleep(Duration::from_millis(5));
            let _ = out.write_all(framed("STRAY").as_bytes());
        })
        .0
    }

    /// A backend whose second answer on each connection comes after a reply
    /// nobody asked for, as if it had sent an earlier answer twice and the
    /// copy arrived just after the router wrote the next request: the one
    /// case no HTTP/1.1 client can tell from the answer.
    fn late_stray_backend() -> (String, Arc<AtomicUsize>) {
        thread_backend(|id, n, out| {
            use std::io::Write;
            if n == 0 {
                // Both first requests are out before either is answered, so
                // the client holds two connections.
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut wire = framed(&format!("answer-{id}-{n}"));
            if n == 1 {
                wire.insert_str(0, &framed("STRAY"));
            }
            let _ = out.write_all(wire.as_bytes());
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_one_stray_reply_no_connection_to_its_backend_is_reused() {
        let (url, connections) = late_stray_backend();
        let client = Client::new(Duration::from_secs(1), Duration::from_secs(90));
        let (a, b) = tokio::join!(get(&client, &url), get(&client, &url));
        assert!(a.starts_with(b"answer-") && b.starts_with(b"answer-"));
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        // The first stray reply is taken for the answer: nothing on the wire
        // tells them apart. The real answer behind it arrives on a connection
        // with no request out, and gives the backend away.
        assert_eq!(get(&client, &url).await.as_ref(), b"STRAY");
        let authority = url.trim_start_matches("http://").trim_end_matches("/x");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !client.pool.is_distrusted(authority) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stray was never noticed"
            );
            tokio::task::yield_now().await;
        }
        // The other kept connection would give its next request the stray
        // reply too; from now on every request has a connection of its own.
        for _ in 0..5 {
            let answer = get(&client, &url).await;
            assert!(
                answer.ends_with(b"-0"),
                "a second request on a connection to a distrusted backend: {answer:?}"
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn bytes_that_reached_an_idle_connection_are_seen_even_before_the_runtime_sees_them() {
        let url = stray_backend();
        let client = Client::new(Duration::from_secs(1), Duration::from_secs(90));
        for _ in 0..20 {
            // Each stray reply reaches the socket while this runtime's one
            // thread is busy: its readiness, as the runtime caches it, is stale.
            std::thread::sleep(Duration::from_millis(30));
            let answer = get(&client, &url).await;
            assert!(
                answer.starts_with(b"answer-"),
                "a stray reply was taken for the answer: {answer:?}"
            );
        }
    }
}
