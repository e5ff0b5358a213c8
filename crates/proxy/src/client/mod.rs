//! The router's client for backends: HTTP/1.1 over TCP, which is what every
//! local model server speaks. Written for a relay rather than taken from a
//! general client because of what an open stream costs: hyper's client keeps a
//! task, a request channel and 16 KiB of buffers per connection for as long as
//! a stream is open; here a stream holds its socket and nothing else
//! (docs/benchmarks.md, 10,000 streams). The request is written from the
//! caller's task, the reply read as the client takes it, and a connection whose
//! reply was read to its end goes back to a pool for the next request.

mod chunked;
mod head;
mod pool;
mod reply;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::body::Body;
use head::{Parsed, Sending};
pub(crate) use reply::Reply;

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
    /// Not HTTP, or a head past the limits.
    BadReply(String),
    /// The connection broke before the response head.
    Lost(String),
    /// The client's own body failed while it was being sent.
    Body(String),
}

pub(crate) struct Client {
    pool: Arc<pool::Pool>,
    connect_timeout: Duration,
}

/// Bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

impl Client {
    pub(crate) fn new(connect_timeout: Duration) -> Client {
        Client {
            pool: Arc::default(),
            connect_timeout,
        }
    }

    pub(crate) async fn send(&self, req: Request<Outgoing>) -> Result<Response<Reply>, Failure> {
        let (mut parts, body) = req.into_parts();
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
        let mut body = match body {
            Outgoing::Streamed(b) if b.is_end_stream() => Outgoing::Whole(Bytes::new()),
            other => other,
        };
        let sending = match &body {
            Outgoing::Whole(b) if b.is_empty() => Sending::None,
            Outgoing::Whole(b) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                Sending::Length(b.len() as u64)
            }
            Outgoing::Streamed(_) => match declared_length(&parts.headers) {
                Some(n) => Sending::Length(n),
                None => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    Sending::Chunked
                }
            },
        };
        // Where to connect: the URL's port, or HTTP's own.
        let address = match parts.uri.port_u16() {
            Some(_) => authority.clone(),
            None => format!("{}:80", parts.uri.host().unwrap_or_default()),
        };
        let head = head::encode_request(&parts, &authority, sending);
        let mut retried = false;
        loop {
            // A streamed body cannot be sent twice, so it never risks a kept
            // connection the backend may be closing: a new one costs less than it.
            let kept = match &body {
                Outgoing::Whole(_) if !retried => self.pool.take(&authority),
                _ => None,
            };
            let (conn, reused) = match kept {
                Some(c) => (c, true),
                None => (self.connect(&address).await?, false),
            };
            let replay = match &body {
                Outgoing::Whole(b) if reused => Some(b.clone()),
                _ => None,
            };
            match exchange(conn, &head, body, sending, &parts.method).await {
                Ok((head, conn, early, sent_all)) => {
                    let park =
                        (head.reusable && sent_all).then(|| (self.pool.clone(), authority.clone()));
                    let reply = Reply::new(conn, early, head.framing, park);
                    return Ok(head.response.map(|()| reply));
                }
                // A kept connection closed with no answer at all: the backend
                // closing it as idle while the request went out. Once more, on a
                // new connection, which cannot have that race. Model requests
                // have no effect but their compute, so should the backend have
                // taken the request and died, the cost is that it is asked again
                // (and a dead backend refuses the new connection).
                Err(Attempt::Unanswered(_)) if replay.is_some() => {
                    body = Outgoing::Whole(replay.unwrap_or_default());
                    retried = true;
                }
                Err(Attempt::Unanswered(why)) => {
                    return Err(Failure::Lost(format!(
                        "closed the connection without answering ({why})"
                    )))
                }
                Err(Attempt::Failed(f)) => return Err(f),
            }
        }
    }

    async fn connect(&self, address: &str) -> Result<TcpStream, Failure> {
        let conn =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Err(_) => return Err(Failure::ConnectTimeout),
                Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Failure::ConnectTimeout)
                }
                Ok(Err(e)) => return Err(Failure::Connect(e)),
                Ok(Ok(c)) => c,
            };
        // Small writes (a token's event) go out at once.
        let _ = conn.set_nodelay(true);
        Ok(conn)
    }
}

