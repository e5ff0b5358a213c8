//! What clients send reaches the backend as the backend's API wants it, and
//! what comes back reaches each client in its own API's shape: tool calls keep
//! their ids through the Ollama → OpenAI translation, compressed replies are
//! still renamed, errors come in each API's own shape and with a real status
//! whenever the router has not committed one, and `/api/show` tells the truth.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

/// One request as the backend received it.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A backend that records every request and answers a chat completion; it
/// gzips (in name: the bytes are not a chat completion) when asked to.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &log));
            }
        });
        Recorder { url, seen }
    }

    fn last_body(&self) -> Value {
        let seen = self.seen.lock().unwrap();
        let last = seen
            .iter()
            .rev()
            .find(|s| s.head.starts_with("POST"))
            .unwrap();
        serde_json::from_slice(&last.body).unwrap()
    }

    /// The last model request's head (the router's health checks are GETs).
    fn last_head(&self) -> String {
        let seen = self.seen.lock().unwrap();
        let last = seen
            .iter()
            .rev()
            .find(|s| s.head.starts_with("POST"))
            .unwrap();
        last.head.clone()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Seen>>) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(req) = RawRequest::read(&mut reader) {
        let gzip = req
            .head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("accept-encoding:") && l.contains("gzip"));
        log.lock().unwrap().push(Seen {
            head: format!("{}\r\n{}", req.line, req.head),
            body: req.body,
        });
        let reply = json!({"id": "x", "object": "chat.completion", "model": "up",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "done"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        .to_string();
        let (encoding, reply) = if gzip {
            (
                "content-encoding: gzip\r\n",
                "\u{1f}\u{8b}compressed".to_string(),
            )
        } else {
            ("", reply)
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{encoding}content-length: {}\r\n\r\n{reply}",
            reply.len()
        );
    }
}

fn router_for(backend: &Recorder, extra: &str) -> Router {
    Router::start(&format!(
        "{extra}backends:\n  b: {{url: \"{}\"}}\nmodels:\n  m: {{backend: b, upstream: up, memory: 1MB}}\n  nomic-embed-text: {{backend: b, memory: 1MB}}\n",
        backend.url
    ))
}

/// A chat for `m` with one header of the client's.
async fn chat_with_header(r: &Router, name: &str, value: &str) -> reqwest::Response {
    client()
        .post(r.url("/v1/chat/completions"))
        .header(name, value)
        .json(&chat("m"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_ollama_tool_round_trip_reaches_an_openai_backend_with_linked_ids() {
    let backend = Recorder::start();
    let r = router_for(&backend, "");
    // ollama-python's second turn of an agent loop: the call it got back, the
    // tool's result named by tool_name, and `tools: []` as it always sends.
    let turn = json!({"model": "m", "stream": false, "tools": [], "messages": [
        {"role": "user", "content": "what is the weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "rain, 4 °C"}
    ]});
    let resp = post(&r.url("/api/chat"), &turn).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["message"]["content"], "done");
    let sent = backend.last_body();
    let call_id = sent["messages"][1]["tool_calls"][0]["id"].as_str().unwrap();
    assert!(!call_id.is_empty());
    assert_eq!(sent["messages"][2]["tool_call_id"], call_id, "{sent}");
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Oslo\"}"
    );
    assert!(
        sent.get("tools").is_none(),
        "an empty tools list was sent: {sent}"
    );
    assert!(sent["messages"][2].get("tool_name").is_none());
}

#[tokio::test]
async fn ollama_think_reaches_an_openai_backend_as_reasoning_effort() {
    let backend = Recorder::start();
    let r = router_for(&backend, "");
    for (think, effort) in [(json!("high"), "high"), (json!(false), "none")] {
        let ask = json!({"model": "m", "stream": false, "think": think,
            "options": {"temperature": 0.2, "seed": 7, "num_predict": 9},
            "messages": [{"role": "user", "content": "why?"}]});
        let resp = post(&r.url("/api/chat"), &ask).await;
        assert_eq!(resp.status(), 200);
        let sent = backend.last_body();
        assert_eq!(sent["reasoning_effort"], effort, "{sent}");
        assert_eq!(
            (&sent["temperature"], &sent["seed"], &sent["max_tokens"]),
            (&json!(0.2), &json!(7), &json!(9)),
            "{sent}"
        );
    }
    let bad = json!({"model": "m", "think": "max", "messages": [{"role": "user", "content": "x"}]});
    let resp = post(&r.url("/api/chat"), &bad).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("think"), "{v}");
}

#[tokio::test]
async fn a_reply_the_backend_would_compress_is_asked_for_plain_and_renamed() {
    let backend = Recorder::start();
    let r = router_for(&backend, "");
    let resp = chat_with_header(&r, "accept-encoding", "gzip, br").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "m", "the backend's name was renamed");
    let head = backend.last_head().to_ascii_lowercase();
    assert!(head.contains("accept-encoding: identity"), "{head}");
}

