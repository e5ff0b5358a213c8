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

#[cfg(target_os = "linux")]
mod os {
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
