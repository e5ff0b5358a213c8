//! What one request-log record costs the router's process in CPU: records of
//! a realistic size built and dropped with the log off, then built and handed
//! to a log that writes them (the writer thread included), the process's CPU
//! time (getrusage) divided by the records. The saturation scenario of
//! `modelyard-bench` measures the same cost through the whole router; this
//! isolates it, so a change to the log's form shows in seconds.
//!
//! `cargo run --release -p modelyard-bench --bin reqlog-cost [-- RECORDS]`

// Measures wall time with std's clock: no lifecycle logic here.
#![allow(clippy::disallowed_types)]

use std::time::Duration;

use modelyard_reqlog::{Record, RequestLog, Settings, CAPACITY};

/// A record as a streamed chat through the router leaves it.
fn record(n: u64) -> Record {
    Record {
        at_ms: modelyard_reqlog::now_ms(),
        request_id: format!("01JEXAMPLE{n:016}"),
        peer: format!("127.0.0.1:{}", 40_000 + n % 20_000),
        key: None,
        user_agent: Some("OpenAI/Python 1.54.0".into()),
        api: "openai".into(),
        route: "/v1/chat/completions".into(),
        model_asked: "default".into(),
        model_served: "qwen3-30b-a3b".into(),
        stream: true,
        status: 200,
        queue_ms: Some(0.012),
        ttfb_ms: Some(0.41),
        total_ms: 35.7,
        prompt_tokens: Some(12),
        completion_tokens: Some(32),
        priority: Some("interactive".into()),
        ..Record::default()
    }
}

/// The process's user + system CPU time so far.
fn cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let t =
        |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

/// The process's resident memory now, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn per_record(total: Duration, n: u64) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RECORDS is a number"))
        .unwrap_or(400_000);
    let dir = std::env::temp_dir().join(format!("reqlog-cost-{}", std::process::id()));
    let log = RequestLog::open(Settings {
        path: dir.join("requests.db"),
        keep: Duration::from_secs(30 * 24 * 3600),
        max_bytes: 1 << 40,
        capacity: CAPACITY,
    })
    .expect("open the log");
    // Paced as a saturated router would send them (30,000 a second), so the
    // channel never fills: every record is written, none dropped.
    let pace = Duration::from_secs(1) / 30_000;
    let run = |log: Option<&RequestLog>| {
        let start = cpu();
        let wall = std::time::Instant::now();
        for i in 0..n {
            let r = record(i);
            match log {
                Some(l) => l.record(&r.entry()),
                None => drop(std::hint::black_box(r)),
            }
            // Sleeping costs CPU too, alike in both runs.
            if i % 300 == 299 {
                let due = pace * (i as u32 + 1);
                if let Some(left) = due.checked_sub(wall.elapsed()) {
                    std::thread::sleep(left);
                }
            }
        }
        if let Some(l) = log {
            while l.written() + l.dropped() < n {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        cpu() - start
    };
    let off = run(None);
    let before = log.written();
    let rss_before = rss_kib();
    let on = run(Some(&log));
    let grown = rss_kib().saturating_sub(rss_before);
    let written = log.written() - before;
    let size = std::fs::metadata(dir.join("requests.db")).map_or(0, |m| m.len())
        + std::fs::metadata(dir.join("requests.db-wal")).map_or(0, |m| m.len());
    println!(
        "records: {n} ({written} written, {} dropped); CPU per record: log off {:.2} µs, on {:.2} µs; the log's cost {:.2} µs; file {:.0} bytes per record; RSS grew {grown} KiB while writing",
        log.dropped(),
        per_record(off, n),
        per_record(on, n),
        per_record(on.saturating_sub(off), n),
        size as f64 / written.max(1) as f64,
    );
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}
