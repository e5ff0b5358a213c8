//! A day of the seed's machine in minutes: swaps between the large models every
//! few seconds, embeddings that idle out between bursts, a small model and the
//! on-device one beside them, the config reloaded and a backend killed on a
//! schedule, clients that leave mid-stream. The router's RSS, descriptors and
//! threads are sampled every second; they must not grow, and every request must
//! get an answer.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::load::HttpClient;
use crate::procs::{self, children, http_call, Proc};
use crate::setup::Rig;
use crate::stats::pct;

/// The large models take turns this often; each turn is a swap.
const SWAP_EVERY: Duration = Duration::from_secs(3);
/// Longer than any request here: past it, a request counts as unanswered.
const DEADLINE: Duration = Duration::from_secs(60);
/// Errors for the killed model within this long after the kill are the crash's.
const CRASH_WINDOW: Duration = Duration::from_secs(5);
/// Embeddings come in bursts this long, this far apart; their model idles out
/// (after `EMBED_IDLE`) in between.
const EMBED_BURST: Duration = Duration::from_secs(2);
const EMBED_CYCLE: Duration = Duration::from_secs(8);
const EMBED_IDLE: &str = "3s";

const LARGE: [&str; 3] = ["qwen3-30b-a3b", "qwen3.6-27b", "qwen3-32b"];

/// The seed's machine (routes.yaml) scaled down like the demo: three large
/// models in one group with a budget that holds one of them beside the small
/// ones, embeddings with a short idle timeout, a small model, apfel.
fn routes(sim: &[String], alias: bool) -> String {
    let sim = sim.join("\", \"");
    format!(
        "max_queue: 100000
max_connections: 4096
budget: 150MB
idle_timeout: 10m
queue_timeout: 30s
backends:
  sim:
    kind: openai
    command: [\"{sim}\", --port, \"${{PORT}}\", --model, \"${{MODEL}}\", --token-delay, 10ms, --tokens, \"12\"]
    health: /health
    start_timeout: 20s
    stop_timeout: 5s
models:
  qwen3-30b-a3b: {{backend: sim, memory: 60MB, group: large, aliases: [default, daily], args: [--memory, 30MB, --load-time, 200ms]}}
  qwen3.6-27b: {{backend: sim, memory: 65MB, group: large, aliases: [code], args: [--memory, 35MB, --load-time, 300ms]}}
  qwen3-32b: {{backend: sim, memory: 70MB, group: large, aliases: [deep], args: [--memory, 40MB, --load-time, 400ms]}}
  bge-m3: {{backend: sim, memory: 20MB, aliases: [embed], idle_timeout: {EMBED_IDLE}, args: [--memory, 5MB, --load-time, 100ms]}}
  qwen3-8b: {{backend: sim, memory: 30MB, aliases: [small], args: [--memory, 10MB, --load-time, 150ms]}}
  apple-3b: {{backend: sim, memory: 20MB, aliases: [{}], args: [--memory, 5MB, --load-time, 100ms]}}
",
        // What each reload changes: an alias comes and goes (nobody asks for it).
        if alias { "apfel, apple" } else { "apfel" }
    )
}

/// One second's reading of the router.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at: f64,
    pub rss: u64,
    pub fds: usize,
    pub threads: usize,
    /// The router's sockets in CLOSE-WAIT: the peer closed, nobody read it.
    pub close_wait: usize,
}

/// Start, peak and end of one figure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trend {
    pub start: f64,
    pub peak: f64,
    pub end: f64,
}

#[derive(Debug, Default)]
pub struct Soak {
    pub secs: f64,
    pub warmup: f64,
    /// Median of the samples this long after the warm-up, and at the very end.
    pub window: f64,
    pub every: f64,
    pub rss: Trend,
    pub fds: Trend,
    pub threads: Trend,
    pub close_wait: Trend,
    /// Median RSS (bytes) and descriptors in each tenth of the run: whether a
    /// rise levels off or keeps on.
    pub tenths: Vec<(f64, f64)>,
    /// Descriptors once the load stopped and the last answers were in.
    pub fds_at_rest: usize,
    pub samples: usize,
    pub sent: u64,
    pub ok: u64,
    /// Clients that left on purpose after a few chunks.
    pub vanished: u64,
    /// 502/503 and cut streams for a model killed just before.
    pub crash_answers: u64,
    /// Any other answer that was not a success, by status ("cut" for a stream
    /// that broke off), with an example of why.
    pub other: BTreeMap<String, (u64, String)>,
    /// No response at all, or none within the deadline.
    pub unanswered: u64,
    pub unanswered_why: Vec<String>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub reloads: u64,
    pub reload_errors: Vec<String>,
    pub kills: u64,
    /// From the router's /metrics at the end.
    pub loads: u64,
    pub idle_unloads: u64,
    pub crashes_seen: u64,
    pub router_alive: bool,
    /// Why the run failed; empty when it passed.
    pub failures: Vec<String>,
}

