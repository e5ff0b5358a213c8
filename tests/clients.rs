//! Real clients, unmodified but for their base URL, against the router in front of
//! simulated backends. The official OpenAI Python SDK: tests/clients/openai_sdk.py.

mod common;

use std::process::Command;

use common::*;

const CONFIG: &str = r#"
queue_timeout: 1s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
  stuck: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --hang-start], start_timeout: 30s}
  broken: {command: [/bin/sh, -c, "exit 3", "${PORT}"]}
models:
  qwen3-chat: {backend: sim, upstream: Qwen3-30B, memory: 10MB, aliases: [default, chat]}
  embed-small: {backend: sim, memory: 5MB, aliases: [embed]}
  slowpoke: {backend: stuck, memory: 5MB}
  dead: {backend: broken, memory: 5MB}
"#;

#[tokio::test]
async fn the_openai_python_sdk_works_against_the_router() {
    let r = Router::start(CONFIG);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/clients/openai_sdk.py"
    );
    let url = r.url.clone();
    let py = python_with("openai", "openai==3.57.0");
    let out = tokio::task::spawn_blocking(move || Command::new(&py).arg(script).arg(&url).output())
        .await
        .unwrap()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all openai sdk checks passed"),
        "the OpenAI SDK script failed ({}); run tools/test if `openai` is missing\n{stdout}\n{stderr}\nrouter logs:\n{}",
        out.status,
        r.logs()
    );
    println!("{stdout}");
}
