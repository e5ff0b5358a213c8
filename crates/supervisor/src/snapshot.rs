//! A consistent picture of the ledger at one instant, taken by the owner.

use crate::policy::Phase;

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// What models may hold now: the configured budget, or less while free
    /// memory is short (see `reserve`).
    pub budget: u64,
    /// The budget routes.yaml gives (u64::MAX: none).
    pub configured_budget: u64,
    /// Memory the system reported available at the last sample, when a `reserve`
    /// makes the budget follow it.
    pub available: Option<u64>,
    /// Sum of every reservation: the models' and the shared servers'.
    pub used: u64,
    /// What running shared servers hold of their own (their `memory`).
    pub servers: u64,
    pub models: Vec<ModelStatus>,
    /// Models another machine serves that routes.yaml does not name, by the
    /// remote backend that lists them.
    pub remote_models: Vec<RemoteModel>,
}

#[derive(Clone, Debug)]
pub struct RemoteModel {
    pub name: String,
    pub backend: String,
}

#[derive(Clone, Debug)]
pub struct ModelStatus {
    pub name: String,
    pub phase: Phase,
    /// Its size in routes.yaml (with its own process's base memory).
    pub declared: u64,
    /// Resident memory of the process tree serving it, last sampled; shared by
    /// every model of a shared server.
    pub measured: Option<u64>,
    /// Bytes reserved for it now (0 unless starting, ready, draining or stopping).
    pub reserved: u64,
    pub in_flight: usize,
    pub queued: usize,
    /// Of those, background requests (they yield to interactive work).
    pub queued_background: usize,
    pub backend: String,
    pub upstream: String,
    pub pinned: bool,
    /// Since its last request ended (or since the router started).
    pub last_used_ago: std::time::Duration,
    /// When it will be unloaded for being idle, if it will.
    pub idle_unload_in: Option<std::time::Duration>,
    /// host:port of the process serving it, once started.
    pub endpoint: Option<String>,
    /// The median of its last few load times.
    pub typical_load: Option<std::time::Duration>,
    pub pid: Option<u32>,
    pub failures: u32,
    pub last_error: Option<String>,
    /// The most tokens one request may carry, as its server last reported it.
    pub context_window: Option<u32>,
}

impl Snapshot {
    pub fn model(&self, name: &str) -> Option<&ModelStatus> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn remote_model(&self, name: &str) -> Option<&RemoteModel> {
        self.remote_models.iter().find(|m| m.name == name)
    }
}
