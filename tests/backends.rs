//! Each backend adapter end to end: the real router driving `modelyard-sim` in the
//! flavor of the server the adapter is written for, over real sockets.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The names a router's /v1/models lists.
async fn listed(router: &Router) -> Vec<String> {
    let v = get_json(&router.url("/v1/models")).await;
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_remote_backends_models_are_listed_routed_and_fail_fast_when_it_is_gone() {
    // "Another machine": a server with two models routes.yaml never names.
    let mut other = Sim::start(&["--model", "big-1", "--model", "big-2"]);
    let router = Router::start(&format!(
        r#"
backends:
  studio: {{kind: remote, url: "{}", health: /health}}
  local: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}"]}}
models:
  here: {{backend: local, memory: 10MB}}
  pinned-name: {{backend: studio, upstream: big-1}}
"#,
        other.url
    ));
    let names = eventually(Duration::from_secs(10), || async {
        let names = listed(&router).await;
        names.contains(&"big-2".to_string()).then_some(names)
    })
    .await
    .expect("the remote's models are listed within a poll or two");
    assert!(names.contains(&"here".to_string()) && names.contains(&"pinned-name".to_string()));
    let m = get_json(&router.url("/v1/models/big-2")).await;
    assert_eq!(
        (m["remote"].as_bool(), m["owned_by"].as_str()),
        (Some(true), Some("modelyard/studio"))
    );

    let resp = post(&router.url("/v1/chat/completions"), &chat("big-2")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "big-2");
    assert_eq!(last_request(&other.url).await["body"]["model"], "big-2");

    // Gone: within a poll, requests are refused at once and say why.
    let _ = other.child.kill();
    let _ = other.child.wait();
    let msg = eventually(Duration::from_secs(10), || async {
        let resp = post(&router.url("/v1/chat/completions"), &chat("pinned-name")).await;
        let unreachable = resp.headers().get("x-modelyard-error").is_some() && resp.status() == 502;
        if !unreachable {
            return None;
        }
        // At first the connection is refused; once a poll failed, the router knows.
        let msg = expect_error(resp, 502, "backend_unreachable").await;
        msg.contains("backend `studio`").then_some(msg)
    })
    .await
    .expect("a remote that is gone is reported");
    assert!(
        msg.contains("studio") && msg.contains("unreachable"),
        "{msg}"
    );
    let status = get_json(&router.url("/admin/status")).await;
    let here = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "here")
        .unwrap()
        .clone();
    assert_eq!(
        here["state"], "cold",
        "the local model is untouched: {here}"
    );
    let remote = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "pinned-name")
        .unwrap();
    assert!(
        remote["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("/health")),
        "status says why: {remote}"
    );
}

/// One model's entry in /admin/status.
async fn model_status(router: &Router, name: &str) -> Value {
    let status = get_json(&router.url("/admin/status")).await;
    status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {status}"))
        .clone()
}

