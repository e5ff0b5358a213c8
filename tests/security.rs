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
async fn nothing_in_a_request_chooses_where_the_router_connects() {
    let sim = Sim::start(&["--model", "up"]);
    let decoy = Sim::start(&["--model", "up"]);
    let r = Router::start(&config(&sim, ""));
    let elsewhere = format!("{}/v1", decoy.url);
    // LiteLLM's CVE-2024-6587: a base URL in the body. Here also in the query and
    // in the headers proxies read.
    let mut body = chat("m");
    for field in ["api_base", "base_url", "url", "endpoint", "host"] {
        body[field] = elsewhere.clone().into();
    }
    let resp = client()
        .post(r.url(&format!(
            "/v1/chat/completions?api_base={elsewhere}&base_url={elsewhere}"
        )))
        .header("x-forwarded-host", decoy.url.trim_start_matches("http://"))
        .header(
            "forwarded",
            format!("host={}", decoy.url.trim_start_matches("http://")),
        )
        .header("x-original-url", elsewhere.as_str())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        sim_stats(&sim.url).await["requests"],
        1,
        "routes.yaml's backend"
    );
    assert_eq!(
        sim_stats(&decoy.url).await["requests"],
        0,
        "never the decoy"
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
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200
    );
    let child = r.children()[0];
    let vars = environ(child).expect("the backend's environment");
    let has = |prefix: &str| vars.iter().any(|v| v.starts_with(prefix));
    assert!(has("GIVEN=by routes.yaml"), "its own env: {vars:?}");
    assert!(
        has("PATH=") && has("OLLAMA_MODELS=/models/ollama"),
        "{vars:?}"
    );
    assert!(
        !has("MODELYARD_ADMIN_KEY") && !has("AWS_SECRET"),
        "{vars:?}"
    );
    assert!(
        !vars.iter().any(|v| v.contains("secret-value")),
        "no secret reaches a backend"
    );
}

#[tokio::test]
async fn client_keys_from_a_file_or_the_environment_guard_the_model_apis_and_are_never_logged() {
    let sim = Sim::start(&["--model", "up"]);
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "# team keys\nsk-file-key-0123456789\n\n").unwrap();
    let r = Router::start_with_env(
        &config(&sim, &format!("api_keys_file: {}", keys.path().display())),
        &[("MODELYARD_API_KEYS", "[sk-env-key-9876543210]")],
    );
    let url = r.url("/v1/chat/completions");
    let send = |auth: Option<(&'static str, String)>| {
        let mut req = client().post(&url).json(&chat("m"));
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        req.send()
    };
    let msg = expect_error(send(None).await.unwrap(), 401, "invalid_api_key").await;
    assert!(msg.contains("needs an API key"), "{msg}");
    let wrong = send(Some(("authorization", "Bearer sk-wrong-key-000".into())))
        .await
        .unwrap();
    let msg = expect_error(wrong, 401, "invalid_api_key").await;
    assert!(!msg.contains("sk-"), "no key echoed: {msg}");
    for ok in [
        ("authorization", "Bearer sk-file-key-0123456789".to_string()),
        ("authorization", "Bearer sk-env-key-9876543210".to_string()),
        ("x-api-key", "sk-file-key-0123456789".to_string()),
    ] {
        assert_eq!(send(Some(ok)).await.unwrap().status(), 200);
    }
    assert_eq!(
        sim_stats(&sim.url).await["requests"],
        3,
        "refused requests never reached it"
    );
    let seen = last_request(&sim.url).await;
    assert!(
        !seen.to_string().contains("sk-file-key"),
        "the client's key stays here: {seen}"
    );
    let models = client().get(r.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 401, "listing models needs a key too");
    let health = client().get(r.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health does not");
    let logs = r.logs();
    for key in ["sk-file-key", "sk-env-key", "sk-wrong-key"] {
        assert!(!logs.contains(key), "{key} in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn an_unreadable_keys_file_is_refused_by_name() {
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg({
            let dir = tempfile::tempdir().unwrap().keep();
            let p = dir.join("routes.yaml");
            std::fs::write(&p, "api_keys_file: /nonexistent/keys\n").unwrap();
            p
        })
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("api_keys_file") && err.contains("/nonexistent/keys"),
        "{err}"
    );
}
