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
        match crate::os::rss(p) {
            Some(bytes) => total += bytes,
            None if p == pid => return None,
            None => continue,
        }
        stack.extend(crate::os::children(p));
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
    crate::os::available()
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
pub(crate) fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo_bytes(meminfo, "MemAvailable:")
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
pub(crate) fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo_bytes(meminfo, "MemTotal:")
}

/// One `Name:   N kB` line of a /proc/meminfo text, in bytes.
fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
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
