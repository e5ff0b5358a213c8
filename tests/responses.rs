//! OpenAI's Responses API (`POST /v1/responses`, stateless) through the router,
//! answered by simulated backends.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A backend the router starts, and one the test starts itself to read its
/// counters and pace its tokens.
fn config(paced: &Sim) -> String {
    format!(
        r#"
backends:
  sim: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}", --tokens, "5"]}}
  paced: {{url: "{paced}"}}
models:
  qwen3-chat: {{backend: sim, upstream: Qwen3-30B, memory: 10MB, aliases: [chat]}}
  slow: {{backend: paced, upstream: up-slow, memory: 10MB}}
"#,
        paced = paced.url
    )
}

fn paced_sim() -> Sim {
    Sim::start(&[
        "--model",
        "up-slow",
        "--tokens",
        "6",
        "--token-delay",
        "100ms",
    ])
}

/// `(event name, data)` of each server-sent event, checking that every data
/// names its own event.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split_terminator("\n\n")
        .map(|block| {
            let (name, data) = block
                .strip_prefix("event: ")
                .and_then(|b| b.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not a named SSE event: {block:?}"));
            let data: Value = serde_json::from_str(data).expect("event data is JSON");
            assert_eq!(data["type"], name, "{block}");
            (name.to_owned(), data)
        })
        .collect()
}

/// Every `model` value anywhere in `v`.
fn models_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("model", Value::String(name)) => out.push(name.clone()),
                    _ => models_in(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| models_in(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn non_streamed_answer_names_the_model_as_asked() {
    let paced = paced_sim();
    let r = Router::start(&config(&paced));
    let url = r.url("/v1/responses");

    let resp = post(
        &url,
        &json!({"model": "chat", "instructions": "be brief", "input": "hello there"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(
        v["model"], "chat",
        "the alias asked for, not Qwen3-30B: {v}"
    );
    assert_eq!(v["status"], "completed");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    let message = &v["output"][0];
    assert_eq!(
        (&message["type"], &message["role"], &message["status"]),
        (&json!("message"), &json!("assistant"), &json!("completed"))
    );
    assert_eq!(
        message["content"],
        json!([{"type": "output_text", "text": "t0 t1 t2 t3 t4 ", "annotations": []}])
    );
    assert_eq!(v["usage"]["input_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 9);

    // Message items, with content as text or as parts, and a token limit.
    let v: Value = post(
        &url,
        &json!({"model": "qwen3-chat", "max_output_tokens": 2, "input": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "input_text", "text": "two three"}]},
        ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["model"], "qwen3-chat");
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["output"][0]["content"][0]["text"], "t0 t1 ");
    assert_eq!(v["usage"]["input_tokens"], 3);

    // The backend saw its own name on the Responses route.
    let v: Value = post(&url, &json!({"model": "slow", "input": "hi"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["model"], "slow");
    let seen = last_request(&paced.url).await;
    assert_eq!(seen["path"], "/v1/responses");
    assert_eq!(seen["body"]["model"], "up-slow");
    assert_eq!(sim_stats(&paced.url).await["completed"], 1);
}

#[tokio::test]
async fn streamed_events_arrive_in_order_paced_and_renamed() {
    let paced = paced_sim();
    let r = Router::start(&config(&paced));

    let started = tokio::time::Instant::now();
    let resp = post(
        &r.url("/v1/responses"),
        &json!({"model": "slow", "stream": true, "input": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = Vec::new();
    let mut first_delta_at = None;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
        if first_delta_at.is_none() && String::from_utf8_lossy(&body).contains("t0 ") {
            first_delta_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let body = String::from_utf8(body).unwrap();
    assert!(!body.contains("[DONE]"), "Responses streams end without it");
    let events = events(&body);

    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = vec!["response.output_text.delta"; 6];
    let expected: Vec<&str> = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    .into_iter()
    .chain(deltas)
    .chain([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ])
    .collect();
    assert_eq!(names, expected, "{body}");
    for (n, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], n, "{data}");
    }

    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "t0 t1 t2 t3 t4 t5 ");
    assert_eq!(events[10].1["text"], text);
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["id"], created["id"]);
    assert_eq!(completed["output"][0]["content"][0]["text"], text);
    assert_eq!(completed["usage"]["output_tokens"], 6);

    let mut models = Vec::new();
    for (_, data) in &events {
        models_in(data, &mut models);
    }
    assert!(
        models.len() >= 3,
        "created, in_progress, completed: {models:?}"
    );
    assert!(models.iter().all(|m| m == "slow"), "{models:?}");

    // Tokens 100 ms apart, relayed as they came.
    let first_delta_at = first_delta_at.unwrap();
    assert!(total >= Duration::from_millis(550), "{total:?}");
    assert!(
        first_delta_at * 2 < total,
        "first delta at {first_delta_at:?} of {total:?}: the stream was held back"
    );
    let stats = sim_stats(&paced.url).await;
    assert_eq!(
        (&stats["completed"], &stats["cancelled"]),
        (&json!(1), &json!(0))
    );
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let paced = paced_sim();
    let r = Router::start(&config(&paced));
    let url = r.url("/v1/responses");

    for (body, param) in [
        (json!({"model": "chat", "input": 42}), "input"),
        (json!({"model": "chat"}), "input"),
        (
            json!({"model": "chat", "input": [{"role": "user", "content": 7}]}),
            "input",
        ),
        (
            json!({"model": "chat", "input": "hi", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
    ] {
        let resp = post(&url, &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }

    // A name the router does not know never reaches a backend; one the
    // backend does not serve gets the same 404 as its chat route.
    let msg = expect_error(
        post(&url, &json!({"model": "chta", "input": "hi"})).await,
        404,
        "model_not_found",
    )
    .await;
    assert!(msg.contains("chat"), "{msg}");
    let direct = format!("{}/v1/responses", paced.url);
    expect_error(
        post(&direct, &json!({"model": "nope", "input": "hi"})).await,
        404,
        "model_not_found",
    )
    .await;
}
