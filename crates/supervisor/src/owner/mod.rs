//! The one task that owns every model's and every instance's lifecycle state and
//! the memory ledger. Everything else sends it messages; nothing else reads or
//! changes that state, so a decision and the change it leads to never race (a
//! read that gates a mutation is a bug). It sleeps until the next deadline: a
//! waiter's queue_timeout, an idle unload, the end of a backoff.
//!
//! By concern, each module an `impl Owner` block over the state defined here:
//!
//! - `protocol`: the messages, the only way in.
//! - `leases`: where a request becomes a lease (served, refused or queued).
//! - `queue`: one model's waiters and the index of their deadlines.
//! - `slots`: a model's state and `enter`, the one place it changes (the moves
//!   are listed in `crate::lifecycle`; the memory rule in `crate::ledger`).
//! - `admission`: who gets memory next (through `crate::policy::admit`), idle
//!   unloads, and the deadlines the loop sleeps until.
//! - `instances`: backend processes: launch, readiness, exit, stop, shutdown.
//! - `servers`: servers that load models one by one, and squaring the ledger
//!   with what they report.
//! - `memory`: the budget that follows the machine's free memory.
//! - `reload`: models made from the config, and a new config taken live.
//!
//! This file holds the owner itself, its loop, and the views out of it (the
//! snapshot, the ledger check).

mod admission;
mod instances;
mod leases;
mod memory;
mod protocol;
mod queue;
mod reload;
mod servers;
mod slots;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use modelyard_config::{Backend, Config};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use crate::backends::{adapter, same_model, Prepare, Probe, Report, Target};
use crate::effects::{Effects, Handle, Launch, ModelOp};
use crate::error::SupervisorError;
use crate::events::{Event, Kind, Reason};
use crate::lease::{Lease, Release};
use crate::ledger::{Holder, Ledger};
use crate::lifecycle::Run;
use crate::lifecycle::{self, Refused};
use crate::logs::LogRing;
use crate::policy::{admit_as, Admission, Phase, View};
use crate::process::{self, ExitInfo, Spec};
use crate::snapshot::{ModelStatus, Snapshot};
use crate::state::{self, Group, StateFile};
use admission::{idle_deadline, linger_until};
use instances::{instance_key, Endpoint, Instance};
pub(crate) use protocol::{Msg, Poll, Reply};
use queue::{Queue, Waiter};
use slots::{clear_failures, fail_queue, median, note_failure, IdleFor, Life, Slot, State, Swap};

/// An instance is one backend process: per model for `openai` backends with a
/// command, shared by all of a backend's models otherwise.
pub(crate) type InstanceKey = Arc<str>;
pub(crate) type ModelKey = Arc<str>;

pub(crate) struct Owner<E: Effects> {
    config: Arc<Config>,
    /// Every reservation and the budget they must fit (see ledger.rs).
    ledger: Ledger,
    /// The last available-memory sample, while a `reserve` is set.
    available: Option<u64>,
    /// The budget the last `budget` event named: small moves of free memory
    /// change the budget every sample, and only a real change is worth saying.
    announced: u64,
    slots: HashMap<ModelKey, Slot>,
    instances: HashMap<InstanceKey, Instance>,
    tx: mpsc::UnboundedSender<Msg>,
    effects: E,
    shutting_down: bool,
    events: crate::events::EventLog,
    state: Option<StateFile>,
    arrivals: u64,
    /// Answered once every process has exited after a shutdown.
    shutdown_done: Option<oneshot::Sender<()>>,
    #[cfg(test)]
    audit: lifecycle::Audit,
}

