//! The request log as a user meets it: every model request leaves one record
//! in the SQLite file (with the tokens the backend reported, its times, the
//! swap it caused, whether the client left), the file survives the router being
//! killed, and `request_log: off` keeps nothing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use modelyard_reqlog::{Query, Reader, Record};
use serde_json::{json, Value};

/// Where the harness's router keeps its log (its data dir is its temp dir).
fn db(r: &Router) -> PathBuf {
    r.dir.path().join("modelyard").join("requests.db")
}

/// The records, newest first, once there are `n` of them (bounded wait: the
/// writer takes them off the request path).
async fn records(r: &Router, n: usize) -> Vec<Record> {
    let path = db(r);
    let got = eventually(Duration::from_secs(10), || {
        let path = path.clone();
        async move {
            let all = Reader::open(&path)
                .ok()?
                .query(&Query {
                    limit: 1000,
                    ..Query::default()
                })
                .ok()?;
            (all.len() >= n).then_some(all)
        }
    })
    .await;
    got.unwrap_or_else(|| panic!("fewer than {n} records in {}", path.display()))
}

const SIM: &str = r#"
budget: 1GB
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --tokens, "6", --token-delay, 10ms]}
models:
  chat: {backend: sim, memory: 50MB, aliases: [daily]}
"#;

fn hello(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "say hello to the log"}],
    })
}

