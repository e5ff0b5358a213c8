//! What happens to models, as it happens: the owner publishes, the admin API's
//! `/admin/events` and the status page subscribe. A slow subscriber misses events
//! (and is told how many) rather than slowing the owner.

use serde::Serialize;

/// How many events a subscriber may fall behind before it misses some.
pub(crate) const BACKLOG: usize = 1024;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// queued, loading, ready, failed, evicting, unloaded or crashed.
    pub kind: &'static str,
    pub model: String,
    /// Why, in words: "to make room for qwen3-32b", "idle for 10m", the error.
    pub detail: String,
    /// For `ready`: how long the load took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
