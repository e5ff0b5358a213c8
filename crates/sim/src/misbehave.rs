//! `--fail MODE`: a backend that answers inference requests the way a broken or
//! hostile server would, so the router's defences can be tested against real
//! sockets. Health, model lists and the sim's own routes stay well-behaved, so
//! the router sees a server that is up.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use http::{header, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::response::ResponseBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Failure {
    /// Bytes that are not HTTP at all, then the connection closes.
    Garbage,
    /// A 200 JSON reply whose body never ends.
    Endless,
    /// A 200 reply with a 1 MiB header.
    HugeHeader,
}

/// The reply for `Endless` and `HugeHeader`; `Garbage` never reaches HTTP.
pub fn respond(failure: Failure) -> Response<ResponseBody> {
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json");
    match failure {
        Failure::HugeHeader => builder
            .header("x-sim-padding", "a".repeat(1 << 20))
            .body(Full::new(Bytes::from_static(b"{}")).boxed()),
        Failure::Endless | Failure::Garbage => builder.body(Endless::default().boxed()),
    }
    .expect("static response parts are valid")
}

/// `{"choices":[{"message":{"content":"aaaa…` without end, 64 KiB at a time.
#[derive(Default)]
struct Endless {
    started: bool,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 64 << 10] = [b'a'; 64 << 10];
        if !self.started {
            self.started = true;
            let head = r#"{"object":"chat.completion","choices":[{"message":{"content":""#;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(head.as_bytes())))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

/// Under `--fail garbage`: answers a connection whose first request is a POST
/// (inference) with garbage and returns None; any other goes on to HTTP.
pub async fn garbage_or_http(mut stream: TcpStream) -> Option<TcpStream> {
    let mut head = [0u8; 16];
    let first = loop {
        let n = stream.peek(&mut head).await.ok()?;
        if n == 0 {
            return None;
        }
        if n >= 5 || !b"POST ".starts_with(&head[..n]) {
            break &head[..n];
        }
        // Too little to tell yet; peek answers at once while bytes wait unread.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if !first.starts_with(b"POST ") {
        return Some(stream);
    }
    eprintln!("modelyard-sim: answering a POST with garbage, as --fail garbage says");
    let _ = stream
        .write_all(b"\x16\x03\x01\x00 this is not HTTP \xff\xfe\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
    None
}