#[tokio::test]
async fn a_streamed_request_that_fails_fast_keeps_its_status_and_headers() {
    let r = Router::start(
        "backends:\n  gone: {command: [/nonexistent/llama-server, --port, \"${PORT}\"]}\nmodels:\n  m: {backend: gone, memory: 1MB}\n",
    );
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
    assert_eq!(resp.status(), 502, "a real status, not a committed 200");
    assert!(resp.headers().get("x-modelyard-error").is_some());
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("m"), "{v}");
}

#[tokio::test]
async fn router_errors_on_the_messages_api_are_anthropic_shaped() {
    let backend = Recorder::start();
    let r = router_for(&backend, "");
    let resp = post(
        &r.url("/v1/messages"),
        &json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-modelyard-error"], "model_not_found");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    let resp = client()
        .post(r.url("/v1/messages/count_tokens"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[tokio::test]
async fn api_show_tells_an_embedding_model_from_a_chat_model() {
    let backend = Recorder::start();
    let r = Router::start(&format!(
        "backends:\n  b: {{url: \"{}\"}}\nmodels:\n  m: {{backend: b, memory: 1MB, capabilities: [completion, tools], context: 32768}}\n  nomic-embed-text: {{backend: b, memory: 1MB}}\n",
        backend.url
    ));
    let show = |name: &str| {
        let url = r.url("/api/show");
        let body = json!({"model": name});
        async move { post(&url, &body).await.json::<Value>().await.unwrap() }
    };
    let embed = show("nomic-embed-text").await;
    assert_eq!(embed["capabilities"], json!(["embedding"]), "{embed}");
    let chat = show("m").await;
    assert_eq!(
        chat["capabilities"],
        json!(["completion", "tools"]),
        "{chat}"
    );
    assert_eq!(chat["model_info"]["modelyard.context_length"], 32768);
}

#[tokio::test]
async fn a_page_on_localhost_gets_cors_as_ollama_gives_it() {
    let backend = Recorder::start();
    let r = router_for(&backend, "");
    let resp = chat_with_header(&r, "origin", "http://localhost:3000").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let foreign = chat_with_header(&r, "origin", "https://evil.example").await;
    assert_eq!(foreign.status(), 403);
}

#[tokio::test]
async fn an_agent_loop_runs_against_the_simulator_through_either_api() {
    let sim = Sim::start(&["--model", "m"]);
    let r = Router::start(&format!(
        "backends:\n  b: {{url: \"{}\"}}\nmodels:\n  m: {{backend: b, memory: 1MB}}\n",
        sim.url
    ));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {}}}}]);
    // Ollama's API: the call comes back in Ollama's shape (arguments an object).
    let ask = json!({"model": "m", "stream": false, "tools": tools,
        "messages": [{"role": "user", "content": "weather?"}]});
    let v: Value = post(&r.url("/api/chat"), &ask).await.json().await.unwrap();
    let call = &v["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{v}");
    assert_eq!(call["function"]["arguments"], json!({}), "{v}");
    // The second turn, with the tool's result, is answered in words.
    let turn = json!({"model": "m", "stream": false, "tools": tools, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_name": "get_weather", "content": "rain"}]});
    let v: Value = post(&r.url("/api/chat"), &turn).await.json().await.unwrap();
    assert!(
        v["message"]["content"].as_str().unwrap().starts_with("t0"),
        "{v}"
    );
    // OpenAI's API, streamed: the call arrives as a delta.
    let ask = json!({"model": "m", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "weather?"}]});
    let text = post(&r.url("/v1/chat/completions"), &ask)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("\"tool_calls\"") && text.contains("get_weather"),
        "{text}"
    );
    assert!(text.contains("\"finish_reason\":\"tool_calls\""), "{text}");
}

