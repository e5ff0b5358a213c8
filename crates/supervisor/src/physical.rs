//! The machine's physical memory: what a budget cannot exceed and still be met.
//! `MODELYARD_MEMINFO` (a file in /proc/meminfo's format, read for `reserve` too)
//! stands in for the machine when set, so the warning can be shown and tested.

/// Physical memory in bytes, if the OS says.
pub fn physical_memory() -> Option<u64> {
    if let Some(path) = std::env::var_os("MODELYARD_MEMINFO") {
        return crate::measure::mem_total(&std::fs::read_to_string(path).ok()?);
    }
    crate::os::physical_memory()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_mem_total_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   12345678 kB\n";
        assert_eq!(crate::measure::mem_total(text), Some(24_000_000 * 1024));
        assert_eq!(crate::measure::mem_total("MemFree: 1 kB\n"), None);
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn this_machine_has_some() {
        assert!(crate::os::physical_memory().unwrap() > 0);
    }
}
