//! Hostile input and hostile backends: every limit of routes.yaml refused with its
//! status in OpenAI's shape, slow clients cut off, a cap on connections, and
//! backends that misbehave answered with a clear error while others keep serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn one_model(sim: &Sim, extra: &str) -> String {
    format!(
        "{extra}\nbackends:\n  a: {{url: \"{}\"}}\nmodels:\n  m: {{backend: a, upstream: up, memory: 1MB}}\n",
        sim.url
    )
}

fn addr(r: &Router) -> String {
    r.url.trim_start_matches("http://").to_string()
}

/// Sends `bytes` on a fresh connection and reads until the router closes it,
/// within a bound far above any configured timeout.
fn raw(r: &Router, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(r)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the router answers and closes within the bound");
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP/1.1 response.
fn body_of(resp: &str) -> Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

/// A raw reply with `status` and an OpenAI-shaped error `code` whose message
/// names `setting`.
fn assert_refused(resp: &str, status: u16, code: &str, setting: &str) {
    assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
    let v = body_of(resp);
    assert_eq!(v["error"]["code"], code);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(setting), "{v}");
}

#[tokio::test]
async fn each_request_limit_is_refused_with_its_status_in_openai_shape() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start(&one_model(
        &sim,
        "max_headers: 20\nmax_header_size: 2KiB\nmax_uri_length: 256\nmax_body: 1KiB\nmax_body_by_path: {/v1/embeddings: 64KiB}\nmax_json_depth: 16",
    ));
    let chat_url = r.url("/v1/chat/completions");

    let mut req = client().post(&chat_url).json(&chat("m"));
    for i in 0..25 {
        req = req.header(format!("x-extra-{i}"), "1");
    }
    let msg = expect_error(req.send().await.unwrap(), 431, "too_many_headers").await;
    assert!(msg.contains("max_headers"), "{msg}");

    let resp = client()
        .post(&chat_url)
        .header("x-big", "b".repeat(3000))
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    let msg = expect_error(resp, 431, "headers_too_large").await;
    assert!(msg.contains("max_header_size"), "{msg}");

    let long = r.url(&format!("/v1/models?q={}", "x".repeat(300)));
    let resp = client().get(&long).send().await.unwrap();
    let msg = expect_error(resp, 414, "uri_too_long").await;
    assert!(msg.contains("max_uri_length"), "{msg}");

    let big_chat =
        json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let msg = expect_error(post(&chat_url, &big_chat).await, 413, "request_too_large").await;
    assert!(msg.contains("max_body"), "{msg}");
    let big_embed = json!({"model": "m", "input": "x".repeat(2000)});
    let resp = post(&r.url("/v1/embeddings"), &big_embed).await;
    assert_eq!(resp.status(), 200, "embeddings have a larger limit");

    let deep = format!(
        "{{\"model\":\"m\",\"messages\":[],\"x\":{}1{}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let resp = client()
        .post(&chat_url)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let msg = expect_error(resp, 400, "json_too_deep").await;
    assert!(msg.contains("max_json_depth"), "{msg}");

    // Ollama's API hears the same refusals in its own shape.
    let resp = client()
        .post(r.url("/api/chat"))
        .body(format!(
            "{{\"model\":\"m\",\"x\":{}{}}}",
            "[".repeat(40),
            "]".repeat(40)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("max_json_depth"),
        "{v}"
    );
    let resp = get(&r.url(&format!("/api/tags?q={}", "x".repeat(300)))).await;
    assert_eq!(resp.status(), 414);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("max_uri_length"),
        "{v}"
    );

    assert_eq!(
        sim_stats(&sim.url).await["requests"],
        1,
        "only the embeddings reached the backend"
    );
    let logs = r.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no log line with {id}:\n{logs}"));
    assert!(
        line.contains("refused") && line.contains("max_json_depth"),
        "{line}"
    );
}

#[tokio::test]
async fn a_client_slow_to_send_headers_is_cut_off_with_408() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start(&one_model(&sim, "header_timeout: 300ms"));
    let resp = raw(
        &r,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: appl",
    );
    assert_refused(&resp, 408, "request_timeout", "header_timeout");
    // One that sends nothing, or stops inside what could be HTTP/2's preface.
    assert_eq!(
        raw(&r, b""),
        "",
        "a silent connection is closed, unanswered"
    );
    assert!(raw(&r, b"PRI * HT").starts_with("HTTP/1.1 408"));
    assert!(r.logs().contains("header_timeout"), "logged");
    assert_eq!(sim_stats(&sim.url).await["requests"], 0);
}

#[tokio::test]
async fn a_client_slow_to_send_its_body_gets_408() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start(&one_model(&sim, "body_timeout: 300ms"));
    let resp = raw(
        &r,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    );
    assert_refused(&resp, 408, "request_timeout", "body_timeout");
    assert_eq!(sim_stats(&sim.url).await["requests"], 0);
}