async fn send(url: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .header("user-agent", "log-test/1.0")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The usage an SSE stream reported in its chunks.
fn sse_usage(body: &str) -> Value {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
        .unwrap_or_else(|| panic!("no usage in {body}"))
}

fn tokens(r: &Record) -> (Option<u64>, Option<u64>) {
    (r.prompt_tokens, r.completion_tokens)
}

fn plausible_times(r: &Record) {
    let ttfb = r.ttfb_ms.unwrap_or_else(|| panic!("no first byte: {r:?}"));
    assert!(ttfb > 0.0 && ttfb <= r.total_ms, "{r:?}");
    assert!(r.tokens_per_s.is_some_and(|t| t > 0.0), "{r:?}");
    assert!(!r.cancelled && r.error.is_none(), "{r:?}");
}

#[tokio::test]
async fn openai_streamed_and_whole_each_leave_one_record_with_the_backends_tokens() {
    let r = Router::start(SIM);
    let url = r.url("/v1/chat/completions");
    let whole: Value = send(&url, &hello("daily", false))
        .await
        .json()
        .await
        .unwrap();
    let streamed = send(&url, &hello("chat", true)).await.text().await.unwrap();
    let streamed = sse_usage(&streamed);

    let recs = records(&r, 2).await;
    assert_eq!(recs.len(), 2, "one record per request: {recs:?}");
    let (s, w) = (&recs[0], &recs[1]);
    assert_eq!(
        (w.model_asked.as_str(), w.model_served.as_str(), w.stream),
        ("daily", "chat", false)
    );
    assert_eq!(
        tokens(w),
        (
            whole["usage"]["prompt_tokens"].as_u64(),
            whole["usage"]["completion_tokens"].as_u64()
        )
    );
    assert_eq!(w.completion_tokens, Some(6));
    assert_eq!(
        (s.model_asked.as_str(), s.model_served.as_str(), s.stream),
        ("chat", "chat", true)
    );
    assert_eq!(
        tokens(s),
        (
            streamed["prompt_tokens"].as_u64(),
            streamed["completion_tokens"].as_u64()
        )
    );
    for rec in [s, w] {
        plausible_times(rec);
        assert_eq!((rec.status, rec.api.as_str()), (200, "openai"));
        assert_eq!(rec.route, "/v1/chat/completions");
        assert_eq!(rec.user_agent.as_deref(), Some("log-test/1.0"));
        assert!(rec.peer.starts_with("127.0.0.1:"), "{rec:?}");
        assert!(!rec.request_id.is_empty(), "{rec:?}");
        assert_eq!(rec.body, None, "bodies are not kept unless capture is on");
    }
    // The first request loaded the model: it caused the load, nothing unloaded.
    assert_eq!(w.swap.as_deref(), Some("caused"));
    assert_eq!(s.swap, None, "the second found it ready");

    // The stream's first token and speed are in /metrics, with the log's counts.
    let metrics = get(&r.url("/metrics")).await.text().await.unwrap();
    for line in [
        "modelyard_time_to_first_token_seconds_count{model=\"chat\"} 1",
        "modelyard_tokens_per_second_count{model=\"chat\"} 1",
        "modelyard_request_log_written_total 2",
        "modelyard_request_log_dropped_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

/// NDJSON lines, each parsed.
fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[tokio::test]
async fn ollama_streamed_and_whole_each_leave_one_record_with_the_backends_tokens() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --tokens, "5"]}
  ollama:
    kind: ollama
    command: [$BIN, sim, --flavor, ollama, --model, "llama3.2:3b=20MB", --tokens, "7"]
models:
  chat: {backend: sim, memory: 50MB}
  native: {backend: ollama, upstream: "llama3.2:3b", memory: 30MB}
"#,
    );
    let url = r.url("/api/chat");
    let ask = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream,
               "messages": [{"role": "user", "content": "count to five"}]})
    };
    // Translated for an OpenAI backend, streamed then whole; passed through to
    // an Ollama one, streamed then whole.
    let mut seen = Vec::new();
    for (model, stream) in [
        ("chat", true),
        ("chat", false),
        ("native", true),
        ("native", false),
    ] {
        let text = send(&url, &ask(model, stream)).await.text().await.unwrap();
        let last = ndjson(&text).pop().unwrap();
        assert_eq!(last["done"], true, "{text}");
        seen.push((
            model,
            stream,
            last["prompt_eval_count"].as_u64(),
            last["eval_count"].as_u64(),
        ));
    }
    let mut recs = records(&r, 4).await;
    recs.reverse();
    assert_eq!(recs.len(), 4, "{recs:?}");
    for (rec, (model, stream, prompt, completion)) in recs.iter().zip(seen) {
        assert_eq!(
            (rec.api.as_str(), rec.model_served.as_str(), rec.stream),
            ("ollama", model, stream)
        );
        assert!(completion.is_some(), "the backend reported tokens");
        assert_eq!(tokens(rec), (prompt, completion), "{rec:?}");
        assert_eq!(rec.status, 200);
        plausible_times(rec);
    }
    assert_eq!(recs[0].completion_tokens, Some(5));
    assert_eq!(recs[2].completion_tokens, Some(7));
}

#[tokio::test]
async fn a_request_that_caused_a_swap_is_recorded_with_the_model_it_unloaded() {
    let r = Router::start(
        r#"
budget: 300MB
queue_timeout: 30s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 100ms]}
models:
  a: {backend: sim, memory: 200MB}
  b: {backend: sim, memory: 200MB}
"#,
    );
    let url = r.url("/v1/chat/completions");
    for model in ["a", "b"] {
        let resp = send(&url, &hello(model, false)).await;
        assert_eq!(resp.status(), 200);
    }
    let recs = records(&r, 2).await;
    let (b, a) = (&recs[0], &recs[1]);
    assert_eq!((a.swap.as_deref(), a.unloaded.len()), (Some("caused"), 0));
    assert_eq!(b.model_served, "b");
    assert_eq!(b.swap.as_deref(), Some("caused"));
    assert_eq!(b.unloaded, ["a"], "{b:?}");
    // It waited through a's unload and its own load (100 ms of it at least).
    assert!(b.queue_ms.is_some_and(|q| q >= 100.0), "{b:?}");
}

#[tokio::test]
async fn a_stream_the_client_leaves_is_recorded_cancelled() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --tokens, "500", --token-delay, 50ms]}
models:
  slow: {backend: sim, memory: 50MB}
