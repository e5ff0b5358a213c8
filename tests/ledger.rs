//! The memory ledger against real processes: backends allocate and touch their
//! `--memory`, and the test reads their RSS from /proc while it switches models.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

const MB: u64 = 1_000_000;

fn rss_bytes(pid: u32) -> u64 {
    rss_kib(pid).map_or(0, |kb| kb * 1024)
}

/// Samples the router's children every 5 ms on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    max_total: Arc<AtomicU64>,
    max_big: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(router_pid: u32, big: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_total = Arc::new(AtomicU64::new(0));
        let max_big = Arc::new(AtomicU64::new(0));
        let (s, t, b) = (stop.clone(), max_total.clone(), max_big.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let rss: Vec<u64> = children_of(router_pid).into_iter().map(rss_bytes).collect();
                t.fetch_max(rss.iter().sum(), Ordering::Relaxed);
                b.fetch_max(
                    rss.iter().filter(|r| **r >= big).count() as u64,
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            max_total,
            max_big,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.max_total.load(Ordering::Relaxed),
            self.max_big.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test]
async fn switching_between_models_that_do_not_fit_together_never_has_both_alive() {
    let r = Router::start(
        r#"
budget: 300MB
queue_timeout: 30s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 100ms]}
models:
  a: {backend: sim, memory: 200MB, args: [--memory, 200MB]}
  b: {backend: sim, memory: 200MB, args: [--memory, 200MB]}
  tiny: {backend: sim, memory: 20MB, args: [--memory, 20MB]}
"#,
    );
    let sampler = Sampler::start(r.pid(), 150 * MB);
    let url = r.url("/v1/chat/completions");
    for model in ["a", "b", "tiny", "a", "b", "a", "tiny", "b"] {
        let resp = post(&url, &chat(model)).await;
        assert_eq!(
            resp.status(),
            200,
            "{model}: {}",
            resp.text().await.unwrap()
        );
    }
    // Interleaved and concurrent: every request is answered, still one big model at a time.
    let burst = (0..12).map(|i| {
        let url = url.clone();
        async move {
            let resp = post(&url, &chat(["a", "b", "tiny"][i % 3])).await;
            (resp.status(), resp.text().await.unwrap_or_default())
        }
    });
    let answers = futures_util::future::join_all(burst).await;
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}\nrouter log:\n{}", r.logs());
    let (max_total, max_big) = sampler.finish();
    assert_eq!(max_big, 1, "two 200 MB backends were alive at once");
    // Each sim has a few MB of its own beyond what it was told to hold.
    assert!(
        max_total <= 300 * MB + 3 * 15 * MB,
        "backends held {} MB at once",
        max_total / MB
    );
    assert!(
        max_total >= 200 * MB,
        "the sampler saw the memory ({} MB)",
        max_total / MB
    );
}

#[tokio::test]
async fn idle_unload_frees_memory_and_pinned_models_stay() {
    let r = Router::start(
        r#"
budget: 1GB
idle_timeout: 1s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  brief: {backend: sim, memory: 50MB, args: [--memory, 50MB]}
  kept: {backend: sim, memory: 50MB, pinned: true, args: [--memory, 50MB]}
"#,
    );
    let url = r.url("/v1/chat/completions");
    for m in ["brief", "kept"] {
        assert_eq!(post(&url, &chat(m)).await.status(), 200);
    }
    let both = r.children();
    assert_eq!(both.len(), 2);
    let one_left = eventually(Duration::from_secs(10), || async {
        let kids = r.children();
        (kids.len() == 1).then_some(kids)
    })
    .await
    .expect("the idle model was not unloaded");
    assert!(
        rss_bytes(one_left[0]) >= 50 * MB,
        "the pinned one is what remains"
    );
    assert!(r.logs().contains("idle"), "the log says why");
    // And it comes back on demand.
    assert_eq!(post(&url, &chat("brief")).await.status(), 200);
}

#[tokio::test]
async fn a_backend_killed_mid_stream_gives_an_error_and_the_next_request_succeeds() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --token-delay, 50ms, --tokens, "100"]}
models:
  m: {backend: sim, memory: 1MB}
