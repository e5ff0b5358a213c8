//! Client connections below hyper: how many may be open (`max_connections`), and
//! a socket that remembers whether its client is owed an answer, so that one
//! cut off mid-headers by hyper's `header_timeout` still hears why.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::ApiError;

/// Open client connections, counted by the slots they hold.
#[derive(Clone, Default)]
pub(crate) struct Gate {
    open: Arc<AtomicUsize>,
}

/// One connection's place under `max_connections`; freed on drop.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Gate {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn enter(&self, limit: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection the router has no room for, then closes it. Bounded in
/// time: a refused client cannot hold even this.
pub(crate) async fn refuse(mut stream: TcpStream, limit: usize) {
    let reply = ApiError::TooManyConnections { limit }.http1_bytes();
    let work = async {
        use tokio::io::AsyncWriteExt;
        stream.write_all(&reply).await?;
        stream.shutdown().await?;
        // Closing with the request unread would reset the connection and could
        // destroy the answer before the client reads it; read it away first.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
}

/// What a new connection sent within `within`, before hyper is given it.
pub(crate) enum Opening {
    /// Enough to tell HTTP/1 from HTTP/2: hyper takes it from here.
    Request,
    /// Nothing at all, or closed: nobody to answer.
    Silent,
    /// The start of something, then nothing more.
    Stalled,
}

/// Waits for a client's first bytes. hyper's `header_timeout` only starts once
/// it knows the protocol, and telling HTTP/1 from HTTP/2 waits without a bound
/// for bytes that could still be HTTP/2's preface; this bounds that wait.
pub(crate) async fn opening(stream: &TcpStream, within: Duration) -> Opening {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut seen = 0;
    let wait = async {
        let mut buf = [0u8; PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await?;
            seen = n;
            if n == 0 {
                return Ok::<_, io::Error>(Opening::Silent);
            }
            if n == PREFACE.len() || buf[..n] != PREFACE[..n] {
                return Ok(Opening::Request);
            }
            // peek answers at once while bytes wait unread: look again later.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    match tokio::time::timeout(within, wait).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => Opening::Silent,
        Err(_) if seen > 0 => Opening::Stalled,
        Err(_) => Opening::Silent,
    }
}

/// The client socket as hyper sees it; the router keeps a handle of its own.
pub(crate) struct Socket {
    stream: Arc<TcpStream>,
    /// The client sent bytes since the router last wrote: a request is pending.
    owed: Arc<AtomicBool>,
}

/// The router's own handle on a socket hyper serves.
pub(crate) struct Spare {
    pub stream: Arc<TcpStream>,
    owed: Arc<AtomicBool>,
}

pub(crate) fn split(stream: TcpStream) -> (Socket, Spare) {
    let stream = Arc::new(stream);
    let owed = Arc::new(AtomicBool::new(false));
    (
        Socket {
            stream: stream.clone(),
            owed: owed.clone(),
        },
        Spare { stream, owed },
    )
}

impl Spare {
    /// Whether the client has started a request the router never answered.
    pub fn owed(&self) -> bool {
        self.owed.load(Ordering::Acquire)
    }

    /// Best effort: hyper has given the connection up, so nothing else writes.
    pub async fn answer(&self, e: &ApiError) {
        let bytes = e.http1_bytes();
        let stream = &*self.stream;
        let work = async {
            let mut sent = 0;
            while sent < bytes.len() {
                stream.writable().await?;
                match stream.try_write(&bytes[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)?;
            // As in `refuse`: unread bytes at close would reset the connection.
            let mut sink = [0u8; 4096];
            loop {
                stream.readable().await?;
                match stream.try_read(&mut sink) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.owed.store(true, Ordering::Release);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => {
                    self.owed.store(false, Ordering::Release);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    self.owed.store(false, Ordering::Release);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let sock = socket2::SockRef::from(&*self.stream);
        Poll::Ready(match sock.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_its_limit_and_frees_on_drop() {
        let gate = Gate::default();
        let a = gate.enter(2).unwrap();
        let _b = gate.enter(2).unwrap();
        assert!(gate.enter(2).is_none());
        drop(a);
        assert!(gate.enter(2).is_some());
    }
}
