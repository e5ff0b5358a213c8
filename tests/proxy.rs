//! The proxy as a client sees it: routing, streaming, cancellation, errors, headers.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Two simulators the test reaches directly, plus one backend the router starts.
fn routing_config(a: &Sim, b: &Sim) -> String {
    format!(
        r#"
budget: 1GB
queue_timeout: 20s
backends:
  a: {{url: "{a}"}}
  b: {{url: "{b}", api_key: backend-secret}}
  spawned: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}"]}}
models:
  alpha: {{backend: a, upstream: up-alpha, memory: 10MB, aliases: [first]}}
  beta:  {{backend: a, upstream: up-beta, memory: 10MB}}
  gamma: {{backend: b, upstream: up-gamma, memory: 10MB, aliases: [third]}}
  delta: {{backend: spawned, memory: 10MB, aliases: [fourth]}}
"#,
        a = a.url,
        b = b.url
    )
}

#[tokio::test]
async fn routes_by_model_and_alias_to_the_right_backend() {
    let a = Sim::start(&["--model", "up-alpha", "--model", "up-beta"]);
    let b = Sim::start(&["--model", "up-gamma"]);
    let r = Router::start(&routing_config(&a, &b));
    let url = r.url("/v1/chat/completions");

    for (asked, sim, upstream) in [
        ("alpha", &a, "up-alpha"),
        ("first", &a, "up-alpha"),
        ("beta", &a, "up-beta"),
        ("gamma", &b, "up-gamma"),
        ("third", &b, "up-gamma"),
    ] {
        let resp = post(&url, &chat(asked)).await;
        assert_eq!(resp.status(), 200, "{asked}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v["model"], asked,
            "the reply names the model as the client asked"
        );
        let seen = last_request(&sim.url).await;
        assert_eq!(
            seen["body"]["model"], upstream,
            "{asked} reached the backend as {upstream}"
        );
        assert_eq!(seen["path"], "/v1/chat/completions");
    }
    assert_eq!(sim_stats(&a.url).await["completed"], 3);
    assert_eq!(sim_stats(&b.url).await["completed"], 2);

    // A backend the router starts itself, by alias; embeddings route the same way.
    let v: Value = post(&url, &chat("fourth")).await.json().await.unwrap();
    assert_eq!(v["model"], "fourth");
    let e: Value = post(
        &r.url("/v1/embeddings"),
        &json!({"model": "first", "input": ["a", "b"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(e["model"], "first");
    assert_eq!(e["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn lists_models_and_aliases_in_openai_shape() {
    let a = Sim::start(&["--model", "up-alpha", "--model", "up-beta"]);
    let b = Sim::start(&["--model", "up-gamma"]);
    let r = Router::start(&routing_config(&a, &b));
    let list = get_json(&r.url("/v1/models")).await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "alpha", "beta", "gamma", "delta", "first", "third", "fourth",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    for m in list["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
    }
    let alias = get_json(&r.url("/v1/models/first")).await;
    assert_eq!(alias["id"], "first");
    assert_eq!(alias["alias_for"], "alpha");
    let model = get_json(&r.url("/v1/models/alpha")).await;
    assert_eq!(model["aliases"], json!(["first"]));
    let missing = get(&r.url("/v1/models/alpah")).await;
    let msg = expect_error(missing, 404, "model_not_found").await;
    assert!(msg.contains("alpha"), "suggests the close match: {msg}");
}

/// Replaces what legitimately differs between two runs of the same request.
fn normalise(s: &str) -> String {
    let mut out = String::new();
    for line in s.split_inclusive('\n') {
        let mut l = line.to_string();
        for key in ["\"created\":", "\"id\":"] {
            if let Some(i) = l.find(key) {
                let rest = &l[i + key.len()..];
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                l = format!("{}{}X{}", &l[..i], key, &rest[end..]);
            }
        }
        out.push_str(&l);
    }
    out
}

#[tokio::test]
async fn stream_is_not_buffered_and_is_byte_identical_but_for_the_name() {
    let a = Sim::start(&[
        "--model",
        "up-alpha",
        "--token-delay",
        "120ms",
        "--tokens",
        "8",
    ]);
    let b = Sim::start(&["--model", "up-gamma"]);
    let r = Router::start(&routing_config(&a, &b));

    let started = tokio::time::Instant::now();
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("alpha")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut reads = Vec::new();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        reads.push((started.elapsed(), chunk.len()));
        body.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    let events = String::from_utf8(body.clone())
        .unwrap()
        .matches("data: ")
        .count();
    // role chunk, 8 tokens, finish, usage, [DONE]
    assert_eq!(events, 12, "{}", String::from_utf8_lossy(&body));
    let first_token_at = reads
        .iter()
        .scan(0usize, |seen, (t, n)| {
            *seen += n;
            Some((*t, *seen))
        })
        .find(|(_, seen)| String::from_utf8_lossy(&body[..*seen]).contains("t0 "))
        .map(|(t, _)| t)
        .unwrap();
    assert!(
        first_token_at * 3 < total,
        "first token at {first_token_at:?} of {total:?}: the stream was held back"
    );
    assert!(
        reads.len() >= 8,
        "tokens 120 ms apart arrived in only {} reads: chunks were coalesced",
        reads.len()
    );

    // The same request straight to the backend: same bytes but for the name.
    let direct = post(
        &format!("{}/v1/chat/completions", a.url),
        &chat_stream("up-alpha"),
    )
    .await
    .text()
    .await
    .unwrap();
    let proxied = String::from_utf8(body).unwrap();
    assert_eq!(
        normalise(&proxied),
        normalise(&direct.replace("\"model\":\"up-alpha\"", "\"model\":\"alpha\""))
    );

    // Non-streamed too.
    let direct = post(&format!("{}/v1/chat/completions", a.url), &chat("up-alpha"))
        .await
        .text()
        .await
        .unwrap();
    let proxied = post(&r.url("/v1/chat/completions"), &chat("first"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        normalise(&proxied),
        normalise(&direct.replace("\"model\":\"up-alpha\"", "\"model\":\"first\""))
    );
}

#[tokio::test]
async fn speaks_h2c_as_well_as_http1() {
    let a = Sim::start(&["--model", "up-alpha", "--model", "up-beta"]);
    let b = Sim::start(&["--model", "up-gamma"]);
    let r = Router::start(&routing_config(&a, &b));
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .post(r.url("/v1/chat/completions"))
        .json(&chat_stream("alpha"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
}

async fn wait_cancelled(sim: &Sim, n: u64) -> Value {
    eventually(Duration::from_secs(3), || async {
        let s = sim_stats(&sim.url).await;
        (s["cancelled"] == n && s["in_flight"] == 0).then_some(s)
    })
    .await
    .expect("the backend saw the client leave")
}

/// alpha on a backend that takes 4 s to generate a reply (40 tokens 100 ms
/// apart), far past any abandonment in these tests; gamma on a quick one.
fn slow_alpha() -> (Sim, Sim, Router) {
    let a = Sim::start(&[
        "--model",
        "up-alpha",
        "--token-delay",
        "100ms",
        "--tokens",
        "40",
    ]);
    let b = Sim::start(&["--model", "up-gamma"]);
    let r = Router::start(&routing_config(&a, &b));
    (a, b, r)
}

#[tokio::test]
async fn cancellation_reaches_the_backend_mid_stream_and_while_computing() {
    let (a, _b, r) = slow_alpha();

    // Mid-stream: read the first chunk, then hang up.
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("alpha")).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    wait_cancelled(&a, 1).await;

    // Non-streamed, while the backend computes (4 s of tokens): give up after 300 ms.
    let quick = impatient(Duration::from_millis(300));
    let err = quick
        .post(r.url("/v1/chat/completions"))
        .json(&chat("alpha"))
        .send()
        .await;
    assert!(err.is_err());
    wait_cancelled(&a, 2).await;

    // Nothing leaked: the next request is served whole.
    let ok = post(
        &r.url("/v1/chat/completions"),
        &json!({"model": "gamma", "messages": []}),
    )
    .await;
    assert_eq!(ok.status(), 200);
}

/// A non-streamed reply has no headers until it is generated whole, so the
/// only sign the client left is its connection closing (HTTP/1.1) or its stream
/// being reset (h2) while the router waits on the backend. Either way the
/// router must drop its upstream request, which the backend counts.
#[tokio::test]
async fn a_non_streamed_request_abandoned_mid_generation_is_cancelled_upstream() {
    use tokio::io::AsyncWriteExt;
    let (a, _b, r) = slow_alpha();
    let generating = |n: u64| {
        let url = a.url.clone();
        async move {
            eventually(Duration::from_secs(5), || async {
                (sim_stats(&url).await["in_flight"] == n).then_some(())
            })
            .await
            .expect("the request reached the backend")
        }
    };

    // HTTP/1.1 from a bare socket: the whole request, then a close.
    let body = serde_json::to_vec(&chat("alpha")).unwrap();
    let addr = r.url("").trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&body).await.unwrap();
    generating(1).await;
    drop(sock);
    let s = wait_cancelled(&a, 1).await;
    assert_eq!(s["completed"], 0);

    // h2: the client gives up on the one stream; its connection may live on.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let pending = h2
        .post(r.url("/v1/chat/completions"))
        .json(&chat("alpha"))
        .send();
    tokio::select! {
        _ = pending => panic!("a 4 s generation answered while it was still polled"),
        () = generating(1) => {}
    }
    let s = wait_cancelled(&a, 2).await;
    assert_eq!(s["completed"], 0);
}

#[tokio::test]
async fn cancellation_while_waiting_for_the_model_sends_nothing_upstream() {
    let port = free_port();
    let r = Router::start(&format!(
        r#"
queue_timeout: 20s
backends:
  slow:
    command: [$BIN, sim, --port, "{port}", --model, m, --load-time, 1500ms]
    url: http://127.0.0.1:{port}
models:
  m: {{backend: slow, memory: 1MB}}
"#
    ));
    let quick = impatient(Duration::from_millis(300));
    assert!(quick
        .post(r.url("/v1/chat/completions"))
        .json(&chat("m"))
        .send()
        .await
        .is_err());
    let sim = format!("http://127.0.0.1:{port}");
    // Once the backend is ready, the abandoned request must not be sent to it.
    let ready = eventually(Duration::from_secs(10), || async {
        let r = client().get(format!("{sim}/health")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "backend never became ready");
    let ok = post(&r.url("/v1/chat/completions"), &chat("m")).await;
    assert_eq!(ok.status(), 200);
    let stats = sim_stats(&sim).await;
    assert_eq!(
        stats["requests"], 1,
        "only the second request reached the backend: {stats}"
    );
}

#[tokio::test]
async fn a_swap_whose_request_was_abandoned_loads_nothing_and_keeps_the_model() {
    let r = Router::start(
        r#"
budget: 300MB
queue_timeout: 20s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --tokens, "15", --token-delay, 100ms]}
models:
  a: {backend: sim, memory: 200MB}
  b: {backend: sim, memory: 200MB}
"#,
    );
    let state = |name: &'static str| {
        let url = r.url("/admin/status");
        async move {
            let s = get_json(&url).await;
            s["models"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
                .unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // a is busy streaming; b needs its memory, so b's request waits for the swap.
    let busy = post(&r.url("/v1/chat/completions"), &chat_stream("a")).await;
    assert_eq!(busy.status(), 200);
    let quick = impatient(Duration::from_millis(300));
    let gave_up = quick
        .post(r.url("/v1/chat/completions"))
        .json(&chat("b"))
        .send()
        .await;
    assert!(gave_up.is_err(), "b's client gave up while queued");
    // a finishes its stream; the swap it was draining for is given up.
    let _ = busy.text().await.unwrap();
    let settled = eventually(Duration::from_secs(10), || async {
        let a = state("a").await;
        (a != "draining").then_some(a)
    })
    .await;
    assert_eq!(
        settled.as_deref(),
        Some("ready"),
        "a is kept for its next request"
    );
    assert_eq!(state("b").await, "cold", "b was loaded for nobody");
    assert!(r
        .logs()
        .contains("kept: the requests it was making room for were abandoned"));
}

#[tokio::test]
async fn client_errors_are_openai_shaped() {
    let a = Sim::start(&["--model", "up-alpha", "--model", "up-beta"]);
    let r = Router::start(&format!(
        r#"
max_body: 1KiB
backends:
  a: {{url: "{}"}}
models:
  alpha: {{backend: a, upstream: up-alpha, memory: 1MB}}
  qwen3-32b: {{backend: a, upstream: up-beta, memory: 1MB, aliases: [deep]}}
"#,
        a.url
    ));
    let url = r.url("/v1/chat/completions");
    let raw = |body: &'static str| {
        client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let msg = expect_error(raw("{\"model\": ").await.unwrap(), 400, "invalid_json").await;
    assert!(msg.contains("not valid JSON"), "{msg}");
    expect_error(raw("[\"model\"]").await.unwrap(), 400, "invalid_json").await;
    let msg = expect_error(
        raw("{\"messages\": []}").await.unwrap(),
        400,
        "missing_model",
    )
    .await;
    assert!(msg.contains("model"), "{msg}");
    expect_error(raw("{\"model\": 42}").await.unwrap(), 400, "invalid_model").await;

    let msg = expect_error(post(&url, &chat("qwen3-23b")).await, 404, "model_not_found").await;
    assert!(
        msg.contains("qwen3-23b") && msg.contains("qwen3-32b"),
        "names the close match: {msg}"
    );
    for empty in ["", "  "] {
        let msg = expect_error(post(&url, &chat(empty)).await, 400, "invalid_field").await;
        assert!(msg.contains("`model` is empty"), "{msg}");
    }

    let big =
        json!({"model": "alpha", "messages": [{"role": "user", "content": "x".repeat(2048)}]});
    let msg = expect_error(post(&url, &big).await, 413, "request_too_large").await;
    assert!(msg.contains("1024"), "{msg}");
    // Without a Content-Length the limit still holds, counted as the body streams in.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512])));
    let resp = client()
        .post(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "request_too_large").await;

    let resp = client().get(r.url("/v2/nothing")).send().await.unwrap();
    expect_error(resp, 404, "unknown_route").await;
    assert_eq!(
        sim_stats(&a.url).await["requests"],
        0,
        "no bad request reached the backend"
    );
}

#[tokio::test]
async fn backend_failures_are_502_503_504() {
    let closed = free_port();
    let slow = Sim::start(&["--model", "s", "--token-delay", "200ms", "--tokens", "10"]);
    let r = Router::start(&format!(
        r#"
queue_timeout: 700ms
upstream_timeout: 500ms
backends:
  gone: {{url: "http://127.0.0.1:{closed}"}}
  slow: {{url: "{slow}"}}
  broken: {{command: [$BIN, sim, --port, "${{PORT}}", --no-such-flag]}}
  loading: {{command: [$BIN, sim, --port, "${{PORT}}", --load-time, 5s], start_timeout: 30s}}
  stuck: {{command: [$BIN, sim, --port, "${{PORT}}", --hang-start], start_timeout: 300ms}}
models:
  gone: {{backend: gone, memory: 1MB}}
  s: {{backend: slow, memory: 1MB}}
  broken: {{backend: broken, memory: 1MB}}
  loading: {{backend: loading, memory: 1MB, upstream: sim}}
  stuck: {{backend: stuck, memory: 1MB, upstream: sim}}
"#,
        slow = slow.url
    ));
    let url = r.url("/v1/chat/completions");

    let msg = expect_error(post(&url, &chat("gone")).await, 502, "backend_unreachable").await;
    assert!(msg.contains(&closed.to_string()), "{msg}");

    let msg = expect_error(post(&url, &chat("s")).await, 504, "backend_timeout").await;
    assert!(msg.contains("upstream_timeout"), "{msg}");

    let msg = expect_error(
        post(&url, &chat("broken")).await,
        502,
        "backend_start_failed",
    )
    .await;
    assert!(
        msg.contains("exited") && msg.contains("no-such-flag"),
        "says why, with its output: {msg}"
    );

    let msg = expect_error(
        post(&url, &chat("stuck")).await,
        502,
        "backend_start_failed",
    )
    .await;
    assert!(msg.contains("start_timeout"), "{msg}");

    let resp = post(&url, &chat("loading")).await;
    assert!(
        resp.headers().contains_key("retry-after"),
        "503 carries Retry-After"
    );
    let msg = expect_error(resp, 503, "model_not_ready").await;
    assert!(msg.contains("loading"), "names the model: {msg}");
}

#[tokio::test]
async fn request_ids_headers_and_keys() {
    let a = Sim::start(&["--model", "up-alpha", "--model", "up-beta"]);
    let b = Sim::start(&["--model", "up-gamma"]);
    let r = Router::start(&routing_config(&a, &b));
    let url = r.url("/v1/chat/completions");

    let resp = post(&url, &chat("alpha")).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.starts_with("req-"), "generated: {id}");
    let resp2 = post(&url, &chat("alpha")).await;
    assert_ne!(
        resp2.headers()["x-request-id"].to_str().unwrap(),
        id,
        "ids are unique"
    );

    let resp = client()
        .post(&url)
        .header("x-request-id", "trace-abc-123")
        .header("authorization", "Bearer client-secret-key")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("x-custom", "kept")
        .json(&chat("alpha"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let seen = last_request(&a.url).await["headers"].clone();
    assert_eq!(seen["x-request-id"], "trace-abc-123", "forwarded upstream");
    assert_eq!(seen["x-custom"], "kept");
    assert!(
        seen.get("authorization").is_none(),
        "the client's key stays with the router: {seen}"
    );
    assert!(
        seen.get("x-hop").is_none() && seen.get("connection").is_none(),
        "hop-by-hop dropped: {seen}"
    );

    // A backend's own key is attached upstream and never comes back.
    let resp = client()
        .post(&url)
        .header("authorization", "Bearer client-secret-key")
        .json(&chat("gamma"))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(!text.contains("backend-secret"));
    let seen = last_request(&b.url).await["headers"].clone();
    assert_eq!(seen["authorization"], "Bearer backend-secret");
    assert!(
        !r.logs().contains("client-secret-key"),
        "keys never reach the logs"
    );
    assert!(
        !r.logs().contains("backend-secret"),
        "keys never reach the logs"
    );
}

fn slow_loading(extra: &str, port: u16) -> String {
    format!(
        r#"
{extra}
queue_timeout: 30s
backends:
  slow:
    command: [$BIN, sim, --port, "{port}", --model, m, --load-time, 2500ms]
    url: http://127.0.0.1:{port}
  stuck: {{command: [$BIN, sim, --port, "${{PORT}}", --hang-start], start_timeout: 1s}}
models:
  m: {{backend: slow, memory: 1MB}}
  stuck: {{backend: stuck, memory: 1MB, upstream: sim}}
"#
    )
}

/// Reads a stream, noting what had arrived before the first token.
async fn read_stream(resp: reqwest::Response) -> (String, String) {
    let mut before_token = String::new();
    let mut all = String::new();
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        all.push_str(&String::from_utf8_lossy(&c.unwrap()));
        if !all.contains("t0 ") {
            before_token.clone_from(&all);
        }
    }
    (before_token, all)
}

#[tokio::test]
async fn a_streamed_request_hears_progress_while_its_model_loads() {
    let port = free_port();
    let r = Router::start(&slow_loading("", port));
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
    // Headers come at once, not after the load: the backend is still loading.
    let health = client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(
        health.map_or(true, |h| h.status() != 200),
        "the response began only once the model had loaded"
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (_, all) = read_stream(resp).await;
    let head = &all[..all.find("data: ").unwrap()];
    assert!(
        head.starts_with(": modelyard: loading m ("),
        "progress first: {all}"
    );
    assert!(
        head.split("\n\n")
            .all(|e| e.is_empty() || e.starts_with(':')),
        "comments only, invisible to clients: {head}"
    );
    assert!(
        all.ends_with("data: [DONE]\n\n") && all.contains("\"model\":\"m\""),
        "{all}"
    );

    // Once it has loaded before, the progress says how long loads take.
    let unload = client()
        .post(r.url("/admin/models/m/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(unload.status(), 200);
    let cold = eventually(Duration::from_secs(10), || async {
        let s = get_json(&r.url("/admin/status")).await;
        (s["models"][0]["state"] == "cold").then_some(())
    })
    .await;
    assert!(cold.is_some());
    let (_, again) =
        read_stream(post(&r.url("/v1/chat/completions"), &chat_stream("m")).await).await;
    // Progress begins after progress_after (2s), counting from the request.
    let first = again.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(": modelyard: loading m (") && first.contains("s, usually ~"),
        "{again}"
    );
    // And where the request stands in its model's line: alone, first.
    assert!(first.ends_with("s; 1st in line)"), "{again}");

    // A model already loaded streams straight through, without comments.
    let (_, again) =
        read_stream(post(&r.url("/v1/chat/completions"), &chat_stream("m")).await).await;
    assert!(again.starts_with("data: "), "{again}");
    // Non-streamed requests wait silently.
    let resp = post(&r.url("/v1/chat/completions"), &chat("m")).await;
    assert_eq!(resp.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn reasoning_progress_and_errors_during_progress() {
    let port = free_port();
    let r = Router::start(&slow_loading("loading_progress: reasoning", port));
    let (before, all) =
        read_stream(post(&r.url("/v1/chat/completions"), &chat_stream("m")).await).await;
    let first = before
        .lines()
        .find(|l| l.starts_with("data: "))
        .expect("a reasoning delta");
    let v: Value = serde_json::from_str(first.trim_start_matches("data: ")).unwrap();
    assert_eq!(
        v["choices"][0]["delta"]["reasoning_content"],
        "loading m…\n"
    );
    assert_eq!(v["model"], "m");
    assert!(all.ends_with("data: [DONE]\n\n"));

    // A backend that never becomes ready: the stream says so and ends.
    let (_, all) =
        read_stream(post(&r.url("/v1/chat/completions"), &chat_stream("stuck")).await).await;
    let v = last_event(&all).unwrap_or_else(|| panic!("ends with an error event: {all}"));
    assert_eq!(v["error"]["code"], "backend_start_failed", "{v}");
}

#[tokio::test]
async fn leaving_during_progress_sends_nothing_upstream() {
    let port = free_port();
    let r = Router::start(&slow_loading("", port));
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
    let mut s = resp.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("loading m"));
    drop(s);
    let sim = format!("http://127.0.0.1:{port}");
    let ready = eventually(Duration::from_secs(10), || async {
        let r = client().get(format!("{sim}/health")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some());
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200
    );
    assert_eq!(
        sim_stats(&sim).await["requests"],
        1,
        "the abandoned stream never reached the backend"
    );
}

#[tokio::test]
async fn a_backend_hung_mid_stream_gets_a_clear_error_while_others_are_served() {
    let hung = Sim::start(&[
        "--model",
        "h",
        "--stall-after",
        "2",
        "--token-delay",
        "10ms",
    ]);
    let fine = Sim::start(&["--model", "f"]);
    let r = Router::start(&format!(
        "upstream_idle_timeout: 700ms\nbackends:\n  hung: {{url: \"{}\"}}\n  fine: {{url: \"{}\"}}\nmodels:\n  h: {{backend: hung, memory: 1MB}}\n  f: {{backend: fine, memory: 1MB}}\n",
        hung.url, fine.url
    ));
    let url = r.url("/v1/chat/completions");
    let stalled = {
        let url = url.clone();
        tokio::spawn(async move { read_stream(post(&url, &chat_stream("h")).await).await.1 })
    };
    // Meanwhile the router serves others.
    for _ in 0..5 {
        assert_eq!(post(&url, &chat("f")).await.status(), 200);
    }
    let body = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("the client is not left hanging")
        .unwrap();
    assert!(
        body.contains("t1 "),
        "what came before the stall was delivered: {body}"
    );
    let v = last_event(&body).unwrap_or_else(|| panic!("ends with an error event: {body}"));
    assert_eq!(v["error"]["code"], "backend_stream_broken");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream_idle_timeout"),
        "{v}"
    );
    let gave_up = eventually(Duration::from_secs(3), || async {
        (sim_stats(&hung.url).await["cancelled"] == 1).then_some(())
    })
    .await;
    assert!(
        gave_up.is_some(),
        "the hung backend's connection was closed"
    );
}