"#,
    );
    let url = r.url("/v1/chat/completions");
    let resp = post(&url, &chat_stream("m")).await;
    let mut stream = resp.bytes_stream();
    let mut body = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    let victim = r.children()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(c)) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&c));
        }
    })
    .await;
    assert!(ended.is_ok(), "the client was left hanging");
    let event = last_event(&body).unwrap_or_else(|| panic!("no error event at the end: {body}"));
    assert_eq!(event["error"]["code"], "backend_stream_broken");
    let ok = eventually(Duration::from_secs(5), || async {
        (post(&url, &chat("m")).await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the next request did not restart the backend");
}

/// A small deterministic generator: the test needs variety, not a crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// What one client request came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served,
    /// An OpenAI-shaped error: a status and JSON, or an SSE error event.
    Refused(u16),
}

async fn one_request(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    stream: bool,
) -> Result<Outcome, String> {
    let body = if stream {
        chat_stream(model)
    } else {
        chat(model)
    };
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("no response: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{model}: body cut off ({status}): {e}"))?;
    if status != 200 {
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{status} without a JSON error: {text}"))?;
        return v["error"]["message"]
            .is_string()
            .then_some(Outcome::Refused(status))
            .ok_or(text);
    }
    if stream {
        if text.ends_with("data: [DONE]\n\n") {
            return Ok(Outcome::Served);
        }
        let v = last_event(&text)
            .ok_or_else(|| format!("stream ended without [DONE] or an error: {text}"))?;
        return v["error"]
            .is_object()
            .then_some(Outcome::Refused(502))
            .ok_or(text);
    }
    let v: Value = serde_json::from_str(&text).map_err(|_| format!("200 without JSON: {text}"))?;
    (v["model"] == model).then_some(Outcome::Served).ok_or(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_every_request_answered_budget_kept_nothing_left() {
    let mut r = Router::start(
        r#"
budget: 400MB
queue_timeout: 15s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --load-time, 50ms, --token-delay, 2ms, --tokens, "12"], stop_timeout: 2s}
models:
  a: {backend: sim, memory: 150MB, args: [--memory, 150MB]}
  b: {backend: sim, memory: 150MB, args: [--memory, 150MB]}
  c: {backend: sim, memory: 150MB, args: [--memory, 150MB]}
  d: {backend: sim, memory: 60MB, args: [--memory, 60MB]}
  e: {backend: sim, memory: 30MB, args: [--memory, 30MB]}
"#,
    );
    let sampler = Sampler::start(r.pid(), 100 * MB);
    let url = r.url("/v1/chat/completions");
    let run_for = Duration::from_secs(12);
    let started = tokio::time::Instant::now();

    let clients = (0..24u64).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap();
            let mut rng = Lcg(i + 1);
            let mut outcomes = Vec::new();
            while started.elapsed() < run_for {
                let model = ["a", "b", "c", "d", "e"][rng.next(5) as usize];
                outcomes.push(one_request(&client, &url, model, rng.next(2) == 0).await);
            }
            outcomes
        })
    });
    let router_pid = r.pid();
    let killer = tokio::spawn(async move {
        let mut rng = Lcg(99);
        let mut kills = 0;
        while started.elapsed() < run_for {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let kids = children_of(router_pid);
            if !kids.is_empty() {
                let victim = kids[rng.next(kids.len() as u64) as usize];
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                kills += 1;
            }
        }
        kills
    });
    let mut served = 0;
    let mut refused = 0;
    let mut lost = Vec::new();
    for c in futures_util::future::join_all(clients).await {
        for o in c.unwrap() {
            match o {
                Ok(Outcome::Served) => served += 1,
                Ok(Outcome::Refused(_)) => refused += 1,
                Err(e) => lost.push(e),
            }
        }
    }
    let kills = killer.await.unwrap();
    let (max_total, _) = sampler.finish();
    eprintln!("stress: {served} served, {refused} refused with an error, {kills} backends killed, peak backend RSS {} MB", max_total / MB);
    assert!(
        lost.is_empty(),
        "{} requests had no proper answer, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    assert!(served > 100, "only {served} requests were served");
    assert!(kills > 10);
    // Five backends at most, each a few MB beyond what it was told to hold.
    assert!(
        max_total <= 400 * MB + 5 * 15 * MB,
        "backends held {} MB at once",
        max_total / MB
    );

    let kids = r.children();
    r.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(r.wait_exit(Duration::from_secs(15)).success());
    assert!(
        kids.iter().all(|p| !alive(*p)),
        "a backend outlived the router"
    );
}

