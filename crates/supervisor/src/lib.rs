//! Backend lifecycle and the memory ledger behind one call:
//! `acquire(model, deadline) -> Lease`.
//!
//! One owner task decides: it starts a backend on the first request for one of
//! its models (one start shared by every request that arrives meanwhile), keeps
//! the sum of reservations within the budget by draining and stopping other
//! models first (idle before busy, least recently used, never pinned, one model
//! per group), unloads idle models, backs off from backends that keep failing, and
//! stops every process when the router exits.
//!
//! Where to look:
//! - `lifecycle.rs`: a model's states and the table of every legal move (the
//!   owner refuses any other).
//! - `ledger.rs`: the memory rule: a reservation that would take the sum above
//!   the budget is refused; memory is released only once it is really back.
//! - `policy.rs`: the pure decision of who starts and who goes, from a view.
//! - `owner/`: the one task that holds all of it; `owner/mod.rs` maps its
//!   modules, and `owner/leases.rs` is where an acquire becomes a [`Lease`] (the
//!   proxy's single caller is `forward::lease`).
//! - `effects.rs`: starting processes and asking servers to load or unload,
//!   behind a trait so the owner is tested on a paused clock with a fake.

mod ask;
mod backends;
mod effects;
mod error;
mod events;
#[cfg(debug_assertions)]
mod fault;
mod health;
mod kv_cache;
mod lease;
mod ledger;
mod lifecycle;
mod logs;
mod measure;
mod os;
mod owner;
mod physical;
pub mod policy;
mod process;
#[cfg(test)]
mod proptests;
mod snapshot;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_servers;

use std::sync::Arc;

use modelyard_config::Config;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub use ask::{Ask, Priority};
pub use error::SupervisorError;
pub use events::{Event, Kind, Reason};
pub use kv_cache::KvCounts;
pub use lease::Lease;
pub use logs::LogRing;
pub use os::{gpu_wired_limit, gpu_wired_warning, raise_open_files};
pub use physical::physical_memory;
pub use process::{find_program, ExitInfo};
pub use snapshot::{ModelStatus, RemoteModel, Snapshot};

use effects::{Effects, Processes};
use owner::{Msg, Owner};

/// A handle to the supervisor; cheap to clone.
#[derive(Clone, Debug)]
pub struct Supervisor {
    pub(crate) tx: mpsc::UnboundedSender<Msg>,
    events: events::EventLog,
    kv: kv_cache::Stats,
    /// Set once, to what happened, if a task the supervisor cannot do without
    /// panics.
    failure: Failure,
    /// Numbers acquires, so a client that gives up can say which place it leaves.
    acquires: Arc<std::sync::atomic::AtomicU64>,
}

impl Supervisor {
    /// Starts the owner task. Call [`Supervisor::shutdown`] before exiting so that
    /// every backend process is stopped.
    pub fn start(config: Arc<Config>) -> Supervisor {
        let state = config
            .state_file
            .clone()
            .or_else(|| state::default_path(config.listen.port()))
            .map(state::StateFile::new);
        let (events, kv) = (events::EventLog::new(), kv_cache::Stats::default());
        // One HTTP client for everything the supervisor asks of servers: health
        // checks, loads and unloads, KV-cache saves, and the polls of what they hold.
        let http = backends::Http::default();
        let effects = Processes::new(
            http.clone(),
            kv_cache::Reporter {
                events: events.clone(),
                stats: kv.clone(),
            },
        );
        let supervisor = Self::spawn(config, effects, state, events, kv);
        // Both end with the owner; a panic in either would leave the ledger
        // blind to real memory or to what servers unloaded on their own.
        must_live(
            "memory sampler",
            &supervisor.failure,
            sample_memory(supervisor.clone()),
        );
        must_live(
            "server poller",
            &supervisor.failure,
            poll_servers(supervisor.clone(), http),
        );
        supervisor
    }

