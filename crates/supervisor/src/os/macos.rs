//! macOS: libproc (proc_pidinfo, proc_pid_rusage, the pid lists), the Mach host
//! statistics and sysctl. Every foreign call of the crate is in this file; each
//! hands the kernel a buffer of the size it is told and reads it only on success.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CStr};
use std::mem::{size_of, MaybeUninit};

fn bsd_info(pid: u32) -> Option<libc::proc_bsdinfo> {
    let mut info = MaybeUninit::<libc::proc_bsdinfo>::zeroed();
    let size = size_of::<libc::proc_bsdinfo>() as c_int;
    // SAFETY: the buffer is one proc_bsdinfo, whose size we pass; the call writes
    // at most that many bytes and returns how many it wrote.
    let n = unsafe {
        libc::proc_pidinfo(
            pid as c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            info.as_mut_ptr().cast::<c_void>(),
            size,
        )
    };
    // SAFETY: fully written when the call reports the whole struct.
    (n == size).then(|| unsafe { info.assume_init() })
}

pub fn start_time(pid: u32) -> Option<u64> {
    let info = bsd_info(pid)?;
    Some(super::darwin::start_time(
        info.pbi_start_tvsec,
        info.pbi_start_tvusec,
    ))
}

/// The pids a libproc list call writes into a buffer of `cap` pids. The calls
/// return a count of pids (some releases a count of bytes): either way the
/// buffer starts zeroed and no pid is 0, so the zeros are dropped.
fn pid_list(cap: usize, list: impl FnOnce(*mut c_void, c_int) -> c_int) -> Vec<u32> {
    let mut buf = vec![0 as libc::pid_t; cap];
    let bytes = (buf.len() * size_of::<libc::pid_t>()) as c_int;
    let n = list(buf.as_mut_ptr().cast(), bytes);
    if n <= 0 {
        return Vec::new();
    }
    buf.truncate((n as usize).min(cap));
    buf.into_iter()
        .filter(|p| *p > 0)
        .map(|p| p as u32)
        .collect()
}

/// launchd reaps orphans at once, but a zombie of a living parent may remain.
pub fn group_has_live_member(pgid: u32) -> bool {
    // SAFETY: pid_list passes the buffer and its true length in bytes.
    let members = pid_list(4096, |buf, bytes| unsafe {
        libc::proc_listpgrppids(pgid as libc::pid_t, buf, bytes)
    });
    if members.is_empty() {
        // killpg found the group; a list we cannot read proves nothing else.
        return true;
    }
    members
        .into_iter()
        .any(|p| bsd_info(p).is_some_and(|i| i.pbi_status != libc::SZOMB))
}

/// phys_footprint is what Activity Monitor shows as a process's memory, and what
/// counts against the machine on Apple silicon's unified memory (Metal buffers
/// included).
pub fn rss(pid: u32) -> Option<u64> {
    let mut info = MaybeUninit::<libc::rusage_info_v2>::zeroed();
    // SAFETY: for RUSAGE_INFO_V2 the call writes one rusage_info_v2 into the
    // buffer; it is read only when the call succeeds.
    let rc = unsafe {
        libc::proc_pid_rusage(
            pid as c_int,
            libc::RUSAGE_INFO_V2,
            info.as_mut_ptr().cast::<libc::rusage_info_t>(),
        )
    };
    // SAFETY: initialised by the successful call above.
    (rc == 0).then(|| unsafe { info.assume_init() }.ri_phys_footprint)
}

pub fn children(pid: u32) -> Vec<u32> {
    // SAFETY: pid_list passes the buffer and its true length in bytes.
    pid_list(1024, |buf, bytes| unsafe {
        libc::proc_listchildpids(pid as libc::pid_t, buf, bytes)
    })
}

pub fn available() -> Option<u64> {
    // One send right to the host port for the life of the process (each call of
    // mach_host_self adds a reference).
    static HOST: std::sync::OnceLock<libc::host_t> = std::sync::OnceLock::new();
    // SAFETY: mach_host_self has no preconditions.
    let host = *HOST.get_or_init(|| unsafe { mach2::mach_init::mach_host_self() });
    let mut stats = MaybeUninit::<libc::vm_statistics64>::zeroed();
    let mut count = libc::HOST_VM_INFO64_COUNT;
    // SAFETY: host_statistics64 writes at most `count` integers into `stats`,
    // which is sized for HOST_VM_INFO64; read only on KERN_SUCCESS.
    let rc = unsafe {
        libc::host_statistics64(
            host,
            libc::HOST_VM_INFO64,
            stats.as_mut_ptr().cast(),
            &mut count,
        )
    };
    if rc != libc::KERN_SUCCESS {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    let s = unsafe { stats.assume_init() };
    let page = u64::try_from(sysconf_page_size()?).ok()?;
    Some(super::darwin::available(
        s.free_count,
        s.inactive_count,
        page,
    ))
}

fn sysconf_page_size() -> Option<i64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then_some(page)
}

/// An integer sysctl, whichever width the kernel keeps it in.
pub fn sysctl_u64(name: &CStr) -> Option<u64> {
    let mut buf = [0u8; 8];
    let mut len = buf.len();
    // SAFETY: the buffer is 8 bytes and `len` says so; the kernel writes at most
    // `len` bytes and sets `len` to how many it wrote.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    match len {
        4 => Some(u64::from(u32::from_ne_bytes(buf[..4].try_into().ok()?))),
        8 => Some(u64::from_ne_bytes(buf)),
        _ => None,
    }
}

/// Apple silicon only: Intel Macs have no `iogpu` sysctls.
pub fn physical_memory() -> Option<u64> {
    sysctl_u64(c"hw.memsize")
}

pub fn gpu_wired_limit() -> Option<u64> {
    let limit_mb = sysctl_u64(c"iogpu.wired_limit_mb")?;
    let memsize = sysctl_u64(c"hw.memsize")?;
    Some(super::darwin::wired_limit(limit_mb, memsize))
}

/// setrlimit refuses a soft limit on descriptors above this.
pub fn max_files_per_process() -> Option<u64> {
    sysctl_u64(c"kern.maxfilesperproc")
}
