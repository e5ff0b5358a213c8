//! Backend processes: argv (never a shell), their own process group, output kept
//! in a ring, and a stop that is SIGTERM to the group, then SIGKILL after the
//! backend's `stop_timeout`.

use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::logs::LogRing;

/// What to run for one instance.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stop_timeout: Duration,
}

/// What a backend inherits of the router's environment: what any program needs to
/// run as the user (and find its files), nothing else. Secrets the router holds
/// (MODELYARD_ADMIN_KEY, client keys, cloud credentials) stay with it; a backend
/// gets more only through its `env` in routes.yaml.
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "TZ",
    "TMPDIR",
    "TERM",
    "__CF_USER_TEXT_ENCODING",
];
/// Prefixes inherited too: locale and XDG directories, and the servers' own
/// settings (where Ollama keeps models, oMLX its base path, Hugging Face its cache).
const INHERITED_PREFIXES: &[&str] = &[
    "LC_",
    "XDG_",
    "OLLAMA_",
    "OMLX_",
    "APFEL_",
    "HF_",
    "HUGGINGFACE_",
    "LLAMA_",
    "MLX_",
];

fn inherited(name: &str) -> bool {
    INHERITED.contains(&name) || INHERITED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// How a process ended, and whether we asked it to.
#[derive(Clone, Copy, Debug)]
pub struct ExitInfo {
    pub status: Option<ExitStatus>,
    pub requested: bool,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        match self.status {
            Some(s) if s.code().is_some() => {
                write!(f, "exited with code {}", s.code().unwrap_or_default())
            }
            Some(s) => write!(f, "killed by signal {}", s.signal().unwrap_or_default()),
            None => f.write_str("was lost (its exit status could not be read)"),
        }
    }
}

/// A running child. Dropping it stops the process, so no path forgets to.
#[derive(Debug)]
pub(crate) struct Running {
    pub pid: u32,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    /// Asks the runner to stop the process; `on_exit` runs once it is gone.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// The stop itself, to send later; dropping it stops the process too.
    pub fn take_stop(&mut self) -> Option<oneshot::Sender<()>> {
        self.stop.take()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now, for `${PORT}`. Taken below the
/// system's ephemeral range: a port from that range (what `bind(0)` gives)
/// may be handed to any outgoing connection on the machine between our check
/// and the backend's bind, which then fails with "address already in use".
/// Falls back to `bind(0)` when no port below the range is free.
pub(crate) fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let (low, _) = ephemeral_range();
    // Ports from 10000 up to the ephemeral range, in a random order.
    let span = u64::from(low.saturating_sub(FIXED_LOW).max(1));
    let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
    seed.write_u32(std::process::id());
    let start = seed.finish();
    for i in 0..64 {
        let port = FIXED_LOW + ((start.wrapping_add(i * 7919)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The lowest port `free_port` picks: above the well-known and most
/// registered services' ports.
const FIXED_LOW: u16 = 10000;

/// The range outgoing connections take their local ports from.
fn ephemeral_range() -> (u16, u16) {
    #[cfg(target_os = "linux")]
    if let Some(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_range(&t))
    {
        return range;
    }
    // macOS and BSDs (IANA's range), and Linux if unreadable.
    (49152, 65535)
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (low, high) = (it.next()??, it.next()??);
    (low > FIXED_LOW && low <= high).then_some((low, high))
}

/// A bare program name is looked for next to the modelyard binary first (so the
/// demo finds `modelyard` and `modelyard-sim` wherever cargo put them), then on PATH.
fn resolve_program(program: &str) -> PathBuf {
    if !program.contains('/') {
        if let Some(sibling) = sibling_of_this_binary(program) {
            return sibling;
        }
    }
    PathBuf::from(program)
}

fn sibling_of_this_binary(program: &str) -> Option<PathBuf> {
    let sibling = std::env::current_exe().ok()?.parent()?.join(program);
    sibling.is_file().then_some(sibling)
}

/// Where `program` would be run from, as the router looks for it (beside its
/// own binary, then on `path`), if it is there and executable.
pub fn find_program(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return runnable(&p).then_some(p);
    }
    sibling_of_this_binary(program)
        .into_iter()
        .chain(std::env::split_paths(path).map(|dir| dir.join(program)))
        .find(|p| runnable(p))
}

/// Starts the process; `on_exit` runs once when it has ended, whoever ended it.
pub(crate) fn spawn(
    spec: &Spec,
    logs: &LogRing,
    on_exit: impl FnOnce(ExitInfo) + Send + 'static,
) -> std::io::Result<Running> {
    let mut cmd = Command::new(resolve_program(&spec.argv[0]));
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a stop reaches the helpers it forks too.
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    logs.begin_run();
    let pid = child.id().unwrap_or_default();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(logs.read_from(spec.name.clone(), out));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(logs.read_from(spec.name.clone(), err));
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let stop_timeout = spec.stop_timeout;
    // Shutdown waits for this task through the exit it reports.
    tokio::spawn(async move {
        let info = tokio::select! {
            status = child.wait() => ExitInfo { status: status.ok(), requested: false },
            _ = stop_rx => ExitInfo { status: terminate(&mut child, pid, stop_timeout).await, requested: true },
        };
        // Whatever the leader left behind in its group goes too.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        // Its last words explain the exit: let the pipes drain (bounded, in case
        // something else still holds them open) before reporting it.
        let drained = tokio::time::Instant::now() + Duration::from_millis(500);
        for r in readers {
            let _ = tokio::time::timeout_at(drained, r).await;
        }
        on_exit(info);
    });
    Ok(Running {
        pid,
        stop: Some(stop_tx),
    })
}

async fn terminate(child: &mut Child, pid: u32, grace: Duration) -> Option<ExitStatus> {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(
                pid,
                "backend ignored SIGTERM for {grace:?}; sending SIGKILL"
            );
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// On Linux the kernel kills the child if the router dies without stopping it
/// (SIGKILL, a crash): no orphan holds memory the ledger no longer counts.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one
    // async-signal-safe system call (prctl).
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    #[test]
    fn a_backend_port_is_free_and_outside_the_range_outgoing_connections_use() {
        let (low, _) = super::ephemeral_range();
        for _ in 0..20 {
            let port = super::free_port().unwrap();
            assert!(
                (super::FIXED_LOW..low).contains(&port),
                "{port} (ephemeral from {low})"
            );
            // Free now: the backend can bind it.
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
        assert_eq!(super::parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(super::parse_range("1024 65535"), None, "no room below");
        assert_eq!(super::parse_range("junk"), None);
    }

    #[test]
    fn backends_inherit_what_programs_need_and_no_secrets() {
        for name in ["PATH", "HOME", "LC_ALL", "OLLAMA_MODELS", "HF_HOME"] {
            assert!(super::inherited(name), "{name}");
        }
        for name in [
            "MODELYARD_ADMIN_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "OPENAI_API_KEY",
            "SSH_AUTH_SOCK",
        ] {
            assert!(!super::inherited(name), "{name}");
        }
    }
}