"#,
    );
    let resp = send(&r.url("/v1/chat/completions"), &hello("slow", true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // The first chunk came; then the client goes away.
    body.next().await.unwrap().unwrap();
    drop(body);
    let recs = records(&r, 1).await;
    let rec = &recs[0];
    assert!(rec.cancelled, "{rec:?}");
    assert_eq!(rec.status, 200, "the answer had begun");
    assert!(rec.ttfb_ms.is_some(), "{rec:?}");
    assert_eq!(rec.completion_tokens, None, "the usage never came");
}

#[tokio::test]
async fn the_log_is_sound_after_the_router_is_killed() {
    let r = Router::start(SIM);
    let url = r.url("/v1/chat/completions");
    for _ in 0..20 {
        assert_eq!(send(&url, &hello("chat", false)).await.status(), 200);
    }
    records(&r, 20).await;
    r.signal(nix::sys::signal::Signal::SIGKILL);
    let path = db(&r);
    // Opened as the next router opens it: sound, every record kept.
    let log = modelyard_reqlog::RequestLog::open(modelyard_reqlog::Settings {
        path: path.clone(),
        keep: Duration::from_secs(3600),
        max_bytes: 1 << 30,
        capacity: 16,
    })
    .unwrap();
    let reader = log.reader().unwrap();
    assert_eq!(reader.integrity_check().unwrap(), "ok");
    assert_eq!(reader.count().unwrap(), 20);
}

#[tokio::test]
async fn request_log_off_keeps_nothing() {
    let r = Router::start(&format!("request_log: off\n{SIM}"));
    let resp = send(&r.url("/v1/chat/completions"), &hello("chat", false)).await;
    assert_eq!(resp.status(), 200);
    assert!(!db(&r).exists());
}

/// A second router started by mistake on a port already taken exits before
/// it opens its request log: it never upgrades or touches the file the
/// running router writes.
#[test]
fn a_router_that_cannot_listen_leaves_the_request_log_alone() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.db");
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"{}\"\nrequest_log: {{path: \"{}\"}}\n{}",
            taken.local_addr().unwrap(),
            log.display(),
            SIM.replace("$BIN", BIN)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("XDG_DATA_HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot listen"),
        "{err}"
    );
    assert!(!log.exists(), "the log was opened: {err}");
}

#[tokio::test]
async fn refusals_are_recorded_with_their_error_code() {
    let r = Router::start(SIM);
    let resp = send(&r.url("/v1/chat/completions"), &hello("nosuch", false)).await;
    assert_eq!(resp.status(), 404);
    let recs = records(&r, 1).await;
    let rec = &recs[0];
    assert_eq!(
        (rec.status, rec.error.as_deref()),
        (404, Some("model_not_found"))
    );
    assert_eq!(rec.model_asked, "nosuch");
    assert_eq!(rec.model_served, "-", "no model served it");
    assert!(!rec.cancelled);
}

