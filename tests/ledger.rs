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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
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
        async move { post(&url, &chat(["a", "b", "tiny"][i % 3])).await.status() }
    });
    let statuses = futures_util::future::join_all(burst).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
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
    let last = body
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap()
        .trim_start_matches("data: ");
    let event: Value =
        serde_json::from_str(last).unwrap_or_else(|_| panic!("no error event at the end: {body}"));
    assert_eq!(event["error"]["code"], "backend_stream_broken");
    let ok = eventually(Duration::from_secs(5), || async {
        (post(&url, &chat("m")).await.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the next request did not restart the backend");
}
