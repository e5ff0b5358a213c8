//! Linux: everything from /proc.

pub fn start_time(pid: u32) -> Option<u64> {
    super::procfs::start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// An ended orphan may linger as a zombie where nothing reaps it (a container's
/// init); that is not running.
pub fn group_has_live_member(pgid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|p| {
        std::fs::read_to_string(p.path().join("stat"))
            .ok()
            .and_then(|s| super::procfs::group(&s))
            .is_some_and(|(group, zombie)| group == pgid && !zombie)
    })
}

pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        // Kernel threads and zombies have no VmRSS line.
        .unwrap_or(0);
    Some(kb * 1024)
}

pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

pub fn available() -> Option<u64> {
    crate::measure::mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

pub fn physical_memory() -> Option<u64> {
    crate::measure::mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// A discrete GPU has memory of its own; the budget is about system memory.
pub fn gpu_wired_limit() -> Option<u64> {
    None
}

/// The hard limit already stays within the kernel's `fs.nr_open`.
pub fn max_files_per_process() -> Option<u64> {
    None
}