/// What one request came to.
enum Outcome {
    Ok(Duration),
    Vanished,
    /// Not a success: the status (0 for a stream cut after its head), why.
    Error(u16, String),
    Unanswered(String),
}

struct Done {
    model: &'static str,
    sent: Instant,
    ended: Instant,
    outcome: Outcome,
}

#[derive(Clone, Copy)]
enum Kind {
    Chat { stream: bool, vanish: bool },
    Embed,
}

fn request(base: &str, model: &str, kind: Kind, n: u64) -> Request<Full<Bytes>> {
    let (path, body) = match kind {
        Kind::Chat { stream, .. } => (
            "/v1/chat/completions",
            serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": format!("soak request {n}")}],
                "stream": stream,
            }),
        ),
        Kind::Embed => (
            "/v1/embeddings",
            serde_json::json!({"model": model, "input": format!("soak text {n}")}),
        ),
    };
    let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("{base}{path}").parse().expect("valid URI");
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    req
}

async fn exchange(client: HttpClient, req: Request<Full<Bytes>>, kind: Kind) -> Outcome {
    let t0 = Instant::now();
    let resp = match tokio::time::timeout(DEADLINE, client.request(req)).await {
        Err(_) => return Outcome::Unanswered(format!("no response head in {DEADLINE:?}")),
        Ok(Err(e)) => return Outcome::Unanswered(format!("no response: {e:?}")),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let rest = DEADLINE.saturating_sub(t0.elapsed());
    let read = async {
        let mut frames = 0u32;
        let mut tail: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return Err(format!("body: {e}")),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            frames += 1;
            if let Kind::Chat { vanish: true, .. } = kind {
                if status == StatusCode::OK && frames >= 3 {
                    // Leave with the stream half read: the body (and with it
                    // the connection) is dropped here.
                    return Ok(None);
                }
            }
            tail.extend_from_slice(&data);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 4096);
            }
        }
        Ok(Some(tail))
    };
    match tokio::time::timeout(rest, read).await {
        Err(_) => Outcome::Unanswered(format!("{status}, body unfinished after {DEADLINE:?}")),
        Ok(Ok(None)) => Outcome::Vanished,
        Ok(Err(e)) if status == StatusCode::OK => Outcome::Error(0, e),
        Ok(Err(e)) => Outcome::Error(status.as_u16(), e),
        Ok(Ok(Some(tail))) => {
            let text = String::from_utf8_lossy(&tail).into_owned();
            if status != StatusCode::OK {
                return Outcome::Error(status.as_u16(), text.chars().take(200).collect());
            }
            // A stream is whole only with its [DONE]; an SSE error event
            // instead is the router saying the backend broke off.
            let streamed = matches!(kind, Kind::Chat { stream: true, .. });
            if streamed && !text.contains("[DONE]") {
                let last: String = text.chars().rev().take(200).collect::<String>();
                return Outcome::Error(0, last.chars().rev().collect());
            }
            Outcome::Ok(t0.elapsed())
        }
    }
}

/// The router's sockets in CLOSE-WAIT, from /proc/net/tcp{,6} and its fd table.
fn close_wait(pid: i32) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(3) == Some(&"08") && f.get(9).is_some_and(|i| inodes.contains(*i))
        })
        .count()
}

fn threads(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn sample(router: &Proc, at: f64) -> Sample {
    Sample {
        at,
        rss: router.rss(),
        fds: router.fds(),
        threads: threads(router.pid()),
        close_wait: close_wait(router.pid()),
    }
}

/// Sum of a counter's samples in the router's /metrics whose line holds `label`.
fn counter(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| n.ends_with(name))
        })
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The backend process serving `model` among the router's children.
fn backend_of(router: i32, model: &str) -> Option<i32> {
    children(router).into_iter().find(|&pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        argv.windows(2)
            .any(|w| w[0] == b"--model" && w[1] == model.as_bytes())
    })
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    crate::stats::Spread::of(&v.collect::<Vec<_>>()).median
}

/// The large model in turn at `t` seconds into the run.
fn large_at(t: Duration) -> &'static str {
    LARGE[(t.as_millis() / SWAP_EVERY.as_millis()) as usize % LARGE.len()]
}

