//! The admin API and the CLI commands built on it, against a real router.

mod common;

use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CONFIG: &str = r#"
budget: 300MB
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  big-a: {backend: sim, memory: 200MB, group: large, aliases: [a], args: [--memory, 150MB]}
  big-b: {backend: sim, memory: 200MB, group: large, aliases: [b], args: [--memory, 150MB]}
  kept: {backend: sim, memory: 30MB, pinned: true, args: [--memory, 5MB]}
"#;

async fn status(r: &Router) -> Value {
    get_json(&r.url("/admin/status")).await
}

fn model<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap()
}

async fn admin_post(r: &Router, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = client().post(r.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

async fn wait_state(r: &Router, name: &str, state: &str) -> Value {
    eventually(Duration::from_secs(10), || async {
        let s = status(r).await;
        (model(&s, name)["state"] == state).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("{name} never became {state}"))
}

#[tokio::test]
async fn status_load_and_unload_over_the_admin_api() {
    let r = Router::start(CONFIG);
    let s = status(&r).await;
    assert_eq!(
        (s["budget"].as_u64(), s["used"].as_u64(), s["free"].as_u64()),
        (Some(300_000_000), Some(0), Some(300_000_000))
    );
    assert_eq!(model(&s, "big-a")["state"], "cold");
    assert_eq!(model(&s, "big-a")["aliases"], serde_json::json!(["a"]));

    // Load by alias: ready, with its process, port and memory.
    let resp = admin_post(&r, "/admin/models/a/load", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["model"], "big-a");
    let s = status(&r).await;
    let a = model(&s, "big-a");
    assert_eq!(a["state"], "ready");
    assert!(
        a["pid"].is_u64() && a["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{a}"
    );
    assert_eq!(a["reserved"], 200_000_000);
    assert!(
        a["idle_unload_in_secs"].as_u64().unwrap() > 500,
        "idles out in ~10 min: {a}"
    );
    let measured = eventually(Duration::from_secs(6), || async {
        let s = status(&r).await;
        model(&s, "big-a")["measured"].as_u64()
    })
    .await
    .expect("measured memory appears");
    assert!(measured >= 150_000_000, "{measured}");

    // Loading the other member of the group swaps them.
    assert_eq!(
        admin_post(&r, "/admin/models/big-b/load", None)
            .await
            .status(),
        200
    );
    let s = status(&r).await;
    assert_eq!(model(&s, "big-a")["state"], "cold");
    assert_eq!(model(&s, "big-b")["state"], "ready");
    // A stopped model has no address: its next start picks another port.
    assert!(model(&s, "big-a")["endpoint"].is_null(), "{s}");

    // Unload one; unload all leaves the pinned model; a pinned model goes by name.
    assert_eq!(
        admin_post(&r, "/admin/models/kept/load", None)
            .await
            .status(),
        200
    );
    let v: Value = admin_post(&r, "/admin/unload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["unloading"], serde_json::json!(["big-b"]));
    wait_state(&r, "big-b", "cold").await;
    assert_eq!(model(&status(&r).await, "kept")["state"], "ready");
    let v: Value = admin_post(&r, "/admin/models/kept/unload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["unloading"], serde_json::json!(["kept"]));
    let s = wait_state(&r, "kept", "cold").await;
    assert_eq!(s["used"], 0);

    let msg = expect_error(
        admin_post(&r, "/admin/models/big-c/load", None).await,
        404,
        "model_not_found",
    )
    .await;
    assert!(msg.contains("big-a") || msg.contains("big-b"), "{msg}");
    expect_error(
        admin_post(&r, "/admin/nothing", None).await,
        404,
        "unknown_route",
    )
    .await;
}

#[tokio::test]
async fn changing_state_needs_the_admin_key_when_one_is_set() {
    let r = Router::start(&format!("admin_key: k-123\n{CONFIG}"));
    assert_eq!(
        get(&r.url("/admin/status")).await.status(),
        200,
        "reading is open"
    );
    let msg = expect_error(
        admin_post(&r, "/admin/models/a/load", None).await,
        401,
        "admin_key_required",
    )
    .await;
    assert!(msg.contains("admin key"), "{msg}");
    expect_error(
        admin_post(&r, "/admin/unload", Some("k-124")).await,
        401,
        "admin_key_required",
    )
    .await;
    assert_eq!(
        admin_post(&r, "/admin/models/a/load", Some("k-123"))
            .await
            .status(),
        200
    );
    assert!(
        !r.logs().contains("k-123"),
        "the key never reaches the logs"
    );
}

fn cli(args: &[&str], url: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    cli_at(Some(url), args, env)
}

/// The CLI as a user runs it, with nothing of the test's environment that
/// points it at a router: whether it succeeded, and its stderr.
fn cli_bare(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let (ok, _, err) = cli_at(None, args, env);
    (ok, err)
}

/// The CLI, pointed at `url` through MODELYARD_URL if given, with no admin key
/// or config from the test's environment.
fn cli_at(url: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    // No router recorded as running: only what the test names is reached.
    let runtime = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("MODELYARD_URL")
        .env_remove("MODELYARD_ADMIN_KEY")
        .env_remove("MODELYARD_CONFIG")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env("XDG_DATA_HOME", runtime.path());
    if let Some(url) = url {
        cmd.env("MODELYARD_URL", url);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_refuses_a_config_it_cannot_read_rather_than_guess_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("routes.yaml");
    std::fs::write(&broken, "listen: 127.0.0.1:18080\nbudgte: 4GB\n").unwrap();
    let missing = dir.path().join("nowhere.yaml");
    for path in [&broken, &missing] {
        let path = path.to_str().unwrap();
        for args in [
            vec!["status", "--config", path],
            vec!["unload", "--all", "--config", path],
            // A named config must load even with a URL: it is where the key is.
            vec!["reload", "--config", path, "--url", "http://127.0.0.1:9"],
        ] {
            let (ok, err) = cli_bare(&args, &[]);
            assert!(!ok, "{args:?}");
            assert!(err.contains(path), "names the file: {err}");
            assert!(err.contains("give --url"), "{err}");
            assert!(!err.contains("cannot reach"), "sent nowhere: {err}");
        }
    }
    // Found rather than named, it is passed over when --url says where to go.
    let (ok, err) = cli_bare(&["status", "--url", "http://127.0.0.1:9"], &[]);
    assert!(
        !ok && err.contains("cannot reach modelyard at http://127.0.0.1:9"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_found_config_s_admin_key_goes_only_to_its_own_router() {
    let r = Router::start(&format!("admin_key: k-9\n{CONFIG}"));
    // A routes.yaml in the working directory, of another router with the same key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:9\nadmin_key: k-9\n").unwrap();
    let load = |config: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir.path())
            .args(["load", "a", "--url", &r.url])
            .env_remove("MODELYARD_URL")
            .env_remove("MODELYARD_CONFIG")
            .env_remove("MODELYARD_ADMIN_KEY");
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = tokio::task::block_in_place(|| load(None));
    assert!(!ok && err.contains("admin key"), "found, not sent: {err}");
    let (ok, err) = tokio::task::block_in_place(|| load(Some(&file)));
    assert!(ok, "named, sent: {err}");
}

#[test]
fn a_url_that_is_not_one_is_named_as_such() {
    for bad in ["notaurl", "ftp://127.0.0.1:1", "http://"] {
        let (ok, err) = cli_bare(&["status", "--url", bad], &[]);
        assert!(!ok);
        assert!(
            err.contains(&format!("--url `{bad}` is not a router URL")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn the_router_starts_with_the_cli_s_variables_set_and_logs_plain_text() {
    // MODELYARD_URL is the CLI's and MODELYARD_TEST_PYTHON the tests', not routes.yaml keys.
    let r = Router::start_with_env(
        CONFIG,
        &[
            ("MODELYARD_URL", "http://127.0.0.1:9"),
            ("MODELYARD_TEST_PYTHON", "x"),
        ],
    );
    assert_eq!(
        post(&r.url("/v1/chat/completions"), &chat("a"))
            .await
            .status(),
        200
    );
    let logs = eventually(Duration::from_secs(5), || async {
        let logs = r.logs();
        logs.contains("big-a").then_some(logs)
    })
    .await
    .expect("the load is logged");
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes in a log file: {logs}"
    );
}

#[test]
fn listen_on_another_interface_needs_expose_from_the_flag_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml(CONFIG)).unwrap();
    let config = path.to_str().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let (ok, err) = cli_bare(&["serve", "--config", config, "--listen", addr], &[]);
        assert!(!ok, "{addr} refused");
        assert!(
            err.contains("--listen") && err.contains("expose: true"),
            "{err}"
        );
    }
    let (ok, err) = cli_bare(&["demo", "--listen", "0.0.0.0:0"], &[]);
    assert!(!ok && err.contains("expose: true"), "{err}");
}

#[tokio::test]
async fn the_cli_shows_loads_and_unloads() {
    let r = Router::start(&format!("admin_key: k-9\n{CONFIG}"));
    let url = r.url.clone();
    let key = [("MODELYARD_ADMIN_KEY", "k-9")];
    let run = move |args: Vec<&'static str>, env: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || cli(&args, &url, &env))
    };

    let (ok, out, err) = run(vec!["load", "a"], key.to_vec()).await.unwrap();
    assert!(ok && out.contains("big-a is loaded"), "{out}{err}");
    let (ok, out, _) = run(vec!["status"], vec![]).await.unwrap();
    assert!(ok);
    assert!(out.contains("200 MB of 300 MB used"), "{out}");
    assert!(
        out.contains("A=big-a") && out.contains("[AAAA"),
        "the bar shows big-a: {out}"
    );
    let row = out.lines().find(|l| l.starts_with("big-a")).unwrap();
    assert!(row.contains("ready") && row.contains("200 MB"), "{row}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("kept") && l.contains("cold*")),
        "pinned marked: {out}"
    );
    let (ok, out, _) = run(vec!["status", "--json"], vec![]).await.unwrap();
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["used"], 200_000_000);

    let (ok, _, err) = run(vec!["unload", "--all"], vec![]).await.unwrap();
    assert!(
        !ok && err.contains("admin key"),
        "refused without the key: {err}"
    );
    let (ok, out, _) = run(vec!["unload", "--all"], key.to_vec()).await.unwrap();
    assert!(ok && out.contains("unloading big-a"), "{out}");
    // Afterwards, status says what happened and why, and the groups.
    let out = eventually(Duration::from_secs(10), || {
        let run = run.clone();
        async move {
            let (_, out, _) = run(vec!["status"], vec![]).await.unwrap();
            // Not just "unloaded": the pinned legend says that word too.
            out.contains("unloaded big-a").then_some(out)
        }
    })
    .await
    .expect("the unload shows in status");
    let said: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("recent events"))
        .collect();
    assert!(
        said.iter()
            .any(|l| l.contains("ready    big-a") && l.contains("loaded in")),
        "{out}"
    );
    assert!(
        said.iter()
            .any(|l| l.contains("unloaded big-a") && l.contains("asked to (unload from the CLI")),
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with("big-b")).unwrap();
    assert!(row.contains("large"), "the group shows: {row}");
    assert!(out.contains("* pinned: never unloaded"), "{out}");
    let (ok, _, err) = run(vec!["unload", "nosuch"], key.to_vec()).await.unwrap();
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (ok, _, err) = run(vec!["unload"], vec![]).await.unwrap();
    assert!(!ok && err.contains("--all"), "names the flag: {err}");

    let dead = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = tokio::task::spawn_blocking(move || cli(&["status"], &dead, &[]))
        .await
        .unwrap();
    assert!(
        !ok && err.contains("is the router running? start it with `modelyard serve`"),
        "{err}"
    );
}

/// Reads SSE events until `want` kinds (in order, as `kind model`) have been seen.
async fn expect_events(resp: reqwest::Response, want: &[&str]) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen: Vec<Value> = Vec::new();
    let mut next = 0;
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        while next < want.len() {
            let chunk = stream.next().await.expect("stream open").unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let ev: Value = serde_json::from_str(data).unwrap();
                let kind = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap();
                assert_eq!(kind, ev["kind"], "the SSE event name is the kind");
                if next < want.len()
                    && format!(
                        "{} {}",
                        ev["kind"].as_str().unwrap(),
                        ev["model"].as_str().unwrap()
                    ) == want[next]
                {
                    next += 1;
                }
                seen.push(ev);
            }
        }
    })
    .await;
    assert!(read.is_ok(), "expected {want:?}, saw {seen:?}");
    seen
}

#[tokio::test]
async fn events_say_what_was_loaded_evicted_and_why() {
    let r = Router::start(CONFIG);
    let resp = client().get(r.url("/admin/events")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let url = r.url("/v1/chat/completions");
    let traffic = tokio::spawn(async move {
        assert_eq!(post(&url, &chat("a")).await.status(), 200);
        assert_eq!(post(&url, &chat("b")).await.status(), 200);
    });
    let seen = expect_events(
        resp,
        &[
            "loading big-a",
            "ready big-a",
            "evicting big-a",
            "loading big-b",
            "ready big-b",
        ],
    )
    .await;
    traffic.await.unwrap();
    let evicting = seen.iter().find(|e| e["kind"] == "evicting").unwrap();
    assert_eq!(evicting["detail"], "to make room for big-b");
    let ready = seen.iter().find(|e| e["kind"] == "ready").unwrap();
    assert!(
        ready["load_ms"].is_u64() && ready["detail"].as_str().unwrap().starts_with("loaded in"),
        "{ready}"
    );
    assert!(
        seen.iter()
            .any(|e| e["kind"] == "unloaded" && e["model"] == "big-a"),
        "{seen:?}"
    );

    // The CLI follows the same stream.
    let mut follow = Command::new(BIN)
        .args(["events", "--url", &r.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin_post(&r, "/admin/unload", None).await.status(), 200);
    let out = follow.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("evicting"))
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.contains("big-b") && line.contains("asked to"),
        "{line}"
    );
    let _ = follow.kill();
    let _ = follow.wait();
}

/// `modelyard events | head -1`: once its reader has what it wanted, the
/// command ends quietly (exit 0, nothing on stderr), not with a panic on the
/// broken pipe.
#[tokio::test]
async fn events_end_quietly_when_their_reader_leaves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A router whose stream carries an event every 10 ms.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        let event = r#"event: ready
data: {"at_ms":0,"kind":"ready","model":"big-a","detail":"loaded in 1s"}

"#;
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        while s.write_all(chunk.as_bytes()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut follow = Command::new(BIN)
        .args(["events", "--url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        // Read one line, then close the pipe, as `head -1` does.
        std::io::BufReader::new(out).lines().next()
    });
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap();
    assert!(first.unwrap().unwrap().contains("big-a"));
    let ended = tokio::task::spawn_blocking(move || {
        let status = follow.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        follow
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    });
    let (status, err) = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("it ends once no one reads")
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(err, "");
}

#[tokio::test]
async fn logs_show_a_backends_output_and_follow_it() {
    let r = Router::start(&format!(
        "admin_key: k-1\n{}",
        CONFIG.replace("--memory, 5MB]", "--memory, 5MB, --token-delay, 50ms]")
    ));
    assert_eq!(
        admin_post(&r, "/admin/models/kept/load", Some("k-1"))
            .await
            .status(),
        200
    );
    expect_error(
        get(&r.url("/admin/models/kept/logs")).await,
        401,
        "admin_key_required",
    )
    .await;
    let tail = client()
        .get(r.url("/admin/models/kept/logs"))
        .bearer_auth("k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.headers()["content-type"], "text/plain; charset=utf-8");
    assert!(tail
        .text()
        .await
        .unwrap()
        .contains("modelyard-sim listening on"));

    for bad in ["abc", "-1"] {
        let resp = client()
            .get(r.url(&format!("/admin/models/kept/logs?lines={bad}")))
            .bearer_auth("k-1")
            .send()
            .await
            .unwrap();
        let msg = expect_error(resp, 400, "invalid_field").await;
        assert!(
            msg.contains(&format!("`{bad}` is not a number of lines")),
            "{msg}"
        );
    }

    let follow = client()
        .get(r.url("/admin/models/kept/logs?follow=true&lines=0"))
        .bearer_auth("k-1")
        .send()
        .await
        .unwrap();
    // A request abandoned mid-stream makes the backend print a line.
    let resp = post(&r.url("/v1/chat/completions"), &chat_stream("kept")).await;
    let mut s = resp.bytes_stream();
    futures_util::StreamExt::next(&mut s).await;
    drop(s);
    let mut live = follow.bytes_stream();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while !text.contains("cancelled") {
            let c = futures_util::StreamExt::next(&mut live)
                .await
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&c));
        }
        text
    })
    .await
    .expect("the new line arrives on the followed stream");
    assert!(
        !got.contains("listening on"),
        "lines=0 starts at the end: {got}"
    );

    let url = r.url.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || {
        cli(
            &["logs", "kept", "-n", "50"],
            &url,
            &[("MODELYARD_ADMIN_KEY", "k-1")],
        )
    })
    .await
    .unwrap();
    assert!(
        ok && out.contains("listening on") && out.contains("cancelled"),
        "{out}"
    );
    let url = r.url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        cli(&["logs", "nosuch"], &url, &[("MODELYARD_ADMIN_KEY", "k-1")])
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn open_event_and_log_streams_end_cleanly_when_the_router_stops() {
    let mut r = Router::start(CONFIG);
    assert_eq!(
        admin_post(&r, "/admin/models/kept/load", None)
            .await
            .status(),
        200
    );
    let events = client().get(r.url("/admin/events")).send().await.unwrap();
    let logs = get(&r.url("/admin/models/kept/logs?follow=true")).await;
    r.signal(nix::sys::signal::Signal::SIGTERM);
    // Both bodies come to a proper end instead of holding the drain or being cut.
    let (e, l) = tokio::join!(events.text(), logs.text());
    assert!(e.is_ok() && l.is_ok(), "{e:?} {l:?}");
    assert!(l.unwrap().contains("listening on"));
    assert!(r.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn a_reload_that_redefines_a_shared_server_restarts_it_on_the_new_definition() {
    // Two models on one server (Ollama's shape). A reload changes the server's
    // own memory and environment: once its models are idle it stops, and it
    // comes back on the new definition, counted at its new size. (The server
    // was started again on the old one, with its old memory in the ledger, as
    // long as the router ran: each model was rebuilt onto the instance its
    // sibling still held.)
    let base = r#"
budget: 200MB
backends:
  ollama:
    kind: ollama
    command: [$BIN, sim, --flavor, ollama, --model, "m1=10MB", --model, "m2=10MB"]
    memory: 20MB
    env: {SIM_DEFINITION: first}
models:
  one: {backend: ollama, upstream: m1, memory: 30MB}
  two: {backend: ollama, upstream: m2, memory: 30MB}
"#;
    let r = Router::start(base);
    let server = |s: &Value| {
        let pid = model(s, "one")["pid"].as_u64().unwrap() as u32;
        (
            s["servers"].as_u64(),
            s["used"].as_u64(),
            environ(pid).unwrap(),
        )
    };
    assert_eq!(
        admin_post(&r, "/admin/models/one/load", None)
            .await
            .status(),
        200
    );
    let (own, used, env) = server(&status(&r).await);
    assert_eq!((own, used), (Some(20_000_000), Some(50_000_000)));
    assert!(env.contains(&"SIM_DEFINITION=first".to_string()));

    let next = base
        .replace("memory: 20MB", "memory: 50MB")
        .replace("SIM_DEFINITION: first", "SIM_DEFINITION: second");
    std::fs::write(r.dir.path().join("routes.yaml"), yaml(&next)).unwrap();
    assert_eq!(admin_post(&r, "/admin/reload", None).await.status(), 200);
    // Idle, `one` is unloaded for the reload, and the server that holds nothing stops.
    eventually(Duration::from_secs(10), || async {
        (status(&r).await["servers"] == 0).then_some(())
    })
    .await
    .expect("the redefined server stops once idle");

    assert_eq!(
        admin_post(&r, "/admin/models/one/load", None)
            .await
            .status(),
        200
    );
    let (own, used, env) = server(&status(&r).await);
    assert_eq!(
        (own, used),
        (Some(50_000_000), Some(80_000_000)),
        "the server's own memory as routes.yaml now says"
    );
    assert!(
        env.contains(&"SIM_DEFINITION=second".to_string()),
        "started on the new definition: {env:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_no_request_and_refuses_a_bad_file() {
    let base = r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --token-delay, 5ms, --tokens, "8"]}
models:
  a: {backend: sim, memory: 10MB}
  b: {backend: sim, memory: 10MB}
"#;
    let r = Router::start(base);
    let file = r.dir.path().join("routes.yaml");
    let url = r.url("/v1/chat/completions");
    assert_eq!(post(&url, &chat("b")).await.status(), 200);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = if i % 2 == 0 {
                        chat("a")
                    } else {
                        chat_stream("a")
                    };
                    let resp = post(&url, &body).await;
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status == 200 && (i % 2 == 0 || text.ends_with("data: [DONE]\n\n")) {
                        ok += 1;
                    } else {
                        failed.push(format!("{status}: {text}"));
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    // Added c, removed b, redefined a (which is busy: it keeps serving).
    let next = base
        .replace(
            "  b: {backend: sim, memory: 10MB}\n",
            "  c: {backend: sim, memory: 10MB, aliases: [see]}\n",
        )
        .replace(
            "a: {backend: sim, memory: 10MB}",
            "a: {backend: sim, memory: 12MB}",
        );
    std::fs::write(&file, yaml(&next)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = admin_post(&r, "/admin/reload", None).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let changes = v["changes"].to_string();
    assert!(
        changes.contains("added c")
            && changes.contains("removed b")
            && changes.contains("changed a"),
        "{changes}"
    );
    assert_eq!(
        post(&url, &chat("see")).await.status(),
        200,
        "an added model and its alias work at once"
    );
    expect_error(post(&url, &chat("b")).await, 404, "model_not_found").await;

    // A bad file is refused whole, with the reason; the running config stays.
    std::fs::write(&file, yaml(&next.replace("memory: 12MB", "memry: 12MB"))).unwrap();
    let msg = expect_error(
        admin_post(&r, "/admin/reload", None).await,
        422,
        "config_invalid",
    )
    .await;
    assert!(
        msg.contains("models.a.memry") && msg.contains("the running one stays"),
        "{msg}"
    );
    assert_eq!(post(&url, &chat("c")).await.status(), 200);

    // SIGHUP does the same as the API.
    std::fs::write(
        &file,
        yaml(&next.replace("aliases: [see]", "aliases: [see, sea]")),
    )
    .unwrap();
    r.signal(nix::sys::signal::Signal::SIGHUP);
    let ok = eventually(Duration::from_secs(5), || async {
        (post(&url, &chat("sea")).await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "SIGHUP reloaded the file: {}", r.logs());

    let url2 = r.url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&["reload"], &url2, &[]))
        .await
        .unwrap();
    assert!(
        ok && out.contains("reloaded: nothing changed"),
        "{out}{err}"
    );
    // A change of the budget alone is a change, and said as one.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("budget: 1GB\n{text}")).unwrap();
    let url2 = r.url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&["reload"], &url2, &[]))
        .await
        .unwrap();
    assert!(
        ok && out.contains("reloaded: budget no limit → 1 GB"),
        "{out}{err}"
    );
    let events = get_json(&r.url("/admin/status")).await["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "budget" && e["detail"] == "reload: budget no limit → 1 GB"),
        "{events}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during reloads: {failed:?}"
        );
        served += ok;
    }
    assert!(served > 20, "the load ran throughout ({served} requests)");
}

