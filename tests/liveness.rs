//! A router that cannot die silently: a panicked supervisor ends the process
//! with a failure status (so launchd or systemd start it again), /healthz tells
//! a stuck supervisor from a healthy one, and launchd's 256 open files do not
//! cap how many clients are served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

const ONE_MODEL: &str = r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  m: {backend: sim, memory: 1MB}
"#;

#[tokio::test]
async fn a_panic_in_the_supervisor_ends_the_router_with_a_failure_and_says_why() {
    let mut r = Router::start_with_env(ONE_MODEL, &[("TEST_MODELYARD_FAULT", "owner-panic")]);
    assert_eq!(get(&r.url("/healthz")).await.status(), 200);
    // The request that trips the fault gets an answer or a closed connection,
    // never a hang.
    let _ = impatient(Duration::from_secs(15))
        .post(r.url("/v1/chat/completions"))
        .json(&chat("m"))
        .send()
        .await;
    let status = r.wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(1), "an exit, not a signal: {status:?}");
    let logs = r.logs();
    assert!(
        logs.contains(
            "the supervisor's owner task panicked: TEST_MODELYARD_FAULT: the owner panics as asked"
        ),
        "{logs}"
    );
    assert!(
        logs.contains("exiting so that launchd or systemd start modelyard again"),
        "{logs}"
    );
}

#[tokio::test]
async fn healthz_turns_503_when_the_supervisor_stops_answering() {
    let r = Router::start_with_env(ONE_MODEL, &[("TEST_MODELYARD_FAULT", "owner-stall")]);
    let health = get(&r.url("/healthz")).await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
    // This request stalls the owner; it waits with it.
    let url = r.url("/v1/chat/completions");
    let stuck = tokio::spawn(async move {
        impatient(Duration::from_secs(20))
            .post(url)
            .json(&chat("m"))
            .send()
            .await
    });
    let stalled = eventually(Duration::from_secs(10), || async {
        r.logs()
            .contains("the owner stops answering as asked")
            .then_some(())
    })
    .await;
    assert!(stalled.is_some(), "{}", r.logs());
    let asked = tokio::time::Instant::now();
    let health = get(&r.url("/healthz")).await;
    let waited = asked.elapsed();
    assert_eq!(health.status(), 503);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "unresponsive", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("the supervisor did not answer within 1s"),
        "{body}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered after {waited:?}"
    );
    stuck.abort();
}

#[tokio::test]
async fn started_with_256_open_files_it_serves_600_keep_alive_clients() {
    const CLIENTS: usize = 600;
    let r = Router::start_after(
        &format!("max_connections: 1000\n{ONE_MODEL}"),
        "ulimit -Sn 256",
        &[],
    );
    let logs = r.logs();
    let limit: u64 = logs
        .split("open-file limit ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no open-file limit logged:\n{logs}"));
    assert!(limit > 256, "the soft limit was raised: {limit}");
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200,
        "the model is loaded"
    );

    // Each client its own connection pool; every one sends a request, then all
    // hold their connection open at once, then each sends two more on it.
    let url = r.url("/v1/chat/completions");
    let all_connected = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let go_on = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, all_connected, go_on) = (url.clone(), all_connected.clone(), go_on.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .http1_only()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut statuses = Vec::new();
                let send = || client.post(&url).json(&chat("m")).send();
                let first = send().await;
                all_connected.wait().await;
                go_on.wait().await;
                statuses.push(
                    first
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string()),
                );
                for _ in 0..2 {
                    let resp = match send().await {
                        Ok(resp) => resp,
                        Err(e) => {
                            statuses.push(Err(e.to_string()));
                            continue;
                        }
                    };
                    let status = resp.status().as_u16();
                    statuses.push(
                        resp.bytes()
                            .await
                            .map(|_| status)
                            .map_err(|e| e.to_string()),
                    );
                }
                statuses
            })
        })
        .collect();
    all_connected.wait().await;
    let open = open_files(r.pid()).expect("the router's descriptors");
    println!("router: {open} descriptors open with {CLIENTS} clients connected (limit {limit})");
    assert!(
        open > CLIENTS,
        "{open} descriptors open with {CLIENTS} clients connected"
    );
    go_on.wait().await;
    let mut failures = Vec::new();
    for c in clients {
        for s in c.await.unwrap() {
            if s != Ok(200) {
                failures.push(s);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        CLIENTS * 3,
        failures.first()
    );
    let logs = r.logs();
    assert!(!logs.contains("accept failed"), "{logs}");
    assert!(!logs.contains("refused a connection"), "{logs}");
}

#[tokio::test]
async fn no_backend_of_a_router_that_panicked_outlives_the_one_started_after_it() {
    // The server runs as a grandchild that ignores SIGTERM: the parent-death
    // signal (Linux only) reaches only `sh`. The failed router's last stops or,
    // failing those, the next router's reaping must end it.
    let config = r#"
backends:
  wrapped:
    command: [sh, -c, "$BIN sim --port \"$0\" --model m --ignore-sigterm & wait", "${PORT}"]
    stop_timeout: 30s
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  m: {backend: wrapped, memory: 1MB}
  boom: {backend: sim, memory: 1MB}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let state = dir.path().join("state.json");
    std::fs::write(&path, yaml(config)).unwrap();
    let mut first = Router::start_at(
        &path,
        &state,
        tempfile::tempdir().unwrap(),
        &[("TEST_MODELYARD_FAULT", "owner-panic:boom")],
    );
    assert_eq!(
        post(&first.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200
    );
    let shell = first.children()[0];
    let server = children_of(shell)[0];
    let _ = impatient(Duration::from_secs(15))
        .post(first.url("/v1/chat/completions"))
        .json(&chat("boom"))
        .send()
        .await;
    let status = first.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{}", first.logs());

    let second = Router::start_at(&path, &state, tempfile::tempdir().unwrap(), &[]);
    let gone = eventually(Duration::from_secs(10), || async {
        (!alive(server)).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the server outlived both routers:\n{}\n{}",
        first.logs(),
        second.logs()
    );
    assert_eq!(
        post(&second.url("/v1/chat/completions"), &chat("m"))
            .await
            .status(),
        200
    );
}
