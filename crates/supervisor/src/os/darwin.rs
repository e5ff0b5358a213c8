//! The arithmetic on macOS's raw numbers, compiled (and so tested) on every OS;
//! the macOS reader is its only user.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

/// A macOS start time (proc_bsdinfo's `pbi_start_tvsec`/`pbi_start_tvusec`) as
/// one number, in microseconds since the epoch.
pub(crate) fn start_time(sec: u64, usec: u64) -> u64 {
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

/// Free memory from macOS's host statistics (HOST_VM_INFO64), in bytes: free
/// pages (which include the speculative ones) and inactive pages, which the
/// system hands out before it compresses or swaps. Purgeable pages sit in the
/// active and inactive queues already, so adding them would count them twice.
pub(crate) fn available(free: u32, inactive: u32, page_size: u64) -> u64 {
    (u64::from(free) + u64::from(inactive)).saturating_mul(page_size)
}

/// How much of the machine's memory (`memsize`, bytes) the GPU may wire, given
/// the `iogpu.wired_limit_mb` sysctl. 0 there means macOS's own default, which is
/// not published: the figure widely measured is 2/3 of memory up to 36 GB and 3/4
/// above (recent macOS releases allow somewhat more on large machines, so this
/// errs low). A value set by hand is what the GPU gets.
pub(crate) fn wired_limit(wired_limit_mb: u64, memsize: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    if wired_limit_mb > 0 {
        return wired_limit_mb.saturating_mul(1 << 20).min(memsize);
    }
    if memsize <= 36 * GIB {
        memsize / 3 * 2
    } else {
        memsize / 4 * 3
    }
}