#[tokio::test]
async fn a_load_on_a_terminal_shows_progress_and_the_usual_load_time() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 1s]}
models:
  m: {backend: sim, memory: 1MB}
"#,
    );
    assert_eq!(
        admin_post(&r, "/admin/models/m/load", None).await.status(),
        200
    );
    let typical = model(&status(&r).await, "m")["typical_load_secs"]
        .as_f64()
        .unwrap();
    assert!(typical >= 1.0, "learned from the load: {typical}");
    assert_eq!(
        admin_post(&r, "/admin/models/m/unload", None)
            .await
            .status(),
        200
    );
    wait_state(&r, "m", "cold").await;
    // `script` gives the CLI a terminal, so it draws its spinner.
    let cmd = format!("{BIN} load m --url {}", r.url);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
    })
    .await
    .unwrap()
    .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("loading m…") && text.contains("(usually ~1s)"),
        "{text}"
    );
    assert!(text.contains("m is loaded"), "{text}");
}

#[tokio::test]
async fn preloaded_models_warm_up_without_a_request_and_still_idle_out() {
    let base = r#"
preload: [warm]
idle_timeout: 2s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 1s]}
models:
  daily: {backend: sim, memory: 1MB, aliases: [warm]}
  other: {backend: sim, memory: 1MB}
