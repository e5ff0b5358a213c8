//! The parsing and arithmetic of both OSes, on values captured from real machines.

use super::*;

/// `cat /proc/self/stat` on a Linux 6 machine, and the same with a command name
/// holding spaces and parentheses (a process may name itself anything).
const STAT: &str = "13902 (cat) R 13900 13900 10840 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 351646 3133440 412 18446744073709551615 94048399101952 94048399121833 140726347993856 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
const STAT_ODD_NAME: &str = "77 (a) b (c) Z 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0 18446744073709551615";

#[test]
fn linux_start_time_is_field_22_after_any_command_name() {
    assert_eq!(procfs::start_time(STAT), Some(351_646));
    assert_eq!(procfs::start_time(STAT_ODD_NAME), Some(98_765));
    assert_eq!(procfs::start_time("13902 (cat) R 1"), None);
    assert_eq!(procfs::start_time(""), None);
}

#[test]
fn linux_group_and_zombie_state_come_after_the_command_name() {
    assert_eq!(procfs::group(STAT), Some((13_900, false)));
    assert_eq!(procfs::group(STAT_ODD_NAME), Some((4242, true)));
    assert_eq!(procfs::group("1 (x)"), None);
}

#[test]
fn darwin_start_time_keeps_microseconds_apart() {
    // proc_bsdinfo of a process started at 2026-12-04 16:00:48.123456 UTC.
    let a = darwin::start_time(1_796_400_048, 123_456);
    assert_eq!(a, 1_796_400_048_123_456);
    // The same second, a microsecond later: a different process.
    assert_ne!(a, darwin::start_time(1_796_400_048, 123_457));
    assert_eq!(darwin::start_time(u64::MAX, 1), u64::MAX, "saturates");
}

#[test]
fn darwin_available_is_free_plus_inactive_pages() {
    // `vm_stat` on a 64 GB M1 Max (16 KiB pages): free 203841 (speculative
    // included), inactive 1265007, purgeable 21110 (already in the queues).
    let bytes = darwin::available(203_841, 1_265_007, 16_384);
    assert_eq!(bytes, (203_841 + 1_265_007) * 16_384);
    assert_eq!(bytes / (1 << 20), 22_950, "about 22.4 GiB");
    assert_eq!(
        darwin::available(u32::MAX, u32::MAX, 16_384),
        2 * u64::from(u32::MAX) * 16_384
    );
}

#[test]
fn the_gpu_wired_limit_follows_the_sysctl_or_macos_default() {
    const GIB: u64 = 1 << 30;
    // A 64 GB M1 Max left at iogpu.wired_limit_mb = 0: three quarters.
    assert_eq!(darwin::wired_limit(0, 64 * GIB), 48 * GIB);
    // 16 GB and 36 GB machines: two thirds.
    assert_eq!(darwin::wired_limit(0, 16 * GIB), 16 * GIB / 3 * 2);
    assert_eq!(darwin::wired_limit(0, 36 * GIB), 24 * GIB);
    // Just above 36 GB: three quarters.
    assert_eq!(darwin::wired_limit(0, 48 * GIB), 36 * GIB);
    // Set by hand (`sudo sysctl iogpu.wired_limit_mb=57344`): what it says.
    assert_eq!(darwin::wired_limit(57_344, 64 * GIB), 56 * GIB);
    // More than the machine has is never what the GPU gets.
    assert_eq!(darwin::wired_limit(1 << 40, 64 * GIB), 64 * GIB);
}

#[test]
fn the_descriptor_limit_rises_to_the_hard_limit_within_bounds() {
    // launchd's 256 under macOS's unlimited hard limit and 24576 per process.
    assert_eq!(
        open_files_target(256, u64::MAX, OPEN_FILES_CAP, Some(24_576)),
        24_576
    );
    // A Linux desktop: 1024 soft, 524288 hard: capped.
    assert_eq!(
        open_files_target(1024, 524_288, OPEN_FILES_CAP, None),
        OPEN_FILES_CAP
    );
    // A hard limit below the cap is the limit.
    assert_eq!(open_files_target(256, 20_000, OPEN_FILES_CAP, None), 20_000);
    // Never lowered.
    assert_eq!(
        open_files_target(100_000, 200_000, OPEN_FILES_CAP, None),
        100_000
    );
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
#[test]
fn this_process_is_in_the_live_table() {
    let me = std::process::id();
    let started = Host.start_time(me).expect("own start time");
    assert!(started > 0);
    assert_eq!(Host.start_time(me), Some(started), "stable");
    assert!(Host.exists(me));
    assert!(!Host.exists(u32::MAX - 1));
    assert_eq!(Host.start_time(u32::MAX - 1), None);
    let group = nix::unistd::getpgrp().as_raw() as u32;
    assert!(Host.group_alive(group));
    assert!(rss(me).is_some_and(|b| b > 1_000_000));
    assert!(available().is_some_and(|b| b > 0));
}

#[test]
fn a_model_larger_than_the_gpu_may_wire_is_named() {
    const GB: u64 = 1_000_000_000;
    let limit = darwin::wired_limit(0, 64 << 30);
    assert_eq!(gpu_wired_warning("qwen3-30b", 41 * GB, limit), None);
    let w = gpu_wired_warning("qwen3-235b", 56 * GB, limit).unwrap();
    assert!(
        w.starts_with(
            "models.qwen3-235b.memory: 56 GB is more than the GPU may wire on this Mac (48 GiB)"
        ),
        "{w}"
    );
    assert!(w.contains("iogpu.wired_limit_mb"), "{w}");
}