pub fn run(
    rig: &Rig,
    rt: &tokio::runtime::Handle,
    secs: f64,
    say: &dyn Fn(&str),
) -> Result<Soak, String> {
    let yaml = |alias| routes(&rig.bins.sim, alias);
    let (router, target) = rig.router("router-soak", &yaml(false))?;
    let config = rig.dir.join("router-soak.yaml");
    let head = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    let head = head[..head.find("max_queue").unwrap_or(head.len())].to_string();
    let host = target.base.trim_start_matches("http://").to_string();
    let client = crate::load::client();
    let dur = Duration::from_secs_f64(secs);
    // Reloads and crashes every minute of a ten-minute run: ten of each, however long.
    let every = Duration::from_secs_f64((secs / 10.0).clamp(5.0, 60.0));
    let warmup = secs * 0.1;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let kills = Arc::new(Mutex::new(Vec::<(Instant, &'static str)>::new()));
    let mut soak = Soak {
        secs,
        warmup,
        every: every.as_secs_f64(),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel::<Done>();
    let mut sent = 0u64;

    std::thread::scope(|scope| {
        // Every second: the router's RSS, descriptors, threads, CLOSE-WAIT sockets.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let s = sample(&router, start.elapsed().as_secs_f64());
                samples.lock().expect("samples").push(s);
                let next = Duration::from_secs_f64(s.at.floor() + 1.0);
                std::thread::sleep(next.saturating_sub(start.elapsed()));
            }
        });
        // The day's events: a reload every `every` (SIGHUP and the admin API by
        // turns), a backend killed every `every`, half a period later.
        let reloads = scope.spawn(|| {
            let mut n = 0u64;
            let mut errors = Vec::new();
            let mut next_reload = every;
            let mut next_kill = every / 2;
            while start.elapsed() < dur {
                let now = start.elapsed();
                if now >= next_reload {
                    next_reload += every;
                    n += 1;
                    let text = format!("{head}{}", yaml(n % 2 == 1));
                    if let Err(e) = std::fs::write(&config, text) {
                        errors.push(e.to_string());
                    } else if n % 2 == 1 {
                        let _ = kill(Pid::from_raw(router.pid()), Signal::SIGHUP);
                    } else {
                        match http_call(&host, "POST", "/admin/reload") {
                            Some((200, body)) if body.contains("\"reloaded\":true") => {}
                            other => errors.push(format!("POST /admin/reload: {other:?}")),
                        }
                    }
                }
                // The large model in turn (the most in flight), once it is a
                // second into its turn and so loaded: not still swapping in.
                let into_turn = now.as_millis() % SWAP_EVERY.as_millis();
                if now >= next_kill && into_turn >= 1000 {
                    let model = large_at(now);
                    if let Some(pid) = backend_of(router.pid(), model) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        kills.lock().expect("kills").push((Instant::now(), model));
                        next_kill += every;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (n, errors)
        });

        // The traffic, open loop, 50 ms ticks: ~8/s to the large model in turn
        // (streamed and not, every fourth stream left after a few chunks), 4/s
        // streamed to the small model (every fifth left), 2/s to apfel, and
        // embeddings at 5/s in bursts.
        let tick = Duration::from_millis(50);
        let mut k = 0u64;
        while start.elapsed() < dur {
            let at = start + tick * k as u32;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let t = at - start;
            let mut send = |model: &'static str, kind: Kind| {
                sent += 1;
                let req = request(&target.base, model, kind, sent);
                let (client, tx) = (client.clone(), tx.clone());
                rt.spawn(async move {
                    let t0 = Instant::now();
                    let outcome = exchange(client, req, kind).await;
                    let _ = tx.send(Done {
                        model,
                        sent: t0,
                        ended: Instant::now(),
                        outcome,
                    });
                });
            };
            if k.is_multiple_of(5) || k % 5 == 3 {
                let n = k / 5 * 2 + u64::from(k % 5 == 3);
                let stream = n.is_multiple_of(2);
                send(
                    large_at(t),
                    Kind::Chat {
                        stream,
                        vanish: stream && n.is_multiple_of(8),
                    },
                );
            }
            if k % 5 == 2 {
                let n = k / 5;
                send(
                    "qwen3-8b",
                    Kind::Chat {
                        stream: true,
                        vanish: n.is_multiple_of(5),
                    },
                );
            }
            if k % 10 == 4 {
                send(
                    "apple-3b",
                    Kind::Chat {
                        stream: false,
                        vanish: false,
                    },
                );
            }
            if k % 4 == 1 && t.as_millis() % EMBED_CYCLE.as_millis() < EMBED_BURST.as_millis() {
                send("bge-m3", Kind::Embed);
            }
            if k.is_multiple_of(200) {
                say(&format!(
                    "soak: {:.0} s of {secs:.0}, {sent} requests sent",
                    t.as_secs_f64()
                ));
            }
            k += 1;
        }
        // The load stops here; samples go on until the last answer is in.
        let (n, errors) = reloads.join().unwrap_or_default();
        soak.reloads = n;
        soak.reload_errors = errors;
        let mut lat = Vec::new();
        let crash_kills = kills.lock().expect("kills").clone();
        let drained = Instant::now();
        let mut got = 0u64;
        while got < sent {
            let Ok(d) = rx.recv_timeout(DEADLINE + Duration::from_secs(10)) else {
                break;
            };
            got += 1;
            match d.outcome {
                Outcome::Ok(l) => {
                    soak.ok += 1;
                    lat.push(l.as_nanos() as u64);
                }
                Outcome::Vanished => soak.vanished += 1,
                Outcome::Unanswered(why) => {
                    soak.unanswered += 1;
                    if soak.unanswered_why.len() < 5 {
                        soak.unanswered_why.push(format!("{}: {why}", d.model));
                    }
                }
                Outcome::Error(status, why) => {
                    let crashed = crash_kills.iter().any(|(at, m)| {
                        *m == d.model && d.ended >= *at && d.sent <= *at + CRASH_WINDOW
                    });
                    if crashed && matches!(status, 0 | 502 | 503) {
                        soak.crash_answers += 1;
                    } else {
                        let key = if status == 0 {
                            "stream cut".to_string()
                        } else {
                            status.to_string()
                        };
                        let e = soak.other.entry(key).or_insert((0, String::new()));
                        e.0 += 1;
                        if e.1.is_empty() {
                            e.1 = format!("{}: {why}", d.model);
                        }
                    }
                }
            }
        }
        // Answers that never came back at all (tasks lost) are unanswered too.
        soak.unanswered += sent - got;
        if sent > got {
            soak.unanswered_why
                .push(format!("{} requests never reported back", sent - got));
        }
        say(&format!(
            "soak: load stopped; last answers in after {:.1} s",
            drained.elapsed().as_secs_f64()
        ));
        std::thread::sleep(Duration::from_secs(2));
        soak.fds_at_rest = router.fds();
        stop.store(true, Ordering::Relaxed);
        lat.sort_unstable();
        soak.latency_p50_ms = pct(&lat, 50.0) as f64 / 1e6;
        soak.latency_p99_ms = pct(&lat, 99.0) as f64 / 1e6;
        soak.kills = crash_kills.len() as u64;
    });

    soak.sent = sent;
    let metrics = procs::http_get(&host, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    soak.loads = counter(&metrics, "loads_total", "");
    soak.idle_unloads = counter(&metrics, "evictions_total", "\"idle\"");
    soak.crashes_seen = counter(&metrics, "backend_crashes_total", "");
    let mut router = router;
    soak.router_alive = router.alive();

    // Start: the samples in a window after the warm-up; end: the last window
    // under load. Medians, so one busy second moves neither.
    let samples = samples.lock().expect("samples").clone();
    // At least a whole turn of the three large models and of the embedding
    // bursts, so both windows hold the same mix of loaded models (each holds
    // a connection and its output pipes).
    let window = (secs * 0.05).max(9.0);
    soak.window = window;
    soak.samples = samples.len();
    let at_start: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= warmup && s.at < warmup + window)
        .collect();
    let at_end: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= secs - window && s.at < secs)
        .collect();
    let trend = |f: &dyn Fn(&Sample) -> f64| Trend {
        start: median(at_start.iter().map(|s| f(s))),
        peak: samples.iter().map(f).fold(0.0, f64::max),
        end: median(at_end.iter().map(|s| f(s))),
    };
    soak.rss = trend(&|s| s.rss as f64);
    soak.fds = trend(&|s| s.fds as f64);
    soak.threads = trend(&|s| s.threads as f64);
    soak.close_wait = trend(&|s| s.close_wait as f64);
    soak.tenths = (0..10)
        .map(|i| {
            let (a, b) = (secs * i as f64 / 10.0, secs * (i + 1) as f64 / 10.0);
            let part: Vec<&Sample> = samples.iter().filter(|s| s.at >= a && s.at < b).collect();
            (
                median(part.iter().map(|s| s.rss as f64)),
                median(part.iter().map(|s| s.fds as f64)),
            )
        })
        .collect();
    soak.failures = verdict(&soak);
    say(&format!(
        "soak: fds {:.0} → {:.0} (peak {:.0}), RSS {:.1} → {:.1} MiB, threads {:.0} → {:.0}; {} sent, {} ok, {} left on purpose, {} crash answers, {} unanswered; {}",
        soak.fds.start,
        soak.fds.end,
        soak.fds.peak,
        crate::mib(soak.rss.start as u64),
        crate::mib(soak.rss.end as u64),
        soak.threads.start,
        soak.threads.end,
        soak.sent,
        soak.ok,
        soak.vanished,
        soak.crash_answers,
        soak.unanswered,
        if soak.failures.is_empty() { "passed" } else { "FAILED" }
    ));
    Ok(soak)
}

/// Why the run fails: growth past 10 % after the warm-up (descriptors get 8
/// more for the requests that happen to be in flight), a request unanswered,
/// or the router gone.
fn verdict(s: &Soak) -> Vec<String> {
    let mut out = Vec::new();
    if s.at_start_missing() {
        out.push("too few samples to compare start and end (a run under ~30 s?)".into());
    }
    if s.fds.end > s.fds.start * 1.1 + 8.0 {
        out.push(format!(
            "descriptors grew: {:.0} after the warm-up, {:.0} at the end (allowed {:.0})",
            s.fds.start,
            s.fds.end,
            s.fds.start * 1.1 + 8.0
        ));
    }
    if s.rss.end > s.rss.start * 1.1 {
        out.push(format!(
            "RSS grew: {:.1} MiB after the warm-up, {:.1} MiB at the end (allowed {:.1})",
            crate::mib(s.rss.start as u64),
            crate::mib(s.rss.end as u64),
            crate::mib((s.rss.start * 1.1) as u64)
        ));
    }
    if s.unanswered > 0 {
        out.push(format!(
            "{} requests unanswered: {}",
            s.unanswered,
            s.unanswered_why.join("; ")
        ));
    }
    if !s.router_alive {
        out.push("the router exited during the run".into());
    }
    out
}

impl Soak {
    fn at_start_missing(&self) -> bool {
        self.fds.start.is_nan() || self.fds.end.is_nan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat() -> Soak {
        let t = |v: f64| Trend {
            start: v,
            peak: v,
            end: v,
        };
        Soak {
            rss: t(9e6),
            fds: t(30.0),
            threads: t(2.0),
            router_alive: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_flat_run_passes_and_growth_or_silence_fails_it() {
        assert!(verdict(&flat()).is_empty());
        // Descriptors: 10 % + 8 is noise, one more is a leak.
        let mut s = flat();
        s.fds.end = 41.0;
        assert!(verdict(&s).is_empty());
        s.fds.end = 42.0;
        assert!(
            verdict(&s)[0].contains("descriptors grew"),
            "{:?}",
            verdict(&s)
        );
        let mut s = flat();
        s.rss.end = 9e6 * 1.11;
        assert!(verdict(&s)[0].contains("RSS grew"));
        let mut s = flat();
        s.unanswered = 1;
        s.unanswered_why.push("qwen3-32b: no response".into());
        assert!(verdict(&s)[0].contains("1 requests unanswered: qwen3-32b"));
        let mut s = flat();
        s.router_alive = false;
        assert_eq!(verdict(&s).len(), 1);
        // No samples to compare: not a pass.
        let mut s = flat();
        s.fds.start = f64::NAN;
        assert!(!verdict(&s).is_empty());
    }

    #[test]
    fn metrics_counters_sum_by_name_and_label() {
        let m = "# TYPE modelyard_loads counter\n\
                 modelyard_loads_total{model=\"a\"} 3\n\
                 modelyard_loads_total{model=\"b\"} 4\n\
                 modelyard_load_duration_seconds_count{model=\"a\"} 9\n\
                 modelyard_evictions_total{model=\"e\",reason=\"idle\"} 2\n\
                 modelyard_evictions_total{model=\"a\",reason=\"make_room\"} 5\n";
        assert_eq!(counter(m, "loads_total", ""), 7);
        assert_eq!(counter(m, "evictions_total", "\"idle\""), 2);
        assert_eq!(counter(m, "backend_crashes_total", ""), 0);
    }

    #[test]
    fn the_large_models_take_turns() {
        let at = |ms| large_at(Duration::from_millis(ms));
        assert_eq!(at(0), LARGE[0]);
        assert_eq!(at(2999), LARGE[0]);
        assert_eq!(at(3000), LARGE[1]);
        assert_eq!(at(9000), LARGE[0]);
    }
}
