//! Priority lanes over real sockets, with `modelyard sim` backends: a background
//! request never evicts the model a person is using, says so when it gives up,
//! runs once the person is done, and a bad priority header is refused in each
//! API's own shape, naming the header.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Two models that cannot coexist; a person's use keeps one for 2 s.
const TWO: &str = r#"
interactive_grace: 2s
background_queue_timeout: 1s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 100ms]}
models:
  chat: {backend: sim, memory: 1MB, group: large}
  index: {backend: sim, memory: 1MB, group: large}
"#;

async fn background(r: &Router, model: &str) -> reqwest::Response {
    client()
        .post(r.url("/v1/chat/completions"))
        .header("x-modelyard-priority", "background")
        .json(&chat(model))
        .send()
        .await
        .unwrap()
}

async fn state(r: &Router, model: &str) -> (String, u64) {
    let status = get_json(&r.url("/admin/status")).await;
    let m = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model)
        .cloned()
        .unwrap_or(Value::Null);
    (
        m["state"].as_str().unwrap_or("?").to_string(),
        m["queued_background"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn background_work_yields_to_the_person_then_runs_once_they_are_done() {
    let r = Router::start(TWO);
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("chat"))
            .await
            .status(),
        200
    );
    // The indexer asks for the other model of the group while chat is fresh.
    let asked = tokio::spawn({
        let url = r.url("/v1/chat/completions");
        async move {
            client()
                .post(url)
                .header("x-modelyard-priority", "background")
                .json(&chat("index"))
                .send()
                .await
                .unwrap()
        }
    });
    let waiting = eventually(Duration::from_secs(2), || async {
        (state(&r, "index").await.1 == 1).then_some(())
    })
    .await;
    assert!(
        waiting.is_some(),
        "/admin/status shows it queued as background"
    );
    let msg = expect_error(asked.await.unwrap(), 503, "yielded_to_interactive").await;
    assert!(msg.contains("background_queue_timeout"), "{msg}");
    assert_eq!(state(&r, "chat").await.0, "ready", "chat was never evicted");
    // The person's grace (2 s since their last request) runs out; then it runs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resp = background(&r, "index").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(state(&r, "chat").await.0, "cold");
}

#[tokio::test]
async fn a_bad_priority_is_refused_in_each_api_s_shape_naming_the_header() {
    let r = Router::start(TWO);
    let resp = client()
        .post(r.url("/v1/chat/completions"))
        .header("x-modelyard-priority", "urgent")
        .json(&chat("chat"))
        .send()
        .await
        .unwrap();
    let msg = expect_error(resp, 400, "invalid_priority").await;
    assert!(
        msg.contains("x-modelyard-priority") && msg.contains("urgent"),
        "{msg}"
    );
    let resp = client()
        .post(r.url("/api/chat"))
        .header("x-modelyard-priority", "urgent")
        .json(&serde_json::json!({"model": "chat", "messages": [], "stream": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("x-modelyard-priority"),
        "Ollama's shape: {v}"
    );
    // Nothing was started for a refused request.
    assert_eq!(state(&r, "chat").await.0, "cold");
}
