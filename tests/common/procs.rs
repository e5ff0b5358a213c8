//! What the tests read about processes: /proc on Linux, `ps`, `pgrep` and
//! `lsof` on macOS (which has no /proc), so the same tests run on both.

/// Direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = os::children_of(pid);
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    os::alive(pid)
}

/// Resident memory of one process in KiB (phys_footprint is not what `ps`
/// shows on macOS; RSS is, and is what these tests compare).
pub fn rss_kib(pid: u32) -> Option<u64> {
    os::rss_kib(pid)
}

/// How many descriptors `pid` has open.
pub fn open_files(pid: u32) -> Option<usize> {
    os::open_files(pid)
}

/// How many of `pid`'s TCP sockets are in CLOSE-WAIT: the peer closed and the
/// process never did.
pub fn close_wait(pid: u32) -> Option<usize> {
    os::close_wait(pid)
}

/// The environment `pid` was started with, one `NAME=value` each.
pub fn environ(pid: u32) -> Option<Vec<String>> {
    os::environ(pid)
}

#[cfg(target_os = "linux")]
mod os {
    pub fn children_of(pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        out
    }

    pub fn alive(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                state != Some("Z")
            }
            Err(_) => false,
        }
    }

    pub fn rss_kib(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    pub fn open_files(pid: u32) -> Option<usize> {
        Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
    }

    pub fn close_wait(pid: u32) -> Option<usize> {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|t| {
                let t = t.to_string_lossy().into_owned();
                Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect();
        let mut n = 0;
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
            // Column 4 is the state (08 is CLOSE_WAIT), column 10 the inode.
            n += text
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|c| c.len() > 9 && c[3] == "08" && inodes.iter().any(|i| i == c[9]))
                .count();
        }
        Some(n)
    }

    pub fn environ(pid: u32) -> Option<Vec<String>> {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        Some(
            environ
                .split(|b| *b == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
        )
    }
}

#[cfg(target_os = "macos")]
mod os {
    use std::process::Command;

    fn run(program: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(program).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn children_of(pid: u32) -> Vec<u32> {
        // pgrep exits 1 when there are none.
        run("pgrep", &["-P", &pid.to_string()])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn alive(pid: u32) -> bool {
        run("ps", &["-o", "stat=", "-p", &pid.to_string()])
            .is_some_and(|s| !s.trim().is_empty() && !s.trim().starts_with('Z'))
    }

    pub fn rss_kib(pid: u32) -> Option<u64> {
        run("ps", &["-o", "rss=", "-p", &pid.to_string()])?
            .trim()
            .parse()
            .ok()
    }

    pub fn open_files(pid: u32) -> Option<usize> {
        // -F f: one "f<descriptor>" line per open file; "fcwd", "ftxt" and the
        // like are not descriptors.
        let out = run("lsof", &["-n", "-P", "-F", "f", "-p", &pid.to_string()])?;
        Some(
            out.lines()
                .filter(|l| {
                    l.strip_prefix('f')
                        .is_some_and(|d| d.parse::<u32>().is_ok())
                })
                .count(),
        )
    }

    pub fn close_wait(pid: u32) -> Option<usize> {
        // lsof exits 1 when nothing matches.
        let out = run(
            "lsof",
            &[
                "-n",
                "-P",
                "-a",
                "-p",
                &pid.to_string(),
                "-iTCP",
                "-sTCP:CLOSE_WAIT",
                "-F",
                "f",
            ],
        )
        .unwrap_or_default();
        Some(out.lines().filter(|l| l.starts_with('f')).count())
    }

    /// `ps -E` prints the command, then the environment, space-separated; a
    /// word that does not start a `NAME=` belongs to the value before it.
    pub fn environ(pid: u32) -> Option<Vec<String>> {
        let line = run(
            "ps",
            &["-E", "-ww", "-o", "command=", "-p", &pid.to_string()],
        )?;
        let starts_var = |w: &str| {
            w.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
                    && !name.starts_with(|c: char| c.is_ascii_digit())
            })
        };
        let mut vars: Vec<String> = Vec::new();
        let mut started = false;
        for word in line.split(' ') {
            if starts_var(word) {
                started = true;
                vars.push(word.to_string());
            } else if started {
                if let Some(last) = vars.last_mut() {
                    last.push(' ');
                    last.push_str(word);
                }
            }
        }
        Some(vars)
    }
}