#[tokio::test]
async fn a_record_names_the_key_by_its_place_and_escapes_what_a_client_wrote() {
    let r = Router::start_with_env(
        SIM,
        &[("MODELYARD_API_KEYS", "[sk-first-0123, sk-second-4567]")],
    );
    let resp = client()
        .post(r.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-second-4567")
        .header("user-agent", "agent/1.0")
        .json(&hello("daily", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A client's text could start a line of its own in a terminal.
    let long = format!("daily\n{}", "x".repeat(300));
    let refused = client()
        .post(r.url("/v1/chat/completions"))
        .header("x-api-key", "sk-first-0123")
        .json(&hello(&long, false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    let recs = records(&r, 2).await;
    let (bad, ok) = (&recs[0], &recs[1]);
    assert_eq!(ok.key.as_deref(), Some("key 2"));
    assert_eq!(ok.user_agent.as_deref(), Some("agent/1.0"));
    assert_eq!(
        ok.request_id,
        resp.headers()["x-request-id"].to_str().unwrap()
    );
    assert_eq!(ok.route, "/v1/chat/completions");
    assert_eq!(bad.key.as_deref(), Some("key 1"));
    assert!(
        bad.model_asked.starts_with("daily\\nxxx"),
        "{}",
        bad.model_asked
    );
    assert!(
        bad.model_asked.ends_with("… (306 bytes)"),
        "{}",
        bad.model_asked
    );
    let file = std::fs::read(db(&r)).unwrap();
    let wal = std::fs::read(db(&r).with_extension("db-wal")).unwrap_or_default();
    for key in ["sk-first", "sk-second"] {
        let inside = |b: &[u8]| b.windows(key.len()).any(|w| w == key.as_bytes());
        assert!(
            !inside(&file) && !inside(&wal),
            "{key} is in the request log"
        );
    }
}

/// Header text beyond ASCII is kept: UTF-8 as it came, other bytes as
/// U+FFFD (the record used to leave such a request id and User-Agent empty).
#[tokio::test]
async fn a_record_keeps_header_text_that_is_not_ascii() {
    let r = Router::start(SIM);
    let resp = client()
        .post(r.url("/v1/chat/completions"))
        .header(
            "x-request-id",
            reqwest::header::HeaderValue::from_bytes("réq-1".as_bytes()).unwrap(),
        )
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"agent \xe9").unwrap(),
        )
        .json(&hello("chat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rec = &records(&r, 1).await[0];
    assert_eq!(rec.request_id, "réq-1");
    assert_eq!(rec.user_agent.as_deref(), Some("agent \u{fffd}"));
}

#[tokio::test]
async fn each_record_says_the_priority_its_request_was_served_at() {
    let r = Router::start(&format!(
        "{SIM}  embed: {{backend: sim, memory: 50MB, priority: background}}\n"
    ));
    let url = r.url("/v1/chat/completions");
    // Interactive by default; background by the header, or by the model.
    assert_eq!(send(&url, &hello("chat", false)).await.status(), 200);
    let asked = client()
        .post(&url)
        .header("x-modelyard-priority", "background")
        .json(&hello("chat", false))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 200);
    assert_eq!(send(&url, &hello("embed", false)).await.status(), 200);
    // Refused before any model was chosen: no priority to tell.
    assert_eq!(send(&url, &hello("nosuch", false)).await.status(), 404);
    let recs = records(&r, 4).await;
    let seen: Vec<(&str, Option<&str>)> = recs
        .iter()
        .rev()
        .map(|r| (r.model_served.as_str(), r.priority.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("chat", Some("interactive")),
            ("chat", Some("background")),
            ("embed", Some("background")),
            ("-", None),
        ]
    );
    let table = cli(&r, &["requests"]);
    assert_eq!(table.matches("(bg)").count(), 2, "{table}");
}

/// `modelyard ARGS --url URL`, its stdout (asserting it succeeded).
fn cli(r: &Router, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(args)
        .args(["--url", &r.url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "modelyard {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn admin_requests_pages_and_the_cli_shows_the_table_and_top() {
    let r = Router::start(SIM);
    let url = r.url("/v1/chat/completions");
    for model in ["chat", "daily", "chat"] {
        assert_eq!(send(&url, &hello(model, false)).await.status(), 200);
    }
    records(&r, 3).await;
    let page = get_json(&r.url("/admin/requests?limit=2")).await;
    assert_eq!(page["requests"].as_array().unwrap().len(), 2, "{page}");
    let next = page["next"].as_str().expect("a next page");
    let rest = get_json(&r.url(next)).await;
    let rest = rest["requests"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["model_asked"], "chat", "the oldest, last");
    let only = get_json(&r.url("/admin/requests?model=daily")).await;
    assert_eq!(only["requests"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["next"], Value::Null);
    let bad = get(&r.url("/admin/requests?since=soon")).await;
    let msg = expect_error(bad, 400, "invalid_field").await;
    assert!(msg.contains("since"), "{msg}");
    let summary = get_json(&r.url("/admin/requests/summary")).await;
    assert_eq!(summary["models"][0]["model"], "chat");
    assert_eq!(summary["models"][0]["requests"], 3);
    assert_eq!(summary["models"][0]["completion_tokens"], 18);

    let table = cli(&r, &["requests"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three rows:\n{table}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("TOK/S"),
        "{table}"
    );
    assert!(lines[2].contains("daily→chat"), "{table}");
    assert!(lines[3].contains("caused"), "the first loaded it:\n{table}");
    let json: Value =
        serde_json::from_str(&cli(&r, &["requests", "--json", "--model", "daily"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    let slow = cli(&r, &["requests", "--slow", "-n", "1"]);
    assert!(
        slow.lines().nth(1).unwrap().contains("caused"),
        "the load was slowest:\n{slow}"
    );
    let top = cli(&r, &["top", "--once"]);
    let row = top
        .lines()
        .find(|l| l.starts_with("chat"))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(row.contains("ready"), "{top}");
}

#[tokio::test]
async fn a_stream_whose_model_fails_to_load_after_progress_began_is_recorded_as_that_failure() {
    let r = Router::start(
        r#"
progress_after: 100ms
backends:
  stuck: {command: [$BIN, sim, --port, "${PORT}", --hang-start], start_timeout: 1s}
models:
  stuck: {backend: stuck, memory: 1MB, upstream: sim}
"#,
    );
    let resp = send(&r.url("/v1/chat/completions"), &hello("stuck", true)).await;
    assert_eq!(resp.status(), 200, "progress began: the client has its 200");
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"error\""), "{text}");
    let recs = records(&r, 1).await;
    let rec = &recs[0];
    assert!(!rec.cancelled, "the client stayed to the end: {rec:?}");
    assert!(rec.status >= 500, "{rec:?}");
    assert!(rec.error.is_some(), "{rec:?}");
}

#[tokio::test]
async fn responses_api_requests_record_their_input_and_output_tokens() {
    let r = Router::start(SIM);
    let url = r.url("/v1/responses");
    let ask =
        |stream: bool| json!({"model": "chat", "input": "three words here", "stream": stream});
    let whole: Value = send(&url, &ask(false)).await.json().await.unwrap();
    let streamed = send(&url, &ask(true)).await.text().await.unwrap();
    assert!(streamed.contains("response.completed"), "{streamed}");
    let recs = records(&r, 2).await;
    let usage = &whole["usage"];
    let expected = (
        usage["input_tokens"].as_u64(),
        usage["output_tokens"].as_u64(),
    );
    assert_eq!(expected.1, Some(6), "{whole}");
    for rec in &recs {
        assert_eq!(tokens(rec), expected, "{rec:?}");
        assert_eq!(rec.route, "/v1/responses");
    }
}

#[tokio::test]
async fn a_stalled_log_drops_and_counts_records_and_every_request_is_answered() {
    // The writer never writes, and four records may wait for it.
    let r = Router::start_with_env(SIM, &[("MODELYARD_DEBUG_STALL_REQUEST_LOG", "4")]);
    let url = r.url("/v1/chat/completions");
    let body = hello("chat", false);
    let asks = (0..30).map(|_| send(&url, &body));
    for resp in futures_util::future::join_all(asks).await {
        assert_eq!(resp.status(), 200);
    }
    let metrics = get(&r.url("/metrics")).await.text().await.unwrap();
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    // The writer holds one, the channel four: the other 25 were dropped.
    let dropped = count("modelyard_request_log_dropped_total");
    assert!((25..=26).contains(&dropped), "dropped {dropped}");
    assert_eq!(count("modelyard_request_log_written_total"), 0);
}