impl<E: Effects> Owner<E> {
    pub fn new(
        config: Arc<Config>,
        tx: mpsc::UnboundedSender<Msg>,
        effects: E,
        state: Option<StateFile>,
        events: crate::events::EventLog,
    ) -> Owner<E> {
        let mut owner = Owner {
            ledger: Ledger::new(config.budget.map_or(u64::MAX, |b| b.0)),
            available: None,
            announced: config.budget.map_or(u64::MAX, |b| b.0),
            config: config.clone(),
            slots: HashMap::new(),
            instances: HashMap::new(),
            tx,
            effects,
            shutting_down: false,
            events,
            state,
            arrivals: 0,
            shutdown_done: None,
            #[cfg(test)]
            audit: lifecycle::Audit::default(),
        };
        for name in config.models.keys() {
            owner.add_model(name);
        }
        owner
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        // Before the first request is admitted: what a previous run left is ended.
        if let Some(state) = &self.state {
            let ended = state.reap().await;
            if ended > 0 {
                tracing::warn!("ended {ended} backend process group(s) left by a previous run");
            }
        }
        loop {
            let next = self.next_deadline();
            let msg = tokio::select! {
                // Messages first: a request is never kept waiting behind a tick.
                biased;
                msg = rx.recv() => msg,
                _ = sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {
                    self.on_tick();
                    self.settle_definitions();
                    self.schedule();
                    continue;
                }
            };
            let Some(msg) = msg else { return };
            #[cfg(debug_assertions)]
            if let Msg::Acquire { model, .. } = &msg {
                crate::fault::on_acquire(model).await;
            }
            match msg {
                Msg::Acquire {
                    model,
                    deadline,
                    ask,
                    reply,
                    id,
                } => self.on_acquire(model, deadline, ask, reply, id),
                Msg::Abandoned { model, id } => {
                    if let Some(slot) = self.slots.get_mut(model.as_str()) {
                        slot.queue.remove_id(id);
                    }
                }
                Msg::Released {
                    model,
                    generation,
                    interactive,
                    client,
                } => self.on_released(model, generation, interactive, client),
                Msg::StartDone {
                    key,
                    generation,
                    result,
                } => self.on_start_done(key, generation, result),
                Msg::Exited {
                    key,
                    generation,
                    info,
                } => self.on_exited(key, generation, info),
                Msg::Snapshot { reply } => {
                    let _ = reply.send(self.snapshot());
                }
                Msg::Measured { samples, available } => {
                    self.on_measured(samples);
                    self.follow_memory(available);
                }
                Msg::ModelDone {
                    model,
                    generation,
                    unload,
                    result,
                } => self.on_model_done(model, generation, unload, result),
                Msg::Polls { reply } => {
                    let _ = reply.send(self.polls());
                }
                Msg::Reported {
                    key,
                    generation,
                    asked,
                    report,
                } => self.on_reported(key, generation, asked, report),
                Msg::Reload { config, reply } => {
                    let changes = self.on_reload(config);
                    let _ = reply.send(changes);
                }
                Msg::KeepAlive { model, idle } => {
                    if let Some(slot) = self.slots.get_mut(model.as_str()) {
                        if slot.phase().holds_memory() {
                            slot.idle_for = IdleFor::KeepAlive(idle);
                        }
                    }
                }
                Msg::Logs { model, reply } => {
                    let ring = self
                        .slots
                        .get(model.as_str())
                        .map(|s| self.instances[&s.instance].logs.clone());
                    let _ = reply.send(ring);
                }
                Msg::Unload { model, reply } => {
                    let _ = reply.send(self.on_unload(model));
                }
                Msg::Ping { reply } => {
                    let _ = reply.send(());
                }
                #[cfg(test)]
                Msg::Audit { reply } => {
                    let _ = reply.send(self.audit.clone());
                }
                Msg::Shutdown { done } => {
                    self.shutdown_done = Some(done);
                    self.shutdown();
                }
            }
            // A deadline that fell due while the message was handled is met now:
            // the next computation no longer lists what has expired (a linger's
            // end, an idle unload), so its tick would otherwise be lost.
            if next.is_some_and(|d| d <= Instant::now()) {
                self.on_tick();
            }
            if !self.shutting_down {
                // A zero keep_alive is due the moment its last request ends.
                self.unload_idle();
                self.settle_definitions();
            }
            if self.shutting_down {
                let unloading = self.slots.values().any(|s| s.life.unload_asked);
                if !unloading && self.instances.values().all(|i| i.handle.is_none()) {
                    if let Some(done) = self.shutdown_done.take() {
                        let _ = done.send(());
                    }
                    return;
                }
                continue;
            }
            self.schedule();
        }
    }

    // ---- events and the manual unload ------------------------------------------

    /// A change of the budget, for the whole router.
    fn emit_budget(&self, detail: String) {
        tracing::info!("budget: {detail}");
        self.emit(Event::new(Kind::Budget, "", detail));
    }

    /// Publishes `e` to the events stream, the status page and the metrics.
    fn emit(&self, e: Event) {
        self.events.send(e);
    }

