//! The processes under test: simulated backends, the router, LiteLLM; what they
//! cost (RSS, CPU time, open descriptors) read from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Where the binaries are: beside this one (target/release).
pub struct Bins {
    pub modelyard: PathBuf,
    /// argv prefix that runs the simulator.
    pub sim: Vec<String>,
}

impl Bins {
    pub fn find() -> Result<Bins, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        let modelyard = dir.join("modelyard");
        if !modelyard.exists() {
            return Err(format!(
                "{} not found: build it with `cargo build --release -p modelyard-bench -p modelyard`",
                modelyard.display()
            ));
        }
        // The standalone sim only if it was built with the router: one left
        // from an earlier build may lack flags the bench passes (--timeline).
        let standalone = dir.join("modelyard-sim");
        let built = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let fresh = match (built(&standalone), built(&modelyard)) {
            (Some(sim), Some(router)) => sim >= router,
            _ => false,
        };
        let sim = if fresh {
            vec![standalone.display().to_string()]
        } else {
            vec![modelyard.display().to_string(), "sim".into()]
        };
        Ok(Bins { modelyard, sim })
    }
}

/// A child process ended (SIGTERM, then SIGKILL) when dropped, with its group.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Spawns `argv` in its own process group, on `cpus` if given, and waits
    /// for a line containing `ready_line` on stdout (if any).
    pub fn spawn(
        name: &str,
        argv: &[String],
        env: &[(&str, String)],
        cpus: Option<&str>,
        log: &Path,
    ) -> Result<Proc, String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).args(argv);
                cmd
            }
            None => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let err = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let out = err.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", argv[0]))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Current resident set, bytes.
    pub fn rss(&self) -> u64 {
        rss(self.pid())
    }

    /// utime + stime so far, seconds.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(-self.pid());
        let _ = kill(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

pub fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn cpu_seconds(pid: i32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// Where a proxy's CPU time is read: a process, a process with its children
/// (nginx's master and its worker), or a thread of the bench itself (the relay).
#[derive(Clone, Copy, Debug)]
pub enum Meter {
    Process(i32),
    Tree(i32),
    Thread(i32),
}

impl Meter {
    /// utime + stime so far, seconds.
    pub fn seconds(self) -> f64 {
        match self {
            Meter::Process(pid) => cpu_seconds(pid),
            Meter::Tree(pid) => {
                cpu_seconds(pid) + children(pid).into_iter().map(cpu_seconds).sum::<f64>()
            }
            Meter::Thread(tid) => {
                stat_cpu_seconds(&format!("/proc/{}/task/{tid}/stat", std::process::id()))
            }
        }
    }
}

/// A process's children (all its threads'), from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

/// Waits until GET `url` answers 200.
pub fn wait_ready(proc: &mut Proc, url: &str, limit: Duration, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let (host, path) = split_url(url);
    while Instant::now() < deadline {
        if !proc.alive() {
            break;
        }
        if http_get_status(&host, &path) == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tail: Vec<String> = std::fs::File::open(log)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    let tail = tail[tail.len().saturating_sub(15)..].join("\n");
    Err(format!(
        "{} not ready at {url}; its log:\n{tail}",
        proc.name
    ))
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("http://");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".into()),
    }
}

/// A blocking GET, for set-up and polling only (never timed).
pub fn http_get(host: &str, path: &str) -> Option<(u16, String)> {
    http_call(host, "GET", path)
}

/// A blocking request without a body (GET, or a POST such as /admin/reload).
pub fn http_call(host: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .find("\r\n\r\n")
        .map(|i| text[i + 4..].to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn http_get_status(host: &str, path: &str) -> Option<u16> {
    http_get(host, path).map(|(s, _)| s)
}

/// The machine and its load, for the report.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    // The machine's CPUs, not this process's: the bench pins itself to one.
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1);
    vec![
        (
            "CPU".into(),
            format!(
                "{model} × {cpus} logical{}",
                // Wake-ups of an idle virtual CPU cost far more than on bare metal.
                if cpuinfo.contains(" hypervisor") {
                    ", a virtual machine"
                } else {
                    ""
                }
            ),
        ),
        ("Memory".into(), mem),
        ("Kernel".into(), format!("Linux {kernel}")),
    ]
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Raises this process's descriptor limit (children inherit it); returns the soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    // Raising the hard limit needs privilege; try, then settle for the hard one.
    if setrlimit(Resource::RLIMIT_NOFILE, want.max(soft), want.max(hard)).is_ok() {
        return want.max(soft);
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s)
}

/// Pins this process (and its threads created later) to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_self(cpu: usize) -> bool {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok()
}

/// macOS has no CPU affinity (only hints per thread): the bench runs unpinned,
/// as it does on Linux with one CPU.
#[cfg(not(target_os = "linux"))]
pub fn pin_self(_cpu: usize) -> bool {
    false
}