#[tokio::test]
async fn a_backend_above_its_declared_memory_is_called_out() {
    let r = Router::start(
        r#"
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}"]}
models:
  honest: {backend: sim, memory: 200MB, args: [--memory, 60MB]}
  understated: {backend: sim, memory: 10MB, args: [--memory, 60MB]}
"#,
    );
    for m in ["honest", "understated"] {
        assert_eq!(
            post(&r.url("/v1/chat/completions"), &chat(m))
                .await
                .status(),
            200
        );
    }
    let warned = eventually(Duration::from_secs(10), || async {
        r.logs()
            .contains("holds more memory than routes.yaml declares")
            .then_some(())
    })
    .await;
    assert!(warned.is_some(), "no warning; logs:\n{}", r.logs());
    let logs = r.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("holds more memory"))
        .unwrap();
    assert!(line.contains("sim/understated"), "{line}");
    assert!(!logs
        .lines()
        .any(|l| l.contains("holds more memory") && l.contains("sim/honest")));
}

/// Writes a /proc/meminfo the router reads instead of the real one.
fn set_available(path: &std::path::Path, bytes: u64) {
    let text = format!(
        "MemTotal:       {} kB\nMemAvailable:   {} kB\n",
        64 << 20,
        bytes / 1024
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test]
async fn when_free_memory_drops_idle_models_go_busy_ones_stay_and_new_loads_wait() {
    let meminfo = tempfile::NamedTempFile::new().unwrap();
    set_available(meminfo.path(), 8 << 30);
    let path = meminfo.path().to_str().unwrap().to_string();
    let r = Router::start_with_env(
        r#"
budget: 400MB
reserve: 100MB
queue_timeout: 2s
backends:
  sim: {command: [$BIN, sim, --port, "${PORT}", --model, "${MODEL}", --token-delay, 100ms, --tokens, "60"]}
models:
  busy: {backend: sim, memory: 50MB, args: [--memory, 50MB]}
  idle: {backend: sim, memory: 50MB, args: [--memory, 50MB]}
  later: {backend: sim, memory: 50MB, args: [--memory, 50MB]}
"#,
        &[("MODELYARD_MEMINFO", &path)],
    );
    let url = r.url("/v1/chat/completions");
    let mut one = chat("idle");
    one["max_tokens"] = 1.into();
    assert_eq!(post(&url, &one).await.status(), 200);
    // A 6 s stream keeps `busy` in flight through what follows.
    let stream = post(&url, &chat_stream("busy")).await;
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let _ = body.next().await;
    let mut events = get(&r.url("/admin/events")).await.bytes_stream();

    // Another app takes the machine's memory: only ~10 MB is free.
    set_available(meminfo.path(), 10 << 20);
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(Ok(c)) = events.next().await {
            text.push_str(&String::from_utf8_lossy(&c));
            if text.contains("free memory is short") {
                return text;
            }
        }
        text
    })
    .await
    .expect("an eviction event says why");
    assert!(seen.contains("\"idle\""), "the idle model went: {seen}");
    let status = get_json(&r.url("/admin/status")).await;
    let state = |name: &str| {
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(
        state("busy"),
        "ready",
        "work in flight is never cut: {status}"
    );
    assert!(status["budget"].as_u64().unwrap() < 400_000_000, "{status}");
    assert_eq!(status["configured_budget"], 400_000_000);
    // Why the budget is down, where the budget shows, and in the history.
    let why = status["budget_why"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("down from 400 MB: 10 MiB available now, 100 MB reserved"),
        "{status}"
    );
    let said = |kind: &str, start: &str| {
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == kind && e["detail"].as_str().unwrap().starts_with(start))
    };
    assert!(said("budget", "down to "), "{status}");
    assert!(
        said("evicting", "free memory is short: 10 MiB available"),
        "{status}"
    );

    // A new load does not fit now: it waits, then hears why.
    let msg = expect_error(post(&url, &chat("later")).await, 503, "model_not_ready").await;
    assert!(msg.contains("down from 400 MB"), "{msg}");
    // The stream was not cut.
    let mut rest = String::new();
    while let Some(Ok(c)) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");

    // Memory is back: the budget follows and the load succeeds.
    set_available(meminfo.path(), 8 << 30);
    let ok = eventually(Duration::from_secs(10), || async {
        (post(&url, &chat("later")).await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "loads fit again once memory is back");
}
