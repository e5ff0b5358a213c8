//! Reading /proc's text, compiled (and so tested) on every OS; the Linux
//! reader is its only user.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

/// Field 22 of a /proc/PID/stat line (the start time in clock ticks since boot),
/// counted after the parenthesised command name, which may hold spaces and ')'.
pub(crate) fn start_time(stat: &str) -> Option<u64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The process group and whether the process is a zombie, from a /proc/PID/stat line.
pub(crate) fn group(stat: &str) -> Option<(u32, bool)> {
    // After the command name: state, ppid, pgrp.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let zombie = f.next()? == "Z";
    let pgrp = f.nth(1)?.parse().ok()?;
    Some((pgrp, zombie))
}
