//! Against real sockets on 127.0.0.1, with servers that write raw HTTP/1.1.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::*;

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// Reads a request's head (these requests have no body worth reading).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "the client closed before its request was whole");
        head.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A server that answers one request with `reply`, then closes the connection.
async fn answer_once(reply: &'static [u8]) -> String {
    let (l, url) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(reply).await.unwrap();
    });
    url
}

#[tokio::test]
async fn a_stream_hands_over_each_piece_before_the_next_is_sent() {
    let (l, url) = listener().await;
    let (more_tx, more_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
            .await
            .unwrap();
        more_rx.await.unwrap();
        s.write_all(b"7\r\nsecond\n\r\n0\r\n\r\n").await.unwrap();
        head
    });
    let mut answer = Http::default()
        .send(
            Method::GET,
            &format!("{url}/admin/events"),
            None,
            Some("k-9"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.next().await.unwrap().unwrap(), "first\n");
    more_tx.send(()).unwrap();
    assert_eq!(answer.next().await.unwrap().unwrap(), "second\n");
    assert!(answer.next().await.is_none(), "the stream ended");
    let head = server.await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /admin/events http/1.1\r\n"), "{head}");
    assert!(head.contains("authorization: bearer k-9\r\n"), "{head}");
}

#[tokio::test]
async fn a_stream_cut_short_is_an_error_not_an_end() {
    // The socket is dropped after the first chunk: the router went away mid-stream.
    let url =
        answer_once(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n").await;
    let mut answer = Http::default()
        .send(Method::GET, &url, None, None)
        .await
        .unwrap();
    assert_eq!(answer.next().await.unwrap().unwrap(), "first\n");
    assert!(matches!(answer.next().await, Some(Err(_))));
}

#[tokio::test]
async fn a_call_reads_json_and_the_servers_own_words() {
    let (l, url) = listener().await;
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.contains("content-type: application/json"), "{head}");
        let body = br#"  {"error":{"message":"no such model"}}"#;
        s.write_all(
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(body).await.unwrap();
    });
    let a = Http::default()
        .post(&url, &serde_json::json!({}), None, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.message(), "no such model");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_is_given_up_at_the_limit() {
    let (l, url) = listener().await;
    let _held = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(s);
    });
    let e = Http::default()
        .get(&url, None, Duration::from_secs(3))
        .await
        .err()
        .expect("no answer is an error");
    assert!(matches!(e, Error::TooSlow { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("{url} did not answer within 3s"));
}

#[tokio::test]
async fn a_body_past_the_cap_is_refused() {
    let url = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
    let answer = Http::default()
        .send(Method::GET, &url, None, None)
        .await
        .unwrap();
    let e = answer.bytes(4).await.unwrap_err();
    assert!(matches!(e, Error::Read { .. }), "{e:?}");
}

#[tokio::test]
async fn nobody_listening_is_unreachable_with_the_os_reason_at_the_root() {
    let (l, url) = listener().await;
    drop(l);
    let e = Http::default()
        .send(Method::GET, &url, None, None)
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    let mut root: &dyn std::error::Error = &e;
    while let Some(next) = root.source() {
        root = next;
    }
    let io = root
        .downcast_ref::<std::io::Error>()
        .expect("the root is the OS's");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_url_that_cannot_be_one_is_a_bad_request() {
    let e = Http::default()
        .send(Method::GET, "http://127.0.0.1:9/a b", None, None)
        .await
        .err()
        .expect("a space is not a URL character");
    assert!(
        e.to_string()
            .starts_with("bad request to http://127.0.0.1:9/a b: "),
        "{e}"
    );
}

/// The innermost cause of `e`: what the OS or the parser said.
fn root(e: &dyn std::error::Error) -> &dyn std::error::Error {
    let mut root = e;
    while let Some(next) = root.source() {
        root = next;
    }
    root
}

#[tokio::test]
async fn an_unreachable_server_s_error_says_why_in_its_text() {
    // The supervisor logs and shows these texts: "client error (Connect)"
    // alone does not say the server refused the connection.
    let (l, url) = listener().await;
    drop(l);
    let says_why = |e: &dyn std::error::Error| {
        let why = root(e).to_string();
        assert!(why.contains("refused"), "{why}");
        let text = e.to_string();
        assert!(text.starts_with(&url), "{text}");
        assert!(text.ends_with(&why), "{text}");
    };
    let http = Http::default();
    let sent = http.send(Method::GET, &url, None, None).await;
    says_why(&sent.err().expect("nothing listens"));
    let probed = http.status(&url.parse().unwrap()).await;
    says_why(&probed.expect_err("nothing listens"));
}

#[tokio::test]
async fn a_stream_cut_short_says_why_in_its_text() {
    let url =
        answer_once(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n").await;
    let mut answer = Http::default()
        .send(Method::GET, &url, None, None)
        .await
        .unwrap();
    assert_eq!(answer.next().await.unwrap().unwrap(), "first\n");
    let e = answer.next().await.unwrap().unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{url}: reading the answer: ")),
        "{text}"
    );
    assert!(text.ends_with(&root(&e).to_string()), "{text}");
}

/// Answers one request and keeps the connection open; says how long (on the
/// test's clock) the client left it idle before closing it.
async fn keeps_one_connection() -> (String, tokio::task::JoinHandle<Option<Duration>>) {
    let (l, url) = listener().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        let answered = tokio::time::Instant::now();
        let mut b = [0u8; 64];
        // A day is "never": the paused clock jumps there if nothing closes it.
        match tokio::time::timeout(Duration::from_secs(86_400), s.read(&mut b)).await {
            Ok(Ok(0)) => Some(answered.elapsed()),
            other => panic!("the idle connection stayed open: {other:?}"),
        }
    });
    (url, server)
}

#[tokio::test(start_paused = true)]
async fn a_connection_left_idle_is_closed_after_keep_idle() {
    // Each backend start is a new port: a kept connection to a stopped one is
    // never asked for again, and was kept (with its memory) for good.
    let http = Http::default();
    let (url, server) = keeps_one_connection().await;
    let health: Uri = format!("{url}/health").parse().unwrap();
    assert_eq!(http.status(&health).await.unwrap(), StatusCode::OK);
    let idle = server.await.unwrap().expect("closed");
    assert!(idle >= KEEP_IDLE, "closed after {idle:?}, before KEEP_IDLE");

    let (url, server) = keeps_one_connection().await;
    let a = http.get(&url, None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(a.text, "ok");
    let idle = server.await.unwrap().expect("closed");
    assert!(idle >= KEEP_IDLE, "closed after {idle:?}, before KEEP_IDLE");
}
