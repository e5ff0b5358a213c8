//! Scheduling: mixed traces over two models that cannot both fit, run with the
//! router's policy and with naive first-come-first-served (`max_swap_delay: 0s`),
//! beside the offline lower bound for the same trace.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::load::{chat_body, trace, HttpClient};
use crate::procs::http_get;
use crate::setup::Rig;

/// Each model's load time in the sim, and how long a short and a long request take.
pub const LOAD: Duration = Duration::from_millis(300);
pub const TOKEN: Duration = Duration::from_millis(5);
pub const SHORT: u32 = 8;
pub const LONG: u32 = 300;

pub struct Trace {
    pub name: &'static str,
    pub items: Vec<(Duration, &'static str, u32)>,
}

pub fn traces() -> Vec<Trace> {
    let ms = Duration::from_millis;
    let interleaved = (0..24)
        .map(|i| (ms(i * 60), if i % 2 == 0 { "a" } else { "b" }, SHORT))
        .collect();
    let mut bursts = Vec::new();
    for (k, m) in ["a", "b", "a", "b"].iter().enumerate() {
        for j in 0..8 {
            bursts.push((ms(k as u64 * 150 + j * 5), *m, SHORT));
        }
    }
    let mut hold = vec![(ms(0), "a", LONG)];
    for i in 1..16 {
        hold.push((ms(i * 80), if i % 2 == 0 { "a" } else { "b" }, SHORT));
    }
    vec![
        Trace {
            name: "interleaved A/B ×24, 60 ms apart",
            items: interleaved,
        },
        Trace {
            name: "bursts: 8×A, 8×B, 8×A, 8×B, 150 ms apart",
            items: bursts,
        },
        Trace {
            name: "a long A (1.5 s) holding, A/B interleaved behind it",
            items: hold,
        },
    ]
}

pub struct Outcome {
    pub loads: u64,
    pub makespan: Duration,
    pub worst_wait: Duration,
    pub errors: usize,
}

pub struct Bound {
    pub loads: u64,
    pub makespan: Duration,
}

fn service(tokens: u32) -> Duration {
    TOKEN * tokens
}

/// Offline lower bound: with one model in memory at a time and every request
/// known in advance, each distinct model is loaded at least once (and that is
/// reachable by serving each model's requests together); loads are sequential,
/// and nothing finishes before it arrives and is served.
pub fn bound(t: &Trace) -> Bound {
    let mut models: Vec<&str> = t.items.iter().map(|i| i.1).collect();
    models.sort_unstable();
    models.dedup();
    let k = models.len() as u32;
    let shortest = t
        .items
        .iter()
        .map(|i| service(i.2))
        .min()
        .unwrap_or_default();
    let by_arrival = t
        .items
        .iter()
        .map(|i| i.0 + service(i.2))
        .max()
        .unwrap_or_default();
    Bound {
        loads: k as u64,
        makespan: by_arrival.max(LOAD * k + shortest),
    }
}

/// Strict first-come-first-served, simulated: requests are taken in arrival
/// order and never reordered across models, so every change of model in that
/// order is a swap, which waits for what is in flight to finish. Requests for
/// the loaded model run side by side, as the simulated backend serves them.
pub fn strict_fcfs(t: &Trace) -> Outcome {
    let mut resident: Option<&str> = None;
    let (mut ready_at, mut free_at, mut end) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut loads = 0;
    let mut worst = Duration::ZERO;
    for &(at, m, n) in &t.items {
        if resident != Some(m) {
            ready_at = at.max(free_at) + LOAD;
            resident = Some(m);
            loads += 1;
        }
        let done = at.max(ready_at) + service(n);
        free_at = free_at.max(done);
        end = end.max(done);
        worst = worst.max(done - at);
    }
    Outcome {
        loads,
        makespan: end,
        worst_wait: worst,
        errors: 0,
    }
}

fn loads(base: &str) -> u64 {
    let host = base.trim_start_matches("http://");
    let Some((_, text)) = http_get(host, "/metrics") else {
        return 0;
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("loads_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub fn run(
    rig: &Rig,
    rt: &tokio::runtime::Handle,
    client: &HttpClient,
    t: &Trace,
    naive: bool,
) -> Result<Outcome, String> {
    let sim = rig.bins.sim.join("\", \"");
    let yaml = format!(
        "budget: 1GB\nidle_timeout: never\nmax_swap_delay: {}\nbackends:\n  sim: {{command: [\"{sim}\", --port, \"${{PORT}}\", --model, \"${{MODEL}}\", --load-time, {}ms, --token-delay, {}ms, --tokens, \"{LONG}\"], health: /health}}\nmodels:\n  a: {{backend: sim, memory: 600MB}}\n  b: {{backend: sim, memory: 600MB}}\n",
        if naive { "0s" } else { "10s" },
        LOAD.as_millis(),
        TOKEN.as_millis(),
    );
    let (router, target) = rig.router(if naive { "sched-fcfs" } else { "sched" }, &yaml)?;
    let items: Vec<(Duration, Bytes)> = t
        .items
        .iter()
        .map(|(at, m, n)| (*at, chat_body(m, false, Some(*n))))
        .collect();
    let start = Instant::now();
    let lat = trace(rt, client, &target, &items);
    let makespan = start.elapsed();
    let out = Outcome {
        loads: loads(&target.base),
        makespan,
        worst_wait: lat.iter().flatten().max().copied().unwrap_or_default(),
        errors: lat.iter().filter(|l| l.is_none()).count(),
    };
    drop(router);
    Ok(out)
}
