//! What the rest of the supervisor may ask the owner or tell it: the only way in.
//! Handles (`Supervisor`), leases (`Release`), the effects (process exits,
//! finished loads) and the background samplers all send these messages.

use super::*;

pub(crate) type Reply = oneshot::Sender<Result<Lease, SupervisorError>>;

pub(crate) enum Msg {
    Acquire {
        model: String,
        deadline: Instant,
        ask: crate::Ask,
        reply: Reply,
        /// The acquire's number, by which its client may give up its place.
        id: u64,
    },
    /// The client of acquire `id` went away before its answer.
    Abandoned {
        model: String,
        id: u64,
    },
    Released {
        model: ModelKey,
        generation: u64,
        interactive: bool,
        client: u64,
    },
    StartDone {
        key: InstanceKey,
        generation: u64,
        result: Result<(), String>,
    },
    Exited {
        key: InstanceKey,
        generation: u64,
        info: Option<ExitInfo>,
    },
    /// Unload one model (even a pinned one), or with None every model not pinned.
    Unload {
        model: Option<String>,
        reply: oneshot::Sender<Result<Vec<String>, SupervisorError>>,
    },
    /// A client's `keep_alive`: the model's idle timeout until it next unloads.
    KeepAlive {
        model: String,
        idle: Option<Duration>,
    },
    /// The output of the backend serving a model.
    Logs {
        model: String,
        reply: oneshot::Sender<Option<LogRing>>,
    },
    /// Apply a new config; answers with what changed.
    Reload {
        config: Arc<Config>,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// A load or an unload asked of a server has finished.
    ModelDone {
        model: ModelKey,
        generation: u64,
        unload: bool,
        result: Result<(), String>,
    },
    /// The servers whose own account is polled, and how to reach them.
    Polls {
        reply: oneshot::Sender<Vec<Poll>>,
    },
    /// A server's own account of itself, asked for at `asked`.
    Reported {
        key: InstanceKey,
        generation: u64,
        asked: Instant,
        report: Result<Report, String>,
    },
    /// Resident bytes of each backend process tree, by pid (None: gone).
    Measured {
        samples: Vec<(u32, Option<u64>)>,
        /// What the system says it has available (None: it could not tell).
        available: Option<u64>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// Answered at once: proof that the owner still takes messages.
    Ping {
        reply: oneshot::Sender<()>,
    },
    /// Every move made and refused so far (tests only).
    #[cfg(test)]
    Audit {
        reply: oneshot::Sender<lifecycle::Audit>,
    },
}

/// A running server to ask for its own account.
pub(crate) struct Poll {
    pub key: InstanceKey,
    pub generation: u64,
    pub kind: modelyard_config::BackendKind,
    pub probe: Probe,
}