enum Attempt {
    /// Nothing came back: the connection was closed or reset first.
    Unanswered(String),
    Failed(Failure),
}

/// Writes the request and reads the response head: the head, the connection,
/// body bytes that came with the head, and whether all of the request was sent
/// (a backend may answer before it has read all of a body).
async fn exchange(
    mut conn: TcpStream,
    head: &[u8],
    body: Outgoing,
    sending: Sending,
    method: &Method,
) -> Result<(head::Head, TcpStream, Bytes, bool), Attempt> {
    let mut answer = Answer {
        buf: BytesMut::new(),
        method,
        ended: None,
        heard_any: false,
    };
    // The client's own body failing ends it here; a write that failed may still
    // have an answer waiting (a backend that refused the body and closed), so
    // that is read before giving up.
    let sent = match send_request(&conn, head, body, sending, &mut answer).await {
        Err(Attempt::Failed(f)) => return Err(Attempt::Failed(f)),
        other => other,
    };
    let sent_all = matches!(sent, Ok(true));
    loop {
        if let Some((h, len)) = answer.parse()? {
            let early = Bytes::copy_from_slice(&answer.buf[len..]);
            return Ok((h, conn, early, sent_all));
        }
        if let Some(ended) = answer.ended.take() {
            return Err(match ended {
                // Nothing at all came back, not even a 1xx: the request may
                // be sent again.
                Ended::Closed(why) if !answer.heard_any => {
                    sent.err().unwrap_or(Attempt::Unanswered(why))
                }
                Ended::Closed(_) if answer.buf.is_empty() => Attempt::Failed(Failure::BadReply(
                    "the connection closed after an interim (1xx) reply, before the response"
                        .into(),
                )),
                Ended::Closed(_) => Attempt::Failed(Failure::BadReply(
                    "the connection closed in the middle of the response head".into(),
                )),
                Ended::Failed(f) => Attempt::Failed(f),
            });
        }
        answer.read(&mut conn).await;
    }
}

/// The backend's side of an exchange, read while the request is still being
/// sent as well as after.
struct Answer<'a> {
    buf: BytesMut,
    method: &'a Method,
    /// Why nothing more will come.
    ended: Option<Ended>,
    /// Some byte came back (a skipped 1xx too): the backend had the request.
    heard_any: bool,
}

enum Ended {
    /// Closed or reset.
    Closed(String),
    Failed(Failure),
}

impl Answer<'_> {
    /// The final response head, once it is all here; 1xx replies before it
    /// are taken off.
    fn parse(&mut self) -> Result<Option<(head::Head, usize)>, Attempt> {
        loop {
            match head::parse_response(&self.buf, self.method)
                .map_err(|e| Attempt::Failed(Failure::BadReply(e)))?
            {
                Parsed::Interim(len) => {
                    let _ = self.buf.split_to(len);
                }
                Parsed::Complete(h, len) => return Ok(Some((h, len))),
                Parsed::Partial if self.buf.len() >= head::MAX_HEAD => {
                    return Err(Attempt::Failed(Failure::BadReply(format!(
                        "response head too large (over {} KiB)",
                        head::MAX_HEAD / 1024
                    ))))
                }
                Parsed::Partial => return Ok(None),
            }
        }
    }

    /// Reads what the backend sent next, once the request is sent; the end is
    /// kept in `ended`. Through `AsyncRead`, which clears the socket's
    /// readiness after a short read: the pool's check before reuse is then a
    /// flag test, not a syscall.
    async fn read(&mut self, conn: &mut TcpStream) {
        if self.ended.is_none() {
            self.make_room();
            let r = conn.read_buf(&mut self.buf).await;
            self.took(r);
        }
    }

    /// Reads what the backend sent while the request is still being sent,
    /// from a socket the writer holds too.
    async fn read_shared(&mut self, conn: &TcpStream) {
        if self.ended.is_some() {
            return;
        }
        self.make_room();
        loop {
            let r = match conn.readable().await {
                Ok(()) => conn.try_read_buf(&mut self.buf),
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return self.took(r),
            }
        }
    }

    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.buf.capacity().max(4096));
        }
    }

    fn took(&mut self, read: io::Result<usize>) {
        match read {
            Ok(0) => self.ended = Some(Ended::Closed("end of stream".into())),
            Ok(_) => self.heard_any = true,
            Err(e) => self.ended = Some(Ended::Closed(e.to_string())),
        }
    }

    /// While the request is sent: resolves once sending should stop, because
    /// the backend has answered (a final head, not a 1xx), closed, or sent
    /// something that is not HTTP. Cancel-safe: what was read is kept.
    async fn heard(&mut self, conn: &TcpStream) {
        loop {
            self.read_shared(conn).await;
            match self.parse() {
                Ok(None) if self.ended.is_none() => continue,
                Ok(_) => return,
                Err(Attempt::Failed(f)) => {
                    self.ended = Some(Ended::Failed(f));
                    return;
                }
                Err(Attempt::Unanswered(why)) => {
                    self.ended = Some(Ended::Closed(why));
                    return;
                }
            }
        }
    }
}

