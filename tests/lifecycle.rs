//! Backend processes: started once on demand, restarted after a crash, and never
//! left behind when the router stops.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::Value;

#[tokio::test]
async fn concurrent_first_requests_share_one_start() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 800ms]}
models:
  m: {backend: sim, memory: 1MB, aliases: [mm]}
"#,
    );
    let url = r.url("/v1/chat/completions");
    let requests = (0..6).map(|i| {
        let url = url.clone();
        async move {
            post(&url, &chat(if i % 2 == 0 { "m" } else { "mm" }))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        r.children().len(),
        1,
        "one backend process for six concurrent first requests"
    );
    assert_eq!(r.logs().matches("starting backend").count(), 1);
}

fn two_backends(extra: &str) -> String {
    format!(
        r#"
backends:
  sim: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}"]}}
  deaf: {{command: [$BIN, sim, --port, "${{PORT}}", --model, "${{MODEL}}", --ignore-sigterm], stop_timeout: 500ms}}
models:
  a: {{backend: sim, memory: 1MB}}
  b: {{backend: deaf, memory: 1MB}}
{extra}"#
    )
}

async fn stop_leaves_no_child(sig: Signal) {
    let mut r = Router::start(&two_backends(""));
    for m in ["a", "b"] {
        assert_eq!(
            post(&r.url("/v1/chat/completions"), &chat(m))
                .await
                .status(),
            200
        );
    }
    let kids = r.children();
    assert_eq!(kids.len(), 2, "both backends running");
    r.signal(sig);
    let status = r.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "clean exit after {sig:?}: {status:?}");
    for pid in kids {
        assert!(
            !alive(pid),
            "backend {pid} outlived the router after {sig:?}"
        );
    }
    assert!(
        r.logs().contains("ignored SIGTERM"),
        "the deaf backend needed SIGKILL"
    );
}

#[tokio::test]
async fn no_child_outlives_serve_after_sigterm() {
    stop_leaves_no_child(Signal::SIGTERM).await;
}

#[tokio::test]
async fn no_child_outlives_serve_after_sigint() {
    stop_leaves_no_child(Signal::SIGINT).await;
}

#[tokio::test]
async fn no_child_outlives_a_router_killed_outright() {
    let mut r = Router::start(&two_backends(""));
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("a"))
            .await
            .status(),
        200
    );
    let kids = r.children();
    assert_eq!(kids.len(), 1);
    r.signal(Signal::SIGKILL);
    r.wait_exit(Duration::from_secs(5));
    // Linux: the parent-death signal ends it with the router. macOS has none:
    // the next router ends it from the state file before it serves.
    #[cfg(not(target_os = "linux"))]
    let _next = Router::start_at(
        &r.dir.path().join("routes.yaml"),
        &r.dir.path().join("state.json"),
        tempfile::tempdir().unwrap(),
        &[],
    );
    let gone = eventually(Duration::from_secs(5), || async {
        kids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "backend outlived a SIGKILLed router");
}

#[tokio::test]
async fn a_crashed_backend_is_restarted_by_the_next_request() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --crash-after, "1"]}
models:
  m: {backend: sim, memory: 1MB}
"#,
    );
    let url = r.url("/v1/chat/completions");
    assert_eq!(post(&url, &chat("m")).await.status(), 200);
    let first = r.children();
    // The second request kills the process mid-request: a clear 502, not a hang,
    // that says the backend crashed and how.
    let msg = expect_error(post(&url, &chat("m")).await, 502, "backend_unreachable").await;
    assert!(
        msg.contains("it crashed (the process exited with code"),
        "{msg}"
    );
    let served = eventually(Duration::from_secs(5), || async {
        let resp = post(&url, &chat("m")).await;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(served.is_some(), "the backend was not restarted");
    let second = r.children();
    assert_eq!(second.len(), 1);
    assert_ne!(first, second, "a new process serves it");
}

#[tokio::test]
async fn a_stream_broken_by_a_crash_ends_with_an_error_event() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --crash-after, "0", --token-delay, 50ms]}
models:
  m: {backend: sim, memory: 1MB}
"#,
    );
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => body.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => panic!(
                    "the stream was cut instead of ending with an error event: {e}; got {body}"
                ),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the stream hung after the backend died: {body}"
    );
    let event = last_event(&body).unwrap_or_else(|| panic!("no error event at the end: {body}"));
    assert_eq!(event["error"]["code"], "backend_stream_broken", "{body}");
    assert!(
        body.contains("t0 "),
        "what arrived before the crash was delivered: {body}"
    );
}

#[tokio::test]
async fn demo_serves_the_readme_examples() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let last = line.starts_with("stop with");
            lines.push(line);
            if last {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("demo banner");
    let url = banner[0].rsplit(' ').next().unwrap().to_string();
    let text = banner.join("\n");
    assert!(text.contains(&format!("curl -s {url}/v1/models")), "{text}");

    let models = get_json(&format!("{url}/v1/models")).await;
    assert!(
        models["data"].as_array().unwrap().len() >= 12,
        "six models and their aliases"
    );
    let v: Value = post(&format!("{url}/v1/chat/completions"), &chat("default"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["model"], "default");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("t0"));
    let s = post(&format!("{url}/v1/chat/completions"), &chat_stream("deep"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        s.contains("\"model\":\"deep\"") && s.ends_with("data: [DONE]\n\n"),
        "{s}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    let kids = children_of(child.id());
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(kids.iter().all(|p| !alive(*p)));
}

#[tokio::test]
async fn a_router_restarted_after_sigkill_ends_what_the_last_run_left() {
    // The server runs as a grandchild in the backend's process group: the kernel's
    // parent-death signal reaches only `sh`, so the server survives the router.
    let config = r#"
backends:
  wrapped:
    command: [sh, -c, "$BIN sim --port \"$0\" --model m & wait", "${PORT}"]
models:
  m: {backend: wrapped, memory: 1MB}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let state = dir.path().join("state.json");
    std::fs::write(&path, yaml(config)).unwrap();
    let mut first = Router::start_at(&path, &state, tempfile::tempdir().unwrap(), &[]);
    assert_eq!(
        post(&first.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200
    );
    let shell = first.children()[0];
    let server = children_of(shell)[0];
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(server),
        "the server outlived the router, as a crash would leave it"
    );

    let second = Router::start_at(&path, &state, tempfile::tempdir().unwrap(), &[]);
    let gone = eventually(Duration::from_secs(5), || async {
        (!alive(server)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the restarted router left the orphan running"
    );
    assert!(
        // Logged before the group is ended, so present once it is gone.
        second
            .logs()
            .contains("ending a backend left running by a previous run"),
        "{}",
        second.logs()
    );
    assert_eq!(
        post(&second.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish_before_backends_stop() {
    let mut r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --token-delay, 60ms, --tokens, "20"]}
models:
  m: {backend: sim, memory: 1MB}
"#,
    );
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("m")).await;
    let mut stream = resp.bytes_stream();
    let mut body = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    r.signal(Signal::SIGTERM);
    while let Some(chunk) = stream.next().await {
        body.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream is not cut"),
        ));
    }
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "the stream finished whole: {body}"
    );
    assert!(r.wait_exit(Duration::from_secs(10)).success());
    // New connections are refused once it stops accepting.
    assert!(client().get(r.url("/healthz")).send().await.is_err());
}
