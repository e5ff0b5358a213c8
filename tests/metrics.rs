//! /metrics scraped after real traffic and parsed by Prometheus' own text parser
//! (the Python client's), so a malformed line fails the test.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Every sample, as the reference parser reads them.
fn parse(text: &str) -> Vec<Value> {
    let mut child = Command::new(python_with(
        "prometheus_client",
        "prometheus-client==0.26.0",
    ))
    .args(["-c", PARSE])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_tokens_loads_evictions_crashes_and_the_ledger() {
    let r = Router::start(
        r#"
budget: 300MB
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --tokens, "7"]}
models:
  a: {backend: sim, memory: 200MB, group: g}
  b: {backend: sim, memory: 200MB, group: g, aliases: [bee]}
"#,
    );
    let url = r.url("/v1/chat/completions");
    for _ in 0..3 {
        assert_eq!(post(&url, &chat("a")).await.status(), 200);
    }
    let streamed = post(&url, &chat_stream("bee")).await.text().await.unwrap();
    assert!(streamed.contains("[DONE]"));
    assert_eq!(post(&url, &chat("not-a-model")).await.status(), 404);
    // A crash of b's backend.
    let pid = get_json(&r.url("/admin/status")).await["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "b")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let samples = eventually(Duration::from_secs(5), || async {
        let resp = client().get(r.url("/metrics")).send().await.unwrap();
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let samples = parse(&resp.text().await.unwrap());
        // Counters follow events and the ledger is read at scrape time: wait for both.
        let settled = value(
            &samples,
            "modelyard_backend_crashes_total",
            &[("model", "b")],
        ) == 1.0
            && value(&samples, "modelyard_ledger_used_bytes", &[]) == 0.0;
        settled.then_some(samples)
    })
    .await
    .expect("the crash is counted and its memory released");

    assert_eq!(
        value(
            &samples,
            "modelyard_requests_total",
            &[("model", "a"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_requests_total",
            &[("model", "b"), ("status", "200")]
        ),
        1.0,
        "aliases count under the model"
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_requests_total",
            &[("model", "-"), ("status", "404")]
        ),
        1.0,
        "unknown names do not become labels"
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_request_duration_seconds_count",
            &[("model", "a")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_time_to_first_byte_seconds_count",
            &[("model", "b")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_tokens_total",
            &[("model", "a"), ("kind", "completion")]
        ),
        21.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_tokens_total",
            &[("model", "b"), ("kind", "completion")]
        ),
        7.0,
        "from the stream's usage chunk"
    );
    assert_eq!(
        value(&samples, "modelyard_loads_total", &[("model", "a")]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_load_duration_seconds_count",
            &[("model", "b")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_evictions_total",
            &[("model", "a"), ("reason", "make_room")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "modelyard_queue_wait_seconds_count",
            &[("model", "a")]
        ),
        3.0
    );
    assert_eq!(value(&samples, "modelyard_budget_bytes", &[]), 300e6);
    assert_eq!(
        value(
            &samples,
            "modelyard_model_declared_bytes",
            &[("model", "a")]
        ),
        200e6
    );
    assert_eq!(
        value(&samples, "modelyard_ledger_used_bytes", &[]),
        0.0,
        "b crashed, a was evicted"
    );
    // Typed as the format says, not read as untyped samples.
    for s in &samples {
        let name = s["name"].as_str().unwrap();
        let want = if name.ends_with("_total") {
            "counter"
        } else if name.ends_with("_bucket") || name.ends_with("_sum") || name.ends_with("_count") {
            "histogram"
        } else {
            "gauge"
        };
        assert_eq!(s["type"], want, "{s}");
    }
}

/// `modelyard_evictions_total` for `model` and `reason`, read from the text
/// exposition (0 when the series does not exist yet).
async fn evictions(r: &Router, model: &str, reason: &str) -> u64 {
    let text = get(&r.url("/metrics")).await.text().await.unwrap();
    let series = format!("modelyard_evictions_total{{model=\"{model}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn counted(r: &Router, model: &str, reason: &str) {
    let seen = eventually(Duration::from_secs(10), || async {
        (evictions(r, model, reason).await == 1).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{model} unloaded for {reason} is not counted:\n{}",
        get(&r.url("/metrics")).await.text().await.unwrap()
    );
}

#[tokio::test]
async fn each_eviction_is_counted_under_its_real_reason() {
    let sim = |name: &str| {
        format!("  {name}: {{command: [$BIN, sim, --port, \"${{PORT}}\", --model, {name}]}}\n")
    };
    let models = "models:\n  idler: {backend: idler, memory: 1MB, idle_timeout: 1s}\n  kept: {backend: kept, memory: 1MB}\n  asked: {backend: asked, memory: 1MB}\n  changed: {backend: changed, memory: 1MB}\n  big-a: {backend: big-a, memory: 100MB, group: g}\n  big-b: {backend: big-b, memory: 100MB, group: g}\n";
    let mut backends = String::from("backends:\n");
    for name in ["idler", "kept", "asked", "changed", "big-a", "big-b"] {
        backends += &sim(name);
    }
    let config = yaml(&format!("{backends}{models}"));
    let r = Router::start(&config);
    let chat_to = |m: &str| post_owned(r.url("/v1/chat/completions"), chat(m));

    // idle: its idle_timeout runs out.
    assert_eq!(chat_to("idler").await.status(), 200);
    counted(&r, "idler", "idle").await;

    // keep_alive: an Ollama request's keep_alive of 0 unloads it after the answer.
    let resp = post(
        &r.url("/api/generate"),
        &serde_json::json!({"model": "kept", "prompt": "hi", "stream": false, "keep_alive": 0}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    counted(&r, "kept", "keep_alive").await;

    // manual: the admin API.
    assert_eq!(chat_to("asked").await.status(), 200);
    let resp = client()
        .post(r.url("/admin/models/asked/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    counted(&r, "asked", "manual").await;

    // make_room: one of a group makes way for the other.
    assert_eq!(chat_to("big-a").await.status(), 200);
    assert_eq!(chat_to("big-b").await.status(), 200);
    counted(&r, "big-a", "make_room").await;

    // reload: its definition changed.
    assert_eq!(chat_to("changed").await.status(), 200);
    let path = r.dir.path().join("routes.yaml");
    let changed = config.replace(
        "changed: {backend: changed, memory: 1MB}",
        "changed: {backend: changed, memory: 2MB}",
    );
    std::fs::write(&path, changed).unwrap();
    let resp = client().post(r.url("/admin/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    counted(&r, "changed", "reload").await;
    // (memory_pressure: the supervisor's reserve test checks the event's reason.)
}

async fn post_owned(url: String, body: Value) -> reqwest::Response {
    post(&url, &body).await
}

/// The one reason the test above leaves out: another program takes the
/// machine's memory, the budget follows it down, and an idle model goes.
#[tokio::test]
async fn an_eviction_for_memory_pressure_is_counted_as_such() {
    let meminfo = tempfile::tempdir().unwrap();
    let meminfo = meminfo.path().join("meminfo");
    let available = |bytes: u64| {
        let tmp = meminfo.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!(
                "MemTotal: {} kB\nMemAvailable: {} kB\n",
                64 << 20,
                bytes / 1024
            ),
        )
        .unwrap();
        std::fs::rename(tmp, &meminfo).unwrap();
    };
    available(8 << 30);
    let r = Router::start_with_env(
        "budget: 400MB\nreserve: 100MB\nbackends:\n  sim: {command: [$BIN, sim, --port, \"${PORT}\", --model, \"${MODEL}\"]}\nmodels:\n  idle: {backend: sim, memory: 50MB}\n",
        &[("MODELYARD_MEMINFO", meminfo.to_str().unwrap())],
    );
    let resp = post(&r.url("/v1/chat/completions"), &chat("idle")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(evictions(&r, "idle", "memory_pressure").await, 0);
    // Only ~10 MB free: the budget shrinks below what `idle` holds.
    available(10 << 20);
    counted(&r, "idle", "memory_pressure").await;
    assert_eq!(
        evictions(&r, "idle", "manual").await,
        0,
        "not counted twice"
    );
}
