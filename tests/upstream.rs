//! The router's own HTTP/1.1 client against backends that behave in every way a
//! server may: keeping connections or closing them (said or unsaid), framing
//! bodies by length, by chunks or by closing, sending interim replies, and
//! answering an upload before reading it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// What the backend does with one request: `conn` is the connection's number
/// (from 0), `nth` the request's number on it.
enum Act {
    /// Writes these bytes in pieces, pausing between them, and keeps the connection.
    Send(Vec<Vec<u8>>),
    /// Writes these bytes and closes.
    SendAndClose(Vec<u8>),
    /// Closes without a word.
    Close,
    /// Answers after reading the head only, leaving the body unread, and keeps
    /// the connection open.
    AnswerHeadOnly(Vec<u8>),
    /// Writes the first bytes, waits for the gate, then writes the rest.
    Gated(Vec<u8>, Arc<Mutex<std::sync::mpsc::Receiver<()>>>, Vec<u8>),
    /// Sends an interim (1xx) reply after the head, before reading the body,
    /// then reads the body and answers.
    InterimFirst(Vec<u8>, Vec<Vec<u8>>),
}

struct Scripted {
    url: String,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    fn start(act: impl Fn(usize, usize) -> Act + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (count, seen, act) = (connections.clone(), bodies.clone(), Arc::new(act));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (count, seen, act) = (count.clone(), seen.clone(), act.clone());
                std::thread::spawn(move || serve(conn, &count, &*act, &seen));
            }
        });
        Scripted {
            url,
            connections,
            bodies,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves one connection: the router's health checks (GET) answered plainly,
/// everything else as the script says.
fn serve(
    conn: TcpStream,
    count: &AtomicUsize,
    act: &dyn Fn(usize, usize) -> Act,
    seen: &Mutex<Vec<Vec<u8>>>,
) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let mut n = None;
    let mut nth = 0;
    loop {
        let Some((get, length, chunked)) = read_head(&mut reader) else {
            return;
        };
        if get {
            let list = "{\"object\":\"list\",\"data\":[]}";
            let _ = write!(out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{list}", list.len());
            continue;
        }
        let n = *n.get_or_insert_with(|| count.fetch_add(1, Ordering::SeqCst));
        let act = act(n, nth);
        nth += 1;
        if let Act::InterimFirst(interim, _) = &act {
            let _ = out.write_all(interim);
        }
        if let Act::AnswerHeadOnly(reply) = act {
            let _ = out.write_all(&reply);
            // Longer than the test waits: only a router that heard the answer
            // while sending gets it to the client.
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let body = if chunked {
            read_chunked(&mut reader)
        } else {
            let mut b = vec![0; length];
            reader.read_exact(&mut b).unwrap();
            b
        };
        seen.lock().unwrap().push(body);
        match act {
            Act::Send(pieces) | Act::InterimFirst(_, pieces) => {
                for p in pieces {
                    if out.write_all(&p).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Act::Gated(first, gate, rest) => {
                let _ = out.write_all(&first);
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
                let _ = out.write_all(&rest);
            }
            Act::SendAndClose(bytes) => {
                let _ = out.write_all(&bytes);
                return;
            }
            Act::Close | Act::AnswerHeadOnly(_) => return,
        }
    }
}

/// Whether the request is a GET, its body's Content-Length and whether it is
/// chunked; None at end of stream.
fn read_head(reader: &mut impl BufRead) -> Option<(bool, usize, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let (mut length, mut chunked) = (0, false);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            return Some((line.starts_with("GET "), length, chunked));
        }
        let (k, v) = h.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().ok()?;
        }
        if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).unwrap();
        if n == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn json_reply(model: &str, extra: &str) -> Vec<u8> {
    let body = format!(
        "{{\"object\":\"chat.completion\",\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"hi\"}}}}]}}"
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn router_for(backend: &Scripted) -> Router {
    Router::start(&format!(
        "backends:\n  b: {{url: \"{}\"}}\nmodels:\n  m: {{backend: b, upstream: up, memory: 1MB}}\n",
        backend.url
    ))
}

async fn content(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn one_kept_connection_carries_request_after_request() {
    let backend = Scripted::start(|_, _| Act::Send(vec![json_reply("up", "")]));
    let r = router_for(&backend);
    for _ in 0..20 {
        let (status, v) = content(post(&r.url("/v1/chat/completions"), &chat("m")).await).await;
        assert_eq!((status, v["model"].as_str()), (200, Some("m")));
    }
    assert_eq!(
        backend.connections(),
        1,
        "every request on the first connection"
    );
    let bodies = backend.bodies.lock().unwrap();
    assert!(bodies
        .iter()
        .all(|b| b.windows(11).any(|w| w == b"\"model\":\"up")));
}

#[tokio::test]
async fn a_connection_the_backend_dropped_unannounced_is_retried_on_a_new_one() {
    // Each connection answers its first request and drops the second unanswered,
    // as a server does whose keep-alive timer fires as the request arrives.
    let backend = Scripted::start(|_, nth| match nth {
        0 => Act::Send(vec![json_reply("up", "")]),
        _ => Act::Close,
    });
    let r = router_for(&backend);
    for i in 0..5 {
        let (status, v) = content(post(&r.url("/v1/chat/completions"), &chat("m")).await).await;
        assert_eq!(status, 200, "request {i}: {v}");
    }
    assert_eq!(backend.connections(), 5);
}

#[tokio::test]
async fn a_request_is_sent_again_once_and_on_a_new_connection() {
    // Five kept connections, then a backend that takes every request and
    // closes without answering: the request is sent twice in all (a kept
    // connection, then a new one), not once per kept connection.
    let warm = Arc::new(std::sync::Barrier::new(5));
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (w, b) = (warm.clone(), broken.clone());
    let backend = Scripted::start(move |_, nth| {
        if b.load(Ordering::SeqCst) {
            return Act::Close;
        }
        if nth == 0 {
            // Every warm-up request on its own connection.
            w.wait();
        }
        Act::Send(vec![json_reply("up", "")])
    });
    let r = router_for(&backend);
    let url = r.url("/v1/chat/completions");
    let warmups = (0..5).map(|_| async { post(&url, &chat("m")).await.status() });
    let statuses = futures_util::future::join_all(warmups).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(backend.connections(), 5);
    broken.store(true, Ordering::SeqCst);
    let before = backend.bodies.lock().unwrap().len();
    let msg = expect_error(post(&url, &chat("m")).await, 502, "backend_unreachable").await;
    assert!(msg.contains("without answering"), "{msg}");
    assert_eq!(
        backend.bodies.lock().unwrap().len() - before,
        2,
        "sent twice"
    );
    assert_eq!(
        backend.connections(),
        6,
        "the second time on a new connection"
    );
}

#[tokio::test]
async fn a_connection_closed_after_an_interim_reply_is_not_sent_again() {
    // The 103 shows the backend had the request: a close after it is the
    // backend's failure, not a kept connection it had given up.
    let backend = Scripted::start(|_, nth| match nth {
        0 => Act::Send(vec![json_reply("up", "")]),
        _ => Act::SendAndClose(b"HTTP/1.1 103 Early Hints\r\n\r\n".to_vec()),
    });
    let r = router_for(&backend);
    let url = r.url("/v1/chat/completions");
    assert_eq!(post(&url, &chat("m")).await.status(), 200);
    let msg = expect_error(post(&url, &chat("m")).await, 502, "backend_bad_reply").await;
    assert!(msg.contains("after an interim (1xx) reply"), "{msg}");
    assert_eq!(backend.bodies.lock().unwrap().len(), 2, "sent once each");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn an_interim_reply_that_comes_with_the_answer_does_not_hold_it() {
    let mut wire = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n".to_vec();
    wire.extend_from_slice(&json_reply("up", ""));
    // One write, the connection kept: the answer is already in the router's
    // buffer behind the 103, and no more bytes will come.
    let backend = Scripted::start(move |_, _| Act::Send(vec![wire.clone()]));
    let r = router_for(&backend);
    let (url, body) = (r.url("/v1/chat/completions"), chat("m"));
    let resp = tokio::time::timeout(Duration::from_secs(10), post(&url, &body))
        .await
        .expect("answered without waiting for more bytes");
    let (status, v) = content(resp).await;
    assert_eq!((status, v["model"].as_str()), (200, Some("m")));
}

#[tokio::test]
async fn an_interim_reply_during_a_large_upload_lets_the_upload_go_on() {
    // The backend sends 100 Continue unasked and only then reads the body,
    // which is far larger than the socket buffers: the router must go on
    // sending after the 100, or both sides wait for each other.
    let backend = Scripted::start(|_, _| {
        Act::InterimFirst(
            b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\r\nreceived"
                    .to_vec(),
            ],
        )
    });
    let r = router_for(&backend);
    let body = vec![b'x'; 8 << 20];
    let send = reqwest::Client::new()
        .post(r.url("/upstream/m/upload"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send();
    let resp = tokio::time::timeout(Duration::from_secs(20), send)
        .await
        .expect("the upload went on after the interim reply")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "received");
    assert_eq!(backend.bodies.lock().unwrap()[0].len(), 8 << 20);
}

#[tokio::test]
async fn a_length_beside_chunks_is_not_passed_to_the_client() {
    // A length that disagrees with the chunks (RFC 9112 §6.3: the chunks
    // decide, and a relay drops the length).
    let wire = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
    let backend = Scripted::start(move |_, _| Act::Send(vec![wire.clone()]));
    let r = router_for(&backend);
    let resp = reqwest::Client::new()
        .post(r.url("/upstream/m/blob"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"hello world");
}

#[tokio::test]
async fn a_backend_that_closes_or_says_close_gets_a_new_connection_each_time() {
    let closing = Scripted::start(|_, _| Act::SendAndClose(json_reply("up", "")));
    let saying = Scripted::start(|_, _| Act::Send(vec![json_reply("up", "connection: close\r\n")]));
    for backend in [&closing, &saying] {
        let r = router_for(backend);
        for pause in [0, 600, 20] {
            // Every path: a kept connection reused at once (the close may only be
            // found by sending, and the request sent again), one whose close
            // was seen before reuse, and, when the backend said close, none kept.
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let (status, _) = content(post(&r.url("/v1/chat/completions"), &chat("m")).await).await;
            assert_eq!(status, 200);
        }
        assert_eq!(backend.connections(), 3);
    }
}

#[tokio::test]
async fn a_new_connection_closed_without_an_answer_is_a_502_and_not_retried() {
    let backend = Scripted::start(|_, _| Act::Close);
    let r = router_for(&backend);
    let msg = expect_error(
        post(&r.url("/v1/chat/completions"), &chat("m")).await,
        502,
        "backend_unreachable",
    )
    .await;
    assert!(msg.contains("without answering"), "{msg}");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn bodies_framed_by_chunks_by_close_and_after_interim_replies_arrive_whole() {
    let events = [
        "data: {\"model\":\"up\",\"n\":1}\n\n",
        "data: {\"model\":\"up\",\"n\":2}\n\n",
        "data: [DONE]\n\n",
    ];
    let mut chunked = vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()];
    for e in events {
        // Each chunk's size line, data and end in separate writes, one with an extension.
        chunked.push(format!("{:x};ext=1\r\n", e.len()).into_bytes());
        chunked.push(e.as_bytes().to_vec());
        chunked.push(b"\r\n".to_vec());
    }
    chunked.push(b"0\r\nx-trailer: t\r\n\r\n".to_vec());
    let by_chunks = Scripted::start(move |_, _| Act::Send(chunked.clone()));
    let r = router_for(&by_chunks);
    for _ in 0..2 {
        let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let expected = events.concat().replace("\"up\"", "\"m\"");
        assert_eq!(text, expected);
    }
    assert_eq!(
        by_chunks.connections(),
        1,
        "a chunked reply read to its end keeps the connection"
    );

    let body = "{\"model\":\"up\",\"object\":\"chat.completion\",\"choices\":[]}";
    let wire =
        format!("HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{body}").into_bytes();
    let by_close = Scripted::start(move |_, _| Act::SendAndClose(wire.clone()));
    let r = router_for(&by_close);
    for _ in 0..2 {
        let (status, v) = content(post(&r.url("/v1/chat/completions"), &chat("m")).await).await;
        assert_eq!((status, v["model"].as_str()), (200, Some("m")));
    }
    assert_eq!(by_close.connections(), 2);
}

#[tokio::test]
async fn a_chunk_is_relayed_before_the_backend_sends_the_next() {
    // The backend holds its second event until the client has the first: a
    // router that held a chunk back for more would never deliver it.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(rx));
    let first = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n10\r\ndata: {\"n\": 1}\n\n\r\n".to_vec();
    let rest = b"10\r\ndata: {\"n\": 2}\n\n\r\n0\r\n\r\n".to_vec();
    let backend =
        Scripted::start(move |_, _| Act::Gated(first.clone(), gate.clone(), rest.clone()));
    let r = router_for(&backend);
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let read = async {
        while let Some(bytes) = futures_util::StreamExt::next(&mut stream).await {
            got.extend_from_slice(&bytes.unwrap());
            if got.ends_with(b"{\"n\": 1}\n\n") {
                tx.send(()).unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the first event came before the second was sent");
    assert_eq!(got, b"data: {\"n\": 1}\n\ndata: {\"n\": 2}\n\n");
}

#[tokio::test]
async fn an_upload_the_backend_refuses_before_reading_gets_its_answer() {
    let refusal = "{\"error\":{\"message\":\"too big\"}}";
    let wire = format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{refusal}",
        refusal.len()
    )
    .into_bytes();
    let backend = Scripted::start(move |_, _| Act::AnswerHeadOnly(wire.clone()));
    let r = router_for(&backend);
    // Far more than the socket buffers hold, so sending it would block. Written
    // from a raw socket while the answer is read: the router may close its side
    // once it has answered, which an HTTP client library reports as a failed write.
    let len = 24 << 20;
    let addr = r
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let head = format!(
            "POST /upstream/m/upload HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {len}\r\n\r\n"
        );
        let _ = wr.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..len / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).ends_with(refusal) {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer");
    writer.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with(refusal), "{text}");
}
