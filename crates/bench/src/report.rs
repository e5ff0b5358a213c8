//! docs/benchmarks.md and its plot.

use std::fmt::Write;

use crate::limits::{CancelReport, Many, Overload};
use crate::load::{Round, StreamRound};
use crate::sched::{Bound, Outcome};
use crate::stats::{pct, Spread};
use crate::{added, each, mib, round_p, us, Legs, Opts};

/// Where the backend of a fixed-rate leg runs, with two CPUs for three
/// programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The backend with the load generator on CPU 0, the router alone on CPU 1.
    Split,
    /// The backend beside the router on CPU 1, the load generator alone.
    Shared,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Split => "split",
            Layout::Shared => "shared",
        }
    }
}

/// One fixed rate in one layout: its legs' rounds, each leg's proxy CPU per
/// request by round (empty for direct), and the load average before.
pub struct Rate {
    pub rate: f64,
    pub layout: Layout,
    pub legs: Legs<Round>,
    pub cpu: Vec<Vec<f64>>,
    pub load: String,
}

#[derive(Default)]
pub struct Report {
    pub command: String,
    pub header: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub idle_rss: u64,
    pub load_rss: u64,
    pub after_rss: u64,
    pub peer_idle_rss: Option<u64>,
    pub peer_load_rss: Option<u64>,
    pub rates: Vec<Rate>,
    pub saturation: Option<(Legs<Round>, Vec<Vec<f64>>, String)>,
    pub low: Option<(Legs<Round>, String)>,
    pub streams: Option<(Legs<StreamRound>, String)>,
    pub many: Vec<Many>,
    pub cancel: Option<CancelReport>,
    pub overload: Option<Overload>,
    pub sched: Vec<(&'static str, Outcome, Outcome, Outcome, Bound)>,
    pub soak: Option<crate::soak::Soak>,
    pub load_after: String,
    /// (target, measured, met)
    summary: Vec<(String, String, &'static str)>,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(crate::root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn ok(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

impl Report {
    pub fn new(opts: &Opts, nofile: u64, pinned: bool) -> Report {
        let mut header = crate::procs::machine();
        let dirty = if sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        };
        header.insert(
            0,
            ("Date".into(), sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        );
        header.push((
            "Commit".into(),
            format!("{}{dirty}", sh("git", &["rev-parse", "--short", "HEAD"])),
        ));
        header.push(("Load average at start".into(), crate::procs::loadavg()));
        header.push((
            "Pinning".into(),
            if pinned {
                "load generator + backends on CPU 0, router / LiteLLM on the others (taskset); the *shared* fixed-rate legs have their backend on the router's CPU"
                    .into()
            } else {
                "none (--no-pin, or fewer than 2 CPUs)".into()
            },
        ));
        header.push((
            "Rounds".into(),
            format!(
                "{} per scenario, {:.1} s per leg per round, legs interleaved (A B, B A, …)",
                opts.rounds, opts.secs
            ),
        ));
        header.push(("Open files limit".into(), nofile.to_string()));
        let mut command = String::from(
            "cargo build --release -p modelyard-bench -p modelyard && target/release/modelyard-bench",
        );
        for a in std::env::args().skip(1) {
            command.push(' ');
            command.push_str(&a);
        }
        Report {
            command,
            header,
            ..Default::default()
        }
    }

    pub fn markdown(&mut self) -> String {
        let body = self.sections();
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Produced by `{}` (the crate `crates/bench`). Every figure is a ratio or a \
             difference against the same simulated backend reached directly, measured in the \
             same run with the legs interleaved; medians over rounds, with the spread \
             (min…max) in brackets. The load generator, the backends and the router share the \
             machine below, so absolute figures move with its load; compare within one run.\n",
            self.command
        );
        let _ = writeln!(
            s,
            "The peer, LiteLLM's proxy, runs when `.venv-litellm` exists at the repository's root \
             (`python3 -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]'`); \
             without it the run says so below and leaves its columns out. The reference proxy, \
             nginx, runs when it is installed (`apt-get install nginx-light`), with the same \
             rule.\n"
        );
        for (k, v) in &self.header {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        let _ = writeln!(s, "- **Load average at end**: {}", self.load_after);
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s, "\n![benchmarks](benchmarks.svg)\n");
        let _ = writeln!(s, "## Targets\n\n| target | measured | |\n|---|---|---|");
        for (t, m, met) in &self.summary {
            let _ = writeln!(s, "| {t} | {m} | {met} |");
        }
        s.push('\n');
        s.push_str(&body);
        s
    }

    fn sections(&mut self) -> String {
        let mut s = String::new();
        if !self.rates.is_empty() {
            let _ = writeln!(
            s,
            "## 1. Non-streamed chat requests, open loop\n\nLatency from each request's *intended* send \
             time (coordinated-omission corrected), keep-alive on both legs. \"added\" = router \
             leg − direct leg, per round, then the median of those. `tcp-relay` is a relay inside the bench, \
             on the router's CPU, that only copies bytes both ways (tokio's `copy_bidirectional`): \
             the two extra loopback hops every proxy adds, before it does any work of its own. \
             `hyper-relay` (backend beside the router only) relays through hyper's server and \
             hyper-util's pooled client and does nothing else: the share of the library the router \
             is built on. \
             `nginx` (when installed) is the reference C reverse proxy in front of the same backend: \
             one worker, keep-alive upstream, on the router's CPU. Proxy CPU per request = the \
             proxy's utime+stime over a round ÷ requests it answered (the relay: its thread's). \
             LiteLLM serves ~100 requests a second at most, so it is measured at saturation and \
             at 20 rps below, not at these rates.\n\n\
             Two layouts of the three programs on two CPUs, each with its own backend and router: \
             *split* puts the backend with the load generator on CPU 0 and the router alone on CPU 1, \
             so the direct leg never crosses between CPUs and the proxied one crosses four times; \
             *shared* puts the backend beside the router on CPU 1, so both legs cross twice and \
             what is added is the proxy's own work. The targets are read from *shared*.\n"
        );
            let _ = writeln!(s, "| rate | layout | leg | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | proxy CPU µs/request | achieved rps | errors | loadavg |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        let rates = std::mem::take(&mut self.rates);
        let judged = if rates.iter().any(|r| r.layout == Layout::Shared) {
            Layout::Shared
        } else {
            Layout::Split
        };
        for Rate {
            rate,
            layout,
            legs,
            cpu,
            load,
        } in &rates
        {
            for (i, name) in legs.names.iter().enumerate() {
                let add = |p: f64| {
                    if i == 0 {
                        "".into()
                    } else {
                        added(legs, i, |r| round_p(r, p)).show(0, "")
                    }
                };
                let errors: u64 = legs.rounds[i].iter().map(|r| r.errors).sum();
                let _ = writeln!(
                    s,
                    "| {rate} | {} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} | {load} |",
                    layout.name(),
                    each(legs, i, |r| round_p(r, 50.0)).show(0, ""),
                    each(legs, i, |r| round_p(r, 99.0)).show(0, ""),
                    each(legs, i, |r| round_p(r, 99.9)).show(0, ""),
                    add(50.0),
                    add(99.0),
                    add(99.9),
                    if cpu[i].is_empty() {
                        "".into()
                    } else {
                        Spread::of(&cpu[i]).show(1, "")
                    },
                    each(legs, i, |r| r.rps()).show(0, ""),
                );
            }
            if *rate != 1000.0 || legs.names.len() < 2 {
                continue;
            }
            let relays = [
                ("tcp-relay", "the hops alone: a byte-copying relay's added p50 at 1k rps; the router above it"),
                ("hyper-relay", "hyper alone: its server and pooled client relaying, added p50 at 1k rps; the router above it"),
            ];
            for (relay, what) in relays {
                let Some(f) = legs.names.iter().position(|n| *n == relay) else {
                    continue;
                };
                let floor = added(legs, f, |r| round_p(r, 50.0));
                let above = {
                    let d: Vec<f64> = legs.rounds[1]
                        .iter()
                        .zip(&legs.rounds[f])
                        .map(|(x, y)| round_p(x, 50.0) - round_p(y, 50.0))
                        .collect();
                    Spread::of(&d)
                };
                self.summary.push((
                    format!("(context, {}) {what}", layout.name()),
                    format!(
                        "{}; router − relay {}",
                        floor.show(0, " µs"),
                        above.show(0, " µs")
                    ),
                    "floor",
                ));
            }
            let p50 = added(legs, 1, |r| round_p(r, 50.0));
            if *layout != judged {
                self.summary.push((
                    format!("(context, {}) added latency p50 at 1k rps", layout.name()),
                    p50.show(0, " µs"),
                    "context",
                ));
                continue;
            }
            let p99 = added(legs, 1, |r| round_p(r, 99.0));
            self.summary.push((
                format!("added latency p50 ≤ 100 µs at 1k rps ({})", layout.name()),
                p50.show(0, " µs"),
                ok(p50.median <= 100.0),
            ));
            self.summary.push((
                format!("added latency p99 ≤ 1 ms at 1k rps ({})", layout.name()),
                p99.show(0, " µs"),
                ok(p99.median <= 1000.0),
            ));
            if let Some(n) = legs.names.iter().position(|n| *n == "nginx") {
                // Both legs minus the same direct round: the difference of p50s.
                let d: Vec<f64> = legs.rounds[1]
                    .iter()
                    .zip(&legs.rounds[n])
                    .map(|(x, y)| round_p(x, 50.0) - round_p(y, 50.0))
                    .collect();
                let over = Spread::of(&d);
                self.summary.push((
                    format!(
                        "added latency p50 ≤ nginx's + 15 µs at 1k rps ({})",
                        layout.name()
                    ),
                    format!(
                        "modelyard {}, nginx {}: modelyard − nginx {}",
                        p50.show(0, " µs"),
                        added(legs, n, |r| round_p(r, 50.0)).show(0, " µs"),
                        over.show(0, " µs")
                    ),
                    ok(over.median <= 15.0),
                ));
            }
            if let Some(b) = legs.names.iter().position(|n| *n == crate::ROUTER_B) {
                // The second build against the first, round by round, and
                // against nginx as the first is.
                let minus = |other: usize| {
                    let d: Vec<f64> = legs.rounds[b]
                        .iter()
                        .zip(&legs.rounds[other])
                        .map(|(x, y)| round_p(x, 50.0) - round_p(y, 50.0))
                        .collect();
                    Spread::of(&d).show(0, " µs")
                };
                let nginx = legs.names.iter().position(|n| *n == "nginx");
                self.summary.push((
                    format!(
                        "(context, {}) --router-b's added p50 at 1k rps",
                        layout.name()
                    ),
                    format!(
                        "{}; b − modelyard {}{}; CPU µs/request b {}, modelyard {}",
                        added(legs, b, |r| round_p(r, 50.0)).show(0, " µs"),
                        minus(1),
                        nginx
                            .map(|n| format!("; b − nginx {}", minus(n)))
                            .unwrap_or_default(),
                        Spread::of(&cpu[b]).show(1, ""),
                        Spread::of(&cpu[1]).show(1, ""),
                    ),
                    "context",
                ));
            }
        }
        self.rates = rates;

        if let Some((legs, cpu, load)) = &self.saturation {
            let _ = writeln!(
                s,
                "\n## Saturation, closed loop ({} connections)\n\nPeak throughput only (closed loop \
                 hides queueing; latencies here are not the router's added latency). Proxy CPU per \
                 request = the proxy process's own utime+stime over a round ÷ requests it served \
                 (nginx: master + worker; the relay: its thread's); CPU share = that CPU time ÷ the \
                 round's wall time: a proxy well under 100 % was not what limited its leg (on a \
                 virtual machine, wake-ups between the CPUs often are). loadavg before: {load}.\n",
                crate::SAT_CONNS
            );
            let _ = writeln!(s, "| leg | rps | ÷ direct | p50 µs | p99 µs | proxy CPU µs/request | proxy CPU share | errors |\n|---|---|---|---|---|---|---|---|");
            let share = |i: usize| {
                let v: Vec<f64> = cpu[i]
                    .iter()
                    .zip(&legs.rounds[i])
                    .map(|(c, r)| c * r.rps() / 1e6 * 100.0)
                    .collect();
                Spread::of(&v)
            };
            let ratio = |i: usize| {
                let d: Vec<f64> = legs.rounds[i]
                    .iter()
                    .zip(&legs.rounds[0])
                    .map(|(x, b)| x.rps() / b.rps())
                    .collect();
                Spread::of(&d)
            };
            for (i, name) in legs.names.iter().enumerate() {
                let errors: u64 = legs.rounds[i].iter().map(|r| r.errors).sum();
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {} | {errors} |",
                    each(legs, i, |r| r.rps()).show(0, ""),
                    if i == 0 {
                        "1".into()
                    } else {
                        ratio(i).show(2, "")
                    },
                    each(legs, i, |r| round_p(r, 50.0)).show(0, ""),
                    each(legs, i, |r| round_p(r, 99.0)).show(0, ""),
                    if cpu[i].is_empty() {
                        "".into()
                    } else {
                        Spread::of(&cpu[i]).show(1, "")
                    },
                    if cpu[i].is_empty() {
                        "".into()
                    } else {
                        share(i).show(0, " %")
                    },
                );
            }
            if let Some(i) = legs.names.iter().position(|n| *n == "modelyard") {
                let c = Spread::of(&cpu[i]);
                self.summary.push((
                    "router CPU ≤ 40 µs per request at saturation".into(),
                    format!(
                        "{} (throughput ÷ direct {})",
                        c.show(1, " µs"),
                        ratio(i).show(2, "")
                    ),
                    ok(c.median <= 40.0),
                ));
            }
            if let (Some(i), Some(j)) = (
                legs.names.iter().position(|n| *n == "modelyard"),
                legs.names.iter().position(|n| *n == "litellm"),
            ) {
                let d: Vec<f64> = legs.rounds[i]
                    .iter()
                    .zip(&legs.rounds[j])
                    .map(|(a, b)| a.rps() / b.rps().max(1e-9))
                    .collect();
                let x = Spread::of(&d);
                self.summary.push((
                    "≥ 20× LiteLLM's throughput".into(),
                    x.show(1, "×"),
                    ok(x.median >= 20.0),
                ));
            }
            if let (Some(i), Some(j)) = (
                legs.names.iter().position(|n| *n == "modelyard"),
                legs.names.iter().position(|n| *n == "nginx"),
            ) {
                let d: Vec<f64> = legs.rounds[i]
                    .iter()
                    .zip(&legs.rounds[j])
                    .map(|(a, b)| a.rps() / b.rps().max(1e-9))
                    .collect();
                let x = Spread::of(&d);
                let c = |k: usize| Spread::of(&cpu[k]).show(1, " µs");
                self.summary.push((
                    "throughput at saturation ≥ 0.9 × nginx's".into(),
                    format!(
                        "{} (CPU per request: modelyard {}, nginx {}; nginx's CPU share {})",
                        x.show(2, "×"),
                        c(i),
                        c(j),
                        share(j).show(0, " %")
                    ),
                    ok(x.median >= 0.9),
                ));
            }
        }

        if let Some((legs, cpu, _)) = &self.saturation {
            if let (Some(i), Some(j)) = (
                legs.names.iter().position(|n| *n == "modelyard"),
                legs.names.iter().position(|n| *n == crate::NOLOG),
            ) {
                // Rounds are interleaved: each on−off pair ran back to back.
                let d: Vec<f64> = cpu[i]
                    .iter()
                    .zip(&cpu[j])
                    .map(|(on, off)| on - off)
                    .collect();
                let x = Spread::of(&d);
                self.summary.push((
                    "request log ≤ 2 µs of router CPU per request at saturation".into(),
                    format!(
                        "{} (log on {}, off {}, medians of per-round differences)",
                        x.show(1, " µs"),
                        Spread::of(&cpu[i]).show(1, " µs"),
                        Spread::of(&cpu[j]).show(1, " µs")
                    ),
                    ok(x.median <= 2.0),
                ));
            }
        }

        if let Some((legs, load)) = &self.low {
            let _ = writeln!(
                s,
                "\n## Light load, all legs (20 rps open loop)\n\nWhere the peer is not overloaded. loadavg before: {load}.\n"
            );
            let _ = writeln!(s, "| leg | p50 µs | p99 µs | added p50 µs | added p99 µs | errors |\n|---|---|---|---|---|---|");
            for (i, name) in legs.names.iter().enumerate() {
                let errors: u64 = legs.rounds[i].iter().map(|r| r.errors).sum();
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {errors} |",
                    each(legs, i, |r| round_p(r, 50.0)).show(0, ""),
                    each(legs, i, |r| round_p(r, 99.0)).show(0, ""),
                    if i == 0 {
                        "".into()
                    } else {
                        added(legs, i, |r| round_p(r, 50.0)).show(0, "")
                    },
                    if i == 0 {
                        "".into()
                    } else {
                        added(legs, i, |r| round_p(r, 99.0)).show(0, "")
                    },
                );
            }
            if let (Some(i), Some(j)) = (
                legs.names.iter().position(|n| *n == "modelyard"),
                legs.names.iter().position(|n| *n == "litellm"),
            ) {
                let a = added(legs, i, |r| round_p(r, 50.0)).median;
                let b = added(legs, j, |r| round_p(r, 50.0)).median;
                self.summary.push((
                    "added latency under 1/20 of LiteLLM's (p50, 20 rps)".into(),
                    format!("{a:.0} µs vs {b:.0} µs: 1/{:.0}", b / a.max(1.0)),
                    ok(a * 20.0 <= b),
                ));
            }
        }

        if let Some((legs, load)) = &self.streams {
            let _ = writeln!(
                s,
                "\n## 2. Streamed responses (50 streams/s, 32 tokens 2 ms apart)\n\nTime to first byte from the intended send time; gaps between consecutive body frames as the client read them. \
                 Frames per stream equal to direct means nothing was coalesced. loadavg before: {load}.\n"
            );
            let _ = writeln!(s, "| leg | TTFB p50 µs | TTFB p99 µs | added TTFB p50 µs | added TTFB p99 µs | gap p50 µs | gap p99 µs | frames/stream | ok | errors |\n|---|---|---|---|---|---|---|---|---|---|");
            let p = |v: &Vec<u64>, q: f64| us(pct(v, q));
            for (i, name) in legs.names.iter().enumerate() {
                let ok_n: u64 = legs.rounds[i].iter().map(|r| r.ok).sum();
                let err: u64 = legs.rounds[i].iter().map(|r| r.errors).sum();
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {ok_n} | {err} |",
                    each(legs, i, |r| p(&r.ttfb, 50.0)).show(0, ""),
                    each(legs, i, |r| p(&r.ttfb, 99.0)).show(0, ""),
                    if i == 0 {
                        "".into()
                    } else {
                        added(legs, i, |r| p(&r.ttfb, 50.0)).show(0, "")
                    },
                    if i == 0 {
                        "".into()
                    } else {
                        added(legs, i, |r| p(&r.ttfb, 99.0)).show(0, "")
                    },
                    each(legs, i, |r| p(&r.gaps, 50.0)).show(0, ""),
                    each(legs, i, |r| p(&r.gaps, 99.0)).show(0, ""),
                    each(legs, i, |r| r.frames as f64 / r.ok.max(1) as f64).show(1, ""),
                );
            }
            if let Some(i) = legs.names.iter().position(|n| *n == "modelyard") {
                let t = added(legs, i, |r| p(&r.ttfb, 50.0));
                self.summary.push((
                    "streaming: added TTFB ≤ 1 ms".into(),
                    t.show(0, " µs (p50)"),
                    ok(t.median <= 1000.0),
                ));
                let g = added(legs, i, |r| p(&r.gaps, 99.0));
                let f = added(legs, i, |r| r.frames as f64 / r.ok.max(1) as f64);
                self.summary.push((
                    "streaming: no chunk held back".into(),
                    format!(
                        "gap p99 − direct {}; frames/stream − direct {}",
                        g.show(0, " µs"),
                        f.show(1, "")
                    ),
                    ok(f.median.abs() < 0.5 && g.median < 1000.0),
                ));
            }
        }

        if let Some(first) = self.many.first() {
            let _ = writeln!(
                s,
                "\n## 3. {} concurrent streams through the router\n\nOpened at 2000/s, each 12 chunks 1 s apart, all open together for ~7 s, \
                 first with an h2 client leg ({} connections, ≤ 150 streams each; an h2 server allows 200), then with HTTP/1.1 \
                 clients, a connection per stream. This machine's hard limit of open files is 20,000 a process and the router's \
                 upstream leg is HTTP/1.1 (one socket per stream), so 10,000 HTTP/1.1 clients would need all of the router's \
                 descriptors: that leg holds fewer streams. Per stream = (peak RSS − RSS before the first stream) ÷ streams. \
                 Router CPU per chunk = its utime+stime over the scenario ÷ (completed streams × 14 frames).\n\n\
                 | client leg | streams | peak open | completed | errors | router peak RSS | per stream | router peak fds | router CPU µs/chunk | router CPU share |\n|---|---|---|---|---|---|---|---|---|---|",
                first.n, first.conns
            );
            for m in &self.many {
                let leg = if m.h2 {
                    format!("h2, {} connections", m.conns)
                } else {
                    "HTTP/1.1, a connection each".to_string()
                };
                let per =
                    m.peak_rss.saturating_sub(m.start_rss) as f64 / m.n.max(1) as f64 / 1024.0;
                let _ = writeln!(
                    s,
                    "| {leg} | {} | {} | {} | {} | {:.1} MiB | {per:.1} KiB | {} | {:.1} | {:.0} % |",
                    m.n, m.peak_open, m.ok, m.errors, mib(m.peak_rss), m.peak_fds, m.cpu_per_chunk_us, m.cpu_share * 100.0
                );
            }
            self.summary.push((
                format!("{} concurrent streams, RSS < 100 MB, no errors", first.n),
                format!(
                    "{:.1} MiB, {} errors, peak {} open",
                    mib(first.peak_rss),
                    first.errors,
                    first.peak_open
                ),
                ok(first.peak_rss < 100_000_000 && first.errors == 0 && first.n >= 10_000),
            ));
            let per = |m: &Many| {
                m.peak_rss.saturating_sub(m.start_rss) as f64 / m.n.max(1) as f64 / 1024.0
            };
            let shown: Vec<String> = self
                .many
                .iter()
                .map(|m| {
                    format!(
                        "{}: {:.1} KiB ({} streams, {} errors)",
                        if m.h2 { "h2" } else { "HTTP/1.1" },
                        per(m),
                        m.n,
                        m.errors
                    )
                })
                .collect();
            self.summary.push((
                "memory per open stream < 64 KiB, h2 and HTTP/1.1 clients".into(),
                shown.join("; "),
                ok(self.many.len() == 2
                    && self.many.iter().all(|m| per(m) < 64.0 && m.errors == 0)),
            ));
        }

        let _ = writeln!(
            s,
            "\n## 4. Router memory\n\n| idle (after start) | peak under load (1k/5k rps, saturation) | idle after all scenarios |\n|---|---|---|\n| {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mib(self.idle_rss), mib(self.load_rss), mib(self.after_rss)
        );
        if let (Some(a), Some(b)) = (self.peer_idle_rss, self.peer_load_rss) {
            let _ = writeln!(
                s,
                "\nLiteLLM, same run: {:.0} MiB idle, {:.0} MiB under load.",
                mib(a),
                mib(b)
            );
        }
        self.summary.push((
            "idle RSS < 15 MB".into(),
            format!("{:.1} MiB", mib(self.idle_rss)),
            ok(self.idle_rss < 15_000_000),
        ));

        if let Some(c) = &self.cancel {
            let _ = writeln!(s, "\n## Cancellation\n\nThe client drops the connection; the time until the backend's `/sim/stats` counts the request cancelled (polled every 2 ms).\n\n| case | backend saw the close after |\n|---|---|");
            for k in &c.cases {
                let _ = writeln!(
                    s,
                    "| {} | {} |",
                    k.case,
                    k.seen_ms
                        .map_or("not within 2 s".into(), |m| format!("{m:.1} ms"))
                );
            }
            let _ = writeln!(s, "\nRouter open descriptors before: {}, after: {} (no connection leaked if equal or fewer).", c.fds_before, c.fds_after);
            let worst = c
                .cases
                .iter()
                .map(|k| k.seen_ms.unwrap_or(f64::INFINITY))
                .fold(0.0, f64::max);
            self.summary.push((
                "cancellation reaches the backend within 100 ms".into(),
                format!(
                    "worst {worst:.1} ms; fds {} → {}",
                    c.fds_before, c.fds_after
                ),
                ok(worst <= 100.0 && c.fds_after <= c.fds_before),
            ));
            let _ = writeln!(
                s,
                "\n(A client that leaves while its request is queued never reaches a backend: its place in the queue counts toward no `max_queue` and no model is loaded for it; `tests/proxy.rs` `a_swap_whose_request_was_abandoned_loads_nothing_and_keeps_the_model` and the supervisor's paused-clock tests hold that, so it is not timed here.)"
            );
        }
        if let Some(o) = &self.overload {
            let _ = writeln!(
                s,
                "\n## Overload\n\n`max_queue: 8`, a model that takes 2 s to load, {} requests at once.\n\n\
                 | refused (503) | with Retry-After | 503 latency p50 / max | admitted | admitted answered 200 | all answered after | fresh requests then, p50 | router RSS before / peak |\n|---|---|---|---|---|---|---|---|\n\
                 | {} | {} | {:.2} / {:.2} ms | {} | {} | {:.0} ms | {:.0} µs ({} errors) | {:.1} / {:.1} MiB |",
                o.sent, o.refused, o.retry_after, o.refused_p50_ms, o.refused_max_ms, o.admitted, o.admitted_ok,
                o.drained_ms, o.after_p50_us, o.after_errors, mib(o.rss_before), mib(o.rss_peak)
            );
        }

        if !self.sched.is_empty() {
            let _ = writeln!(
                s,
                "\n## 5. Scheduling\n\nTwo models of 600 MB under a 1 GB budget (only one fits), each taking {} ms to load; \
                 short requests {} ms, the long one {} ms. Measured through the router: \"policy\" is its default \
                 (`max_swap_delay: 10s`: a model draining for a swap still serves its own new requests meanwhile), \
                 \"msd 0\" the same router with `max_swap_delay: 0s` (it still serves every request queued for a model \
                 with one load). Computed from the trace: \"strict FCFS\" takes requests in arrival order and never \
                 reorders across models, so each change of model is a swap; the offline bound loads each distinct \
                 model once, in sequence, nothing finishing before it arrives and is served.\n\n\
                 The first three traces send each request at a fixed time, from as many connections as are busy. \
                 The last two are people: each person is one client to the router (one keep-alive connection, \
                 one User-Agent) and sends one request at a time, {} ms after the previous answer for the app's \
                 follow-ups (title, tags; not streamed), {} ms before a switch, {} ms between the two people's chats \
                 (streamed). A person's own requests cannot be regrouped, so for them the bound loads once per change \
                 of model in their own sequence, and their thinking, loads and answers add up; \
                 \"worst latency\" is then from sending to the end of the answer.\n",
                crate::sched::LOAD.as_millis(),
                (crate::sched::TOKEN * crate::sched::SHORT).as_millis(),
                (crate::sched::TOKEN * crate::sched::LONG).as_millis(),
                crate::sched::FOLLOW_UP.as_millis(),
                crate::sched::PAUSE.as_millis(),
                crate::sched::THINK.as_millis(),
            );
            let _ = writeln!(s, "| trace | loads: policy / msd 0 / strict FCFS / bound | makespan ms: policy / msd 0 / strict FCFS / bound | worst latency ms: policy / msd 0 / strict FCFS | errors |\n|---|---|---|---|---|");
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            let mut met = true;
            let (mut pol_total, mut strict_total) = (0, 0);
            for (name, p, n, f, b) in &self.sched {
                let _ = writeln!(
                    s,
                    "| {name} | {} / {} / {} / {} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {} / {} |",
                    p.loads,
                    n.loads,
                    f.loads,
                    b.loads,
                    ms(p.makespan),
                    ms(n.makespan),
                    ms(f.makespan),
                    ms(b.makespan),
                    ms(p.worst_wait),
                    ms(n.worst_wait),
                    ms(f.worst_wait),
                    p.errors,
                    n.errors
                );
                // A switch is forced on a lingering model each max_swap_delay a
                // request for the other waits; the open traces are far shorter.
                let forced = (p.makespan.as_secs_f64() / crate::sched::MAX_SWAP_DELAY.as_secs_f64())
                    .floor() as u64;
                met &= p.loads <= b.loads + forced.max(1);
                pol_total += p.loads;
                strict_total += f.loads;
                if name.starts_with("one person") {
                    self.summary.push((
                        "scheduling: one person's bursty client pays one load per switch".into(),
                        format!(
                            "{} loads for {} (policy), {} with msd 0",
                            p.loads, b.loads, n.loads
                        ),
                        ok(p.loads == b.loads && p.errors == 0),
                    ));
                }
            }
            self.summary.push((
                "scheduling: loads ≤ offline bound (+1 per forced switch); far fewer than FCFS"
                    .into(),
                format!("{pol_total} loads vs strict FCFS {strict_total} over the traces"),
                ok(met && pol_total * 2 <= strict_total),
            ));
            self.swap_section(&mut s);
        }
        if let Some(k) = self.soak.take() {
            self.soak_section(&mut s, &k);
            self.soak = Some(k);
        }
        s
    }

    /// The router's swap overhead, from the one-person trace's swaps.
    fn swap_section(&mut self, s: &mut String) {
        let Some((_, p, n, _, _)) = self.sched.iter().find(|t| !t.1.swaps.is_empty()) else {
            return;
        };
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let spread =
            |swaps: &[crate::sched::SwapCost],
             f: &dyn Fn(&crate::sched::SwapCost) -> Option<std::time::Duration>| {
                Spread::of(&swaps.iter().filter_map(f).map(ms).collect::<Vec<_>>())
            };
        let _ = writeln!(
            s,
            "\n### Swap overhead\n\nOn the one-person trace each switch is a swap with nothing in flight and \
             nobody else waiting. The overhead of a swap is the switching request's time to its first byte (a \
             streamed chat: the backend's opening chunk, sent before any token) less the new backend's own load, \
             which the backend reports itself: each sim appends the wall-clock time of its start (first act of \
             its process), its readiness (just before /health turns 200) and its SIGTERM to a `--timeline` file. \
             The old backend's own stop time is taken as zero: the sim exits on SIGTERM at once, so what follows \
             the SIGTERM — the process ending, the router seeing its memory back, spawning the new one, the \
             new process reaching its `main` — all counts as the router's. Medians over the swaps, (min…max).\n\n\
             | run | swaps | overhead | sent → old one's SIGTERM | SIGTERM → new one started | new one ready → first byte | backend's own load |\n|---|---|---|---|---|---|---|"
        );
        for (run, o) in [("policy", p), ("msd 0", n)] {
            let _ = writeln!(
                s,
                "| {run} | {} | {} | {} | {} | {} | {} |",
                o.swaps.len(),
                spread(&o.swaps, &|c| Some(c.overhead)).show(1, " ms"),
                spread(&o.swaps, &|c| c.to_stop).show(1, " ms"),
                spread(&o.swaps, &|c| c.stop_to_start).show(1, " ms"),
                spread(&o.swaps, &|c| Some(c.ready_to_byte)).show(1, " ms"),
                spread(&o.swaps, &|c| Some(c.load)).show(1, " ms"),
            );
        }
        let over = spread(&p.swaps, &|c| Some(c.overhead));
        self.summary.push((
            "swap overhead ≤ 20 ms (first byte − the backend's own load, median over swaps)".into(),
            format!("{} over {} swaps", over.show(1, " ms"), p.swaps.len()),
            ok(over.median <= 20.0),
        ));
    }

    fn soak_section(&mut self, s: &mut String, k: &crate::soak::Soak) {
        let _ = writeln!(
            s,
            "\n## 6. Soak: a day of swaps in {:.0} s\n\n\
             The seed's machine scaled down like the demo (`modelyard sim` backends, one process per model, \
             loads of 100–400 ms): the three large models in one `group` take turns every 3 s (each turn a swap), \
             8 requests/s to the one in turn (half streamed, every fourth stream left after three chunks), \
             4 streams/s to the small model (every fifth left), 2/s to apfel, embeddings at 5/s in 2 s bursts \
             every 8 s with `idle_timeout: 3s` (so they idle out in between). Every {:.0} s routes.yaml is \
             reloaded (SIGHUP and `POST /admin/reload` by turns, an alias added or removed), and every {:.0} s, \
             half a period later, the backend of the large model in turn is killed (SIGKILL). The router's RSS, \
             open descriptors, threads and sockets in CLOSE-WAIT are read from /proc every second. \
             Start = median of the samples in the {:.0} s after a warm-up of {:.0} s; end = median of the last \
             {:.0} s under load; peak = the highest sample. The run fails if descriptors end above start + 10 % + 8, \
             RSS above start + 10 %, or any request is unanswered (no response, or none within 60 s). \
             A 502/503 or a cut stream for the killed model within 5 s of the kill is the crash's answer, counted apart.\n",
            k.secs, k.every, k.every, k.window, k.warmup, k.window
        );
        let _ = writeln!(
            s,
            "| router | start | peak | end |\n|---|---|---|---|\n\
             | RSS | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n\
             | open descriptors | {:.0} | {:.0} | {:.0} (at rest after: {}) |\n\
             | threads | {:.0} | {:.0} | {:.0} |\n\
             | sockets in CLOSE-WAIT | {:.0} | {:.0} | {:.0} |\n",
            mib(k.rss.start as u64),
            mib(k.rss.peak as u64),
            mib(k.rss.end as u64),
            k.fds.start,
            k.fds.peak,
            k.fds.end,
            k.fds_at_rest,
            k.threads.start,
            k.threads.peak,
            k.threads.end,
            k.close_wait.start,
            k.close_wait.peak,
            k.close_wait.end,
        );
        let tenth = |f: &dyn Fn(&(f64, f64)) -> String| {
            k.tenths.iter().map(f).collect::<Vec<_>>().join(" · ")
        };
        let _ = writeln!(
            s,
            "By tenth of the run (medians): RSS {} MiB; descriptors {}.\n",
            tenth(&|t| format!("{:.1}", mib(t.0 as u64))),
            tenth(&|t| format!("{:.0}", t.1)),
        );
        let other: u64 = k.other.values().map(|v| v.0).sum();
        let _ = writeln!(
            s,
            "| requests | answered 200 | left mid-stream on purpose | crash's 502/503/cut | other errors | unanswered | latency p50 / p99 of 200s |\n|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {other} | {} | {:.0} / {:.0} ms |\n",
            k.sent,
            k.ok,
            k.vanished,
            k.crash_answers,
            k.unanswered,
            k.latency_p50_ms,
            k.latency_p99_ms
        );
        for (status, (n, why)) in &k.other {
            let why: String = why.replace('|', "/").replace('\n', " ");
            let _ = writeln!(s, "- {n} × {status}, e.g. {why}");
        }
        let _ = writeln!(
            s,
            "\nEvents: {} reloads ({} refused), {} backends killed; the router's /metrics at the end: {} loads, {} idle unloads, {} crashes seen. {}\n",
            k.reloads,
            k.reload_errors.len(),
            k.kills,
            k.loads,
            k.idle_unloads,
            k.crashes_seen,
            if k.failures.is_empty() {
                "**Passed.**".to_string()
            } else {
                format!("**FAILED**: {}.", k.failures.join("; "))
            }
        );
        self.summary.push((
            format!(
                "soak ({:.0} s): descriptors and RSS flat, every request answered",
                k.secs
            ),
            format!(
                "fds {:.0} → {:.0}, RSS {:.1} → {:.1} MiB, {} unanswered of {}",
                k.fds.start,
                k.fds.end,
                mib(k.rss.start as u64),
                mib(k.rss.end as u64),
                k.unanswered,
                k.sent
            ),
            ok(k.failures.is_empty()),
        ));
    }

    /// Two panels: throughput at saturation, added p50 latency (log scale).
    pub fn svg(&self) -> String {
        let mut bars_a: Vec<(String, f64)> = Vec::new();
        if let Some((legs, _, _)) = &self.saturation {
            for (i, n) in legs.names.iter().enumerate() {
                bars_a.push((n.to_string(), each(legs, i, |r| r.rps()).median));
            }
        }
        let mut bars_b: Vec<(String, f64)> = Vec::new();
        for r in &self.rates {
            for (i, n) in r.legs.names.iter().enumerate() {
                if !matches!(*n, "modelyard" | "nginx") || (*n == "nginx" && r.rate != 1000.0) {
                    continue;
                }
                bars_b.push((
                    format!("{n} @{}k {}", r.rate / 1000.0, r.layout.name()),
                    added(&r.legs, i, |x| round_p(x, 50.0)).median,
                ));
            }
        }
        if let Some((legs, _)) = &self.low {
            for (i, n) in legs.names.iter().enumerate().skip(1) {
                bars_b.push((
                    format!("{n} @20"),
                    added(legs, i, |r| round_p(r, 50.0)).median,
                ));
            }
        }
        let mut s = String::from(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="820" height="340" font-family="sans-serif" font-size="12">
<rect width="820" height="340" fill="white"/>
"#,
        );
        let panel = |s: &mut String,
                     x0: f64,
                     title: &str,
                     bars: &[(String, f64)],
                     log: bool,
                     unit: &str| {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="22" font-size="14" font-weight="bold">{title}</text>"#,
                x0
            );
            let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
            let h = 230.0;
            let scale = |v: f64| {
                if log {
                    (v.max(1.0).log10() / max.max(10.0).log10()) * h
                } else {
                    v / max * h
                }
            };
            let w = 360.0 / bars.len().max(1) as f64;
            let colors = ["#888", "#2a7", "#c44", "#48c", "#bbb"];
            for (i, (name, v)) in bars.iter().enumerate() {
                let bh = scale(*v).max(1.0);
                let x = x0 + i as f64 * w + 8.0;
                let color = if name.starts_with("litellm") {
                    colors[2]
                } else if name.starts_with("nginx") {
                    colors[3]
                } else if name.ends_with("-relay") {
                    colors[4]
                } else if name.starts_with("direct") {
                    colors[0]
                } else {
                    colors[1]
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.0}" y="{:.0}" width="{:.0}" height="{bh:.0}" fill="{color}"/>"#,
                    270.0 - bh,
                    w - 16.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{v:.0}{unit}</text>"#,
                    x + (w - 16.0) / 2.0,
                    265.0 - bh
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.0}" y="290" text-anchor="middle">{name}</text>"#,
                    x + (w - 16.0) / 2.0
                );
            }
            let _ = writeln!(
                s,
                r#"<line x1="{x0}" y1="270" x2="{}" y2="270" stroke="black"/>"#,
                x0 + 370.0
            );
        };
        panel(
            &mut s,
            20.0,
            "Throughput at saturation (rps)",
            &bars_a,
            false,
            "",
        );
        panel(
            &mut s,
            430.0,
            "Added latency p50 (µs, log scale)",
            &bars_b,
            true,
            " µs",
        );
        let _ = writeln!(
            s,
            r##"<text x="20" y="325" fill="#555">{} · commit {} · medians of interleaved rounds</text>"##,
            self.header.first().map(|h| h.1.as_str()).unwrap_or(""),
            self.header
                .iter()
                .find(|h| h.0 == "Commit")
                .map(|h| h.1.as_str())
                .unwrap_or("")
        );
        s.push_str("</svg>\n");
        s
    }
}
