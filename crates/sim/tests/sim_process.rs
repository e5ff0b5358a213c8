//! Runs the real `modelyard-sim` binary and talks HTTP to it, the way the
//! router's supervisor and tests will.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

const LISTENING_PREFIX: &str = "modelyard-sim listening on http://";

struct Sim {
    child: Child,
    addr: String,
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_modelyard-sim"));
    command
        .args(["--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn spawn_sim(args: &[&str]) -> Sim {
    let mut child = command(args).spawn().expect("spawn modelyard-sim");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    timeout(
        Duration::from_secs(5),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("listening line within 5s")
    .expect("read stdout");
    let addr = line
        .trim_end()
        .strip_prefix(LISTENING_PREFIX)
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        !addr.ends_with(":0"),
        "the real port must be reported: {addr}"
    );
    Sim { child, addr }
}

impl Sim {
    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("child still running");
        kill(Pid::from_raw(pid as i32), signal).expect("send signal");
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        timeout(within, self.child.wait())
            .await
            .expect("process exits in time")
            .expect("wait for process")
    }

    async fn stats(&self) -> Value {
        get_json(&self.addr, "/sim/stats").await.1
    }
}

/// A response whose connection is torn down when it is dropped, so dropping
/// it is how a test plays a client that went away.
struct Reply {
    response: Response<Incoming>,
    _connection: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send(
    addr: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<Reply, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect to sim");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let response = sender
        .send_request(
            request
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap(),
        )
        .await?;
    Ok(Reply {
        response,
        _connection: connection,
    })
}

async fn read_json(reply: Reply) -> (StatusCode, HeaderMap, Value) {
    let (parts, body) = reply.response.into_parts();
    let bytes = body.collect().await.expect("read body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (parts.status, parts.headers, value)
}

async fn get_json(addr: &str, path: &str) -> (StatusCode, Value) {
    let reply = send(addr, Method::GET, path, None, &[]).await.expect("GET");
    let (status, _, value) = read_json(reply).await;
    (status, value)
}

async fn post_json(addr: &str, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
    let reply = send(addr, Method::POST, path, Some(&body), &[])
        .await
        .expect("POST");
    read_json(reply).await
}

/// Reads server-sent events as they arrive, noting when each one completed.
struct EventReader {
    body: Incoming,
    buffer: Vec<u8>,
}

impl EventReader {
    fn new(reply: Reply) -> (Self, AbortOnDrop, HeaderMap) {
        let (parts, body) = reply.response.into_parts();
        assert_eq!(parts.status, StatusCode::OK);
        (
            Self {
                body,
                buffer: Vec::new(),
            },
            reply._connection,
            parts.headers,
        )
    }

    /// The next event's payload after `data: `, or `None` at the end of the
    /// body; a transport error is returned as `Err`.
    async fn next(&mut self) -> Result<Option<String>, hyper::Error> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8(event).expect("utf-8 event");
                let payload = text
                    .strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .unwrap_or_else(|| panic!("malformed event {text:?}"));
                return Ok(Some(payload.to_owned()));
            }
            match self.body.frame().await {
                None => {
                    assert!(self.buffer.is_empty(), "trailing partial event");
                    return Ok(None);
                }
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        let payload = self
            .next()
            .await
            .expect("stream ok")
            .expect("another event");
        serde_json::from_str(&payload).expect("event is JSON")
    }
}

async fn stream_request(
    addr: &str,
    path: &str,
    body: Value,
) -> (EventReader, AbortOnDrop, HeaderMap) {
    let reply = send(addr, Method::POST, path, Some(&body), &[])
        .await
        .expect("POST stream");
    EventReader::new(reply)
}

async fn wait_for_stats(sim: &Sim, field: &str, expected: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = sim.stats().await;
        if stats[field] == expected {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{field} never reached {expected}: {stats}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn health_turns_ok_only_after_load_time() {
    let sim = spawn_sim(&["--load-time", "700ms", "--memory", "8MiB"]).await;
    let started = Instant::now();

    let (status, body) = get_json(&sim.addr, "/health").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading"})
        )
    );
    let (status, body) = get_json(&sim.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "model_loading");
    let (status, _, body) = post_json(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "sim", "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"]["message"].is_string());