    /// Unloads `model` (pinned or not) or every model not pinned: they drain,
    /// then go. Returns the models that go.
    fn on_unload(&mut self, model: Option<String>) -> Result<Vec<String>, SupervisorError> {
        let targets: Vec<ModelKey> = match &model {
            Some(name) => {
                let (key, slot) = self
                    .slots
                    .get_key_value(name.as_str())
                    .ok_or_else(|| SupervisorError::UnknownModel(name.clone()))?;
                if slot.phase() == Phase::Starting {
                    return Err(SupervisorError::Starting(name.clone()));
                }
                vec![key.clone()]
            }
            None => self
                .slots
                .iter()
                .filter(|(_, s)| !s.pinned)
                .map(|(k, _)| k.clone())
                .collect(),
        };
        let mut unloaded = Vec::new();
        for m in targets {
            if self.slots[&m].phase() == Phase::Ready && self.slots[&m].counted {
                self.begin_drain(
                    &m,
                    Reason::Manual,
                    "asked to (unload from the CLI, the status page or the admin API)",
                );
                unloaded.push(m.to_string());
            }
        }
        Ok(unloaded)
    }

    fn emit_ready(&self, m: &ModelKey, took: Duration) {
        self.emit(Event::ready(m, took));
    }

    // ---- views: the ledger check and the snapshot ------------------------------

    /// The ledger as the states say it should be: a check on the transitions
    /// that reserve and release.
    fn used_by_states(&self) -> u64 {
        self.slots
            .values()
            .filter(|s| s.phase().holds_memory())
            .map(|s| s.memory)
            .sum::<u64>()
            + self.servers_reserved()
    }

    fn servers_reserved(&self) -> u64 {
        self.instances
            .values()
            .filter(|i| i.run.holds_memory())
            .map(|i| i.base)
            .sum()
    }

    fn check_ledger(&self) {
        let used = self.ledger.held();
        if !self.ledger.within_ceiling() {
            tracing::error!(used, budget = self.ledger.budget(), "ledger above budget");
            debug_assert!(false, "ledger {used} above {}", self.ledger.ceiling());
        }
        debug_assert_eq!(
            used,
            self.used_by_states(),
            "the ledger and the models' states disagree"
        );
    }

    fn snapshot(&self) -> Snapshot {
        self.check_ledger();
        let mut models: Vec<ModelStatus> = self
            .slots
            .iter()
            .map(|(name, s)| {
                let inst = &self.instances[&s.instance];
                ModelStatus {
                    name: name.to_string(),
                    // Cold while it waits out a backoff: shown as what it is.
                    phase: if matches!(s.life.state, State::Cold { retry_at: Some(_) }) {
                        Phase::Failed
                    } else {
                        s.phase()
                    },
                    declared: s.memory,
                    measured: match (s.phase().holds_memory(), inst.loads) {
                        (false, _) => None,
                        (true, true) => s.measured,
                        (true, false) => inst.measured,
                    },
                    reserved: if s.phase().holds_memory() {
                        s.memory
                    } else {
                        0
                    },
                    in_flight: s.in_flight,
                    queued: s.queue.len(),
                    queued_background: s.queue.background(),
                    backend: inst.backend_name.clone(),
                    upstream: s.upstream.clone(),
                    pinned: s.pinned,
                    last_used_ago: s.last_used.elapsed(),
                    idle_unload_in: idle_deadline(s)
                        .map(|d| d.saturating_duration_since(Instant::now())),
                    // A stopped process's port is no address: the next start
                    // picks another.
                    endpoint: inst
                        .endpoint
                        .as_ref()
                        .filter(|_| !matches!(inst.run, Run::Down))
                        .map(|e| e.authority.to_string()),
                    typical_load: median(&s.recent_loads),
                    pid: inst.handle.as_ref().and_then(|h| h.pid()),
                    failures: s.failures,
                    last_error: s
                        .last_error
                        .clone()
                        .or_else(|| inst.down().map(str::to_string)),
                    context_window: inst.context_window,
                }
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let mut remote_models: Vec<crate::RemoteModel> = self
            .instances
            .values()
            .filter(|i| i.down().is_none())
            .flat_map(|i| i.listed.iter().map(move |n| (n, i)))
            .filter(|(n, i)| {
                self.remote_serving(n)
                    .is_some_and(|chosen| chosen.backend_name == i.backend_name)
            })
            .map(|(n, i)| crate::RemoteModel {
                name: n.clone(),
                backend: i.backend_name.clone(),
            })
            .collect();
        remote_models.sort_by(|a, b| a.name.cmp(&b.name));
        remote_models.dedup_by(|a, b| a.name == b.name);
        Snapshot {
            configured_budget: self.ledger.configured(),
            available: self.available,
            remote_models,
            servers: self.servers_reserved(),
            budget: self.ledger.budget(),
            used: self.ledger.held(),
            models,
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