"#;
    let r = Router::start(base);
    // The listener answered before the 1 s load finished.
    let first = model(&status(&r).await, "daily")["state"].clone();
    assert!(first == "starting" || first == "cold", "{first}");
    wait_state(&r, "daily", "ready").await;
    assert!(r.logs().contains("preloading"));
    assert_eq!(
        model(&status(&r).await, "other")["state"],
        "cold",
        "only what was listed"
    );
    // Then it obeys its idle timeout like any other model.
    wait_state(&r, "daily", "cold").await;

    // A reload that lists another preloads it.
    std::fs::write(
        r.dir.path().join("routes.yaml"),
        yaml(&base.replace("preload: [warm]", "preload: [warm, other]")),
    )
    .unwrap();
    assert_eq!(admin_post(&r, "/admin/reload", None).await.status(), 200);
    wait_state(&r, "other", "ready").await;

    // check names a preload that is no model.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        yaml(&base.replace("preload: [warm]", "preload: [dialy]")),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(":2: preload.0:")
            && err.contains("did you mean `daily`"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_warns_of_a_budget_past_the_machine_s_memory_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let meminfo = dir.path().join("meminfo");
    std::fs::write(&meminfo, "MemTotal: 200000 kB\nMemAvailable: 100000 kB\n").unwrap();
    let r = Router::start_with_env(CONFIG, &[("MODELYARD_MEMINFO", meminfo.to_str().unwrap())]);
    let logs = r.logs();
    assert!(
        logs.contains("budget: 300 MB is more than this machine's physical memory (204.8 MB)"),
        "{logs}"
    );
    assert!(logs.contains("routes.yaml:2: budget"), "located: {logs}");
    assert_eq!(status(&r).await["budget"], 300_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_a_demo_started_on_another_port_without_url() {
    let runtime = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", &format!("localhost:{port}")])
        .env("XDG_RUNTIME_DIR", runtime.path())
        // Its request log, too, away from the user's own.
        .env("XDG_DATA_HOME", runtime.path())
        .env_remove("MODELYARD_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    assert_eq!(
        first.trim(),
        format!("modelyard listening on http://127.0.0.1:{port}"),
        "localhost is 127.0.0.1"
    );
    // From a directory with no routes.yaml, no --url, no config: the record leads.
    let status = |runtime: &std::path::Path| {
        Command::new(BIN)
            .arg("status")
            .current_dir(elsewhere.path())
            .env("XDG_RUNTIME_DIR", runtime)
            .env("HOME", elsewhere.path())
            .env("XDG_CONFIG_HOME", elsewhere.path())
            .env_remove("MODELYARD_URL")
            .env_remove("MODELYARD_CONFIG")
            .env_remove("MODELYARD_ADMIN_KEY")
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| status(runtime.path()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("qwen3-30b-a3b"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = runtime.path().join("modelyard/router.json");
    assert!(record.exists());

    // A demo that stopped takes its record with it.
    kill(Pid::from_raw(demo.id() as i32), Signal::SIGTERM).unwrap();
    tokio::task::block_in_place(|| demo.wait()).unwrap();
    assert!(!record.exists(), "the record goes with the router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_left_by_a_killed_router_is_passed_over() {
    let r = Router::start(CONFIG);
    let record = r.dir.path().join("modelyard/router.json");
    assert!(record.exists(), "serve records its URL too");
    r.signal(Signal::SIGKILL);
    let mut r = r;
    r.wait_exit(Duration::from_secs(5));
    assert!(record.exists(), "nobody removed it");
    // Its pid is gone: the CLI goes by the routes.yaml it finds instead.
    let other = Router::start(CONFIG);
    let cwd = tempfile::tempdir().unwrap();
    let addr = other.url.trim_start_matches("http://");
    std::fs::write(cwd.path().join("routes.yaml"), format!("listen: {addr}\n")).unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .arg("status")
            .current_dir(cwd.path())
            .env("XDG_RUNTIME_DIR", r.dir.path())
            .env_remove("MODELYARD_URL")
            .env_remove("MODELYARD_CONFIG")
            .env_remove("MODELYARD_ADMIN_KEY")
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("big-a"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_whose_stdout_reader_is_gone_keeps_serving() {
    // `modelyard demo | head -1`, or a supervisor that closed the pipe: the
    // banner's write fails with a broken pipe, which must not end the router.
    let runtime = tempfile::tempdir().unwrap();
    let port = free_port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("XDG_RUNTIME_DIR", runtime.path())
        // Its request log, too, away from the user's own.
        .env("XDG_DATA_HOME", runtime.path())
        .env_remove("MODELYARD_LISTEN")
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let up = eventually(Duration::from_secs(20), || async {
        let r = client().get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let exited = demo.try_wait().unwrap();
    let _ = kill(Pid::from_raw(demo.id() as i32), Signal::SIGTERM);
    let _ = tokio::task::block_in_place(|| demo.wait());
    assert!(
        up.is_some() && exited.is_none(),
        "the router died when its stdout went away: {exited:?}"
    );
}