    loop {
        let (status, body) = get_json(&sim.addr, "/health").await;
        if status == StatusCode::OK {
            assert_eq!(body, json!({"status": "ok"}));
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never became healthy"
        );
        sleep(Duration::from_millis(20)).await;
    }
    // The timer starts at bind, slightly before the listening line is read.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = get_json(&sim.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn streamed_chat_delivers_tokens_one_by_one() {
    let sim = spawn_sim(&[
        "--tokens",
        "10",
        "--token-delay",
        "100ms",
        "--model",
        "streamer",
    ])
    .await;
    let body = json!({
        "model": "streamer",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count for me please"}],
    });
    let started = Instant::now();
    let reply = send(
        &sim.addr,
        Method::POST,
        "/v1/chat/completions",
        Some(&body),
        &[("x-request-id", "req-42")],
    )
    .await
    .unwrap();
    let (mut events, _connection, headers) = EventReader::new(reply);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-request-id"], "req-42");

    let opening = events.next_json().await;
    assert_eq!(opening["object"], "chat.completion.chunk");
    assert_eq!(opening["model"], "streamer");
    assert_eq!(
        opening["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );

    let mut arrivals = Vec::new();
    for i in 0..10 {
        let chunk = events.next_json().await;
        arrivals.push(started.elapsed());
        assert_eq!(chunk["choices"][0]["delta"]["content"], format!("t{i} "));
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(chunk["id"], opening["id"]);
    }
    let finish = events.next_json().await;
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = events.next_json().await;
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 14})
    );
    assert_eq!(events.next().await.unwrap().as_deref(), Some("[DONE]"));
    assert_eq!(events.next().await.unwrap(), None);
    let total = started.elapsed();

    // The first token comes before the generation is over, not with the rest.
    assert!(
        arrivals[0] < arrivals[9] - arrivals[0],
        "first token at {:?}, last at {:?}",
        arrivals[0],
        arrivals[9]
    );
    assert!(
        total >= Duration::from_millis(900),
        "whole stream took {total:?}"
    );
    assert!(
        arrivals[9] - arrivals[0] >= Duration::from_millis(800),
        "tokens were not paced: {arrivals:?}"
    );
    let stats = wait_for_stats(&sim, "completed", 1).await;
    assert_eq!(stats["cancelled"], 0);
}

