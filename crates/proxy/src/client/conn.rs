//! One connection to a backend: a socket driven by hyper's HTTP/1.1 client in a
//! task of its own, and what the router learns about it that hyper does not say.
//!
//! hyper's task reads the socket whenever it is readable, so a connection the
//! backend closed, or one it sent bytes nobody asked for, ends on its own and
//! its descriptor with it. The one window left is bytes that have reached the
//! socket while the runtime has not yet been told (its readiness is cached, and
//! under load the cache lags): before a kept connection carries another
//! request, [`Counted`] asks the socket itself (`recv` with `MSG_PEEK`).
//!
//! Bytes nobody asked for are more than a reason to close one connection: a
//! backend that sends them may send the next ones just after the router has
//! written another request on a kept connection, where no HTTP/1.1 client can
//! tell them from the answer. So the first sign of one (bytes on a parked
//! connection, bytes past a reply's end, an answer to nothing) is reported to
//! the pool, which stops reusing connections to that backend (see
//! [`super::pool::Pool::distrust`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pool::Pool;
use super::{Failure, Sender};

/// What the router knows of a connection beyond hyper's handle.
#[derive(Default)]
pub(crate) struct Shared {
    /// Bytes the backend has sent on this connection, all told.
    read: AtomicU64,
    /// Set when a kept connection is taken from the pool: its next write first
    /// makes sure nothing came in while it was idle.
    check_before_write: AtomicBool,
    /// Set while the connection is parked: whatever it reads then, nobody
    /// asked for.
    parked: AtomicBool,
    /// Why the connection ended in error, once it has (a clean close leaves None).
    broken: Mutex<Option<String>>,
    /// The pool and the backend (its authority) to tell of a stray reply.
    owner: Option<(Weak<Pool>, String)>,
}

impl Shared {
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Acquire)
    }

    /// The connection was taken from the pool to carry a request.
    pub(crate) fn check_next_write(&self) {
        self.parked.store(false, Ordering::Release);
        self.check_before_write.store(true, Ordering::Release);
    }

    pub(crate) fn park(&self) {
        self.parked.store(true, Ordering::Release);
    }

    /// The backend sent bytes nobody asked for.
    fn stray(&self, what: &str) {
        if let Some((pool, authority)) = &self.owner {
            if let Some(pool) = pool.upgrade() {
                pool.distrust(authority, what);
            }
        }
    }

    /// Why hyper ended the connection with an error (bytes past the end of a
    /// reply, a reply to nothing, a reset), once it has.
    pub(crate) fn broken(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The socket under hyper: counts what it reads, and is checked before a kept
/// connection is written to again.
struct Counted {
    stream: TcpStream,
    shared: Arc<Shared>,
}

impl Counted {
    /// Nothing to read, as the socket itself says: bytes waiting or a close
    /// mean the connection cannot carry a new request.
    fn quiet(&self) -> io::Result<()> {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.stream).peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the backend had closed the kept connection",
            )),
            Ok(_) => {
                const WHY: &str = "the backend sent bytes nobody asked for on a kept connection";
                self.shared.stray(WHY);
                Err(io::Error::new(io::ErrorKind::InvalidData, WHY))
            }
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.shared.read.fetch_add(n as u64, Ordering::AcqRel);
            if this.shared.parked.load(Ordering::Acquire) {
                this.shared
                    .stray("the backend sent bytes nobody asked for on an idle connection");
            }
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.check_before_write.swap(false, Ordering::AcqRel) {
            this.quiet()?;
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.check_before_write.swap(false, Ordering::AcqRel) {
            this.quiet()?;
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The most header lines a backend's response may have, and the most bytes its
/// head (and any one read) may take: far past any real server's, and what keeps
/// a hostile one from growing the router's buffers without end.
const MAX_HEADERS: usize = 128;
const MAX_BUF: usize = 64 * 1024;

/// A new connection to `address`, its hyper task running; `owner` is told if
/// the backend sends bytes nobody asked for.
pub(crate) async fn open(
    address: &str,
    connect_timeout: Duration,
    owner: (Weak<Pool>, String),
) -> Result<(Sender, Arc<Shared>), Failure> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Err(_) => return Err(Failure::ConnectTimeout),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => return Err(Failure::ConnectTimeout),
        Ok(Err(e)) => return Err(Failure::Connect(e)),
        Ok(Ok(c)) => c,
    };
    // Small writes (a token's event) go out at once.
    let _ = stream.set_nodelay(true);
    let shared = Arc::new(Shared {
        owner: Some(owner),
        ..Shared::default()
    });
    let io = TokioIo::new(Counted {
        stream,
        shared: shared.clone(),
    });
    let (sender, connection) = http1::Builder::new()
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF)
        .handshake(io)
        .await
        .map_err(|e| Failure::Lost(e.to_string()))?;
    let watch = shared.clone();
    // The connection lives as long as a request or the pool holds its sender,
    // and ends (closing the socket) as soon as the backend closes its side.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            if answered_nothing(&e) {
                watch.stray(
                    "the backend sent a reply nobody asked for, or bytes past a reply's end",
                );
            }
            *watch.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
    });
    Ok((sender, shared))
}

/// hyper ended the connection because of bytes that answered no request: a
/// message while no request was out, or bytes left after a reply's end that do
/// not parse as anything. hyper says the first only in words (its error kinds
/// are private), so both the words and the parse errors are taken.
fn answered_nothing(err: &hyper::Error) -> bool {
    err.is_parse() || err.is_parse_status() || err.to_string().contains("unexpected message")
}