#[tokio::test]
async fn capabilities_an_ollama_backend_reports_are_learned_and_shown_everywhere() {
    let sim = Sim::start(&["--flavor", "ollama", "--model", "qwen3:8b"]);
    let r = Router::start(&format!(
        "backends:\n  o: {{kind: ollama, url: \"{}\"}}\nmodels:\n  \
         q: {{backend: o, upstream: \"qwen3:8b\", memory: 1MB}}\n  \
         said: {{backend: o, upstream: \"qwen3:8b\", memory: 1MB, capabilities: [completion, vision], context: 1000}}\n",
        sim.url
    ));
    // Nothing asked while the model is not loaded: the guess.
    let show = |name: &'static str| {
        let url = r.url("/api/show");
        async move {
            let resp = post(&url, &json!({"model": name})).await;
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let shown = show("q").await;
    assert_eq!(shown["capabilities"], json!(["completion"]), "{shown}");
    // Once it runs, Ollama's own /api/show is asked: tools, its context, its details.
    for name in ["q", "said"] {
        let ask = json!({"model": name, "stream": false, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(post(&r.url("/api/chat"), &ask).await.status(), 200);
    }
    let shown = show("q").await;
    assert_eq!(
        last_request(&sim.url).await["path"],
        "/api/show",
        "asked the backend"
    );
    assert_eq!(
        shown["capabilities"],
        json!(["completion", "tools"]),
        "{shown}"
    );
    assert_eq!(shown["model_info"]["modelyard.context_length"], 4096);
    assert_eq!(shown["details"]["family"], "sim", "{shown}");
    // routes.yaml wins over what the backend says.
    let shown = show("said").await;
    assert_eq!(shown["capabilities"], json!(["completion", "vision"]));
    assert_eq!(shown["model_info"]["modelyard.context_length"], 1000);
    // The lists say the same.
    let tags = get_json(&r.url("/api/tags")).await;
    let q = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "q")
        .unwrap();
    assert_eq!(q["capabilities"], json!(["completion", "tools"]), "{tags}");
    let models = get_json(&r.url("/v1/models")).await;
    let q = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "q")
        .unwrap();
    assert_eq!(
        q["capabilities"],
        json!(["completion", "tools"]),
        "{models}"
    );
    assert_eq!(q["context_length"], 4096, "{models}");
    // Asked once, not on every /api/show: after a chat, the backend's last
    // request stays that chat.
    let ask =
        json!({"model": "q", "stream": false, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&r.url("/api/chat"), &ask).await.status(), 200);
    show("q").await;
    show("q").await;
    assert_eq!(last_request(&sim.url).await["path"], "/api/chat");
}

#[tokio::test]
async fn a_failure_after_the_stream_began_comes_in_each_apis_framing() {
    // progress_after 100ms: the 200 is committed long before the start times out.
    let r = Router::start(
        "progress_after: 100ms\nqueue_timeout: 30s\nbackends:\n  \
         stuck: {command: [$BIN, sim, --port, \"${PORT}\", --hang-start], start_timeout: 1s}\n\
         models:\n  m: {backend: stuck, memory: 1MB, upstream: sim}\n",
    );
    let ask = |path: &'static str, body: Value| {
        let url = r.url(path);
        async move {
            let resp = post(&url, &body).await;
            assert_eq!(resp.status(), 200, "{path}: committed");
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            resp.text().await.unwrap()
        }
    };
    let text = ask(
        "/v1/messages",
        json!({"model": "m", "max_tokens": 5, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(
        text.starts_with(": modelyard: loading m"),
        "progress first: {text}"
    );
    let tail = text.rsplit("\n\n").nth(1).unwrap();
    let (event, data) = tail.split_once('\n').unwrap();
    assert_eq!(event, "event: error", "{text}");
    let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["error"]["type"].is_string() && v["error"]["message"].as_str().unwrap().contains('m')
    );

    let text = ask(
        "/v1/responses",
        json!({"model": "m", "input": "hi", "stream": true}),
    )
    .await;
    assert!(text.starts_with(": modelyard: loading m"), "{text}");
    assert!(text.contains("event: error\ndata: {"), "{text}");
    assert!(text.contains("\"code\":\"backend_start_failed\""), "{text}");
}

#[tokio::test]
async fn anthropics_messages_api_reaches_an_ollama_backend_renamed() {
    let sim = Sim::start(&["--flavor", "ollama", "--model", "qwen3:8b"]);
    let r = Router::start(&format!(
        "backends:\n  o: {{kind: ollama, url: \"{}\"}}\nmodels:\n  \
         q: {{backend: o, upstream: \"qwen3:8b\", memory: 1MB, aliases: [claude-local]}}\n",
        sim.url
    ));
    let ask = json!({"model": "claude-local", "max_tokens": 20, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&r.url("/v1/messages"), &ask).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        text.contains("\"model\":\"claude-local\""),
        "renamed back: {text}"
    );
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert_eq!(last_request(&sim.url).await["body"]["model"], "qwen3:8b");
}

#[tokio::test]
async fn an_omlx_backend_tells_its_models_engine_and_window() {
    let r = Router::start(
        "backends:\n  omlx:\n    kind: omlx\n    \
         command: [$BIN, sim, --flavor, omlx, --model, \"Qwen3-8B=1MB\", --model, \"Qwen3-Embedding=1MB\"]\n\
         models:\n  q: {backend: omlx, upstream: Qwen3-8B, memory: 5MB}\n  \
         e: {backend: omlx, upstream: Qwen3-Embedding, memory: 5MB}\n",
    );
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("q"))
            .await
            .status(),
        200
    );
    let embed = json!({"model": "e", "input": "hi"});
    assert_eq!(post(&r.url("/v1/embeddings"), &embed).await.status(), 200);
    let show = |name: &'static str| {
        let url = r.url("/api/show");
        async move {
            post(&url, &json!({"model": name}))
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let q = show("q").await;
    assert_eq!(q["capabilities"], json!(["completion"]), "{q}");
    assert_eq!(
        q["model_info"]["modelyard.context_length"], 32768,
        "oMLX's max_context_window: {q}"
    );
    let e = show("e").await;
    assert_eq!(e["capabilities"], json!(["embedding"]), "{e}");
    let models = get_json(&r.url("/v1/models")).await;
    assert_eq!(models["data"][0]["context_length"], 32768, "{models}");
}