    #[cfg(test)]
    pub(crate) fn with_effects(config: Arc<Config>, effects: impl Effects) -> Supervisor {
        Self::spawn(
            config,
            effects,
            None,
            events::EventLog::new(),
            kv_cache::Stats::default(),
        )
    }

    fn spawn(
        config: Arc<Config>,
        effects: impl Effects,
        state: Option<state::StateFile>,
        events: events::EventLog,
        kv: kv_cache::Stats,
    ) -> Supervisor {
        // Unbounded because a lease's release must never be lost or wait; the
        // number of messages is bounded by the requests in flight and queued.
        let (tx, rx) = mpsc::unbounded_channel();
        let owner = Owner::new(config, tx.clone(), effects, state, events.clone());
        let failure = Arc::new(watch::channel(None).0);
        must_live("owner", &failure, owner.run(rx));
        Supervisor {
            tx,
            events,
            kv,
            failure,
            acquires: Arc::default(),
        }
    }

    /// Resolves, with the panic's message, if the owner task (or another the
    /// supervisor cannot do without) panics; never if they end normally (after
    /// `shutdown`). The router then exits non-zero, so that launchd or systemd
    /// start a new one (which ends the backends this one leaves).
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        let why = failure
            .wait_for(Option::is_some)
            .await
            .map(|why| why.as_deref().unwrap_or_default().to_string());
        match why {
            Ok(why) => why,
            Err(_) => std::future::pending().await,
        }
    }

    /// Whether the owner answers a ping within `limit`: a live process whose
    /// owner is stuck or gone serves nothing, and says so on /healthz.
    pub async fn responds_within(&self, limit: std::time::Duration) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Ping { reply }).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// Waits until `model` (a configured name, not an alias) is ready, starting it
    /// and making room for it if needed, and returns a lease on it. Past
    /// `deadline` the error says what it waited for. Giving up on the returned
    /// future (the client went away) loses nothing: its place in the queue is
    /// skipped and a lease that arrives for nobody is released at once.
    pub async fn acquire(&self, model: &str, deadline: Instant) -> Result<Lease, SupervisorError> {
        self.acquire_as(model, deadline, Ask::default()).await
    }

    /// [`Self::acquire`] for a known asker: its client identity decides whether
    /// a model lingers past a swap, its priority whether it may cause one.
    pub async fn acquire_as(
        &self,
        model: &str,
        deadline: Instant,
        ask: Ask,
    ) -> Result<Lease, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        let id = self
            .acquires
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx
            .send(Msg::Acquire {
                model: model.to_string(),
                deadline,
                ask,
                reply,
                id,
            })
            .map_err(|_| SupervisorError::ShuttingDown)?;
        let mut place = Place {
            tx: &self.tx,
            model,
            id,
            waiting: true,
        };
        let answer = rx.await;
        place.waiting = false;
        answer.unwrap_or(Err(SupervisorError::ShuttingDown))
    }

    /// Loads `model` and keeps it warm (it then idles like any other).
    pub async fn load(&self, model: &str, deadline: Instant) -> Result<(), SupervisorError> {
        self.acquire(model, deadline).await.map(drop)
    }

    /// Unloads `model` (pinned or not), or with None every model that is not
    /// pinned; requests in flight finish first. Returns the models that go.
    pub async fn unload(&self, model: Option<&str>) -> Result<Vec<String>, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Unload {
                model: model.map(str::to_string),
                reply,
            })
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.unwrap_or(Err(SupervisorError::ShuttingDown))
    }

    /// A client's `keep_alive` for a loaded `model`: its idle timeout until it next
    /// unloads (`Some(ZERO)`: unload once its requests finish; None: never).
    /// Pinned models stay pinned; a model not loaded is left alone.
    pub fn keep_alive(&self, model: &str, idle: Option<std::time::Duration>) {
        let _ = self.tx.send(Msg::KeepAlive {
            model: model.to_string(),
            idle,
        });
    }

    /// The output of the backend serving `model` (a configured name), if any.
    pub async fn logs(&self, model: &str) -> Option<LogRing> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Logs {
                model: model.to_string(),
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Applies a new config without dropping a request: settings at once, new
    /// models at once, removed or redefined ones once idle. Returns what changed.
    pub async fn reload(&self, config: Arc<Config>) -> Result<Vec<String>, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Reload { config, reply })
            .map_err(|_| SupervisorError::ShuttingDown)?;
        rx.await.map_err(|_| SupervisorError::ShuttingDown)
    }

    /// Every model event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// What each model's KV cache saved and restored since the router started.
    pub fn kv_counts(&self) -> std::collections::BTreeMap<String, KvCounts> {
        self.kv.all()
    }

    /// The last events (at most [`events::RECENT`]), oldest first: why models came
    /// and went before anyone was watching.
    pub fn recent_events(&self) -> Vec<Event> {
        self.events.recent()
    }

    /// The ledger and every model's state, as the owner sees it now.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Snapshot { reply }).ok()?;
        rx.await.ok()
    }

    /// Stops every backend process (SIGTERM, then SIGKILL after its stop_timeout)
    /// and returns when all have exited. Later acquires fail with ShuttingDown.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// An acquire's place in its model's queue, given up when the acquire is
