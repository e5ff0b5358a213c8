//! Runs the real `modelyard-sim` binary in each backend flavor and checks
//! what the router's adapters rely on: route shapes, real memory on load
//! and unload, and each backend's own scheduler.

// The workspace tests' process readers (/proc on Linux, ps on macOS).
#[path = "../../../tests/common/procs.rs"]
#[allow(dead_code)]
mod procs;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

const LISTENING_PREFIX: &str = "modelyard-sim listening on http://";
const MIB: u64 = 1024 * 1024;

struct Sim {
    child: Child,
    addr: String,
}

/// Starts the sim with `args` and `env`; `--port 0` is added unless the
/// test is about a port variable.
async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Sim {
    let mut command = Command::new(env!("CARGO_BIN_EXE_modelyard-sim"));
    for name in [
        "OLLAMA_HOST",
        "OLLAMA_KEEP_ALIVE",
        "OLLAMA_MAX_LOADED_MODELS",
        "OMLX_PORT",
        "APFEL_PORT",
    ] {
        command.env_remove(name);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn modelyard-sim");
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
    Sim { child, addr }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Ollama flavor serving model `m` (1 MiB) in `tokens` tokens, on a port
/// of its own given the way Ollama takes it: OLLAMA_HOST.
async fn ollama_with_m(tokens: u32) -> Sim {
    let host = format!("http://127.0.0.1:{}", free_port());
    let tokens = tokens.to_string();
    spawn(
        &[
            "--flavor", "ollama", "--model", "m=1MiB", "--tokens", &tokens,
        ],
        &[("OLLAMA_HOST", host.as_str())],
    )
    .await
}

/// The oMLX flavor serving model `m` (1 MiB) in `tokens` tokens, on a port
/// of its own given the way oMLX takes it: OMLX_PORT.
async fn omlx_with_m(tokens: u32) -> Sim {
    let (port, tokens) = (free_port().to_string(), tokens.to_string());
    spawn(
        &["--flavor", "omlx", "--model", "m=1MiB", "--tokens", &tokens],
        &[("OMLX_PORT", port.as_str())],
    )
    .await
}

impl Sim {
    /// Resident memory of the sim process, from the kernel's own count.
    fn rss(&self) -> u64 {
        let pid = self.child.id().expect("running");
        procs::rss_kib(pid).expect("the sim's resident memory") * 1024
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.call(Method::GET, path, None, &[]).await;
        (r.status, r.json())
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.call(Method::POST, path, Some(body), &[]).await;
        (r.status, r.json())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Done {
        let mut open = self.open(method, path, body, headers).await;
        let bytes = open.rest().await;
        Done {
            status: open.status,
            headers: open.headers.clone(),
            body: bytes,
        }
    }

    /// Sends a request and returns as soon as the headers are in, so a
    /// test can read a stream bit by bit or hold it open.
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Open {
        self.open_raw(
            method,
            path,
            body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
            headers,
        )
        .await
    }

    async fn open_raw(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Open {
        let stream = TcpStream::connect(&self.addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(body)).unwrap())
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        Open {
            status: parts.status,
            headers: parts.headers,
            body,
            buffer: Vec::new(),
            _connection: AbortOnDrop(connection),
        }
    }

    async fn stats(&self) -> Value {
        self.get("/sim/stats").await.1
    }

    /// Polls until `check` holds, for the sim's own timers; fails after 5 s.
    async fn eventually(&self, what: &str, check: impl Fn(&Sim) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    async fn eventually_json(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, value) = self.get(path).await;
            if check(&value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {value}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A complete response.
struct Done {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Done {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response being read; dropping it hangs up.
struct Open {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    buffer: Vec<u8>,
    _connection: AbortOnDrop,
}

impl Open {
    /// The next line (NDJSON) or SSE payload, without its framing; `None`
    /// at the end of the body.
    async fn next(&mut self, separator: &[u8]) -> Option<String> {
        loop {
            if let Some(end) = self
                .buffer
                .windows(separator.len())
                .position(|w| w == separator)
            {
                let item: Vec<u8> = self.buffer.drain(..end + separator.len()).collect();
                let text = String::from_utf8(item).unwrap();
                let text = text.strip_suffix(std::str::from_utf8(separator).unwrap());
                return Some(text.unwrap().to_owned());
            }
            match timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("stream stalled")
            {
                None => return None,
                Some(frame) => {
                    if let Ok(data) = frame.expect("body frame").into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn next_line(&mut self) -> Option<Value> {
        self.next(b"\n")
            .await
            .map(|l| serde_json::from_str(&l).unwrap())
    }

    async fn next_event(&mut self) -> Option<String> {
        self.next(b"\n\n").await.map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("malformed event {e:?}"))
                .to_owned()
        })
    }

    async fn rest(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buffer);
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame.expect("body frame").into_data() {
                all.extend_from_slice(&data);
            }
        }
        all
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

// ---------------------------------------------------------------- ollama

#[tokio::test]
async fn ollama_routes_port_and_model_listing() {
    let port = free_port();
    let host = format!("http://127.0.0.1:{port}");
    let sim = spawn(
        &[
            "--flavor",
            "ollama",
            "--model",
            "qwen3:8b=1MiB",
            "--model",
            "tiny",
        ],
        &[("OLLAMA_HOST", host.as_str())],
    )
    .await;
    assert_eq!(sim.addr, format!("127.0.0.1:{port}"));

    let root = sim.call(Method::GET, "/", None, &[]).await;
    assert_eq!(
        (root.status, root.text().as_str()),
        (StatusCode::OK, "Ollama is running")
    );
    assert_eq!(
        sim.call(Method::GET, "/health", None, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sim.get("/api/version").await.1,
        json!({"version": "0.33.0"})
    );

    let (status, tags) = sim.get("/api/tags").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&tags["models"]), ["qwen3:8b", "tiny:latest"]);
    let model = &tags["models"][0];
    assert_eq!(model["model"], "qwen3:8b");
    assert_eq!(model["size"], MIB);
    assert_eq!(tags["models"][1]["size"], 0);
    assert_eq!(model["digest"].as_str().unwrap().len(), 64);
    assert!(model["modified_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        model["details"],
        json!({"parent_model": "", "format": "gguf", "family": "sim", "families": ["sim"],
               "parameter_size": "8B", "quantization_level": "Q4_0"})
    );
    assert_eq!(sim.get("/api/ps").await.1, json!({"models": []}));

    let (status, show) = sim.post("/api/show", json!({"model": "tiny"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    assert_eq!(show["model_info"]["sim.context_length"], 4096);
    assert_eq!(show["model_info"]["general.architecture"], "sim");
    assert_eq!(
        (show["template"].as_str(), show["parameters"].as_str()),
        (Some(""), Some(""))
    );
    let (status, missing) = sim.post("/api/show", json!({"model": "nope"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing, json!({"error": "model 'nope' not found"}));

    let (status, missing) = sim
        .post("/api/generate", json!({"model": "nope", "prompt": "hi"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing,
        json!({"error": "model \"nope\" not found, try pulling it first"})
    );
    let (status, missing) = sim
        .post("/v1/chat/completions", chat_body("nope", false))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"]["type"], "not_found_error");

    let (_, models) = sim.get("/v1/models").await;
    assert_eq!(models["data"][0]["id"], "qwen3:8b");
    assert_eq!(models["data"][1]["object"], "model");
}

#[tokio::test]
async fn ollama_loads_generates_and_unloads_real_memory() {
    let sim = spawn(
        &[
            "--port",
            "0",
            "--flavor",
            "ollama",
            "--model",
            "big=64MiB",
            "--load-time",
            "50ms",
            "--unload-time",
            "100ms",
            "--tokens",
            "3",
        ],
        &[("OLLAMA_KEEP_ALIVE", "-1")],
    )
    .await;
    let baseline = sim.rss();

    let (status, loaded) = sim.post("/api/generate", json!({"model": "big"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (loaded["done"].clone(), loaded["done_reason"].clone()),
        (json!(true), json!("load"))
    );
    assert_eq!(loaded["response"], "");
    assert!(
        sim.rss() >= baseline + 60 * MIB,
        "load makes 64 MiB resident"
    );
    let (_, ps) = sim.get("/api/ps").await;
    assert_eq!(names(&ps["models"]), ["big:latest"]);
    let entry = &ps["models"][0];
    assert_eq!(
        (entry["size"].clone(), entry["size_vram"].clone()),
        (json!(64 * MIB), json!(64 * MIB))
    );
    assert_eq!(entry["context_length"], 4096);
    // Kept alive forever: Go's largest duration from now.
    assert!(entry["expires_at"].as_str().unwrap() > "2200");

    let mut stream = sim
        .open(
            Method::POST,
            "/api/generate",
            Some(json!({"model": "big", "prompt": "say hi"})),
            &[],
        )
        .await;
    assert_eq!(stream.headers["content-type"], "application/x-ndjson");
    for i in 0..3 {
        let line = stream.next_line().await.unwrap();
        assert_eq!(line["response"], format!("t{i} "));
        assert_eq!(
            (line["done"].clone(), line["model"].clone()),
            (json!(false), json!("big"))
        );
        assert!(line["created_at"].is_string());
    }
    let last = stream.next_line().await.unwrap();
    assert_eq!(
        (last["done"].clone(), last["done_reason"].clone()),
        (json!(true), json!("stop"))
    );
    assert_eq!(
        (
            last["eval_count"].clone(),
            last["prompt_eval_count"].clone()
        ),
        (json!(3), json!(2))
    );
    for metric in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[metric].is_u64(), "{metric} is integer nanoseconds");
    }
    assert!(stream.next_line().await.is_none());

    let (status, chat) = sim
        .post(
            "/api/chat",
            json!({"model": "big", "stream": false, "options": {"num_predict": 2},
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        chat["message"],
        json!({"role": "assistant", "content": "t0 t1 "})
    );
    assert_eq!(
        (chat["done_reason"].clone(), chat["eval_count"].clone()),
        (json!("length"), json!(2))
    );

    let (_, embed) = sim
        .post("/api/embed", json!({"model": "big", "input": ["a", "b c"]}))
        .await;
    assert_eq!(embed["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(embed["prompt_eval_count"], 3);
    let (_, single) = sim
        .post("/api/embeddings", json!({"model": "big", "prompt": "a"}))
        .await;
    assert_eq!(single["embedding"], embed["embeddings"][0]);

    // The unload reply comes first; the memory follows after --unload-time.
    let (status, unload) = sim
        .post(
            "/api/chat",
            json!({"model": "big", "messages": [], "keep_alive": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unload["done_reason"], "unload");
    assert_eq!(
        unload["message"],
        json!({"role": "assistant", "content": ""})
    );
    sim.eventually_json("/api/ps", "unload", |ps| ps["models"] == json!([]))
        .await;
    sim.eventually("memory back", |sim| sim.rss() < baseline + 32 * MIB)
        .await;
    let stats = sim.stats().await;
    assert_eq!(
        (
            stats["loads"]["big:latest"].clone(),
            stats["unloads"]["big:latest"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(stats["loaded"], json!([]));
    assert_eq!(
        stats["requests"], 4,
        "load and unload requests are not inference"
    );
}

#[tokio::test]
async fn ollama_unload_waits_for_requests_in_flight() {
    let sim = spawn(
        &[
            "--port",
            "0",
            "--flavor",
            "ollama",
            "--model",
            "m",
            "--tokens",
            "30",
            "--token-delay",
            "10ms",
            "--unload-time",
            "10ms",
        ],
        &[],
    )
    .await;
    let mut stream = sim
        .open(
            Method::POST,
            "/api/generate",
            Some(json!({"model": "m", "prompt": "hi"})),
            &[],
        )
        .await;
    stream.next_line().await.unwrap();
    let (_, unload) = sim
        .post("/api/generate", json!({"model": "m", "keep_alive": 0}))
        .await;
    assert_eq!(unload["done_reason"], "unload");
    // 30 tokens 10 ms apart: the model is still busy well past
    // --unload-time.
    sleep(Duration::from_millis(100)).await;
    assert_eq!(names(&sim.get("/api/ps").await.1["models"]), ["m:latest"]);
    while stream.next_line().await.is_some() {}
    sim.eventually_json("/api/ps", "unload after the stream", |ps| {
        ps["models"] == json!([])
    })
    .await;
}

#[tokio::test]
async fn ollama_scheduler_evicts_beyond_max_loaded_and_expires_keep_alive() {
    let sim = spawn(
        &[
            "--port", "0", "--flavor", "ollama", "--model", "a", "--model", "b", "--model", "c",
        ],
        &[
            ("OLLAMA_MAX_LOADED_MODELS", "2"),
            ("OLLAMA_KEEP_ALIVE", "1h"),
        ],
    )
    .await;
    for model in ["a", "b"] {
        sim.post("/api/generate", json!({"model": model})).await;
    }
    // /v1 loads on demand too, and counts as a use of b.
    let (status, _) = sim
        .post("/v1/chat/completions", chat_body("b", false))
        .await;
    assert_eq!(status, StatusCode::OK);
    sim.post("/api/generate", json!({"model": "c"})).await;
    let mut loaded = names(&sim.get("/api/ps").await.1["models"]);
    loaded.sort();
    assert_eq!(
        loaded,
        ["b:latest", "c:latest"],
        "a was the least recently used"
    );
    assert_eq!(sim.stats().await["unloads"]["a:latest"], 1);

    // A request's keep_alive overrides OLLAMA_KEEP_ALIVE; ps lists the
    // latest expiry first.
    sim.post(
        "/api/generate",
        json!({"model": "c", "prompt": "x", "stream": false, "keep_alive": "700ms"}),
    )
    .await;
    let (_, ps) = sim.get("/api/ps").await;
    assert_eq!(names(&ps["models"]), ["b:latest", "c:latest"]);
    sim.eventually_json("/api/ps", "keep-alive expiry", |ps| {
        names(&ps["models"]) == ["b:latest"]
    })
    .await;
    assert_eq!(sim.stats().await["unloads"]["c:latest"], 1);
}

// ------------------------------------------------------------------ omlx

#[tokio::test]
async fn omlx_auth_status_load_unload_and_quirks() {
    let port = free_port();
    let sim = spawn(
        &[
            "--flavor",
            "omlx",
            "--api-key",
            "secret",
            "--model",
            "m=64MiB",
            "--model",
            "org/other=1MiB",
            "--tokens",
            "2",
        ],
        &[("OMLX_PORT", port.to_string().as_str())],
    )
    .await;
    assert_eq!(sim.addr, format!("127.0.0.1:{port}"));
    let auth = [("authorization", "Bearer secret")];
    let call = |method: Method, path: &'static str| {
        let sim = &sim;
        async move { sim.call(method, path, None, &auth).await }
    };

    let (status, health) = sim.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["default_model"], Value::Null);
    assert_eq!(
        health["engine_pool"],
        json!({"model_count": 2, "loaded_count": 0, "final_ceiling": null, "current_model_memory": 0})
    );
    let (status, denied) = sim.get("/v1/models").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied["error"]["message"], "API key required");
    let wrong = sim
        .call(
            Method::GET,
            "/v1/models",
            None,
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.json()["error"]["message"].clone()),
        (StatusCode::UNAUTHORIZED, json!("Invalid API key"))
    );

    let models = call(Method::GET, "/v1/models").await.json();
    assert_eq!(
        models["data"][0],
        json!({"id": "m", "object": "model", "created": 1_700_000_000, "owned_by": "omlx", "max_model_len": 32768})
    );

    let baseline = sim.rss();
    let load = call(Method::POST, "/v1/models/m/load").await;
    assert_eq!(load.status, StatusCode::OK);
    assert_eq!(
        load.json(),
        json!({"status": "ok", "model_id": "m", "message": "Loaded m"})
    );
    assert!(
        sim.rss() >= baseline + 60 * MIB,
        "load makes 64 MiB resident"
    );
    let again = call(Method::POST, "/v1/models/m/load").await.json();
    assert_eq!(again["message"], "Already loaded: m");
    let encoded = sim
        .call(Method::POST, "/v1/models/org%2Fother/load", None, &auth)
        .await;
    assert_eq!(encoded.json()["model_id"], "org/other");

    let status = call(Method::GET, "/v1/models/status").await.json();
    assert_eq!(status["final_ceiling"], Value::Null);
    assert_eq!(status["current_model_memory"], 65 * MIB);
    assert_eq!(
        (
            status["model_count"].clone(),
            status["loaded_count"].clone()
        ),
        (json!(2), json!(2))
    );
    assert_eq!(status["load_seconds_per_gb_estimate"], Value::Null);
    let m = &status["models"][0];
    assert_eq!(
        (
            m["id"].clone(),
            m["loaded"].clone(),
            m["is_loading"].clone()
        ),
        (json!("m"), json!(true), json!(false))
    );
    assert_eq!(
        (m["estimated_size"].clone(), m["actual_size"].clone()),
        (json!(64 * MIB), json!(64 * MIB))
    );
    assert!(m["last_access"].as_f64().unwrap() > 1.7e9);
    assert_eq!(
        (m["pinned"].clone(), m["engine_type"].clone()),
        (json!(false), json!("batched"))
    );
    assert_eq!(m["loading_started_at"], Value::Null);

    // Non-streamed replies start with a space; streams with a keep-alive.
    let plain = sim
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(chat_body("m", false)),
            &auth,
        )
        .await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.headers["content-type"], "application/json");
    assert!(plain.text().starts_with(" {"), "{:?}", plain.text());
    assert_eq!(plain.json()["choices"][0]["message"]["content"], "t0 t1 ");
    let mut stream = sim
        .open(
            Method::POST,
            "/v1/chat/completions",
            Some(chat_body("m", true)),
            &auth,
        )
        .await;
    let keepalive: Value = serde_json::from_str(&stream.next_event().await.unwrap()).unwrap();
    assert_eq!(keepalive["model"], "keepalive");
    assert_eq!(keepalive["choices"][0]["delta"], json!({"content": ""}));
    let mut events = Vec::new();
    while let Some(event) = stream.next_event().await {
        events.push(event);
    }
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["id"], keepalive["id"]);

    let unload = call(Method::POST, "/v1/models/m/unload").await;
    assert_eq!(unload.json(), json!({"status": "ok", "model_id": "m"}));
    assert!(
        sim.rss() < baseline + 32 * MIB,
        "unload frees the memory before replying"
    );
    let not_loaded = call(Method::POST, "/v1/models/m/unload").await;
    assert_eq!(not_loaded.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_loaded.json()["error"]["message"], "Model not loaded: m");
    assert_eq!(
        call(Method::POST, "/v1/models/zz/load").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(Method::POST, "/v1/models/zz/unload").await.status,
        StatusCode::NOT_FOUND
    );
    let stats = sim.stats().await;
    assert_eq!(
        (stats["loads"]["m"].clone(), stats["unloads"]["m"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(stats["loaded"], json!(["org/other"]));
}

#[tokio::test]
async fn omlx_lru_evicts_idle_models_under_the_ceiling() {
    // 0.1 GiB is about 102 MiB: two 40 MiB models fit, a third does not.
    let sim = spawn(
        &[
            "--port",
            "0",
            "--flavor",
            "omlx",
            "--memory-guard-gb",
            "0.1",
            "--model",
            "a=40MiB",
            "--model",
            "b=40MiB",
            "--model",
            "c=40MiB",
            "--model",
            "huge=200MiB",
            "--tokens",
            "500",
            "--token-delay",
            "10ms",
        ],
        &[],
    )
    .await;
    for model in ["a", "b"] {
        assert_eq!(
            sim.post(&format!("/v1/models/{model}/load"), json!({}))
                .await
                .0,
            StatusCode::OK
        );
    }
    // Using a makes b the least recently used.
    let (status, _) = sim
        .post(
            "/v1/completions",
            json!({"model": "a", "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // c loads on demand through an inference request, evicting b; the
    // stream, 5 s long unless dropped, keeps c busy.
    let mut held = sim
        .open(
            Method::POST,
            "/v1/chat/completions",
            Some(chat_body("c", true)),
            &[],
        )
        .await;
    held.next_event().await.unwrap();
    let loaded = |status: &Value| -> Vec<String> {
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["loaded"] == json!(true))
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(loaded(&sim.get("/v1/models/status").await.1), ["a", "c"]);
    assert_eq!(sim.stats().await["unloads"]["b"], 1);

    // c is busy with the held stream: loading b may only evict a.
    assert_eq!(
        sim.post("/v1/models/b/load", json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(loaded(&sim.get("/v1/models/status").await.1), ["b", "c"]);

    let (status, error) = sim.post("/v1/models/huge/load", json!({})).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Insufficient memory"));
    let (_, health) = sim.get("/health").await;
    assert_eq!(health["engine_pool"]["final_ceiling"], 107_374_182);
    assert_eq!(
        health["engine_pool"]["current_model_memory"],
        40 * MIB,
        "b went, busy c stayed"
    );
    drop(held);
}

#[tokio::test]
async fn omlx_unload_aborts_a_stream_in_flight() {
    let sim = spawn(
        &[
            "--port",
            "0",
            "--flavor",
            "omlx",
            "--model",
            "m",
            "--tokens",
            "50",
            "--token-delay",
            "20ms",
        ],
        &[],
    )
    .await;
    let mut stream = sim
        .open(
            Method::POST,
            "/v1/chat/completions",
            Some(chat_body("m", true)),
            &[],
        )
        .await;
    for _ in 0..3 {
        stream.next_event().await.unwrap();
    }
    let (status, _) = sim.post("/v1/models/m/unload", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let mut events = Vec::new();
    while let Some(event) = stream.next_event().await {
        events.push(event);
    }
    assert!(events.len() < 50, "the stream was cut short");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
}

// ----------------------------------------------------------------- apfel

#[tokio::test]
async fn apfel_routes_and_validation() {
    let port = free_port();
    let sim = spawn(
        &[
            "--flavor",
            "apfel",
            "--model",
            "ignored",
            "--context-window",
            "600",
            "--tokens",
            "2",
        ],
        &[("APFEL_PORT", port.to_string().as_str())],
    )
    .await;
    assert_eq!(sim.addr, format!("127.0.0.1:{port}"));
    let (status, health) = sim.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health,
        json!({"status": "ok", "model": "apple-foundationmodel", "version": "1.8.4",
               "active_requests": 0, "context_window": 600, "model_available": true,
               "prewarmed": true, "supported_languages": ["en"]})
    );
    let (_, models) = sim.get("/v1/models").await;
    let entry = &models["data"][0];
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            entry["id"].clone(),
            entry["owned_by"].clone(),
            entry["created"].clone()
        ),
        (
            json!("apple-foundationmodel"),
            json!("apple"),
            json!(1_719_792_000)
        )
    );
    assert_eq!(entry["context_window"], 600);
    assert_eq!(
        entry["unsupported_parameters"],
        json!([
            "logprobs",
            "n",
            "stop",
            "presence_penalty",
            "frequency_penalty"
        ])
    );

    let chat = |extra: Value| {
        let mut body = json!({"model": "apple-foundationmodel", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let (status, ok) = sim.post("/v1/chat/completions", chat(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok["model"], "apple-foundationmodel");
    assert_eq!(ok["choices"][0]["message"]["content"], "t0 t1 ");
    let mut stream = sim
        .open(
            Method::POST,
            "/v1/chat/completions",
            Some(chat(json!({"stream": true}))),
            &[],
        )
        .await;
    let mut last = String::new();
    while let Some(event) = stream.next_event().await {
        last = event;
    }
    assert_eq!(last, "[DONE]");

    let (status, wrong) = sim
        .post("/v1/chat/completions", chat(json!({"model": "gpt-4"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (
            wrong["error"]["type"].clone(),
            wrong["error"]["param"].clone(),
            wrong["error"]["code"].clone()
        ),
        (
            json!("invalid_request_error"),
            json!("model"),
            json!("model_not_found")
        )
    );
    for (param, value) in [
        ("logprobs", json!(true)),
        ("n", json!(2)),
        ("stop", json!(["x"])),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.1)),
    ] {
        let (status, error) = sim
            .post("/v1/chat/completions", chat(json!({param: value})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}");
        assert_eq!(error["error"]["param"], param);
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (status, _) = sim
        .post(
            "/v1/chat/completions",
            chat(json!({"n": 1, "logprobs": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = sim
        .post("/v1/chat/completions", chat(json!({"messages": []})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let image = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    assert_eq!(
        sim.post("/v1/chat/completions", chat(image)).await.0,
        StatusCode::BAD_REQUEST
    );

    // 600 - 512 leaves 88 tokens of prompt: 352 characters fit, 353 do not.
    let long =
        |chars: usize| chat(json!({"messages": [{"role": "user", "content": "a".repeat(chars)}]}));
    assert_eq!(
        sim.post("/v1/chat/completions", long(352)).await.0,
        StatusCode::OK
    );
    let (status, error) = sim.post("/v1/chat/completions", long(353)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["type"], "context_length_exceeded");
    assert_eq!(
        error["error"]["message"],
        "Input exceeds the model's context window. Shorten the conversation history."
    );

    let big = Bytes::from(long(1024 * 1024 + 10).to_string());
    let mut reply = sim
        .open_raw(Method::POST, "/v1/chat/completions", big, &[])
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    reply.rest().await;
    let (_, last) = sim.get("/sim/last-request").await;
    assert_eq!(last["path"], "/v1/chat/completions");
    let stats = sim.stats().await;
    assert!(stats["completed"].as_u64().unwrap() >= 4);
    assert!(
        stats.get("loads").is_none(),
        "a single model has no load counters"
    );
    for path in ["/v1/completions", "/v1/embeddings"] {
        let (status, error) = sim
            .post(path, json!({"model": "apple-foundationmodel"}))
            .await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{path}");
        assert!(error["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn apfel_limits_concurrent_requests() {
    let sim = spawn(
        &[
            "--port",
            "0",
            "--flavor",
            "apfel",
            "--max-concurrent",
            "1",
            "--concurrency-wait",
            "100ms",
            "--tokens",
            "500",
            "--token-delay",
            "10ms",
        ],
        &[],
    )
    .await;
    let body = json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]});
    // 5 s long unless dropped, the stream holds the only slot.
    let mut held = sim
        .open(
            Method::POST,
            "/v1/chat/completions",
            Some(body.clone()),
            &[],
        )
        .await;
    held.next_event().await.unwrap();
    assert_eq!(sim.get("/health").await.1["active_requests"], 1);
    let (status, error) = sim.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Server at max concurrent capacity (1)"));
    drop(held);
    sim.eventually_json("/health", "the slot back", |h| h["active_requests"] == 0)
        .await;
    let mut quick = body;
    quick["max_tokens"] = json!(1);
    let mut next = sim
        .open(Method::POST, "/v1/chat/completions", Some(quick), &[])
        .await;
    assert_eq!(next.status, StatusCode::OK);
    next.rest().await;
}

#[tokio::test]
async fn omlx_and_ollama_serve_the_responses_api() {
    let omlx = omlx_with_m(3).await;
    let ollama = ollama_with_m(3).await;
    async fn responses(sim: &Sim, stream: bool) -> Done {
        let body = json!({"model": "m", "input": "hi", "stream": stream});
        sim.call(Method::POST, "/v1/responses", Some(body), &[])
            .await
    }
    for sim in [&omlx, &ollama] {
        let plain = responses(sim, false).await;
        assert_eq!(plain.status, StatusCode::OK);
        let answer: Value = serde_json::from_str(plain.text().trim_start()).unwrap();
        assert_eq!(answer["object"], "response");
        assert_eq!(answer["model"], "m");
        assert_eq!(answer["usage"]["output_tokens"], 3);

        let streamed = responses(sim, true).await.text();
        let events: Vec<&str> = streamed
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(events.first(), Some(&"response.created"), "{streamed}");
        assert_eq!(events.last(), Some(&"response.completed"), "{streamed}");
        assert_eq!(
            events
                .iter()
                .filter(|e| **e == "response.output_text.delta")
                .count(),
            3
        );
        assert!(
            !streamed.contains("keepalive"),
            "no chat keep-alive chunk in a Responses stream: {streamed}"
        );
    }
    // oMLX sends its non-streamed JSON after a leading space, as for chat.
    assert!(responses(&omlx, false).await.text().starts_with(' '));
}

#[tokio::test]
async fn ollama_serves_anthropics_messages_api_loading_on_demand() {
    let ollama = ollama_with_m(2).await;
    let ask =
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let (status, reply) = ollama.post("/v1/messages", ask).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["content"],
        json!([{"type": "text", "text": "t0 t1 "}])
    );
    // Loaded by the request, as Ollama loads for any API.
    assert_eq!(
        ollama.get("/api/ps").await.1["models"][0]["name"],
        "m:latest"
    );
    let (status, error) = ollama
        .post(
            "/v1/messages",
            json!({"model": "nope", "max_tokens": 1, "messages": []}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["type"], "not_found_error", "{error}");
}

#[tokio::test]
async fn omlx_serves_anthropics_messages_api() {
    let omlx = omlx_with_m(2).await;
    let ask = json!({"model": "m", "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let streamed = omlx
        .call(Method::POST, "/v1/messages", Some(ask), &[])
        .await
        .text();
    let events: Vec<&str> = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{streamed}");
    assert_eq!(events.last(), Some(&"message_stop"), "{streamed}");
    assert!(
        !streamed.contains("keepalive"),
        "no chat keep-alive chunk in a Messages stream: {streamed}"
    );
}

#[tokio::test]
async fn ollamas_native_chat_calls_tools_answers_json_and_thinks() {
    let ollama = ollama_with_m(3).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let ask = json!({"model": "m", "stream": false, "tools": tools,
        "messages": [{"role": "user", "content": "weather?"}]});
    let (status, reply) = ollama.post("/api/chat", ask).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["message"]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"city": "sim"}}}])
    );
    assert_eq!(reply["eval_count"], 1);
    // The second turn, after the tool's result: words.
    let turn = json!({"model": "m", "stream": false, "tools": tools, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": reply["message"]["tool_calls"]},
        {"role": "tool", "tool_name": "get_weather", "content": "rain"}]});
    let (_, reply) = ollama.post("/api/chat", turn).await;
    assert_eq!(reply["message"]["content"], "t0 t1 t2 ");
    assert!(reply["message"].get("tool_calls").is_none());

    let ask = json!({"model": "m", "stream": false, "format": {"type": "object",
        "properties": {"age": {"type": "integer"}}}, "prompt": "how old?"});
    let (_, reply) = ollama.post("/api/generate", ask).await;
    assert_eq!(reply["response"], "{\"age\":1}");

    let ask = json!({"model": "m", "think": true,
        "messages": [{"role": "user", "content": "why?"}]});
    let mut stream = ollama.open(Method::POST, "/api/chat", Some(ask), &[]).await;
    let first = stream.next_line().await.unwrap();
    assert!(first["message"]["thinking"].is_string(), "{first}");
    assert_eq!(first["message"]["content"], "t0 ");
    let second = stream.next_line().await.unwrap();
    assert!(second["message"].get("thinking").is_none(), "{second}");
}
