//! What a hostile web page or a stray network peer can and cannot do.

mod common;

use common::*;
use serde_json::Value;

fn config(sim: &Sim, extra: &str) -> String {
    format!("{extra}\nbackends:\n  a: {{url: \"{}\"}}\nmodels:\n  m: {{backend: a, upstream: up, memory: 1MB}}\n", sim.url)
}

#[tokio::test]
async fn a_rebinding_host_is_refused_before_anything_reaches_a_backend() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start(&config(&sim, "allowed_hosts: [studio.lan]"));
    let url = r.url("/v1/chat/completions");
    let resp = client()
        .post(&url)
        .header("host", "evil.example:11434")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    let msg = expect_error(resp, 403, "host_not_allowed").await;
    assert!(
        msg.contains("evil.example") && msg.contains("allowed_hosts"),
        "{msg}"
    );
    let resp = client()
        .get(r.url("/admin/status"))
        .header("host", "rebind.attacker.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "the admin API too");
    assert_eq!(sim_stats(&sim.url).await["requests"], 0);
    for ok in ["localhost:11434", "studio.lan:11434", "192.168.7.7:11434"] {
        let resp = client()
            .post(&url)
            .header("host", ok)
            .json(&chat("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{ok}");
    }
    assert!(
        r.logs().contains("refused: Host `evil.example:11434`"),
        "logged once with the request id"
    );
}

#[tokio::test]
async fn a_foreign_origin_is_refused_and_an_allowed_one_gets_cors() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start(&config(
        &sim,
        "allowed_origins: [\"http://localhost:3000\"]",
    ));
    let url = r.url("/v1/chat/completions");
    let resp = client()
        .post(&url)
        .header("origin", "https://evil.example")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    let msg = expect_error(resp, 403, "origin_not_allowed").await;
    assert!(msg.contains("allowed_origins"), "{msg}");
    assert_eq!(sim_stats(&sim.url).await["requests"], 0);

    // Preflight and the request itself for the allowed origin.
    let pre = client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(pre.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(
        pre.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );
    let resp = client()
        .post(&url)
        .header("origin", "http://localhost:3000")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(resp.json::<Value>().await.unwrap()["model"], "m");

    // The router's own page calling it from the same origin needs no allowance.
    let own = r.url.clone();
    let resp = client()
        .get(r.url("/admin/status"))
        .header("origin", own)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "no CORS for itself"
    );
}

#[tokio::test]
async fn listening_beyond_loopback_must_be_meant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, "listen: 0.0.0.0:11434\nbackends:\n  a: {url: \"http://127.0.0.1:9\"}\nmodels:\n  m: {backend: a, memory: 1MB}\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("MODELYARD_LISTEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(":1: listen:") && err.contains("expose: true"),
        "{err}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("expose: true\n{text}")).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("MODELYARD_LISTEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn backends_get_a_minimal_environment_without_the_routers_secrets() {
    let r = Router::start_with_env(
        r#"
backends:
  sim:
    command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]
    env: {GIVEN: "by routes.yaml"}
models:
  m: {backend: sim, memory: 1MB}
"#,
        &[
            ("MODELYARD_ADMIN_KEY", "admin-secret-value"),
            ("AWS_SECRET_ACCESS_KEY", "cloud-secret-value"),
            ("OLLAMA_MODELS", "/models/ollama"),
        ],
    );
    assert_eq!(post(&r.url("/v1/chat/completions"), &chat("m")).await.status(), 200);
    let child = r.children()[0];
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let has = |prefix: &str| vars.iter().any(|v| v.starts_with(prefix));
    assert!(has("GIVEN=by routes.yaml"), "its own env: {vars:?}");
    assert!(has("PATH=") && has("OLLAMA_MODELS=/models/ollama"), "{vars:?}");
    assert!(!has("MODELYARD_ADMIN_KEY") && !has("AWS_SECRET"), "{vars:?}");
    assert!(
        !String::from_utf8_lossy(&environ).contains("secret-value"),
        "no secret reaches a backend"
    );
}
