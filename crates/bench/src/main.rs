//! `modelyard-bench`: the router beside the same simulated backend reached
//! directly (and LiteLLM's proxy, when installed), rounds interleaved, medians
//! of per-round differences with their spread. Writes docs/benchmarks.md and
//! docs/benchmarks.svg.

// A benchmark measures the real clock, from plain threads as well as tasks;
// the paused tokio clock the rest of the workspace is held to has no place here.
#![allow(clippy::disallowed_types)]

mod limits;
mod load;
mod procs;
mod relay;
mod report;
mod sched;
mod setup;
mod soak;
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::{chat_body, client, Round, StreamRound, Target};
use procs::{Meter, Proc};
use report::{Layout, Report};
use stats::{pct, Spread};

pub struct Opts {
    pub quick: bool,
    pub rounds: usize,
    pub secs: f64,
    pub streams: usize,
    pub peer: bool,
    pub out: Option<PathBuf>,
    pub litellm: PathBuf,
    /// nginx, the reference proxy (None: --no-nginx).
    pub nginx: Option<PathBuf>,
    /// Scenarios to run (all when None), for working on one at a time.
    pub only: Option<Vec<String>>,
    /// Pin the load generator and backends to CPU 0 and the proxies to the rest.
    pub pin: bool,
    /// How long the soak runs, seconds.
    pub soak_secs: f64,
    /// The fixed rates of the rates scenario, requests a second.
    pub rates: Vec<f64>,
    /// Which layouts the rates scenario runs: split, shared or both.
    pub split: bool,
    pub shared: bool,
    /// A second build of the router, run as its own leg beside the first in
    /// the shared layout: two builds compared in one run, rounds interleaved,
    /// where runs minutes apart on a shared machine compare the machine.
    pub router_b: Option<PathBuf>,
}

/// Scenario names `--only` accepts, in the order they run.
const SCENARIOS: &[&str] = &[
    "rates",
    "saturation",
    "low",
    "streams",
    "many",
    "cancel",
    "overload",
    "sched",
    "soak",
];

impl Opts {
    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }
}

/// The routers under test take any queue and as many client connections as
/// an open-loop burst after a stall opens (the default 256 would refuse some);
/// only the overload scenario meets the limits, on purpose.
const LIMITS: &str = "max_queue: 100000\nmax_connections: 4096\n";

/// The leg of the router built from `--router-b`.
pub const ROUTER_B: &str = "modelyard-b";

/// The saturation leg of the router with `request_log: off`.
pub const NOLOG: &str = "modelyard, log off";

/// Connections of the closed loop at saturation. 32 gave the same
/// throughput on every leg here (2 vCPUs), at twice the latency.
pub const SAT_CONNS: usize = 16;

/// Streams held over HTTP/1.1 clients: each takes two of the router's
/// descriptors (client and backend), and the hard limit here is 20,000.
const H1_STREAMS: usize = 4000;

