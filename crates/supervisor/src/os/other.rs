//! Elsewhere: nothing is read; reaping then relies on the leader being gone.

pub fn start_time(_pid: u32) -> Option<u64> {
    None
}
pub fn group_has_live_member(_pgid: u32) -> bool {
    true
}
pub fn rss(_pid: u32) -> Option<u64> {
    None
}
pub fn children(_pid: u32) -> Vec<u32> {
    Vec::new()
}
pub fn available() -> Option<u64> {
    None
}
pub fn physical_memory() -> Option<u64> {
    None
}

pub fn gpu_wired_limit() -> Option<u64> {
    None
}
pub fn max_files_per_process() -> Option<u64> {
    None
}