/// The models a multi-model sim holds loaded, sorted.
async fn sim_loaded(base: &str) -> Vec<String> {
    let mut names: Vec<String> = sim_stats(base).await["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The server a model is on, from its status.
async fn endpoint(router: &Router, model: &str) -> String {
    let m = model_status(router, model).await;
    let addr = m["endpoint"].as_str().unwrap_or_else(|| panic!("{m}"));
    format!("http://{addr}")
}

#[tokio::test]
async fn ollama_models_load_one_by_one_stay_while_the_router_wants_them_and_restart_after_a_crash()
{
    // Four models on one Ollama. Left to itself, Ollama keeps at most three loaded
    // and drops idle ones after five minutes; the adapter's environment hands
    // both decisions to the router.
    let router = Router::start(
        r#"
budget: 400MB
backends:
  ollama:
    kind: ollama
    command: [$BIN, sim, --flavor, ollama, --model, "m1:latest=40MB", --model, "m2=40MB", --model, "m3=40MB", --model, "m4=40MB", --load-time, 100ms]
models:
  one: {backend: ollama, upstream: m1, memory: 50MB}
  two: {backend: ollama, upstream: m2, memory: 50MB}
  three: {backend: ollama, upstream: m3, memory: 50MB}
  four: {backend: ollama, upstream: m4, memory: 50MB}
"#,
    );
    for name in ["one", "two", "three", "four"] {
        let resp = post(&router.url("/v1/chat/completions"), &chat(name)).await;
        let status = resp.status();
        assert_eq!(
            status,
            200,
            "{name}: {}\n{}",
            resp.text().await.unwrap(),
            router.logs()
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["model"], name);
    }
    let server = endpoint(&router, "one").await;
    assert_eq!(
        sim_loaded(&server).await,
        ["m1:latest", "m2:latest", "m3:latest", "m4:latest"],
        "all four stay: the server's own limit of three is lifted"
    );
    let stats = sim_stats(&server).await;
    for m in ["m1:latest", "m2:latest", "m3:latest", "m4:latest"] {
        assert_eq!(stats["loads"][m], 1, "{m} loaded once: {stats}");
    }
    assert_eq!(
        last_request(&server).await["body"]["model"],
        "m4",
        "the upstream name is what the server sees"
    );

    // Memory as the server reports it (/api/ps), not the declared 50 MB.
    let one = eventually(Duration::from_secs(10), || async {
        let m = model_status(&router, "one").await;
        m["measured"].as_u64().map(|_| m)
    })
    .await
    .expect("a loaded model's size is read from /api/ps");
    assert_eq!(one["state"], "ready");
    let measured = one["measured"].as_u64().unwrap();
    assert!(
        (40_000_000..=45_000_000).contains(&measured),
        "the size Ollama reports for m1 (40MB): {one}"
    );

    // Unloaded through the API, confirmed by /api/ps; the server stays for the rest.
    let resp = client()
        .post(router.url("/admin/models/two/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let left = eventually(Duration::from_secs(10), || async {
        let left = sim_loaded(&server).await;
        (left.len() == 3).then_some(left)
    })
    .await
    .expect("the unload reaches the server");
    assert_eq!(left, ["m1:latest", "m3:latest", "m4:latest"]);
    eventually(Duration::from_secs(10), || async {
        (model_status(&router, "two").await["state"] == "cold").then_some(())
    })
    .await
    .expect("the router's ledger agrees");

    // The server dies: its models go cold, and the next request starts it again.
    let pid = model_status(&router, "one").await["pid"].as_u64().unwrap() as u32;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), || async {
        let m = model_status(&router, "three").await;
        (m["state"] != "ready").then_some(())
    })
    .await
    .expect("the crash is noticed");
    let resp = post(&router.url("/v1/chat/completions"), &chat("three")).await;
    assert_eq!(resp.status(), 200, "restarted on demand");
    let server = endpoint(&router, "three").await;
    assert_eq!(
        sim_loaded(&server).await,
        ["m3:latest"],
        "a fresh server, one model"
    );
    assert_ne!(
        model_status(&router, "three").await["pid"].as_u64(),
        Some(pid as u64)
    );
}

#[tokio::test]
async fn omlx_swaps_models_through_its_api_within_the_budget_and_its_own_guard_is_set_from_it() {
    // Room for two of three. oMLX would evict on its own under its memory guard;
    // the adapter sets the guard from the budget so the router's decisions come first.
    let router = Router::start(
        r#"
budget: 120MB
backends:
  omlx:
    kind: omlx
    command: [$BIN, sim, --flavor, omlx, --model, "qwen-a=40MB", --model, "qwen-b=40MB", --model, "qwen-c=40MB", --load-time, 100ms]
models:
  a: {backend: omlx, upstream: qwen-a, memory: 50MB}
  b: {backend: omlx, upstream: qwen-b, memory: 50MB}
  c: {backend: omlx, upstream: qwen-c, memory: 50MB}
"#,
    );
    for name in ["a", "b"] {
        let resp = post(&router.url("/v1/chat/completions"), &chat(name)).await;
        assert_eq!(resp.status(), 200, "{name}");
    }
    let server = endpoint(&router, "a").await;
    assert_eq!(sim_loaded(&server).await, ["qwen-a", "qwen-b"]);
    let health = get_json(&format!("{server}/health")).await;
    assert_eq!(
        health["engine_pool"]["final_ceiling"],
        1024 * 1024 * 1024,
        "--memory-guard-gb 1 from the 120 MB budget, rounded up: {health}"
    );
    let a = eventually(Duration::from_secs(10), || async {
        let m = model_status(&router, "a").await;
        m["measured"].as_u64().map(|_| m)
    })
    .await
    .expect("sizes read from /v1/models/status");
    assert_eq!(a["measured"], 40_000_000, "oMLX's actual_size: {a}");

    // The third does not fit: the least recently used goes first, by the API.
    let resp = post(&router.url("/v1/chat/completions"), &chat("c")).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "c");
    assert_eq!(sim_loaded(&server).await, ["qwen-b", "qwen-c"]);
    let stats = sim_stats(&server).await;
    assert_eq!(
        (&stats["unloads"]["qwen-a"], &stats["loads"]["qwen-c"]),
        (&Value::from(1), &Value::from(1)),
        "{stats}"
    );
    assert_eq!(model_status(&router, "a").await["state"], "cold");
    assert_eq!(
        endpoint(&router, "c").await,
        server,
        "one server for all three"
    );

    // A crash takes every model with it; the next request brings the server back.
    let pid = model_status(&router, "c").await["pid"].as_u64().unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), || async {
        (model_status(&router, "b").await["state"] != "ready").then_some(())
    })
    .await
    .expect("the crash is noticed");
    let resp = post(&router.url("/v1/chat/completions"), &chat("b")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sim_loaded(&endpoint(&router, "b").await).await, ["qwen-b"]);
}

