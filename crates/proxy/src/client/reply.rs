//! A backend's response body, read straight off its connection as the client
//! takes it. Between reads it holds no buffer, only the socket: each read lands
//! on the stack and leaves as a frame of exactly its size, so a stream that is
//! open but quiet costs the router a socket and a few words.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::chunked::Chunked;
use super::head::Framing;
use super::pool::Pool;
use crate::body::BoxError;

/// Bytes taken from the socket at once.
const READ: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    Bytes(u64),
    Chunks(Chunked),
    UntilClose,
    Done,
}

pub(crate) struct Reply {
    conn: Option<TcpStream>,
    /// Body bytes that came with the head.
    early: Bytes,
    left: Left,
    /// Where the connection goes once the body is read, if it may carry another
    /// request.
    park: Option<(Arc<Pool>, String)>,
}

impl Reply {
    pub(crate) fn new(
        conn: TcpStream,
        early: Bytes,
        framing: Framing,
        park: Option<(Arc<Pool>, String)>,
    ) -> Reply {
        let left = match framing {
            Framing::Empty => Left::Done,
            Framing::Length(n) => Left::Bytes(n),
            Framing::Chunked => Left::Chunks(Chunked::new()),
            Framing::Close => Left::UntilClose,
        };
        let mut reply = Reply {
            conn: Some(conn),
            early,
            left,
            park,
        };
        if reply.left == Left::Done {
            if !reply.early.is_empty() {
                reply.park = None;
            }
            reply.finish();
        }
        reply
    }

    /// The body at the start of `input`, with its framing taken off: where it
    /// lies in `input`, and how much of `input` was used.
    fn decode(&mut self, input: &[u8]) -> Result<(Range<usize>, usize), String> {
        let (data, used) = match &mut self.left {
            Left::Bytes(n) => {
                let take = (*n).min(input.len() as u64) as usize;
                *n -= take as u64;
                if *n == 0 {
                    self.left = Left::Done;
                }
                (0..take, take)
            }
            Left::Chunks(c) => {
                let decoded = c.decode(input)?;
                if *c == Chunked::Done {
                    self.left = Left::Done;
                }
                decoded
            }
            Left::UntilClose => (0..input.len(), input.len()),
            Left::Done => (0..0, 0),
        };
        if used < input.len() && self.left == Left::Done {
            // Bytes past the end of the body: the connection's framing cannot be trusted.
            self.park = None;
        }
        Ok((data, used))
    }

    fn finish(&mut self) {
        self.left = Left::Done;
        let conn = self.conn.take();
        if let (Some(conn), Some((pool, authority))) = (conn, self.park.take()) {
            pool.put(&authority, conn);
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.park = None;
        self.finish();
        Poll::Ready(Some(Err(why.into())))
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
        loop {
            if this.left == Left::Done {
                return Poll::Ready(None);
            }
            let decoded = if this.early.is_empty() {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                let mut stack = [MaybeUninit::<u8>::uninit(); READ];
                let mut buf = ReadBuf::uninit(&mut stack);
                if let Err(e) = ready!(Pin::new(conn).poll_read(cx, &mut buf)) {
                    return this.fail(format!("connection lost: {e}"));
                }
                let input = buf.filled();
                if input.is_empty() {
                    if this.left == Left::UntilClose {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    return this
                        .fail("the backend closed the connection before the body ended".into());
                }
                // Copied off the stack once: the frame, and the rest (the next
                // chunks) kept for the next frames.
                this.decode(input).map(|(data, used)| {
                    if used < input.len() && this.left != Left::Done {
                        this.early = Bytes::copy_from_slice(&input[used..]);
                    }
                    Bytes::copy_from_slice(&input[data])
                })
            } else {
                let early = std::mem::take(&mut this.early);
                this.decode(&early).map(|(data, used)| {
                    if used < early.len() && this.left != Left::Done {
                        this.early = early.slice(used..);
                    }
                    early.slice(data)
                })
            };
            if this.left == Left::Done {
                this.finish();
            }
            match decoded {
                Ok(data) if !data.is_empty() => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(_) => continue,
                Err(e) => return this.fail(format!("bad chunked body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == Left::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Bytes(n) => SizeHint::with_exact(n),
            Left::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
