//! Each backend adapter end to end: the real router driving `modelyard-sim` in the
//! flavor of the server the adapter is written for, over real sockets.

mod common;

use std::time::Duration;

use common::*;
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