/// dropped unanswered (the client went away): the owner hears at once, so its
/// queue holds only clients still waiting and nothing loads for nobody.
struct Place<'a> {
    tx: &'a mpsc::UnboundedSender<Msg>,
    model: &'a str,
    id: u64,
    waiting: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.waiting {
            let _ = self.tx.send(Msg::Abandoned {
                model: self.model.to_string(),
                id: self.id,
            });
        }
    }
}

type Failure = Arc<watch::Sender<Option<Arc<str>>>>;

/// Spawns a task the supervisor cannot do without: without the owner nothing is
/// started, stopped or released again. Its panic must not go unnoticed: it is
/// logged with its message and sets `failure`, on which the binary exits.
fn must_live(
    name: &'static str,
    failure: &Failure,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let failure = failure.clone();
    let task = tokio::spawn(task);
    // Ends with the task.
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                let why = panic_message(e.into_panic());
                tracing::error!("the supervisor's {name} task panicked: {why}");
                // Kept even while nobody waits for it yet (send would drop it).
                failure.send_replace(Some(format!("{name}: {why}").into()));
            }
        }
    });
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// How often backends' real memory is read.
const MEASURE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often servers are asked what they hold (and whether they are there).
const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks every server that keeps its own account for it, and hands that to the
/// owner to square with the ledger; ends with the owner.
async fn poll_servers(supervisor: Supervisor, http: backends::Http) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (reply, rx) = oneshot::channel();
        if supervisor.tx.send(Msg::Polls { reply }).is_err() {
            return;
        }
        let Ok(polls) = rx.await else { return };
        let asks = polls.into_iter().map(|p| {
            let (http, tx) = (http.clone(), supervisor.tx.clone());
            async move {
                let asked = Instant::now();
                let report = backends::adapter(p.kind).report(http, p.probe).await;
                let _ = tx.send(Msg::Reported {
                    key: p.key,
                    generation: p.generation,
                    asked,
                    report,
                });
            }
        });
        futures_util::future::join_all(asks).await;
    }
}

/// Reads each backend's process-tree memory and reports it to the owner; ends
/// with the owner.
async fn sample_memory(supervisor: Supervisor) {
    let mut tick = tokio::time::interval(MEASURE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(snap) = supervisor.snapshot().await else {
            return;
        };
        let mut pids: Vec<u32> = snap.models.iter().filter_map(|m| m.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let samples = pids
            .into_iter()
            .map(|p| (p, measure::tree_rss(p)))
            .collect();
        let available = measure::available();
        if supervisor
            .tx
            .send(Msg::Measured { samples, available })
            .is_err()
        {
            return;
        }
    }
}