const USAGE: &str = "modelyard-bench [--quick] [--rounds N] [--secs S] [--streams N] [--no-peer] [--no-nginx] [--nginx PATH] [--no-pin] [--litellm PATH] [--soak-secs S] [--rates R,R] [--layout split|shared] [--router-b PATH] [--only rates,saturation,low,streams,many,cancel,overload,sched,soak] [--out FILE.md | --no-write]";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        rounds: 7,
        secs: 3.0,
        streams: 10_000,
        peer: true,
        out: Some(root().join("docs/benchmarks.md")),
        litellm: root().join(".venv-litellm/bin/litellm"),
        nginx: Some(find_nginx()),
        only: None,
        pin: true,
        soak_secs: 600.0,
        rates: vec![1000.0, 5000.0],
        split: true,
        shared: true,
        router_b: None,
    };
    let mut args = std::env::args().skip(1);
    let mut rounds = None;
    let mut secs = None;
    let mut streams = None;
    let mut soak_secs = None;
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--rounds" => rounds = Some(val("--rounds")?.parse().map_err(|_| "--rounds N")?),
            "--secs" => secs = Some(val("--secs")?.parse().map_err(|_| "--secs S")?),
            "--streams" => streams = Some(val("--streams")?.parse().map_err(|_| "--streams N")?),
            "--soak-secs" => {
                soak_secs = Some(
                    val("--soak-secs")?
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 30.0)
                        .ok_or("--soak-secs S: seconds, at least 30")?,
                )
            }
            "--rates" => {
                o.rates = val("--rates")?
                    .split(',')
                    .map(|r| r.trim().parse::<f64>().ok().filter(|r| *r > 0.0))
                    .collect::<Option<Vec<f64>>>()
                    .filter(|r| !r.is_empty())
                    .ok_or("--rates R,R: requests a second, each above 0")?
            }
            "--layout" => match val("--layout")?.as_str() {
                "split" => (o.split, o.shared) = (true, false),
                "shared" => (o.split, o.shared) = (false, true),
                other => return Err(format!("--layout {other}: split or shared")),
            },
            "--router-b" => o.router_b = Some(val("--router-b")?.into()),
            "--no-peer" => o.peer = false,
            "--no-pin" => o.pin = false,
            "--litellm" => o.litellm = val("--litellm")?.into(),
            "--nginx" => o.nginx = Some(val("--nginx")?.into()),
            "--no-nginx" => o.nginx = None,
            "--out" => o.out = Some(val("--out")?.into()),
            "--no-write" => o.out = None,
            "--only" => {
                let list: Vec<String> = val("--only")?.split(',').map(str::to_string).collect();
                if let Some(bad) = list.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    return Err(format!("unknown scenario {bad}\n{USAGE}"));
                }
                o.only = Some(list);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if o.quick {
        o.rounds = 3;
        o.secs = 1.0;
        o.streams = 1000;
        o.soak_secs = 60.0;
    }
    o.rounds = rounds.unwrap_or(o.rounds).max(1);
    o.secs = secs.unwrap_or(o.secs);
    o.streams = streams.unwrap_or(o.streams);
    o.soak_secs = soak_secs.unwrap_or(o.soak_secs);
    Ok(o)
}

/// nginx on PATH, else where Debian puts it (/usr/sbin is not on every PATH).
fn find_nginx() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// Samples a process's peak RSS until stopped.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(procs::rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    pub(crate) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Per-leg rounds of one scenario: `rounds[leg][round]`.
pub struct Legs<T> {
    pub names: Vec<&'static str>,
    pub rounds: Vec<Vec<T>>,
}

/// Runs `f` for each leg, `n` times, alternating the order (A B, B A, …).
fn interleave<T>(legs: &[&Target], n: usize, mut f: impl FnMut(&Target) -> T) -> Legs<T> {
    let mut rounds: Vec<Vec<T>> = legs.iter().map(|_| Vec::new()).collect();
    for r in 0..n {
        let mut order: Vec<usize> = (0..legs.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let out = f(legs[i]);
            rounds[i].push(out);
        }
    }
    Legs {
        names: legs.iter().map(|t| t.name).collect(),
        rounds,
    }
}

/// `interleave` over rounds of load, each leg's proxy CPU per answered request
/// (µs) beside it, read from the meter of the leg's base URL (none for direct).
fn metered(
    legs: &[&Target],
    meters: &HashMap<String, Meter>,
    n: usize,
    mut f: impl FnMut(&Target) -> Round,
) -> (Legs<Round>, Vec<Vec<f64>>) {
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); legs.len()];
    let out = interleave(legs, n, |t| {
        let meter = meters.get(&t.base).copied();
        let before = meter.map(Meter::seconds);
        let r = f(t);
        if let (Some(m), Some(b)) = (meter, before) {
            let i = legs.iter().position(|l| l.base == t.base).unwrap_or(0);
            cpu[i].push((m.seconds() - b) / r.ok.max(1) as f64 * 1e6);
        }
        r
    });
    (out, cpu)
}

