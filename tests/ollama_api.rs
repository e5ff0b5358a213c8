//! Ollama's native API (`/api/*`) on the router, as an Ollama client sees it:
//! translated to OpenAI for simulated backends, passed through to an Ollama one.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// One simulator the test reaches directly (for its stats and last request), and
/// one the router starts itself (a model whose memory the router manages).
fn config(sim: &Sim) -> String {
    format!(
        r#"
budget: 1GB
queue_timeout: 20s
backends:
  a: {{url: "{}"}}
  spawned: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}", --tokens, "4"]}}
models:
  alpha: {{backend: a, upstream: up-alpha, memory: 10MB, aliases: [first]}}
  emb: {{backend: a, upstream: up-emb, memory: 20MB}}
  local: {{backend: spawned, memory: 5MB}}
"#,
        sim.url
    )
}

fn sim() -> Sim {
    Sim::start(&["--model", "up-alpha", "--model", "up-emb", "--tokens", "4"])
}

/// NDJSON lines, each parsed.
fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: line {l:?} of\n{body}")))
        .collect()
}

async fn post_text(url: &str, body: &Value) -> (u16, String, String) {
    let resp = post(url, body).await;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

fn hello() -> Value {
    json!([{"role": "user", "content": "hello there"}])
}

#[tokio::test]
async fn chat_and_generate_stream_ndjson_by_default_and_answer_whole_when_asked() {
    let s = sim();
    let r = Router::start(&config(&s));

    // Chat, streamed (Ollama's default): one line per token, then the done line.
    let (status, ct, body) = post_text(
        &r.url("/api/chat"),
        &json!({"model": "first", "messages": hello(), "keep_alive": "5m"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "application/x-ndjson");
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 5, "4 tokens and the done line: {body}");
    for (i, l) in lines[..4].iter().enumerate() {
        assert_eq!(l["model"], "first", "named as the client asked");
        assert_eq!(
            l["message"],
            json!({"role": "assistant", "content": format!("t{i} ")})
        );
        assert_eq!(l["done"], false);
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let done = &lines[4];
    assert_eq!(done["done"], true);
    assert_eq!(done["done_reason"], "stop");
    assert_eq!(
        done["eval_count"], 4,
        "real counts from the backend's usage"
    );
    assert_eq!(done["prompt_eval_count"], 2);
    assert!(done["total_duration"].as_u64().unwrap() > 0);
    for k in ["load_duration", "prompt_eval_duration", "eval_duration"] {
        assert!(done[k].is_u64(), "{k} in {done}");
    }
    let seen = last_request(&s.url).await;
    assert_eq!(seen["path"], "/v1/chat/completions");
    assert_eq!(
        seen["body"],
        json!({"model": "up-alpha", "messages": hello(), "stream": true,
               "stream_options": {"include_usage": true}}),
        "translated, keep_alive stripped"
    );

    // Chat, whole, with options: num_predict becomes max_tokens, the limit "length".
    let (status, ct, body) = post_text(
        &r.url("/api/chat"),
        &json!({"model": "alpha", "messages": hello(), "stream": false,
                "options": {"num_predict": 2, "temperature": 0.5, "seed": 7}}),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["message"],
        json!({"role": "assistant", "content": "t0 t1 "})
    );
    assert_eq!(
        (v["done"].clone(), v["done_reason"].clone()),
        (json!(true), json!("length"))
    );
    assert_eq!(v["eval_count"], 2);
    assert_eq!(v["model"], "alpha");
    let sent = last_request(&s.url).await["body"].clone();
    assert_eq!(sent["max_tokens"], 2);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["seed"], 7);

    // JSON mode: asked of the backend as OpenAI's response_format, answered in JSON.
    let (status, _, body) = post_text(
        &r.url("/api/chat"),
        &json!({"model": "alpha", "messages": hello(), "stream": false, "format": "json"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["message"]["content"].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(content).is_ok_and(|c| c.is_object()),
        "{content}"
    );
    let sent = last_request(&s.url).await["body"].clone();
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));

    // Generate, streamed: `response` instead of `message`; system + prompt as messages.
    let (_, ct, body) = post_text(
        &r.url("/api/generate"),
        &json!({"model": "alpha", "prompt": "why is the sky blue", "system": "be brief"}),
    )
    .await;
    assert_eq!(ct, "application/x-ndjson");
    let lines = ndjson(&body);
    assert_eq!(lines[0]["response"], "t0 ");
    assert!(lines[0].get("message").is_none());
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(
        last_request(&s.url).await["body"]["messages"],
        json!([{"role": "system", "content": "be brief"},
               {"role": "user", "content": "why is the sky blue"}])
    );

    // Generate, whole; and raw, which is a text completion.
    let v: Value = post(
        &r.url("/api/generate"),
        &json!({"model": "alpha", "prompt": "hi", "stream": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["response"], "t0 t1 t2 t3 ");
    assert_eq!(v["done_reason"], "stop");
    let v: Value = post(
        &r.url("/api/generate"),
        &json!({"model": "alpha", "prompt": "[INST] hi [/INST]", "raw": true, "stream": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["response"], "t0 t1 t2 t3 ");
    let seen = last_request(&s.url).await;
    assert_eq!(seen["path"], "/v1/completions");
    assert_eq!(seen["body"]["prompt"], "[INST] hi [/INST]");
}

#[tokio::test]
async fn embed_and_embeddings_match_the_backend_vectors() {
    let s = sim();
    let r = Router::start(&config(&s));
    let direct: Value = post(
        &format!("{}/v1/embeddings", s.url),
        &json!({"model": "up-emb", "input": ["a b", "c"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let want: Vec<Value> = direct["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();

    let (status, ct, body) = post_text(
        &r.url("/api/embed"),
        &json!({"model": "emb", "input": ["a b", "c"], "keep_alive": 60}),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "emb");
    assert_eq!(v["embeddings"], json!(want));
    assert_eq!(v["prompt_eval_count"], 3);
    assert!(v["total_duration"].is_u64() && v["load_duration"].is_u64());
    assert_eq!(
        last_request(&s.url).await["body"],
        json!({"model": "up-emb", "input": ["a b", "c"]})
    );

    let v: Value = post(
        &r.url("/api/embeddings"),
        &json!({"model": "emb", "prompt": "a b"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v, json!({"embedding": want[0]}));
    // Empty input: the model loads, nothing is computed (as Ollama does).
    let before = sim_stats(&s.url).await["requests"].clone();
    let v: Value = post(&r.url("/api/embed"), &json!({"model": "emb", "input": []}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"model": "emb", "embeddings": []}));
    assert_eq!(sim_stats(&s.url).await["requests"], before);
}

#[tokio::test]
async fn tags_ps_show_and_version() {
    let s = sim();
    let r = Router::start(&config(&s));

    let tags = get_json(&r.url("/api/tags")).await;
    let models = tags["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["alpha", "first", "emb", "local"],
        "models and aliases"
    );
    for m in models {
        assert_eq!(m["name"], m["model"]);
        assert_eq!(m["digest"].as_str().unwrap().len(), 64);
        assert!(
            m["modified_at"].is_string() && m["details"].is_object(),
            "{m}"
        );
        for k in ["format", "family", "parameter_size", "quantization_level"] {
            assert!(m["details"][k].is_string(), "details.{k} in {m}");
        }
    }
    assert_eq!(models[0]["size"], 10_000_000, "declared memory");
    assert_eq!(
        models[0]["digest"], models[1]["digest"],
        "an alias is the same model"
    );
    let head = client().head(r.url("/api/tags")).send().await.unwrap();
    assert_eq!(head.status(), 200);

    let v = get_json(&r.url("/api/version")).await;
    assert_eq!(v, json!({"version": "0.33.0"}));

    // Nothing loaded yet; after a request, the model is listed until it expires.
    // (Models on a server the router only points at hold none of its memory.)
    assert_eq!(get_json(&r.url("/api/ps")).await, json!({"models": []}));
    for model in ["first", "local"] {
        let ask = json!({"model": model, "messages": hello(), "stream": false});
        assert_eq!(post(&r.url("/api/chat"), &ask).await.status(), 200);
    }
    let ps = get_json(&r.url("/api/ps")).await;
    let loaded = ps["models"].as_array().unwrap();
    assert_eq!(loaded.len(), 1, "{ps}");
    let m = &loaded[0];
    assert_eq!(m["name"], "local");
    assert_eq!(m["digest"], models[3]["digest"]);
    assert!(
        m["size"].as_u64().unwrap() > 0 && m["size_vram"].is_u64(),
        "{m}"
    );
    let expires = m["expires_at"].as_str().unwrap();
    let expires = humantime_like_year(expires);
    assert!(
        (2026..2100).contains(&expires),
        "expires after the idle timeout: {m}"
    );

    let show: Value = post(&r.url("/api/show"), &json!({"model": "first"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(show["capabilities"], json!(["completion"]));
    assert!(
        show["details"].is_object()
            && show["model_info"].is_object()
            && show["modified_at"].is_string()
    );
    let old_style = post(&r.url("/api/show"), &json!({"name": "alpha"})).await;
    assert_eq!(old_style.status(), 200, "older clients send `name`");
    let missing = post(&r.url("/api/show"), &json!({"model": "x"})).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"error": "model 'x' not found; GET /api/tags lists the models"})
    );
}

/// The year of an RFC 3339 time.
fn humantime_like_year(t: &str) -> i32 {
    t[..4].parse().unwrap()
}

async fn expect_ollama_error(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status);
    assert!(
        resp.headers().contains_key("x-modelyard-error"),
        "the router's own error"
    );
    let v: Value = resp.json().await.unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1, "Ollama's shape, {{\"error\": \"…\"}}: {v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error is a string: {v}"))
        .to_string()
}

#[tokio::test]
async fn errors_are_ollama_shaped_with_the_openai_paths_statuses() {
    let s = sim();
    let r = Router::start(&format!("max_body: 1KiB\n{}", config(&s)));
    let chat = r.url("/api/chat");

    let msg = expect_ollama_error(
        post(&chat, &json!({"model": "alpah", "messages": hello()})).await,
        404,
    )
    .await;
    assert_eq!(msg, "model 'alpah' not found; did you mean `alpha`?");
    let msg = expect_ollama_error(
        post(
            &chat,
            &json!({"model": "alpha", "messages": hello(), "keep_alive": "soon"}),
        )
        .await,
        400,
    )
    .await;
    assert!(msg.starts_with("`keep_alive` is \"soon\""), "{msg}");
    let raw = |body: &'static str| {
        client()
            .post(&chat)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let msg = expect_ollama_error(raw("{\"model\": ").await.unwrap(), 400).await;
    assert!(msg.contains("not valid JSON"), "{msg}");
    let msg = expect_ollama_error(raw("{\"messages\": []}").await.unwrap(), 400).await;
    assert!(msg.contains("GET /api/tags"), "{msg}");
    let msg = expect_ollama_error(
        post(
            &chat,
            &json!({"model": "alpha", "messages": [{"role": "user", "content": 5}]}),
        )
        .await,
        400,
    )
    .await;
    assert!(msg.contains("messages[0].content"), "{msg}");
    let big =
        json!({"model": "alpha", "messages": [{"role": "user", "content": "x".repeat(2048)}]});
    let msg = expect_ollama_error(post(&chat, &big).await, 413).await;
    assert!(msg.contains("1024"), "{msg}");
    let msg = expect_ollama_error(
        post(&r.url("/api/pull"), &json!({"model": "alpha"})).await,
        404,
    )
    .await;
    assert_eq!(msg, "no route for POST /api/pull");
    assert_eq!(
        sim_stats(&s.url).await["requests"],
        0,
        "no bad request reached the backend"
    );

    // Counted like the OpenAI path's requests.
    let metrics = get(&r.url("/metrics")).await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("model=\"-\"") && l.contains("status=\"404\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_backend_error_before_output_keeps_its_status() {
    let s = sim();
    let r = Router::start(&config(&s));
    // A request the router can translate but the backend refuses (the sim allows
    // at most 4096 dimensions): Ollama's error object, the backend's status and words.
    let resp = post(
        &r.url("/api/embed"),
        &json!({"model": "emb", "input": "x", "dimensions": 999999}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("dimensions"),
        "the backend's message: {v}"
    );
}

/// A router whose model runs in a sim the router starts on a known port.
fn spawned(port: u16, extra: &str) -> String {
    format!(
        r#"
idle_timeout: 10m
queue_timeout: 20s
{extra}
backends:
  sim:
    command: [$BIN, sim, --port, "{port}", --model, m, --tokens, "40", --token-delay, 50ms]
    url: http://127.0.0.1:{port}
models:
  m: {{backend: sim, memory: 1MB}}
"#
    )
}

async fn status_of(r: &Router) -> Value {
    get_json(&r.url("/admin/status")).await["models"][0].clone()
}

async fn wait_state(r: &Router, state: &str) -> Value {
    eventually(Duration::from_secs(10), || async {
        let m = status_of(r).await;
        (m["state"] == state).then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("model never became {state}"))
}

#[tokio::test]
async fn keep_alive_sets_the_idle_timeout_and_zero_unloads_after_the_request() {
    let port = free_port();
    let r = Router::start(&spawned(port, ""));
    let chat = r.url("/api/chat");
    let ask = |keep_alive: Value| {
        json!({"model": "m", "messages": hello(), "stream": false,
               "options": {"num_predict": 1}, "keep_alive": keep_alive})
    };

    assert_eq!(post(&chat, &ask(json!("10s"))).await.status(), 200);
    let m = wait_state(&r, "ready").await;
    let left = m["idle_unload_in_secs"].as_u64().unwrap();
    assert!((8..=10).contains(&left), "10s, not the config's 10m: {m}");
    let ps = get_json(&r.url("/api/ps")).await;
    assert_eq!(ps["models"][0]["name"], "m", "{ps}");

    assert_eq!(post(&chat, &ask(json!(-1))).await.status(), 200);
    assert_eq!(
        status_of(&r).await["idle_unload_in_secs"],
        Value::Null,
        "negative: forever"
    );

    // Zero: answered in full, then unloaded.
    let v: Value = post(&chat, &ask(json!(0))).await.json().await.unwrap();
    assert_eq!(v["message"]["content"], "t0 ");
    wait_state(&r, "cold").await;
    assert_eq!(get_json(&r.url("/api/ps")).await, json!({"models": []}));
}

#[tokio::test]
async fn a_load_only_request_loads_without_asking_the_backend_anything() {
    let port = free_port();
    let r = Router::start(&spawned(port, ""));
    let sim = format!("http://127.0.0.1:{port}");

    let (status, _, body) = post_text(&r.url("/api/generate"), &json!({"model": "m"})).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            v["response"].clone(),
            v["done"].clone(),
            v["done_reason"].clone()
        ),
        (json!(""), json!(true), json!("load"))
    );
    assert_eq!(status_of(&r).await["state"], "ready");
    let v: Value = post(&r.url("/api/chat"), &json!({"model": "m", "messages": []}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!(v["done_reason"], "load");
    assert_eq!(
        sim_stats(&sim).await["requests"],
        0,
        "no inference reached the backend"
    );

    // Empty and keep_alive 0: Ollama's unload.
    let v: Value = post(
        &r.url("/api/chat"),
        &json!({"model": "m", "messages": [], "keep_alive": 0}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["done_reason"], "unload");
    wait_state(&r, "cold").await;
    // Unloading a cold model does not load it first.
    let v: Value = post(
        &r.url("/api/generate"),
        &json!({"model": "m", "keep_alive": "0s"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["done_reason"], "unload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&r).await["state"], "cold");
    assert!(r.children().is_empty(), "no backend was started");
}

#[tokio::test]
async fn a_client_hanging_up_mid_stream_releases_the_lease_and_cancels_upstream() {
    let s = Sim::start(&[
        "--model",
        "up-alpha",
        "--model",
        "up-emb",
        "--tokens",
        "40",
        "--token-delay",
        "100ms",
    ]);
    let r = Router::start(&config(&s));
    let resp = post(
        &r.url("/api/chat"),
        &json!({"model": "alpha", "messages": hello()}),
    )
    .await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"done\":false"));
    assert_eq!(status_of(&r).await["in_flight"], 1);
    drop(stream);
    let gone = eventually(Duration::from_secs(5), || async {
        let st = sim_stats(&s.url).await;
        let m = status_of(&r).await;
        (st["cancelled"] == 1 && m["in_flight"] == 0).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the backend saw the client leave and the lease came back"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_line() {
    let s = Sim::start(&[
        "--model",
        "up-alpha",
        "--model",
        "up-emb",
        "--stall-after",
        "2",
        "--token-delay",
        "10ms",
    ]);
    let r = Router::start(&format!("upstream_idle_timeout: 500ms\n{}", config(&s)));
    let (status, _, body) = post_text(
        &r.url("/api/chat"),
        &json!({"model": "alpha", "messages": hello()}),
    )
    .await;
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert_eq!(lines[0]["message"]["content"], "t0 ");
    let last = lines.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("upstream_idle_timeout"),
        "{body}"
    );
}

/// A stand-in for an Ollama server: answers `/api/chat` with three NDJSON lines
/// naming its model, a load (`/api/generate`) with one line, `/api/ps` with the
/// model once loaded, and keeps each request's path and raw body.
struct FakeOllama {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

/// A request's path and raw body.
type Received = (String, Vec<u8>);

impl FakeOllama {
    fn start() -> FakeOllama {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                log.lock().unwrap().push((path.clone(), body));
                let loaded = log.lock().unwrap().iter().any(|s| s.0 == "/api/generate");
                let lines = match path.as_str() {
                    "/api/generate" => "{\"model\":\"llama3.2:3b\",\"response\":\"\",\"done\":true}\n",
                    "/api/ps" if loaded => "{\"models\":[{\"name\":\"llama3.2:3b\",\"model\":\"llama3.2:3b\",\"size\":2000000000,\"size_vram\":2000000000}]}",
                    "/api/ps" => "{\"models\":[]}",
                    _ => concat!(
                    "{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n",
                    "{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n",
                    "{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":5,\"eval_count\":2}\n",
                    ),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{lines}",
                    lines.len()
                );
            }
        });
        FakeOllama { url, seen }
    }
}

#[tokio::test]
async fn an_attached_ollama_gets_the_request_as_sent_but_for_model_and_keep_alive() {
    let fake = FakeOllama::start();
    let r = Router::start(&format!(
        r#"
backends:
  ollama: {{kind: ollama, url: "{}"}}
models:
  small: {{backend: ollama, upstream: "llama3.2:3b", memory: 2GB, aliases: [tiny]}}
"#,
        fake.url
    ));
    let sent = "{ \"model\" : \"tiny\", \"messages\": [{\"role\":\"user\",\"content\":\"say \\\"model\\\": 1.50\"}],\n  \"options\": {\"temperature\": 1.50, \"num_ctx\": 8192}, \"keep_alive\": \"5m\", \"think\": false }";
    let resp = client()
        .post(r.url("/api/chat"))
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines = ndjson(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 3);
    assert!(
        lines.iter().all(|l| l["model"] == "tiny"),
        "renamed back: {lines:?}"
    );
    assert_eq!(lines[2]["eval_count"], 2, "the rest as the backend sent it");

    let seen = fake.seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    // The adapter's own calls (the load, the status polls) come first.
    assert!(paths.contains(&"/api/generate"), "loaded first: {paths:?}");
    let chats: Vec<&Received> = seen.iter().filter(|s| s.0 == "/api/chat").collect();
    assert_eq!(chats.len(), 1, "one chat, forwarded once: {paths:?}");
    assert_eq!(
        String::from_utf8(chats[0].1.clone()).unwrap(),
        sent.replace("\"tiny\"", "\"llama3.2:3b\"")
            .replace("\"5m\"", "-1"),
        "byte for byte but for the model, and keep_alive: the router unloads, not Ollama"
    );
    // Counted, tokens too (from Ollama's own counts).
    let metrics = get(&r.url("/metrics")).await.text().await.unwrap();
    for want in [
        "modelyard_requests_total{model=\"small\",status=\"200\"} 1",
        "modelyard_tokens_total{model=\"small\",kind=\"prompt\"} 5",
        "modelyard_tokens_total{model=\"small\",kind=\"completion\"} 2",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
}

#[tokio::test]
async fn the_official_ollama_python_client_works_against_the_router() {
    let s = sim();
    let r = Router::start(&config(&s));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/ollama_client.py"
    );
    let out = std::process::Command::new(python_with("ollama", "ollama==0.6.3"))
        .arg(script)
        .args([r.url.as_str(), "local", "emb"])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the ollama client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all ok"), "{stdout}");
}

#[tokio::test]
async fn an_ollama_server_the_router_runs_streams_native_replies_through_and_never_unloads_on_its_own(
) {
    let r = Router::start(
        r#"
backends:
  ollama:
    kind: ollama
    command: [$BIN, sim, --flavor, ollama, --model, "llama3.2:3b=20MB", --tokens, "5"]
models:
  small: {backend: ollama, upstream: "llama3.2:3b", memory: 30MB}
"#,
    );
    let ask = json!({"model": "small", "messages": hello(), "keep_alive": "1s"});
    let (status, content_type, body) = post_text(&r.url("/api/chat"), &ask).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let lines = ndjson(&body);
    assert!(lines.len() >= 2, "{body}");
    assert!(lines.iter().all(|l| l["model"] == "small"), "{body}");
    assert_eq!(lines.last().unwrap()["done"], true);
    let server = format!(
        "http://{}",
        status_of(&r).await["endpoint"].as_str().unwrap()
    );
    let seen = last_request(&server).await;
    assert_eq!(seen["path"], "/api/chat");
    assert_eq!(
        (&seen["body"]["model"], &seen["body"]["keep_alive"]),
        (&Value::from("llama3.2:3b"), &Value::from(-1)),
        "a server the router runs keeps the model until the router says: {seen}"
    );
    // The client's one second went to the router, not to Ollama.
    assert_eq!(
        status_of(&r).await["idle_unload_in_secs"]
            .as_u64()
            .map(|s| s <= 1),
        Some(true)
    );
}
