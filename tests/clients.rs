//! Real clients, unmodified but for their base URL, against the router in front of
//! simulated backends. The official OpenAI Python SDK: tests/clients/openai_sdk.py.
//! The client matrix (docs/clients.md): tests/clients/matrix.py runs eight Python
//! clients, tests/clients/matrix.mjs the two Node SDKs, each through list, chat,
//! stream, a tool-call round trip, JSON mode, embeddings and an error.

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

/// Runs `program script url` and fails with everything it printed, and the
/// router's logs, unless it ends with `passed`.
async fn run_client_script(r: &Router, program: String, script: &str, passed: &str) {
    let url = r.url.clone();
    let script = script.to_owned();
    let started = tokio::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .arg(&script)
            .arg(&url)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env(
                "NODE_PATH",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv-node/node_modules"),
            )
            .output()
    })
    .await
    .unwrap()
    .expect("the client script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(passed),
        "{} failed ({})\n{stdout}\n{stderr}\nrouter logs:\n{}",
        script_name(&stdout),
        out.status,
        r.logs()
    );
    println!("{stdout}(took {:.1?})", started.elapsed());
}

/// The client the script was on when it stopped.
fn script_name(stdout: &str) -> String {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("--- "))
        .map_or_else(|| "the script".to_owned(), |c| format!("the {c} client"))
}

#[tokio::test]
async fn the_python_client_matrix_works_against_the_router() {
    let r = Router::start(&format!("progress_after: 200ms{CONFIG}"));
    let python = clients_python();
    run_client_script(
        &r,
        python,
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/clients/matrix.py"),
        "all client matrix checks passed",
    )
    .await;
}

#[tokio::test]
async fn the_node_client_matrix_works_against_the_router() {
    let r = Router::start(&format!("progress_after: 200ms{CONFIG}"));
    let node = clients_node();
    run_client_script(
        &r,
        node,
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/clients/matrix.cjs"
        ),
        "all node client checks passed",
    )
    .await;
}

/// The venv tools/test makes for the matrix; a failure saying how to get it.
fn clients_python() -> String {
    let python = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv-clients/bin/python"
    );
    assert!(
        std::path::Path::new(python).exists(),
        "the client matrix needs .venv-clients (the pinned Python clients): run tools/test"
    );
    python.to_owned()
}

/// Node, once the pinned SDKs are in .venv-node; a failure saying how to get them.
fn clients_node() -> String {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv-node/node_modules");
    assert!(
        std::path::Path::new(modules).join("openai").exists()
            && std::path::Path::new(modules).join("ollama").exists(),
        "the client matrix needs .venv-node (the pinned npm openai and ollama): run tools/test"
    );
    "node".to_owned()
}