#[tokio::test]
async fn serves_models_completions_embeddings_and_errors() {
    let sim = spawn_sim(&["--model", "a", "--model", "b", "--tokens", "3"]).await;

    let (status, models) = get_json(&sim.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(models["data"][0]["owned_by"], "modelyard-sim");

    let (status, _, chat) = post_json(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "b", "messages": [{"role": "user", "content": "hi there"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "b");
    assert_eq!(
        chat["choices"][0]["message"],
        json!({"role": "assistant", "content": "t0 t1 t2 "})
    );
    assert_eq!(
        chat["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );

    let (mut events, _connection, _) = stream_request(
        &sim.addr,
        "/v1/completions",
        json!({"model": "a", "prompt": "x", "stream": true, "max_tokens": 2}),
    )
    .await;
    for i in 0..2 {
        let chunk = events.next_json().await;
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], format!("t{i} "));
    }
    assert_eq!(
        events.next_json().await["choices"][0]["finish_reason"],
        "length"
    );
    // Without include_usage there is no usage chunk.
    assert_eq!(events.next().await.unwrap().as_deref(), Some("[DONE]"));
    assert_eq!(events.next().await.unwrap(), None);

    let (status, _, embeddings) = post_json(
        &sim.addr,
        "/v1/embeddings",
        json!({"model": "a", "input": ["one", "two words"], "dimensions": 4}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(embeddings["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        embeddings["data"][1]["embedding"].as_array().unwrap().len(),
        4
    );
    assert_eq!(embeddings["usage"]["prompt_tokens"], 3);

    let (status, _, error) = post_json(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "x", "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error,
        json!({"error": {
            "message": "model 'x' is not served here (serving: a, b)",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }})
    );

    let reply = send(
        &sim.addr,
        Method::POST,
        "/v1/completions",
        None,
        &[("x-trace", "abc")],
    )
    .await
    .unwrap();
    let (status, _, error) = read_json(reply).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let (status, error) = get_json(&sim.addr, "/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error["error"]["message"].is_string());

    let body = json!({"model": "a", "messages": [], "max_tokens": 1});
    let reply = send(
        &sim.addr,
        Method::POST,
        "/v1/chat/completions",
        Some(&body),
        &[("x-forwarded-by", "router")],
    )
    .await
    .unwrap();
    assert_eq!(read_json(reply).await.0, StatusCode::OK);
    let (_, last) = get_json(&sim.addr, "/sim/last-request").await;
    assert_eq!(last["body"], body);
    assert_eq!(last["headers"]["x-forwarded-by"], "router");
    assert_eq!(last["path"], "/v1/chat/completions");

    let stats = sim.stats().await;
    assert_eq!(stats["requests"], 4);
    assert_eq!(stats["completed"], 4);
    assert_eq!(stats["cancelled"], 0);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["pid"], sim.child.id().unwrap());
}

#[tokio::test]
async fn client_leaving_counts_as_cancelled() {
    let sim = spawn_sim(&["--tokens", "50", "--token-delay", "100ms"]).await;

    let (mut events, connection, _) = stream_request(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "sim", "stream": true, "messages": []}),
    )
    .await;
    events.next_json().await;
    assert_eq!(
        events.next_json().await["choices"][0]["delta"]["content"],
        "t0 "
    );
    assert_eq!(sim.stats().await["in_flight"], 1);
    drop(events);
    drop(connection);
    let stats = wait_for_stats(&sim, "cancelled", 1).await;
    assert_eq!(stats["in_flight"], 0);

    let body = json!({"model": "sim", "messages": []});
    let pending = send(
        &sim.addr,
        Method::POST,
        "/v1/chat/completions",
        Some(&body),
        &[],
    );
    // The non-streamed reply would take 5s; give up well before that.
    assert!(timeout(Duration::from_millis(300), pending).await.is_err());
    let stats = wait_for_stats(&sim, "cancelled", 2).await;
    assert_eq!(stats["completed"], 0);
    assert_eq!(stats["in_flight"], 0);
}

#[tokio::test]
async fn crash_after_dies_mid_stream() {
    let mut sim = spawn_sim(&[
        "--crash-after",
        "1",
        "--tokens",
        "5",
        "--token-delay",
        "50ms",
    ])
    .await;
    let (status, _, _) = post_json(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "sim", "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (mut events, _connection, _) = stream_request(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "sim", "stream": true, "messages": []}),
    )
    .await;
    events.next_json().await;
    assert_eq!(
        events.next_json().await["choices"][0]["delta"]["content"],
        "t0 "
    );
    // The stream must break off: an error or an end without [DONE].
    match events.next().await {
        Err(_) | Ok(None) => {}
        Ok(Some(event)) => panic!("stream continued after the crash point: {event}"),
    }
    assert_eq!(sim.wait_exit(Duration::from_secs(3)).await.code(), Some(1));
}

#[tokio::test]
async fn crash_after_dies_before_non_streamed_reply() {
    let mut sim = spawn_sim(&["--crash-after", "1"]).await;
    let body = json!({"model": "sim", "messages": []});
    let (status, _, _) = post_json(&sim.addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(send(
        &sim.addr,
        Method::POST,
        "/v1/chat/completions",
        Some(&body),
        &[]
    )
    .await
    .is_err());
    assert_eq!(sim.wait_exit(Duration::from_secs(3)).await.code(), Some(1));
}

#[tokio::test]
async fn sigterm_exits_promptly_even_with_open_streams() {
    let mut sim = spawn_sim(&["--tokens", "100", "--token-delay", "100ms"]).await;
    let (mut events, _connection, _) = stream_request(
        &sim.addr,
        "/v1/chat/completions",
        json!({"model": "sim", "stream": true, "messages": []}),
    )
    .await;
    events.next_json().await;
    sim.signal(Signal::SIGTERM);
    let status = sim.wait_exit(Duration::from_secs(1)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn ignore_sigterm_needs_sigkill() {
    let mut sim = spawn_sim(&["--ignore-sigterm"]).await;
    sim.signal(Signal::SIGTERM);
    sleep(Duration::from_millis(400)).await;
    assert!(
        sim.child.try_wait().unwrap().is_none(),
        "SIGTERM should be ignored"
    );
    assert_eq!(get_json(&sim.addr, "/health").await.0, StatusCode::OK);
    sim.signal(Signal::SIGKILL);
    let status = sim.wait_exit(Duration::from_secs(2)).await;
    assert_eq!(status.code(), None);
}

#[tokio::test]
async fn hang_start_never_prints_or_binds() {
    let mut child = command(&["--hang-start"]).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let read = timeout(
        Duration::from_millis(500),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    assert!(
        read.is_err(),
        "a hung sim must not announce a port, got {line:?}"
    );
    let pid = child.id().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = timeout(Duration::from_secs(1), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn anthropic_messages_over_http_streamed_and_not() {
    let sim = spawn_sim(&["--model", "m", "--tokens", "2"]).await;
    let ask = json!({"model": "m", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, reply) = post_json(&sim.addr, "/v1/messages", ask.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply["content"],
        json!([{"type": "text", "text": "t0 t1 "}])
    );
    assert_eq!(reply["stop_reason"], "end_turn");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let reply = send(
        &sim.addr,
        Method::POST,
        "/v1/messages",
        Some(&streamed),
        &[],
    )
    .await
    .expect("POST");
    assert_eq!(
        reply.response.headers()["content-type"],
        "text/event-stream"
    );
    let bytes = reply
        .response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );

    // Anthropic's own error shape, not OpenAI's.
    let (status, _, error) = post_json(
        &sim.addr,
        "/v1/messages",
        json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let (status, _, error) = post_json(
        &sim.addr,
        "/v1/messages",
        json!({"model": "nope", "max_tokens": 5, "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn the_timeline_says_when_it_started_was_ready_and_was_told_to_stop() {
    let path = std::env::temp_dir().join(format!("sim-timeline-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let timeline = path.display().to_string();
    let mut sim = spawn_sim(&[
        "--model",
        "m",
        "--load-time",
        "300ms",
        "--timeline",
        &timeline,
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_json(&sim.addr, "/health").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "never became healthy");
        sleep(Duration::from_millis(10)).await;
    }
    sim.signal(Signal::SIGTERM);
    assert_eq!(sim.wait_exit(Duration::from_secs(2)).await.code(), Some(0));

    let text = std::fs::read_to_string(&path).expect("the timeline was written");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<(u128, &str, &str)> = text
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            let ns = w.next().unwrap().parse().unwrap();
            (ns, w.next().unwrap(), w.next().unwrap())
        })
        .collect();
    let steps: Vec<(&str, &str)> = lines.iter().map(|l| (l.1, l.2)).collect();
    assert_eq!(
        steps,
        [("start", "m"), ("ready", "m"), ("term", "m")],
        "{text}"
    );
    let (start, ready, term) = (lines[0].0, lines[1].0, lines[2].0);
    assert!(start >= before, "stamped on the wall clock: {text}");
    assert!(
        ready - start >= 300_000_000,
        "ready once its load time has passed: {text}"
    );
    assert!(term > ready, "{text}");
}

#[tokio::test]
async fn a_timeline_that_cannot_be_written_is_refused_naming_the_flag() {
    let out = command(&["--timeline", "/nonexistent-dir/timeline.log"])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--timeline /nonexistent-dir/timeline.log"),
        "{err}"
    );
}