/// A chat request whose one message is `chars` characters of text.
fn long_chat(model: &str, chars: usize) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "abcd".repeat(chars / 4)}],
    })
}

#[tokio::test]
async fn apfel_serves_what_fits_and_its_fallback_the_rest_with_the_window_it_reports() {
    // apfel listens on 11434 unless told otherwise: the adapter gives it a port.
    let router = Router::start(
        r#"
backends:
  apfel:
    kind: apfel
    command: [$BIN, sim, --flavor, apfel, --context-window, "1000"]
  big: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  apple: {backend: apfel, memory: 10MB, fallback: bigger}
  apple-alone: {backend: apfel, memory: 10MB}
  bigger: {backend: big, upstream: big-model, memory: 10MB}
"#,
    );
    let resp = post(&router.url("/v1/chat/completions"), &chat("apple")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-modelyard-fallback").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "apple");
    let apfel = endpoint(&router, "apple").await;
    assert_ne!(apfel, "http://127.0.0.1:11434");
    assert_eq!(
        last_request(&apfel).await["body"]["model"],
        "apple-foundationmodel",
        "apfel's own model name upstream"
    );
    eventually(Duration::from_secs(10), || async {
        (model_status(&router, "apple").await["context_window"] == 1000).then_some(())
    })
    .await
    .expect("the window apfel reports on /health is read");

    // ~500 tokens of prompt and apfel's 512 kept for the answer: past 1000, though
    // well within the 4096 assumed before apfel said otherwise.
    let resp = post(
        &router.url("/v1/chat/completions"),
        &long_chat("apple", 2000),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let why = resp.headers()["x-modelyard-fallback"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        why.starts_with("apple -> bigger") && why.contains("context"),
        "{why}"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "bigger", "answered in the name of who answered");
    let big = endpoint(&router, "bigger").await;
    assert_eq!(last_request(&big).await["body"]["model"], "big-model");

    // A parameter apfel refuses, and an endpoint it lacks, go the same way.
    let mut stop = chat("apple");
    stop["stop"] = serde_json::json!(["\n"]);
    let resp = post(&router.url("/v1/chat/completions"), &stop).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["x-modelyard-fallback"]
        .to_str()
        .unwrap()
        .contains("stop"));
    let embed = serde_json::json!({"model": "apple", "input": "hi"});
    let resp = post(&router.url("/v1/embeddings"), &embed).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-modelyard-fallback").is_some());

    // The same through Ollama's API.
    let mut ollama = long_chat("apple", 2000);
    ollama["stream"] = false.into();
    let resp = post(&router.url("/api/chat"), &ollama).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-modelyard-fallback").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "bigger");

    // Without a fallback: a 400 that says why, and apfel never sees it.
    let served = sim_stats(&apfel).await["requests"].clone();
    let resp = post(
        &router.url("/v1/chat/completions"),
        &long_chat("apple-alone", 2000),
    )
    .await;
    let msg = expect_error(resp, 400, "context_length_exceeded").await;
    assert!(msg.contains("1000"), "{msg}");
    assert_eq!(sim_stats(&apfel).await["requests"], served);
}

#[tokio::test]
async fn apfel_is_measured_as_its_process_unloaded_by_stopping_it_and_restarted_after_a_crash() {
    let router = Router::start(
        r#"
backends:
  apfel: {kind: apfel, command: [$BIN, sim, --flavor, apfel, --memory, 30MB]}
models:
  apple: {backend: apfel, memory: 60MB}
"#,
    );
    assert_eq!(
        post(&router.url("/v1/chat/completions"), &chat("apple"))
            .await
            .status(),
        200
    );
    // Sampled every 2 s; the first sample may predate the allocation.
    let measured = eventually(Duration::from_secs(10), || async {
        let m = model_status(&router, "apple").await["measured"].as_u64();
        m.filter(|&b| b >= 30_000_000)
    })
    .await
    .expect("the 30 MB the process holds is measured");
    assert!(
        measured < 80_000_000,
        "its process, nothing more: {measured}"
    );
    let pid = model_status(&router, "apple").await["pid"]
        .as_u64()
        .unwrap() as u32;

    // apfel has no unload endpoint: unloading stops the process.
    let resp = client()
        .post(router.url("/admin/models/apple/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(Duration::from_secs(10), || async {
        (model_status(&router, "apple").await["state"] == "cold").then_some(())
    })
    .await
    .expect("cold once its process is gone");
    assert!(!alive(pid));

    // Started again on demand, and again after it is killed.
    assert_eq!(
        post(&router.url("/v1/chat/completions"), &chat("apple"))
            .await
            .status(),
        200
    );
    let pid = model_status(&router, "apple").await["pid"]
        .as_u64()
        .unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), || async {
        (model_status(&router, "apple").await["state"] != "ready").then_some(())
    })
    .await
    .expect("the crash is noticed");
    assert_eq!(
        post(&router.url("/v1/chat/completions"), &chat("apple"))
            .await
            .status(),
        200
    );
}