/// Sends the head and body; Ok(false) when the backend answered (or closed)
/// before the body was all sent.
async fn send_request(
    conn: &TcpStream,
    head: &[u8],
    body: Outgoing,
    sending: Sending,
    answer: &mut Answer<'_>,
) -> Result<bool, Attempt> {
    let mut left = match sending {
        Sending::Length(n) => Some(n),
        _ => None,
    };
    let lost = |e: io::Error| Attempt::Unanswered(e.to_string());
    let mut body = match body {
        Outgoing::Whole(b) if head.len() + b.len() <= COALESCE => {
            let mut one = Vec::with_capacity(head.len() + b.len());
            one.extend_from_slice(head);
            one.extend_from_slice(&b);
            return write_all(conn, &one, answer).await.map_err(lost);
        }
        Outgoing::Whole(b) => {
            return Ok(write_all(conn, head, answer).await.map_err(lost)?
                && write_all(conn, &b, answer).await.map_err(lost)?);
        }
        Outgoing::Streamed(body) => body,
    };
    if !write_all(conn, head, answer).await.map_err(lost)? {
        return Ok(false);
    }
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            () = answer.heard(conn) => return Ok(false),
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(Attempt::Failed(Failure::Body(e.to_string()))),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        if let Some(n) = &mut left {
            *n = n
                .checked_sub(data.len() as u64)
                .ok_or_else(|| Attempt::Failed(Failure::Body(TOO_LONG.into())))?;
        }
        let all = if sending == Sending::Chunked {
            let mut framed = Vec::with_capacity(data.len() + 20);
            framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            framed.extend_from_slice(&data);
            framed.extend_from_slice(b"\r\n");
            write_all(conn, &framed, answer).await
        } else {
            write_all(conn, &data, answer).await
        };
        if !all.map_err(lost)? {
            return Ok(false);
        }
    }
    if sending == Sending::Chunked {
        return write_all(conn, b"0\r\n\r\n", answer).await.map_err(lost);
    }
    if left.is_some_and(|n| n > 0) {
        // The backend would wait for the rest for ever.
        return Err(Attempt::Failed(Failure::Body(TOO_SHORT.into())));
    }
    Ok(true)
}

/// The Content-Length a request declares, if it declares a readable one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

const TOO_LONG: &str = "the request body is longer than its Content-Length";
const TOO_SHORT: &str = "the request body ended before its Content-Length";

/// Writes all of `buf`, unless the backend answers (or closes) first: Ok(false).
/// A 1xx it sends meanwhile is taken off and the writing goes on.
async fn write_all(conn: &TcpStream, buf: &[u8], answer: &mut Answer<'_>) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match conn.try_write(&buf[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    r = conn.writable() => r?,
                    () = answer.heard(conn) => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

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
            .map(|p| Ok::<_, crate::body::BoxError>(http_body::Frame::data(Bytes::from_static(p))))
            .collect::<Vec<_>>();
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let req = Request::post(format!("http://{at}/upload"))
            .header(header::CONTENT_LENGTH, declared)
            .body(Outgoing::Streamed(body))
            .unwrap();
        let client = Client::new(Duration::from_secs(1));
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
