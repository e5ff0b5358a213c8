//! Hostile clients, second round: a backend runs exactly the model the router
//! chose, no stalled body or idle connection holds a slot, and no input floods
//! or forges the log.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use common::*;
use serde_json::{json, Value};

/// A backend that records how many model requests (POSTs) reached it and
/// answers each with a small chat completion.
struct Recorder {
    url: String,
    posts: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let posts = Arc::new(AtomicUsize::new(0));
        let count = posts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let count = count.clone();
                std::thread::spawn(move || serve(conn, &count));
            }
        });
        Recorder { url, posts }
    }

    fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, posts: &AtomicUsize) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(req) = RawRequest::read(&mut reader) {
        if req.line.starts_with("POST ") {
            posts.fetch_add(1, Ordering::SeqCst);
        }
        let reply = json!({"object": "chat.completion", "model": "up", "data": [],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})
        .to_string();
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
    }
}

#[tokio::test]
async fn a_key_the_router_reads_given_twice_in_any_case_is_refused_on_every_api() {
    let backend = Recorder::start();
    let r = Router::start(&format!(
        "backends:\n  b: {{url: \"{}\"}}\nmodels:\n  small: {{backend: b, upstream: up, memory: 1MB}}\n",
        backend.url
    ));
    let msgs = json!([{"role": "user", "content": "hi"}]);
    // The bodies a Go decoder (case-insensitive, last one wins) would read as
    // another model, another keep_alive, another stream.
    let bodies = [
        format!(r#"{{"model":"small","messages":{msgs},"MODEL":"huge:70b"}}"#),
        format!(r#"{{"MODEL":"huge:70b","model":"small","messages":{msgs}}}"#),
        format!(r#"{{"model":"small","messages":{msgs},"model":"huge:70b"}}"#),
        format!(r#"{{"model":"small","messages":{msgs},"Mod\u0065l":"huge:70b"}}"#),
        format!(r#"{{"model":"small","messages":{msgs},"keep_alive":-1,"Keep_Alive":"0s"}}"#),
        format!(r#"{{"model":"small","messages":{msgs},"stream":false,"STREAM":true}}"#),
        format!("{{\"model\":\"small\",\"messages\":{msgs},\"options\":{{}},\"\u{017F}tream\":1,\"stream\":false}}"),
    ];
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/api/chat",
        "/api/generate",
    ] {
        for body in &bodies {
            let resp = client()
                .post(r.url(path))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{path} {body}");
            assert_eq!(
                resp.headers()["x-modelyard-error"],
                "repeated_key",
                "{path}"
            );
            let v: Value = resp.json().await.unwrap();
            let msg = if path.starts_with("/api/") {
                v["error"].as_str().unwrap().to_string()
            } else {
                v["error"]["message"].as_str().unwrap().to_string()
            };
            assert!(msg.contains("send the key once"), "{path}: {msg}");
        }
    }
    // A form names its model once too: right after the first, or after a
    // file long enough that the second arrives while the upload streams.
    for file_size in [10, 2 << 20] {
        let mut form = Vec::new();
        for (name, file, content) in [
            ("model", "", b"small".to_vec()),
            ("file", "; filename=\"a.wav\"", vec![b'x'; file_size]),
            ("MODEL", "", b"huge:70b".to_vec()),
        ] {
            form.extend_from_slice(
                format!("--XX\r\ncontent-disposition: form-data; name=\"{name}\"{file}\r\n\r\n")
                    .as_bytes(),
            );
            form.extend_from_slice(&content);
            form.extend_from_slice(b"\r\n");
        }
        form.extend_from_slice(b"--XX--\r\n");
        let resp = client()
            .post(r.url("/v1/audio/transcriptions"))
            .header("content-type", "multipart/form-data; boundary=XX")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "a file of {file_size} bytes");
        assert_eq!(resp.headers()["x-modelyard-error"], "repeated_key");
    }
    // A query names its model once too.
    let resp = get(&r.url("/v1/audio/voices?model=small&MODEL=huge")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(backend.posts(), 0, "nothing refused reached the backend");
    // The same request with the key once goes through.
    let ok = post(&r.url("/v1/chat/completions"), &chat("small")).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(backend.posts(), 1);
}

/// Opens a connection and sends `head` and then nothing more.
fn stall(url: &str, head: &[u8]) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head).unwrap();
    s
}

/// A router with one model, `m`, on the backend at `url`, and `extra` keys.
fn router_on(url: &str, extra: &str) -> Router {
    Router::start(&format!(
        "{extra}backends:\n  b: {{url: \"{url}\"}}\nmodels:\n  m: {{backend: b, memory: 1MB}}\n"
    ))
}

/// The router still answers a chat for `m`.
async fn assert_serves(r: &Router) {
    let resp = post(&r.url("/v1/chat/completions"), &chat("m")).await;
    assert_eq!(resp.status(), 200);
}

/// A one-off GET /healthz on a connection of its own: what came back.
fn probe(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = write!(
        s,
        "GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    );
    read_to_close(&mut s, Duration::from_secs(5)).unwrap_or_default()
}

/// Reads what the router sends until it closes (bounded).
fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&all).into_owned()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_stalled_upload_is_timed_out_and_frees_its_slot_and_lease() {
    // A backend that reads a body to its declared end before it answers.
    let backend = Recorder::start();
    let r = router_on(&backend.url, "body_timeout: 1s\nmax_connections: 6\n");
    let addr = r.url.trim_start_matches("http://").to_string();
    // Before the model field: the form's first bytes, then silence.
    let form_head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XX\r\ncontent-length: 100000\r\n\r\n--XX\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF"
    );
    // After the model field: routed and leased, then silence mid-file.
    let after_model = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: multipart/form-data; boundary=XX\r\ncontent-length: 100000\r\n\r\n--XX\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nm\r\n--XX\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF"
    );
    // A body for any path of the model's server that never arrives.
    let upstream = format!(
        "POST /upstream/m/v1/audio/transcriptions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\nabc"
    );
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..2)
        .flat_map(|_| [&form_head, &after_model, &upstream])
        .map(|h| stall(&r.url, h.as_bytes()))
        .collect();
    // Every slot is taken: a probe is refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(probe(&addr).starts_with("HTTP/1.1 503"), "all 6 slots held");
    for s in &mut stalled {
        let answer = read_to_close(s, Duration::from_secs(10)).expect("the router closed it");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Slots and the model's lease are free again.
    assert!(probe(&addr).starts_with("HTTP/1.1 200"));
    let s = get_json(&r.url("/admin/status")).await;
    let m = s["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "m")
        .unwrap()
        .clone();
    assert_eq!(m["in_flight"], 0, "{m}");
    assert_serves(&r).await;
}

#[tokio::test]
async fn idle_connections_of_either_protocol_are_closed_and_their_slots_freed() {
    let sim = Sim::start(&["--model", "m"]);
    let r = router_on(
        &sim.url,
        "idle_connection_timeout: 1s\nmax_connections: 40\n",
    );
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    // HTTP/1.1: one request answered, then the connection kept and left quiet.
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        idle.push(s);
    }
    // h2c: the preface and an empty SETTINGS frame, then nothing.
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        probe(&addr).starts_with("HTTP/1.1 503"),
        "all 40 slots held"
    );
    for (i, s) in idle.iter_mut().enumerate() {
        let rest = read_to_close(s, Duration::from_secs(10));
        assert!(rest.is_some(), "connection {i} was not closed");
        if i >= 20 {
            // An h2 connection ends with a GOAWAY frame (type 7).
            let bytes = rest.unwrap().into_bytes();
            assert!(
                bytes.windows(2).any(|w| w == [0x07, 0x00]),
                "no GOAWAY on {i}"
            );
        }
    }
    assert!(probe(&addr).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn client_input_in_errors_and_logs_is_cut_and_escaped() {
    let sim = Sim::start(&["--model", "m"]);
    let r = router_on(&sim.url, "max_body: 64MB\n");
    let url = r.url("/v1/chat/completions");
    let before_rss = rss_kib(r.pid()).unwrap();
    let huge = "x".repeat(30 << 20);
    for _ in 0..4 {
        let msg = expect_error(post(&url, &chat(&huge)).await, 404, "model_not_found").await;
        assert!(msg.len() < 1000, "the error echoed {} bytes", msg.len());
        assert!(msg.contains(&format!("({} bytes)", 30 << 20)), "{msg}");
    }
    let forged = "m\r\n2026-01-01T00:00:00Z  INFO modelyard: forged line";
    let msg = expect_error(post(&url, &chat(forged)).await, 404, "model_not_found").await;
    assert!(msg.contains("\\r\\n"), "{msg}");
    let logs = r.logs();
    assert!(
        logs.len() < 64 << 10,
        "the log grew to {} bytes",
        logs.len()
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a log line was forged:\n{logs}"
    );
    let grown = rss_kib(r.pid()).unwrap().saturating_sub(before_rss);
    assert!(grown < 200 << 10, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn a_fifo_or_a_huge_file_as_routes_yaml_is_refused_on_reload_while_requests_flow() {
    let sim = Sim::start(&["--model", "m"]);
    let yaml = format!(
        "backends:\n  b: {{url: \"{}\"}}\nmodels:\n  m: {{backend: b, memory: 1MB}}\n",
        sim.url
    );
    let r = Router::start(&yaml);
    let path = r.dir.path().join("routes.yaml");
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let asked = Instant::now();
    let resp = client().post(r.url("/admin/reload")).send().await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(text.contains("not a regular file"), "{text}");
    assert_serves(&r).await;

    std::fs::remove_file(&path).unwrap();
    let mut big = yaml.clone();
    while big.len() < 2 << 20 {
        big.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, big).unwrap();
    let resp = client().post(r.url("/admin/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("larger than 1024 KiB"));
    assert_serves(&r).await;
}

#[tokio::test]
async fn host_and_credentials_are_read_as_the_rfcs_say() {
    let sim = Sim::start(&["--model", "m"]);
    let r = router_on(&sim.url, "admin_key: k-admin-123456\n");
    let addr = r.url.trim_start_matches("http://").to_string();
    let raw = |req: String| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        read_to_close(&mut s, Duration::from_secs(5)).unwrap()
    };
    let none = raw("GET /v1/models HTTP/1.1\r\nconnection: close\r\n\r\n".into());
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    assert!(none.contains("missing_host"), "{none}");
    let old = raw("GET /v1/models HTTP/1.0\r\n\r\n".into());
    assert!(
        old.starts_with("HTTP/1.1 200") || old.starts_with("HTTP/1.0 200"),
        "{old}"
    );
    let tricked = raw(
        "GET /v1/models HTTP/1.1\r\nhost: [::1]evil.example\r\nconnection: close\r\n\r\n".into(),
    );
    assert!(tricked.starts_with("HTTP/1.1 403"), "{tricked}");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let resp = client()
            .get(r.url("/admin/status"))
            .header("authorization", format!("{scheme} k-admin-123456"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }
}