/// Median over rounds of `g(leg round) - g(direct round)` (leg 0 is direct).
pub fn added<T>(legs: &Legs<T>, leg: usize, g: impl Fn(&T) -> f64) -> Spread {
    let d: Vec<f64> = legs.rounds[leg]
        .iter()
        .zip(&legs.rounds[0])
        .map(|(x, base)| g(x) - g(base))
        .collect();
    Spread::of(&d)
}

pub fn each<T>(legs: &Legs<T>, leg: usize, g: impl Fn(&T) -> f64) -> Spread {
    Spread::of(&legs.rounds[leg].iter().map(g).collect::<Vec<_>>())
}

pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn main() {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(opts) {
        eprintln!("modelyard-bench: {e}");
        std::process::exit(1);
    }
}

fn run(opts: Opts) -> Result<(), String> {
    let nofile = procs::raise_nofile(65_536);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Backends and the load generator on core 0, the proxy under test on core 1.
    let pinned = opts.pin && cpus >= 2 && procs::pin_self(0);
    let dir = std::env::temp_dir().join(format!("modelyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rig = setup::Rig {
        bins: procs::Bins::find()?,
        dir: dir.clone(),
        near: pinned.then(|| "0".to_string()),
        far: pinned.then(|| {
            (1..cpus)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let h = rt.handle().clone();
    let client = client();
    let secs = Duration::from_secs_f64(opts.secs);
    let mut rep = Report::new(&opts, nofile, pinned);
    let say = |s: &str| eprintln!("[{:>6.1}s] {s}", rep_clock());

    // The backends: fast non-streamed, paced streams.
    let (_sim_m, direct) = rig.sim("sim-m", "m", &["--tokens", "16"])?;
    let (_sim_s, direct_s) = rig.sim("sim-s", "s", &["--tokens", "32", "--token-delay", "2ms"])?;
    let (_sim_c, direct_c) =
        rig.sim("sim-c", "c", &["--tokens", "200", "--token-delay", "20ms"])?;
    let yaml = format!(
        "{LIMITS}backends:\n  m: {{url: \"{}\"}}\n  s: {{url: \"{}\"}}\n  c: {{url: \"{}\"}}\nmodels:\n  m: {{backend: m}}\n  s: {{backend: s}}\n  c: {{backend: c}}\n",
        direct.base, direct_s.base, direct_c.base
    );
    // As users run it: the request log on (in the scratch directory).
    let (router, routed) = rig.router("router", &format!("{}{yaml}", rig.request_log("router")))?;
    let mut meters: HashMap<String, Meter> = HashMap::new();
    meters.insert(routed.base.clone(), Meter::Process(router.pid()));
    // The same router with the log off, beside it at saturation: what the log costs.
    let unlogged = if opts.wants("saturation") {
        let (p, t) = rig.router_as("router-nolog", &format!("request_log: off\n{yaml}"), NOLOG)?;
        meters.insert(t.base.clone(), Meter::Process(p.pid()));
        Some((p, t))
    } else {
        None
    };
    std::thread::sleep(Duration::from_millis(300));
    rep.idle_rss = router.rss();
    say(&format!("router idle RSS {:.1} MiB", mib(rep.idle_rss)));

    let peer_needed = ["saturation", "low", "streams"]
        .iter()
        .any(|s| opts.wants(s));
    let peer: Option<(Proc, Target)> = if opts.peer && peer_needed {
        say("starting LiteLLM");
        match rig.litellm(&opts.litellm, &[("m", &direct), ("s", &direct_s)]) {
            Ok(p) => {
                let v = setup::litellm_version(&opts.litellm).unwrap_or_else(|| "?".into());
                rep.notes.push(format!(
                    "Peer: LiteLLM {v} (`{}`), one worker, master key set, LITELLM_LOCAL_MODEL_COST_MAP=True, pinned with the router",
                    opts.litellm.display()
                ));
                Some(p)
            }
            Err(e) => {
                let line = format!("LiteLLM skipped: {e}");
                say(&line);
                rep.notes.push(line);
                None
            }
        }
    } else if peer_needed {
        rep.notes.push("LiteLLM skipped: --no-peer".into());
        None
    } else {
        None
    };
    if let Some((p, t)) = &peer {
        rep.peer_idle_rss = Some(p.rss());
        meters.insert(t.base.clone(), Meter::Process(p.pid()));
    }

    // The reference proxy: nginx in front of the same backend, on the router's cores.
    let nginx_needed = ["rates", "saturation", "low"].iter().any(|s| opts.wants(s));
    let start_nginx = |name: &str, backend: &Target, meters: &mut HashMap<String, Meter>| {
        let exe = opts.nginx.as_ref()?;
        match rig.nginx(exe, name, backend, rig.far()) {
            Ok((p, t)) => {
                meters.insert(t.base.clone(), Meter::Tree(p.pid()));
                Some(Ok((p, t)))
            }
            Err(e) => {
                say(&format!("nginx skipped: {e}"));
                Some(Err(e))
            }
        }
    };
    let nginx: Option<(Proc, Target)> = if !nginx_needed {
        None
    } else if opts.nginx.is_none() {
        rep.notes.push("nginx skipped: --no-nginx".into());
        None
    } else {
        say("starting nginx");
        let exe = opts
            .nginx
            .as_deref()
            .unwrap_or(std::path::Path::new("nginx"));
        match start_nginx("nginx", &direct, &mut meters) {
            Some(Ok(n)) => {
                rep.notes.push(format!(
                    "Reference proxy: nginx {} (`{}`), one worker, `proxy_pass` to a keep-alive upstream (`keepalive 64`, HTTP/1.1, `proxy_buffering off`), access log off, pinned with the router; its CPU is master + worker",
                    setup::nginx_version(exe).unwrap_or_else(|| "?".into()),
                    exe.display()
                ));
                Some(n)
            }
            Some(Err(e)) => {
                rep.notes
                    .push(format!("nginx skipped: {e}; its rows are left out"));
                None
            }
            None => None,
        }
    };

    let body = chat_body("m", false, None);
    // Warm-up: connections open on both legs, caches warm.
    say("warm-up");
    for t in [
        Some(&direct),
        Some(&routed),
        unlogged.as_ref().map(|u| &u.1),
        nginx.as_ref().map(|n| &n.1),
    ]
    .into_iter()
    .flatten()
    {
        load::closed_loop(&h, &client, t, &body, 8, Duration::from_millis(500));
    }
    if let Some((_, t)) = &peer {
        load::closed_loop(&h, &client, t, &body, 4, Duration::from_secs(2));
    }

    // 1. Fixed rates, router vs direct.
    // The floor: a byte-copying relay on the router's CPU, same two extra hops.
    let (floor, floor_meter) = relay::start(&direct.base, pinned.then_some(1))?;
    meters.extend(floor_meter.map(|m| (floor.base.clone(), m)));
    let rates: &[f64] = if opts.wants("rates") {
        &opts.rates
    } else {
        &[]
    };
    // The same legs with the backend on the router's CPU: there, client →
    // backend crosses between the two CPUs as often as client → router does,
    // where in the layout above the direct leg never leaves CPU 0 and the
    // proxied one crosses four times (wake-ups that cost ~30 µs each on a VM).
    let shared = match (pinned && opts.shared, rates.is_empty()) {
        (true, false) => {
            let (sim, direct) = rig.sim_beside_proxy("sim-m-shared", "m", &["--tokens", "16"])?;
            let yaml = format!(
                "{LIMITS}backends:\n  m: {{url: \"{}\"}}\nmodels:\n  m: {{backend: m}}\n",
                direct.base
            );
            let yaml = format!("{}{yaml}", rig.request_log("router-shared"));
            let (router, routed) = rig.router("router-shared", &yaml)?;
            meters.insert(routed.base.clone(), Meter::Process(router.pid()));
            let other = match &opts.router_b {
                Some(exe) => {
                    let (p, t) = rig.router_from(exe, "router-shared-b", &yaml, ROUTER_B)?;
                    meters.insert(t.base.clone(), Meter::Process(p.pid()));
                    Some((p, t))
                }
                None => None,
            };
            let (floor, floor_meter) = relay::start(&direct.base, Some(1))?;
            meters.extend(floor_meter.map(|m| (floor.base.clone(), m)));
            // The library's own share: hyper on both sides, nothing of ours.
            let (hyped, hyped_meter) = relay::start_hyper(&direct.base, Some(1))?;
            meters.extend(hyped_meter.map(|m| (hyped.base.clone(), m)));
            let ngx = if nginx.is_some() {
                start_nginx("nginx-shared", &direct, &mut meters).and_then(Result::ok)
            } else {
                None
            };
            let mut legs = vec![direct, routed, floor, hyped];
            legs.extend(ngx.as_ref().map(|n| n.1.clone()));
            legs.extend(other.as_ref().map(|o| o.1.clone()));
            for t in &legs {
                load::closed_loop(&h, &client, t, &body, 8, Duration::from_millis(500));
            }
            Some((sim, (router, other.map(|o| o.0)), ngx.map(|n| n.0), legs))
        }
        _ => None,
    };
    for &rate in rates {
        if opts.split {
            say(&format!("{rate} rps open loop"));
            let load_before = procs::loadavg();
            let sampler = Sampler::start(router.pid());
            let mut split: Vec<&Target> = vec![&direct, &routed, &floor];
            split.extend(nginx.as_ref().map(|n| &n.1));
            let (legs, cpu) = metered(&split, &meters, opts.rounds, |t| {
                load::open_loop(&h, &client, t, &body, rate, secs, Duration::from_secs(10))
            });
            rep.load_rss = rep.load_rss.max(sampler.finish());
            rep.rates.push(report::Rate {
                rate,
                layout: Layout::Split,
                legs,
                cpu,
                load: load_before,
            });
        }
        if let Some((_, _, _, legs)) = &shared {
            say(&format!("{rate} rps open loop, backend beside the router"));
            let load_before = procs::loadavg();
            let refs: Vec<&Target> = legs.iter().collect();
            let (legs, cpu) = metered(&refs, &meters, opts.rounds, |t| {
                load::open_loop(&h, &client, t, &body, rate, secs, Duration::from_secs(10))
            });
            rep.rates.push(report::Rate {
                rate,
                layout: Layout::Shared,
                legs,
                cpu,
                load: load_before,
            });
        }
    }
    drop(shared);

    // 2. Saturation (closed loop), router CPU per request; the peer too.
    if opts.wants("saturation") {
        say("saturation");
    }
    let mut legs: Vec<&Target> = vec![&direct, &routed, &floor];
    legs.extend(unlogged.as_ref().map(|u| &u.1));
    legs.extend(nginx.as_ref().map(|n| &n.1));
    if let Some((_, t)) = &peer {
        legs.push(t);
    }
    let load_before = procs::loadavg();
    let sampler = Sampler::start(router.pid());
    let mut peak_peer = 0;
    let sat = opts.wants("saturation").then(|| {
        metered(&legs, &meters, opts.rounds, |t| {
            let r = load::closed_loop(&h, &client, t, &body, SAT_CONNS, secs);
            if let (true, Some((p, _))) = (t.name == "litellm", &peer) {
                peak_peer = peak_peer.max(p.rss());
            }
            r
        })
    });
    rep.load_rss = rep.load_rss.max(sampler.finish());
    rep.peer_load_rss = (peak_peer > 0).then_some(peak_peer);
    rep.saturation = sat.map(|(sat, cpu)| (sat, cpu, load_before));

    // Low rate, all legs: the peer's added latency where it is not overloaded.
    if opts.wants("low") {
        say("20 rps open loop, all legs");
        let load_before = procs::loadavg();
        let low = interleave(&legs, opts.rounds, |t| {
            load::open_loop(
                &h,
                &client,
                t,
                &body,
                20.0,
                secs.max(Duration::from_secs(2)),
                Duration::from_secs(30),
            )
        });
        rep.low = Some((low, load_before));
    }

    // 3. Streams: time to first byte and gaps between chunks.
    if opts.wants("streams") {
        say("streaming");
        let mut slegs: Vec<Target> = vec![
            direct_s.clone(),
            Target {
                base: routed.base.clone(),
                ..routed.clone()
            },
        ];
        if let Some((_, t)) = &peer {
            slegs.push(t.clone());
        }
        let sbody = chat_body("s", true, None);
        let load_before = procs::loadavg();
        let srefs: Vec<&Target> = slegs.iter().collect();
        let streams: Legs<StreamRound> = interleave(&srefs, opts.rounds, |t| {
            load::stream_loop(
                &h,
                &client,
                t,
                &sbody,
                50.0,
                secs.max(Duration::from_secs(2)),
            )
        });
        rep.streams = Some((streams, load_before));
    }

    // 4. Many open streams at once, through the router.
    if opts.wants("many") {
        say(&format!("{} concurrent streams over h2", opts.streams));
        rep.many
            .push(limits::many_streams(&rig, &h, opts.streams, true)?);
        // A connection per stream: two router descriptors each, so fewer fit.
        let h1 = opts.streams.min(H1_STREAMS);
        say(&format!("{h1} concurrent streams over HTTP/1.1"));
        rep.many.push(limits::many_streams(&rig, &h, h1, false)?);
    }

    // 5. Cancellation and overload.
    if opts.wants("cancel") {
        say("cancellation");
        rep.cancel = limits::cancellation(&h, &client, &router, &routed, &direct_c);
    }
    if opts.wants("overload") {
        say("overload");
        rep.overload = limits::overload(&rig, &h, &client).ok();
    }

    std::thread::sleep(Duration::from_millis(500));
    rep.after_rss = router.rss();

    // 6. Scheduling.
    let traces = if opts.wants("sched") {
        sched::traces()
    } else {
        Vec::new()
    };
    for t in traces {
        say(&format!("scheduling: {}", t.name));
        let policy = sched::run(&rig, &h, &client, &t, false)?;
        let naive = sched::run(&rig, &h, &client, &t, true)?;
        let bound = sched::bound(&t);
        let strict = sched::strict_fcfs(&t);
        rep.sched.push((t.name, policy, naive, strict, bound));
    }
    drop(peer);
    drop(nginx);

    // 7. A day of swaps, reloads and crashes, compressed.
    if opts.wants("soak") {
        say(&format!("soak, {:.0} s", opts.soak_secs));
        let s = soak::run(&rig, &h, opts.soak_secs, &say)?;
        for f in &s.failures {
            say(&format!("SOAK FAILED: {f}"));
        }
        rep.soak = Some(s);
    }
    drop(router);
    rep.load_after = procs::loadavg();

    let text = rep.markdown();
    println!("{text}");
    if let Some(out) = &opts.out {
        // What a person wrote below the marker (reading the numbers, the profile)
        // survives a new run; the numbers above it are replaced.
        let notes = std::fs::read_to_string(out)
            .ok()
            .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_string()));
        let text = match notes {
            Some(n) => format!("{text}\n{n}"),
            None => text,
        };
        std::fs::write(out, &text).map_err(|e| format!("{}: {e}", out.display()))?;
        let svg = out.with_extension("svg");
        std::fs::write(&svg, rep.svg()).map_err(|e| format!("{}: {e}", svg.display()))?;
        eprintln!("wrote {} and {}", out.display(), svg.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    match rep.soak.as_ref().map(|s| &s.failures) {
        Some(f) if !f.is_empty() => Err(format!("the soak FAILED: {}", f.join("; "))),
        _ => Ok(()),
    }
}

/// Where the generated part of docs/benchmarks.md ends and notes kept across runs begin.
const NOTES_MARKER: &str = "<!-- notes: written by hand, kept by the next run -->";

fn rep_clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn round_p(r: &Round, p: f64) -> f64 {
    us(pct(&r.lat, p))
}