#[tokio::test]
async fn past_max_connections_a_new_connection_hears_503_and_is_closed() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start(&one_model(&sim, "max_connections: 2\nheader_timeout: 30s"));
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr(&r)).unwrap())
        .collect();
    let resp = raw(&r, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1"),
        "{resp}"
    );
    assert_eq!(body_of(&resp)["error"]["code"], "too_many_connections");
    drop(held);
    let served = eventually(Duration::from_secs(10), || async {
        let resp = client().get(r.url("/healthz")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(served.is_some(), "room again once the others closed");
    assert!(r.logs().contains("max_connections"), "logged");
}

/// The trigger exists only in debug builds (MODELYARD_DEBUG_PANIC_PATH).
#[cfg(debug_assertions)]
#[tokio::test]
async fn a_panic_in_a_handler_is_a_500_and_the_router_keeps_serving() {
    let sim = Sim::start(&["--model", "up"]);
    let r = Router::start_with_env(
        &one_model(&sim, ""),
        &[("MODELYARD_DEBUG_PANIC_PATH", "/v1/boom")],
    );
    let c = client();
    let resp = c.get(r.url("/v1/boom")).send().await.unwrap();
    let msg = expect_error(resp, 500, "internal_error").await;
    assert!(msg.contains("bug"), "{msg}");
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the same client is served after it");
    assert!(r.logs().contains("panicked"), "{}", r.logs());
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    rss_kib(pid)
}

#[tokio::test]
async fn misbehaving_backends_get_clear_errors_while_others_are_served() {
    let good = Sim::start(&["--model", "up"]);
    let garbage = Sim::start(&["--model", "up", "--fail", "garbage"]);
    let endless = Sim::start(&["--model", "up", "--fail", "endless"]);
    let huge = Sim::start(&["--model", "up", "--fail", "huge-header"]);
    let mut yaml = String::from("max_response: 1MiB\nbackends:\n");
    for (name, sim) in [
        ("good", &good),
        ("garbage", &garbage),
        ("endless", &endless),
        ("huge", &huge),
    ] {
        yaml += &format!("  {name}: {{url: \"{}\"}}\n", sim.url);
    }
    yaml += "models:\n";
    for name in ["good", "garbage", "endless", "huge"] {
        yaml += &format!("  {name}: {{backend: {name}, upstream: up, memory: 1MB}}\n");
    }
    let r = Router::start(&yaml);
    let url = r.url("/v1/chat/completions");
    assert_eq!(post(&url, &chat("good")).await.status(), 200);
    let before = vm_rss_kib(r.pid());

    for (model, code, says) in [
        ("garbage", "backend_bad_reply", "could not read"),
        ("endless", "backend_response_too_large", "max_response"),
        ("huge", "backend_bad_reply", "too large"),
    ] {
        for _ in 0..3 {
            let msg = expect_error(post(&url, &chat(model)).await, 502, code).await;
            assert!(msg.contains(&format!("`{model}`")), "{msg}");
            assert!(msg.contains(says), "{model}: {msg}");
            let resp = post(&url, &chat("good")).await;
            assert_eq!(resp.status(), 200, "after {model}");
            assert_eq!(resp.json::<Value>().await.unwrap()["model"], "good");
        }
    }
    // Through Ollama's API the reply is translated, so read whole: the same bound.
    let ollama = json!({"model": "endless", "stream": false,
        "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&r.url("/api/chat"), &ollama).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("max_response"), "{v}");
    if let (Some(before), Some(after)) = (before, vm_rss_kib(r.pid())) {
        println!("router VmRSS: {before} KiB before, {after} KiB after");
        assert!(
            after < before + 64 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
    }
    assert!(r.logs().contains("max_response"), "logged");
}

#[tokio::test]
async fn a_backend_that_accepts_no_connection_is_a_504_naming_it() {
    // A listener whose accept queue is full drops new SYNs: connecting hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let at = listener.local_addr().unwrap();
    let mut filled = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&at, Duration::from_millis(300)) {
            Ok(s) => filled.push(s),
            Err(_) => break,
        }
    }
    if TcpStream::connect_timeout(&at, Duration::from_millis(300)).is_ok() {
        eprintln!("this kernel completes connections past the backlog; skipping");
        return;
    }
    let r = Router::start(&format!(
        "upstream_connect_timeout: 300ms\nbackends:\n  a: {{url: \"http://{at}\"}}\nmodels:\n  m: {{backend: a, memory: 1MB}}\n"
    ));
    let resp = post(&r.url("/v1/chat/completions"), &chat("m")).await;
    let msg = expect_error(resp, 504, "backend_connect_timeout").await;
    assert!(
        msg.contains(&at.to_string()) && msg.contains("upstream_connect_timeout"),
        "{msg}"
    );
}

#[tokio::test]
async fn header_timeout_does_not_cut_answers_that_take_longer() {
    let sim = Sim::start(&["--model", "up", "--token-delay", "100ms", "--tokens", "8"]);
    let r = Router::start(&one_model(&sim, "header_timeout: 300ms"));
    let c = client();
    let url = r.url("/v1/chat/completions");
    for body in [chat("m"), chat_stream("m")] {
        let resp = c.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.expect("the whole answer arrives");
        assert!(text.contains("\"model\":\"m\""), "{text}");
        assert!(!text.contains("\"error\""), "{text}");
    }
}
