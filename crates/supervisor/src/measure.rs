//! What a backend really holds: the resident memory of its whole process tree
//! (servers fork helpers), read from the OS. The ledger keeps declared sizes;
//! this is the truth it is compared against.

/// Resident bytes of `pid` and all its descendants, or None if it is gone.
pub fn tree_rss(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut stack = vec![pid];
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        // A cycle cannot happen in a process tree, but a bound costs nothing.
        seen += 1;
        if seen > 4096 {
            break;
        }
        match os::rss(p) {
            Some(bytes) => total += bytes,
            None if p == pid => return None,
            None => continue,
        }
        stack.extend(os::children(p));
    }
    Some(total)
}

/// Memory the system could give to new work now, without swapping: what the
/// budget follows when routes.yaml sets a `reserve`. `MODELYARD_MEMINFO` names a
/// file in /proc/meminfo's format to read instead, so the reaction to a machine
/// short of memory can be shown (and tested) on demand.
pub fn available() -> Option<u64> {
    if let Some(path) = std::env::var_os("MODELYARD_MEMINFO") {
        return mem_available(&std::fs::read_to_string(path).ok()?);
    }
    os::available()
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(target_os = "linux")]
mod os {
    pub fn available() -> Option<u64> {
        super::mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
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
}

#[cfg(target_os = "macos")]
mod os {
    /// Free, inactive and purgeable pages: what macOS hands out before it
    /// compresses or swaps (what Activity Monitor's memory pressure is about).
    #[allow(unsafe_code)]
    pub fn available() -> Option<u64> {
        let mut stats = std::mem::MaybeUninit::<libc::vm_statistics64>::zeroed();
        let mut count = libc::HOST_VM_INFO64_COUNT;
        // SAFETY: host_statistics64 writes at most `count` integers into `stats`,
        // which is sized for HOST_VM_INFO64; read only on KERN_SUCCESS.
        let rc = unsafe {
            libc::host_statistics64(
                libc::mach_host_self(),
                libc::HOST_VM_INFO64,
                stats.as_mut_ptr() as libc::host_info64_t,
                &mut count,
            )
        };
        if rc != libc::KERN_SUCCESS {
            return None;
        }
        // SAFETY: initialised by the successful call above.
        let s = unsafe { stats.assume_init() };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let pages =
            u64::from(s.free_count) + u64::from(s.inactive_count) + u64::from(s.purgeable_count);
        Some(pages * u64::try_from(page).ok()?)
    }

    /// phys_footprint is what Activity Monitor shows as a process's memory, and what
    /// counts against the machine on Apple silicon's unified memory.
    #[allow(unsafe_code)]
    pub fn rss(pid: u32) -> Option<u64> {
        let mut info = std::mem::MaybeUninit::<libc::rusage_info_v2>::zeroed();
        // SAFETY: proc_pid_rusage writes at most one rusage_info_v2 into the buffer
        // we pass for RUSAGE_INFO_V2, and we read it only when it reports success.
        let rc = unsafe {
            libc::proc_pid_rusage(
                pid as libc::c_int,
                libc::RUSAGE_INFO_V2,
                info.as_mut_ptr() as *mut _,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: initialised by the successful call above.
        Some(unsafe { info.assume_init() }.ri_phys_footprint)
    }

    pub fn children(pid: u32) -> Vec<u32> {
        let mut buf = vec![0 as libc::pid_t; 1024];
        // SAFETY: the buffer is valid for its byte length, which is what we pass.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::proc_listchildpids(
                pid as libc::pid_t,
                buf.as_mut_ptr() as *mut libc::c_void,
                (buf.len() * std::mem::size_of::<libc::pid_t>()) as libc::c_int,
            )
        };
        if n <= 0 {
            return Vec::new();
        }
        buf.truncate(n as usize);
        buf.into_iter()
            .filter(|p| *p > 0)
            .map(|p| p as u32)
            .collect()
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod os {
    pub fn available() -> Option<u64> {
        None
    }
    pub fn rss(_pid: u32) -> Option<u64> {
        None
    }
    pub fn children(_pid: u32) -> Vec<u32> {
        Vec::new()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn reads_mem_available_in_bytes() {
        let text =
            "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   12345678 kB\n";
        assert_eq!(super::mem_available(text), Some(12_345_678 * 1024));
        assert_eq!(super::mem_available("MemTotal: 1 kB\n"), None);
        assert!(super::available().unwrap() > 0, "this machine reports some");
    }

    #[test]
    fn measures_this_process_and_a_child() {
        let own = super::tree_rss(std::process::id()).unwrap();
        assert!(own > 1_000_000, "{own}");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let with_child = super::tree_rss(std::process::id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            with_child > own,
            "the child's memory is counted: {with_child} vs {own}"
        );
        assert_eq!(super::tree_rss(u32::MAX - 1), None);
    }
}
