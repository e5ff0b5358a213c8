//! Harness for end-to-end tests: the real `modelyard` binary on loopback, port 0,
//! simulated backends (`modelyard sim`) as real child processes.
#![allow(dead_code)]

mod procs;
mod raw;
// Each test file uses some of them.
#[allow(unused_imports)]
pub use procs::{alive, children_of, close_wait, environ, open_files, rss_kib};
#[allow(unused_imports)]
pub use raw::RawRequest;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_modelyard");

/// Replaces `$BIN` in a config with the path of the binary under test.
pub fn yaml(s: &str) -> String {
    s.replace("$BIN", BIN)
}

/// A port free now, for a test to give a process it starts. From below the
/// ephemeral range (32768 up on Linux, 49152 on macOS), as the router picks
/// its backends' ports: one from that range can be taken by any outgoing
/// connection before the process binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let start = h.finish();
    (0..256u64)
        .map(|i| 10_000 + (start.wrapping_add(i * 7919) % 22_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Spawns `cmd`, waits for its "listening on http://…" line, returns the URL.
fn spawn_listening(mut cmd: Command, stderr: PathBuf) -> (Child, String) {
    let err = std::fs::File::create(&stderr).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn binary under test");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on ") {
                let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => (child, url),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "no 'listening on' line; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
    }
}

/// A running router.
pub struct Router {
    pub url: String,
    pub child: Child,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

fn dir_count() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Router {
    pub fn start(config: &str) -> Router {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Router {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml(config)).unwrap();
        let state = dir.path().join("state.json");
        Self::start_at(&path, &state, dir, env)
    }

    /// A router on `config` recording its processes in `state` (to restart one).
    pub fn start_at(
        config: &std::path::Path,
        state: &std::path::Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Router {
        Self::start_cmd(Command::new(BIN), config, state, dir, env)
    }

    /// A router started by `sh -c '{prelude}; exec modelyard serve …'`, to start
    /// it as a service manager would (e.g. `ulimit -Sn 256`, launchd's default).
    pub fn start_after(config: &str, prelude: &str, env: &[(&str, &str)]) -> Router {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml(config)).unwrap();
        let state = dir.path().join("state.json");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("{prelude}; exec \"$0\" \"$@\""), BIN]);
        Self::start_cmd(cmd, &path, &state, dir, env)
    }

    fn start_cmd(
        mut cmd: Command,
        config: &std::path::Path,
        state: &std::path::Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Router {
        cmd.args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .env("MODELYARD_STATE_FILE", state)
            .env("MODELYARD_LOG", "debug")
            // Where it records its URL for the CLI: its own, not the user's.
            .env("XDG_RUNTIME_DIR", dir.path())
            // Its request log (requests.db under modelyard/): its own too.
            .env("XDG_DATA_HOME", dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = dir.path().join(format!(
            "stderr-{}.log",
            std::process::id() as u64 + dir_count()
        ));
        let (child, url) = spawn_listening(cmd, log.clone());
        Router {
            url,
            child,
            dir,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// What the router logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits (bounded) for the router to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::SystemTime::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::SystemTime::now() > deadline {
                panic!(
                    "router still running after {limit:?}; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Direct children of the router (the backend processes it started).
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid())
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
            for _ in 0..250 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A simulator the test starts itself, to reach it directly (stats, last request).
pub struct Sim {
    pub url: String,
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["sim", "--port", "0"]).args(args);
        let (child, url) = spawn_listening(cmd, dir.path().join("stderr.log"));
        Sim {
            url,
            child,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A client that gives up after `limit`, as an impatient user does.
pub fn impatient(limit: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(limit)
        .build()
        .unwrap()
}

pub async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

pub async fn get_json(url: &str) -> Value {
    get(url).await.json().await.unwrap()
}

pub async fn sim_stats(base: &str) -> Value {
    get_json(&format!("{base}/sim/stats")).await
}

/// The last request a simulator received: method, path, headers, body.
pub async fn last_request(base: &str) -> Value {
    get_json(&format!("{base}/sim/last-request")).await
}

/// The KV cache events so far on `/admin/status`, as `kind model: detail`.
pub async fn kv_events(r: &Router) -> Vec<String> {
    get_json(&r.url("/admin/status")).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("kv_"))
        .map(|e| {
            format!(
                "{} {}: {}",
                e["kind"].as_str().unwrap(),
                e["model"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect()
}

pub fn chat(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

pub fn chat_stream(model: &str) -> Value {
    serde_json::json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hello there"}]})
}

pub async fn post(url: &str, body: &Value) -> reqwest::Response {
    client().post(url).json(body).send().await.unwrap()
}

/// Polls `check` every 20 ms until it returns Some, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts an OpenAI-shaped error with this status and code; returns its message.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    let v: Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(e.is_object(), "no error object in {v}");
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "error.{key} missing in {v}");
    }
    assert_eq!(e["code"], code, "{v}");
    e["message"].as_str().unwrap().to_string()
}

/// The Python with the test tools (prometheus_client, playwright, openai, ollama):
/// MODELYARD_TEST_PYTHON, else the venv `tools/test` makes, else python3.
pub fn python() -> String {
    if let Ok(p) = std::env::var("MODELYARD_TEST_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv-test/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.to_string()
    } else {
        "python3".to_string()
    }
}

/// `python()`, once it is known to import `module`; otherwise the test fails with the
/// package and how to get it on the first line, not under a traceback.
pub fn python_with(module: &str, package: &str) -> String {
    let py = python();
    let imports = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        imports,
        "this test needs the Python package {package} (module `{module}`), which `{py}` \
         cannot import: run tools/test (it installs it into .venv-test), or \
         `{py} -m pip install {package}` (MODELYARD_TEST_PYTHON picks another Python)"
    );
    py
}

/// The Chromium Playwright drives: MODELYARD_TEST_CHROMIUM, else the first of the
/// usual names on PATH, else the macOS applications; a failure naming how to get it.
pub fn chromium() -> String {
    if let Ok(p) = std::env::var("MODELYARD_TEST_CHROMIUM") {
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    let on_path = names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    let apps = [
        "/Applications/Chromium.app/Contents/MacOS/Chromium",
        "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    ];
    let found = on_path.or_else(|| apps.iter().map(PathBuf::from).find(|p| p.is_file()));
    match found {
        Some(p) => p.display().to_string(),
        None => panic!(
            "this test needs Chromium, found neither on PATH ({}) nor in /Applications: run \
             tools/test as root (it runs apt-get install chromium), or `sudo apt-get install \
             chromium` (macOS: `brew install --cask chromium`); MODELYARD_TEST_CHROMIUM \
             names another",
            names.join(", ")
        ),
    }
}

/// The last event of an SSE body, as JSON (None if it is not JSON, e.g. `[DONE]`).
pub fn last_event(body: &str) -> Option<Value> {
    let last = body.trim_end().rsplit("\n\n").next()?;
    serde_json::from_str(last.trim_start_matches("data: ")).ok()
}
