//! The machine's physical memory: what a budget cannot exceed and still be met.
//! `MODELYARD_MEMINFO` (a file in /proc/meminfo's format, read for `reserve` too)
//! stands in for the machine when set, so the warning can be shown and tested.

/// Physical memory in bytes, if the OS says.
pub fn physical_memory() -> Option<u64> {
    if let Some(path) = std::env::var_os("MODELYARD_MEMINFO") {
        return mem_total(&std::fs::read_to_string(path).ok()?);
    }
    os::physical_memory()
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(target_os = "linux")]
mod os {
    pub fn physical_memory() -> Option<u64> {
        super::mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }
}

#[cfg(target_os = "macos")]
mod os {
    #[allow(unsafe_code)]
    pub fn physical_memory() -> Option<u64> {
        let mut bytes: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: hw.memsize is a 64-bit integer; the call writes at most `len`
        // bytes into `bytes` and we read it only on success.
        let rc = unsafe {
            libc::sysctlbyname(
                c"hw.memsize".as_ptr(),
                (&mut bytes as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == std::mem::size_of::<u64>()).then_some(bytes)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod os {
    pub fn physical_memory() -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_mem_total_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   12345678 kB\n";
        assert_eq!(super::mem_total(text), Some(24_000_000 * 1024));
        assert_eq!(super::mem_total("MemFree: 1 kB\n"), None);
    }

    #[cfg(any(target_os = "linux", target_os = "macos"))]
    #[test]
    fn this_machine_has_some() {
        assert!(super::os::physical_memory().unwrap() > 0);
    }
}
