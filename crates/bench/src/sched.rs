//! Scheduling: mixed traces over two models that cannot both fit, run with the
//! router's policy and with naive first-come-first-served (`max_swap_delay: 0s`),
//! beside strict FCFS and the offline lower bound computed for the same trace.
//! Some traces fire requests at fixed times from many connections; others are
//! people, each one client sending one request at a time, as a chat app does.
//! On the one-person trace every switch of model is a swap with nothing else
//! in the way, so its first byte, less the backend's own load (from the sims'
//! `--timeline`), is the router's own swap overhead.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::load::{self, chat_body, trace, Answer, Ask, HttpClient};
use crate::procs::http_get;
use crate::setup::Rig;

/// Each model's load time in the sim, and how long a short and a long request take.
pub const LOAD: Duration = Duration::from_millis(300);
pub const TOKEN: Duration = Duration::from_millis(5);
pub const SHORT: u32 = 8;
pub const LONG: u32 = 300;

pub struct Trace {
    pub name: &'static str,
    pub shape: Shape,
}

pub enum Shape {
    /// Requests sent at fixed offsets from the start, each on its own task
    /// whatever the others are doing: `(offset, model, tokens)`.
    Open(Vec<(Duration, &'static str, u32)>),
    /// People, each one client to the router (one keep-alive connection, one
    /// User-Agent) sending one request at a time.
    People(Vec<Person>),
}

pub struct Person {
    pub agent: &'static str,
    pub turns: Vec<Turn>,
}

/// A request a person sends `think` after their previous answer (after the
/// start, for their first).
#[derive(Clone, Copy)]
pub struct Turn {
    pub think: Duration,
    pub model: &'static str,
    pub tokens: u32,
    /// A chat streams (its first byte is the swap's measure); follow-ups do not.
    pub stream: bool,
}

/// How long the person of the bursty trace pauses before switching model: half
/// a load, less than the quiet the old linger rule waited for.
pub const PAUSE: Duration = Duration::from_millis(150);
/// The app's follow-ups (title, tags) after a chat's answer.
pub const FOLLOW_UP: Duration = Duration::from_millis(50);
/// How long each of the two alternating people thinks between chats.
pub const THINK: Duration = Duration::from_millis(150);

/// The swap the router forces on a lingering model for a waiting one
/// (`max_swap_delay` of the policy runs).
pub const MAX_SWAP_DELAY: Duration = Duration::from_secs(10);

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
    let turn = |think, model, stream| Turn {
        think,
        model,
        tokens: SHORT,
        stream,
    };
    let mut bursty = Vec::new();
    for (k, m) in ["a", "b"].iter().cycle().take(12).enumerate() {
        bursty.push(turn(if k == 0 { ms(0) } else { PAUSE }, *m, true));
        bursty.push(turn(FOLLOW_UP, m, false));
        bursty.push(turn(FOLLOW_UP, m, false));
    }
    let chats = |first: Duration, model| {
        (0..10)
            .map(|i| turn(if i == 0 { first } else { THINK }, model, true))
            .collect()
    };
    vec![
        Trace {
            name: "interleaved A/B ×24, 60 ms apart",
            shape: Shape::Open(interleaved),
        },
        Trace {
            name: "bursts: 8×A, 8×B, 8×A, 8×B, 150 ms apart",
            shape: Shape::Open(bursts),
        },
        Trace {
            name: "a long A (1.5 s) holding, A/B interleaved behind it",
            shape: Shape::Open(hold),
        },
        Trace {
            name: "one person, bursty client: a chat + 2 follow-ups 50 ms apart, a 150 ms pause, switch; 12 times",
            shape: Shape::People(vec![Person {
                agent: "bench-chat-app (one person)",
                turns: bursty,
            }]),
        },
        Trace {
            name: "two people alternating, one on A, one on B: 10 chats each, 150 ms to think",
            shape: Shape::People(vec![
                Person {
                    agent: "bench-chat-app (person 1)",
                    turns: chats(ms(0), "a"),
                },
                Person {
                    agent: "bench-chat-app (person 2)",
                    turns: chats(ms(75), "b"),
                },
            ]),
        },
    ]
}

/// The router's swap overhead on one swap: what a request for a cold model
/// waited for its first byte beyond the backend's own load, in parts.
#[derive(Clone, Copy, Debug)]
pub struct SwapCost {
    /// First byte − sent − (the new backend's ready − its start).
    pub overhead: Duration,
    /// Sent → the old backend got its SIGTERM (the decision, a drain of nothing).
    pub to_stop: Option<Duration>,
    /// The SIGTERM → the new backend's process started (the old one exits, the
    /// router sees its memory back, spawns the new one).
    pub stop_to_start: Option<Duration>,
    /// The new backend ready → the first byte (readiness noticed, the request forwarded, the
    /// backend's opening chunk).
    pub ready_to_byte: Duration,
    /// The backend's own load (its start → ready), subtracted.
    pub load: Duration,
}

pub struct Outcome {
    pub loads: u64,
    pub makespan: Duration,
    pub worst_wait: Duration,
    pub errors: usize,
    /// Each swap of a trace with one person (none on the others, whose swaps
    /// also wait for other people's work).
    pub swaps: Vec<SwapCost>,
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
/// and nothing finishes before it arrives and is served. A person sends one
/// request at a time, each after the answer before it, so their own requests
/// cannot be regrouped: each change of model in them is a load of its own,
/// and their thinking, loads and answers follow one another.
pub fn bound(t: &Trace) -> Bound {
    let mut models: Vec<&str> = requests(t).map(|r| r.0).collect();
    models.sort_unstable();
    models.dedup();
    let k = models.len() as u32;
    let shortest = requests(t).map(|r| service(r.1)).min().unwrap_or_default();
    let (loads, last) = match &t.shape {
        Shape::Open(items) => (
            k,
            items
                .iter()
                .map(|i| i.0 + service(i.2))
                .max()
                .unwrap_or_default(),
        ),
        Shape::People(people) => people
            .iter()
            .map(|p| {
                let changes = p.turns.windows(2).filter(|w| w[0].model != w[1].model);
                let own = changes.count() as u32 + 1;
                let chain: Duration = p.turns.iter().map(|t| t.think + service(t.tokens)).sum();
                (own, chain + LOAD * own)
            })
            .fold((k, Duration::ZERO), |(l, m), (own, chain)| {
                (l.max(own), m.max(chain))
            }),
    };
    Bound {
        loads: loads as u64,
        makespan: last.max(LOAD * k + shortest),
    }
}

/// Every request of a trace as (model, tokens), in no particular order.
fn requests(t: &Trace) -> Box<dyn Iterator<Item = (&'static str, u32)> + '_> {
    match &t.shape {
        Shape::Open(items) => Box::new(items.iter().map(|i| (i.1, i.2))),
        Shape::People(people) => Box::new(
            people
                .iter()
                .flat_map(|p| p.turns.iter().map(|t| (t.model, t.tokens))),
        ),
    }
}

/// A strict first-come-first-served server: requests taken in arrival order
/// and never reordered across models, so every change of model in that order
/// is a swap, which waits for what is in flight to finish. Requests for the
/// loaded model run side by side, as the simulated backend serves them.
#[derive(Default)]
struct Fcfs {
    resident: Option<&'static str>,
    ready_at: Duration,
    free_at: Duration,
    end: Duration,
    loads: u64,
    worst: Duration,
}

impl Fcfs {
    /// Serves a request arriving at `at` (no earlier than any before it); returns when it ends.
    fn serve(&mut self, at: Duration, model: &'static str, tokens: u32) -> Duration {
        if self.resident != Some(model) {
            self.ready_at = at.max(self.free_at) + LOAD;
            self.resident = Some(model);
            self.loads += 1;
        }
        let done = at.max(self.ready_at) + service(tokens);
        self.free_at = self.free_at.max(done);
        self.end = self.end.max(done);
        self.worst = self.worst.max(done - at);
        done
    }

    fn outcome(self) -> Outcome {
        Outcome {
            loads: self.loads,
            makespan: self.end,
            worst_wait: self.worst,
            errors: 0,
            swaps: Vec::new(),
        }
    }
}

/// Strict first-come-first-served, simulated on the trace. People's requests
/// arrive as their answers come back: each next request is served in order of
/// arrival, which depends only on those before it.
pub fn strict_fcfs(t: &Trace) -> Outcome {
    let mut server = Fcfs::default();
    match &t.shape {
        Shape::Open(items) => {
            for &(at, m, n) in items {
                server.serve(at, m, n);
            }
        }
        Shape::People(people) => {
            // Each person's next turn and when it arrives.
            let mut next: Vec<(usize, Duration)> = people
                .iter()
                .map(|p| (0, p.turns.first().map(|t| t.think).unwrap_or_default()))
                .collect();
            while let Some(i) = (0..people.len())
                .filter(|&i| next[i].0 < people[i].turns.len())
                .min_by_key(|&i| next[i].1)
            {
                let (turn, at) = next[i];
                let t = people[i].turns[turn];
                let done = server.serve(at, t.model, t.tokens);
                let think = people[i].turns.get(turn + 1).map(|t| t.think);
                next[i] = (turn + 1, done + think.unwrap_or_default());
            }
        }
    }
    server.outcome()
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
    let name = if naive { "sched-fcfs" } else { "sched" };
    let timeline = rig.dir.join(format!("{name}-timeline.log"));
    let _ = std::fs::remove_file(&timeline);
    let sim = rig.bins.sim.join("\", \"");
    let yaml = format!(
        "budget: 1GB\nidle_timeout: never\nmax_swap_delay: {}\nbackends:\n  sim: {{command: [\"{sim}\", --port, \"${{PORT}}\", --model, \"${{MODEL}}\", --load-time, {}ms, --token-delay, {}ms, --tokens, \"{LONG}\", --timeline, \"{}\"], health: /health}}\nmodels:\n  a: {{backend: sim, memory: 600MB}}\n  b: {{backend: sim, memory: 600MB}}\n",
        if naive {
            "0s".to_string()
        } else {
            format!("{}s", MAX_SWAP_DELAY.as_secs())
        },
        LOAD.as_millis(),
        TOKEN.as_millis(),
        timeline.display(),
    );
    // Its request log in the scratch directory, as the other routers here keep
    // theirs: never the user's own.
    let (router, target) = rig.router(name, &format!("{}{yaml}", rig.request_log(name)))?;
    let start = Instant::now();
    let mut out = match &t.shape {
        Shape::Open(items) => {
            let items: Vec<(Duration, Bytes)> = items
                .iter()
                .map(|(at, m, n)| (*at, chat_body(m, false, Some(*n))))
                .collect();
            let lat = trace(rt, client, &target, &items);
            Outcome {
                loads: 0,
                makespan: start.elapsed(),
                worst_wait: lat.iter().flatten().max().copied().unwrap_or_default(),
                errors: lat.iter().filter(|l| l.is_none()).count(),
                swaps: Vec::new(),
            }
        }
        Shape::People(people) => {
            let who: Vec<(&str, Vec<Ask>)> = people
                .iter()
                .map(|p| {
                    let asks = p
                        .turns
                        .iter()
                        .map(|t| Ask {
                            think: t.think,
                            body: chat_body(t.model, t.stream, Some(t.tokens)),
                        })
                        .collect();
                    (p.agent, asks)
                })
                .collect();
            let answers = load::people(rt, &target, &who);
            let makespan = start.elapsed();
            let sent: usize = people.iter().map(|p| p.turns.len()).sum();
            let ok = answers.iter().flatten().filter(|a| a.ok).count();
            let swaps = match (people.as_slice(), answers.as_slice()) {
                ([one], [theirs]) => swap_costs(&one.turns, theirs, &read_timeline(&timeline)),
                _ => Vec::new(),
            };
            Outcome {
                loads: 0,
                makespan,
                worst_wait: answers
                    .iter()
                    .flatten()
                    .map(|a| a.latency)
                    .max()
                    .unwrap_or_default(),
                errors: sent - ok,
                swaps,
            }
        }
    };
    out.loads = loads(&target.base);
    drop(router);
    Ok(out)
}

/// A backend's timeline: (ns since the Unix epoch, step, model).
type Timeline = Vec<(u128, String, String)>;

fn read_timeline(path: &std::path::Path) -> Timeline {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let ns = w.next()?.parse().ok()?;
            Some((ns, w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The cost of each of one person's swaps: each turn for another model than
/// the turn before, matched with the backends' own account of the swap (the
/// new model's first start and ready after the request was sent, the old
/// one's SIGTERM between).
fn swap_costs(turns: &[Turn], answers: &[Answer], timeline: &Timeline) -> Vec<SwapCost> {
    let ns = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    };
    let find = |step: &str, model: &str, from: u128| {
        timeline
            .iter()
            .find(|(at, s, m)| *at >= from && s == step && m == model)
            .map(|e| e.0)
    };
    let dur = |from: u128, to: u128| Duration::from_nanos(to.saturating_sub(from) as u64);
    turns
        .windows(2)
        .zip(answers.iter().skip(1))
        .filter(|(w, a)| w[0].model != w[1].model && a.ok)
        .filter_map(|(w, a)| {
            let sent = ns(a.sent);
            let first = sent + a.first_byte.as_nanos();
            let start = find("start", w[1].model, sent)?;
            let ready = find("ready", w[1].model, start)?;
            let term = find("term", w[0].model, sent).filter(|&t| t <= start);
            let load = dur(start, ready);
            Some(SwapCost {
                overhead: a.first_byte.saturating_sub(load),
                to_stop: term.map(|t| dur(sent, t)),
                stop_to_start: term.map(|t| dur(t, start)),
                ready_to_byte: dur(ready, first),
                load,
            })
        })
        .collect()
}
