//! The router at its limits: many streams open at once, clients that leave
//! mid-request, and more requests than its queue admits.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::load::{self, chat_body, Target};
use crate::procs::{self, Proc};
use crate::stats::pct;
use crate::{round_p, setup, Sampler};

pub struct Many {
    pub n: usize,
    /// The client leg spoke h2 (streams shared out over few connections), or
    /// HTTP/1.1 (a connection per stream).
    pub h2: bool,
    pub conns: usize,
    /// The router's RSS before the first stream opened.
    pub start_rss: u64,
    pub peak_open: usize,
    pub ok: usize,
    pub errors: usize,
    pub peak_rss: u64,
    pub peak_fds: usize,
    pub cpu_per_chunk_us: f64,
    pub cpu_share: f64,
}

pub fn many_streams(
    rig: &setup::Rig,
    h: &tokio::runtime::Handle,
    n: usize,
    h2: bool,
) -> Result<Many, String> {
    // 12 chunks a second apart: each stream stays open ~12 s after the ramp.
    let (_sim, direct_h) = rig.sim("sim-h", "h", &["--tokens", "12", "--token-delay", "1s"])?;
    // A router of its own, so its RSS is this scenario's alone.
    let yaml = format!(
        "max_queue: 100000\nbackends:\n  h: {{url: \"{}\"}}\nmodels:\n  h: {{backend: h}}\n",
        direct_h.base
    );
    let yaml = if h2 {
        yaml
    } else {
        format!("max_connections: {}\n{yaml}", n + 100)
    };
    let (r2, t2) = rig.router(
        if h2 {
            "router-streams"
        } else {
            "router-streams-h1"
        },
        &yaml,
    )?;
    let start_rss = r2.rss();
    let body = chat_body("h", true, None);
    let cpu0 = r2.cpu();
    let t0 = Instant::now();
    let rate = 2000.0;
    let clients = if h2 {
        load::h2_clients(n.div_ceil(150).max(1))
    } else {
        vec![load::client()]
    };
    let held = load::hold_streams(h, &clients, &t2, &body, n, rate);
    let mut m = Many {
        n,
        h2,
        conns: if h2 { clients.len() } else { n },
        start_rss,
        peak_open: 0,
        ok: 0,
        errors: 0,
        peak_rss: 0,
        peak_fds: 0,
        cpu_per_chunk_us: 0.0,
        cpu_share: 0.0,
    };
    let mut got = 0;
    while got < n {
        match held.done.recv_timeout(Duration::from_millis(200)) {
            Ok(ok) => {
                got += 1;
                if ok {
                    m.ok += 1
                } else {
                    m.errors += 1
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        m.peak_open = m.peak_open.max(held.open.load(Ordering::Relaxed));
        m.peak_rss = m.peak_rss.max(r2.rss());
        m.peak_fds = m.peak_fds.max(r2.fds());
    }
    let cpu = r2.cpu() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    // 14 frames per stream: role, 12 tokens, [DONE] (some may coalesce).
    m.cpu_per_chunk_us = cpu / (m.ok.max(1) as f64 * 14.0) * 1e6;
    m.cpu_share = cpu / wall;
    Ok(m)
}

pub struct Cancel {
    pub case: &'static str,
    pub seen_ms: Option<f64>,
}

pub struct CancelReport {
    pub cases: Vec<Cancel>,
    pub fds_before: usize,
    pub fds_after: usize,
}

fn sim_stats(t: &Target) -> (u64, u64) {
    let host = t.base.trim_start_matches("http://");
    let v: serde_json::Value = procs::http_get(host, "/sim/stats")
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    (
        v["cancelled"].as_u64().unwrap_or(0),
        v["in_flight"].as_u64().unwrap_or(0),
    )
}

pub fn cancellation(
    h: &tokio::runtime::Handle,
    client: &load::HttpClient,
    router: &Proc,
    routed: &Target,
    backend: &Target,
) -> Option<CancelReport> {
    use http_body_util::BodyExt;
    let fds_before = router.fds();
    let mut cases = Vec::new();
    for (case, stream, frames) in [
        ("at first token", true, 1usize),
        ("mid-stream", true, 5),
        ("non-streamed, while generating", false, 0),
    ] {
        let (c0, _) = sim_stats(backend);
        let body = chat_body("c", stream, None);
        let req = routed.request(&body);
        let client = client.clone();
        // Read `frames` frames, then drop. A non-streamed answer has no headers
        // until it is generated whole, so that case gives up on the response
        // itself 200 ms in, while the backend is still generating.
        h.block_on(async move {
            if frames == 0 {
                let _ = tokio::time::timeout(Duration::from_millis(200), client.request(req)).await;
                return;
            }
            let fut = async {
                let resp = client.request(req).await.ok()?;
                let mut b = resp.into_body();
                for _ in 0..frames {
                    b.frame().await?.ok()?;
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
        });
        let dropped = Instant::now();
        let mut seen = None;
        while dropped.elapsed() < Duration::from_secs(2) {
            if sim_stats(backend).0 > c0 {
                seen = Some(dropped.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        cases.push(Cancel {
            case,
            seen_ms: seen,
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    Some(CancelReport {
        cases,
        fds_before,
        fds_after: router.fds(),
    })
}

pub struct Overload {
    pub sent: usize,
    pub refused: usize,
    pub retry_after: usize,
    pub refused_p50_ms: f64,
    pub refused_max_ms: f64,
    pub admitted_ok: usize,
    pub admitted: usize,
    /// From the burst until every admitted request was answered (the load included).
    pub drained_ms: f64,
    /// Fresh requests right after: p50, µs, and failures.
    pub after_p50_us: f64,
    pub after_errors: u64,
    pub rss_before: u64,
    pub rss_peak: u64,
}

/// A model that takes 2 s to load, a queue of 8, 200 requests at once.
pub fn overload(
    rig: &setup::Rig,
    h: &tokio::runtime::Handle,
    client: &load::HttpClient,
) -> Result<Overload, String> {
    let sim = rig.bins.sim.join("\", \"");
    let yaml = format!(
        "max_queue: 8\nbackends:\n  sim: {{command: [\"{sim}\", --port, \"${{PORT}}\", --model, \"${{MODEL}}\", --load-time, 2s], health: /health}}\nmodels:\n  slow: {{backend: sim, memory: 100MB}}\n"
    );
    let (r, t) = rig.router("router-overload", &yaml)?;
    let rss_before = r.rss();
    let sampler = Sampler::start(r.pid());
    let body = chat_body("slow", false, Some(4));
    let n = 200;
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, req) = (client.clone(), t.request(&body));
            h.spawn(async move {
                let t0 = Instant::now();
                let resp = client.request(req).await.ok()?;
                let status = resp.status().as_u16();
                let retry = resp.headers().contains_key(http::header::RETRY_AFTER);
                use http_body_util::BodyExt;
                let _ = resp.into_body().collect().await;
                Some((status, retry, t0.elapsed()))
            })
        })
        .collect();
    let results: Vec<_> = tasks
        .into_iter()
        .filter_map(|t| h.block_on(t).ok().flatten())
        .collect();
    let mut refused: Vec<u64> = results
        .iter()
        .filter(|r| r.0 == 503)
        .map(|r| r.2.as_micros() as u64)
        .collect();
    refused.sort_unstable();
    let admitted = results.iter().filter(|r| r.0 != 503).count();
    // Recovery: once the model is up, a fresh request is answered at once.
    let drained = start.elapsed().as_secs_f64() * 1000.0;
    let probe = load::open_loop(
        h,
        client,
        &t,
        &body,
        100.0,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    Ok(Overload {
        sent: n,
        refused: refused.len(),
        retry_after: results.iter().filter(|r| r.0 == 503 && r.1).count(),
        refused_p50_ms: pct(&refused, 50.0) as f64 / 1000.0,
        refused_max_ms: pct(&refused, 100.0) as f64 / 1000.0,
        admitted_ok: results.iter().filter(|r| r.0 == 200).count(),
        admitted,
        drained_ms: drained,
        after_p50_us: round_p(&probe, 50.0),
        after_errors: probe.errors,
        rss_before,
        rss_peak: sampler.finish(),
    })
}
