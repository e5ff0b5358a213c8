//! What the router reads from the operating system about processes and memory,
//! one implementation per OS (`linux`, `macos`). The parsing and arithmetic that
//! turn the OS's raw numbers into answers are plain functions (`procfs`,
//! `darwin`), tested on any machine with values captured from the real one.

mod darwin;
mod procfs;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as sys;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as sys;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod other;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
use other as sys;

/// What deciding whether a process group is still ours needs to know, so the
/// decision is tested against captured process tables as well as the live one.
pub(crate) trait ProcessTable {
    /// When `pid` started, in a unit of the OS's own (only ever compared for
    /// equality, to tell a process from a later one given the same pid); None if
    /// it is gone or cannot be read.
    fn start_time(&self, pid: u32) -> Option<u64>;
    /// Whether `pid` exists (a zombie counts: its pid is still taken).
    fn exists(&self, pid: u32) -> bool;
    /// Whether any process of group `pgid` still runs (a zombie does not).
    fn group_alive(&self, pgid: u32) -> bool;
}

/// The machine's own process table.
pub(crate) struct Host;

impl ProcessTable for Host {
    fn start_time(&self, pid: u32) -> Option<u64> {
        sys::start_time(pid)
    }

    fn exists(&self, pid: u32) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
    }

    fn group_alive(&self, pgid: u32) -> bool {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_ok()
            && sys::group_has_live_member(pgid)
    }
}

/// Resident bytes of one process (phys_footprint on macOS), None if it is gone.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    sys::rss(pid)
}

/// The direct children of `pid`.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    sys::children(pid)
}

/// Memory the system could give to new work now without swapping.
pub(crate) fn available() -> Option<u64> {
    sys::available()
}

/// The machine's physical memory in bytes.
pub(crate) fn physical_memory() -> Option<u64> {
    sys::physical_memory()
}

/// How much memory the GPU may wire (lock for its buffers) on this machine:
/// Apple silicon's unified memory only; None elsewhere.
pub fn gpu_wired_limit() -> Option<u64> {
    sys::gpu_wired_limit()
}

/// What to say when a model declares more memory than the GPU may wire
/// (`limit`, from [`gpu_wired_limit`]): Metal cannot keep such a model's
/// weights resident, so it fails to load or pages; None when it fits.
pub fn gpu_wired_warning(model: &str, declared: u64, limit: u64) -> Option<String> {
    use modelyard_config::ByteSize;
    (declared > limit).then(|| {
        format!(
            "models.{model}.memory: {} is more than the GPU may wire on this Mac ({}); \
             raise the limit with `sudo sysctl iogpu.wired_limit_mb=<MB>` (until reboot) or use a smaller model",
            ByteSize(declared),
            ByteSize(limit)
        )
    })
}

/// The most descriptors the router asks for, however high the hard limit: each
/// client connection and each backend connection and pipe takes one.
pub(crate) const OPEN_FILES_CAP: u64 = 65_536;

/// What the soft limit on open descriptors becomes: the hard limit, at most
/// `cap`, at most what the OS allows one process (macOS refuses a soft limit above
/// `kern.maxfilesperproc`, even under an unlimited hard limit), and never lower
/// than it already is.
pub(crate) fn open_files_target(soft: u64, hard: u64, cap: u64, per_process: Option<u64>) -> u64 {
    let target = hard.min(cap).min(per_process.unwrap_or(u64::MAX));
    target.max(soft)
}

/// Raises the soft limit on open descriptors as far as [`open_files_target`]
/// allows; returns the limit in force afterwards (launchd starts jobs at 256).
pub fn raise_open_files() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = open_files_target(soft, hard, OPEN_FILES_CAP, sys::max_files_per_process());
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

#[cfg(test)]
mod tests;
