//! What happens to models, as it happens: the owner publishes, the admin API's
//! `/admin/events` and the status page subscribe. A slow subscriber misses events
//! (and is told how many) rather than slowing the owner. The last RECENT events
//! are also kept, so a page opened later (or `modelyard status`) can still say why
//! a model left.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it misses some.
pub(crate) const BACKLOG: usize = 1024;

/// How many past events are kept for whoever looks later.
pub const RECENT: usize = 200;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened (serialized as its snake_case name).
    pub kind: Kind,
    pub model: String,
    /// Why, in words: "to make room for qwen3-32b", "idle for 10m", the error.
    pub detail: String,
    /// For `ready`: how long the load took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
    /// For `evicting`: why, as a value metrics and scripts can count by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// What happened to a model (or, for `Budget`, to the whole router).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A request waits for it.
    Queued,
    /// Its memory is reserved and it is starting or loading.
    Loading,
    /// It serves (`load_ms`: how long that took), or was found loaded.
    Ready,
    /// Its start or load failed.
    Failed,
    /// Chosen to go (`reason` says why): it drains, then stops.
    Evicting,
    /// Its memory is back.
    Unloaded,
    /// Its process exited on its own.
    Crashed,
    /// A drain was called off: the requests it made room for were abandoned.
    Kept,
    /// The budget changed (`model` is empty).
    Budget,
    /// Its KV cache was saved to disk before it stopped.
    KvSaved,
    /// Its KV cache was restored from disk after it started.
    KvRestored,
    /// A save or restore of its KV cache failed (it serves regardless).
    KvFailed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Queued => "queued",
            Kind::Loading => "loading",
            Kind::Ready => "ready",
            Kind::Failed => "failed",
            Kind::Evicting => "evicting",
            Kind::Unloaded => "unloaded",
            Kind::Crashed => "crashed",
            Kind::Kept => "kept",
            Kind::Budget => "budget",
            Kind::KvSaved => "kv_saved",
            Kind::KvRestored => "kv_restored",
            Kind::KvFailed => "kv_failed",
        }
    }
}

/// So that a kind reads as its name where it is compared with one.
impl PartialEq<&str> for Kind {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    /// `kind` happened to `model`, now; `detail` says it in words.
    pub(crate) fn new(kind: Kind, model: &str, detail: impl Into<String>) -> Event {
        Event {
            at_ms: now_ms(),
            kind,
            model: model.to_string(),
            detail: detail.into(),
            load_ms: None,
            reason: None,
        }
    }

    /// A model chosen to go, and why.
    pub(crate) fn evicting(model: &str, reason: Reason, detail: impl Into<String>) -> Event {
        Event {
            reason: Some(reason),
            ..Event::new(Kind::Evicting, model, detail)
        }
    }

    /// A model ready after a load of `took`.
    pub(crate) fn ready(model: &str, took: std::time::Duration) -> Event {
        Event {
            load_ms: Some(took.as_millis() as u64),
            ..Event::new(
                Kind::Ready,
                model,
                format!("loaded in {:.1}s", took.as_secs_f64()),
            )
        }
    }
}

/// Why a model is unloaded. `detail` says it in words, with the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Unused for its `idle_timeout`.
    Idle,
    /// The `keep_alive` of its last (Ollama API) request ran out.
    KeepAlive,
    /// Another model needed its memory (a swap).
    MakeRoom,
    /// The budget shrank below what is loaded (`reserve`: free memory fell).
    MemoryPressure,
    /// A reload changed or removed its definition.
    Reload,
    /// Someone asked: the CLI, the status page or the admin API.
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "idle",
            Reason::KeepAlive => "keep_alive",
            Reason::MakeRoom => "make_room",
            Reason::MemoryPressure => "memory_pressure",
            Reason::Reload => "reload",
            Reason::Manual => "manual",
        }
    }
}

/// The live stream and the recent past, written by the owner alone.
#[derive(Clone, Debug)]
pub(crate) struct EventLog {
    live: broadcast::Sender<Event>,
    recent: Arc<Mutex<VecDeque<Event>>>,
}

impl EventLog {
    pub(crate) fn new() -> EventLog {
        EventLog {
            live: broadcast::channel(BACKLOG).0,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
        }
    }

    /// Keeps `e` and sends it to every subscriber; having none is no error.
    pub(crate) fn send(&self, e: Event) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(e.clone());
        }
        let _ = self.live.send(e);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The last RECENT events, oldest first.
    pub(crate) fn recent(&self) -> Vec<Event> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event {
            at_ms: n as u64,
            kind: Kind::Ready,
            model: format!("m{n}"),
            detail: String::new(),
            load_ms: None,
            reason: None,
        }
    }

    #[test]
    fn the_last_events_are_kept_oldest_first_and_no_more() {
        let log = EventLog::new();
        for n in 0..RECENT + 5 {
            log.send(event(n));
        }
        let kept = log.recent();
        assert_eq!(kept.len(), RECENT);
        assert_eq!(kept[0].model, "m5");
        assert_eq!(kept[RECENT - 1].model, format!("m{}", RECENT + 4));
    }
}
