//! The one task that owns every model's and every instance's lifecycle state and
//! the memory ledger. Everything else sends it messages; nothing else reads or
//! changes that state, so a decision and the change it leads to never race (a
//! read that gates a mutation is a bug). It sleeps until the next deadline: a
//! waiter's queue_timeout, an idle unload, the end of a backoff.

mod admission;
mod memory;
mod queue;
mod servers;

use std::collections::{HashMap, VecDeque};
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
use crate::lifecycle::{self, Refused};
use crate::logs::LogRing;
use crate::policy::{admit, Admission, Phase, View};
use crate::process::{self, ExitInfo, Spec};
use crate::snapshot::{ModelStatus, Snapshot};
use crate::state::{self, Group, StateFile};
use admission::{idle_deadline, linger_until};
use queue::{Queue, Waiter};

/// An instance is one backend process: per model for `openai` backends with a
/// command, shared by all of a backend's models otherwise.
pub(crate) type InstanceKey = Arc<str>;
pub(crate) type ModelKey = Arc<str>;

pub(crate) type Reply = oneshot::Sender<Result<Lease, SupervisorError>>;

pub(crate) enum Msg {
    Acquire {
        model: String,
        deadline: Instant,
        reply: Reply,
    },
    Released {
        model: ModelKey,
        generation: u64,
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

/// How many recent loads the typical load time is the median of.
const RECENT_LOADS: usize = 5;

/// Repeated failures wait 1 s, 2 s, 4 s … up to this before the next start.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A backend that ran this long before dying starts its failure count afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// A running server to ask for its own account.
pub(crate) struct Poll {
    pub key: InstanceKey,
    pub generation: u64,
    pub kind: modelyard_config::BackendKind,
    pub probe: Probe,
}

#[derive(Clone, Debug)]
struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Option<Endpoint> {
        let uri: Uri = url.parse().ok()?;
        Some(Endpoint {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    fn base(&self) -> String {
        self.url("")
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}{}{}",
            self.scheme, self.authority, self.base_path, path
        )
    }
}

struct Slot {
    instance: InstanceKey,
    /// Declared memory plus, for a process of its own, its backend's.
    memory: u64,
    group: Option<String>,
    pinned: bool,
    idle: Option<Duration>,
    /// Set by a request's `keep_alive` (None inside: never); cleared on unload.
    idle_override: Option<Option<Duration>>,
    upstream: String,
    phase: Phase,
    in_flight: usize,
    last_used: Instant,
    /// When its last two requests were admitted: closer than a load's time apart,
    /// they make a burst, which a swap waits out (see linger_until).
    admitted: [Option<Instant>; 2],
    queue: Queue,
    /// Why its queue waits, for the 503 a waiter gets if it gives up.
    why: String,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// Set while it drains to make room for another model: until this instant it
    /// still takes requests for itself.
    serve_until: Option<Instant>,
    /// The config it was made from.
    def: (modelyard_config::Model, Backend),
    /// Removed or redefined by a reload: leaves once idle, then is rebuilt or dropped.
    stale: bool,
    /// How long its last few loads took, to say how long the next will.
    recent_loads: VecDeque<Duration>,
    /// Whether its memory is ours to count: not for another machine's model, nor
    /// for a server we neither start nor load models on.
    counted: bool,
    /// Its size as its server reports it (servers that load models one by one).
    measured: Option<u64>,
    /// When its current load began, and when it was ready.
    load_started: Instant,
    ready_at: Instant,
    /// An unload was asked of its server and has not answered yet.
    unloading: bool,
    /// Why it is draining or stopping, for the `unloaded` event that ends it.
    unload_why: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Not ours to start or stop: `url` without `command`.
    External,
    Down,
    Starting,
    Up,
    Stopping,
}

struct Instance {
    backend_name: String,
    backend: Backend,
    /// Set when the instance serves one model only.
    model: Option<String>,
    run: Run,
    handle: Option<Box<dyn Handle>>,
    endpoint: Option<Endpoint>,
    generation: u64,
    up_since: Instant,
    logs: LogRing,
    models: Vec<ModelKey>,
    /// Last measured resident memory of its process tree.
    measured: Option<u64>,
    /// Whether running above the declared size was already reported this run.
    warned: bool,
    /// A shared server's own memory, reserved from its start until its exit.
    base: u64,
    launched_at: Instant,
    /// Its server loads and unloads models one by one through its API.
    loads: bool,
    /// Why a server we do not start is unreachable, from the last poll.
    down: Option<String>,
    /// The most tokens one request may carry, as the server reports it.
    context_window: Option<u32>,
    /// The models another machine says it serves.
    listed: Vec<String>,
}

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

fn instance_key(config: &Config, model: &str) -> Option<InstanceKey> {
    let m = config.models.get(model)?;
    let b = config.backends.get(&m.backend)?;
    Some(if b.kind.process_per_model() && b.command.is_some() {
        format!("{}/{model}", m.backend).into()
    } else {
        m.backend.as_str().into()
    })
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

    /// Creates the slot (and, if needed, the instance) for `name` from the config.
    fn add_model(&mut self, name: &str) {
        let config = self.config.clone();
        let Some(key) = instance_key(&config, name) else {
            return;
        };
        let m = &config.models[name];
        let now = Instant::now();
        let backend = config.backends[&m.backend].clone();
        let per_model = backend.kind.process_per_model() && backend.command.is_some();
        let external = backend.command.is_none();
        let loads = backend.kind.loads_models();
        let counted = backend.counts_memory();
        let inst = self
            .instances
            .entry(key.clone())
            .or_insert_with(|| Instance {
                backend_name: m.backend.clone(),
                endpoint: if external {
                    backend.url.as_deref().and_then(Endpoint::parse)
                } else {
                    None
                },
                run: if external { Run::External } else { Run::Down },
                backend: backend.clone(),
                model: per_model.then(|| name.to_string()),
                handle: None,
                generation: 0,
                up_since: now,
                logs: LogRing::default(),
                models: Vec::new(),
                measured: None,
                warned: false,
                launched_at: now,
                base: if per_model || external {
                    0
                } else {
                    backend.memory.map_or(0, |b| b.0)
                },
                loads,
                down: None,
                context_window: None,
                listed: Vec::new(),
            });
        let model_key: ModelKey = name.into();
        inst.models.push(model_key.clone());
        let own_base = if per_model {
            backend.memory.map_or(0, |b| b.0)
        } else {
            0
        };
        self.slots.insert(
            model_key,
            Slot {
                instance: key,
                // What another machine or server holds is not ours to count.
                memory: if counted {
                    m.memory.map_or(0, |b| b.0) + own_base
                } else {
                    0
                },
                group: m.group.clone(),
                pinned: m.pinned,
                idle: config.idle_timeout_of(m).duration(),
                idle_override: None,
                upstream: match (&m.upstream, adapter(backend.kind).default_upstream()) {
                    (Some(u), _) => u.clone(),
                    (None, Some(fixed)) => fixed.to_string(),
                    (None, None) => name.to_string(),
                },
                phase: if counted { Phase::Cold } else { Phase::Ready },
                in_flight: 0,
                last_used: now,
                admitted: [None, None],
                queue: Queue::default(),
                why: String::new(),
                failures: 0,
                retry_at: None,
                last_error: None,
                serve_until: None,
                def: (m.clone(), backend),
                stale: false,
                recent_loads: VecDeque::new(),
                counted,
                measured: None,
                load_started: now,
                ready_at: now,
                unloading: false,
                unload_why: None,
            },
        );
    }

    /// Takes a new config: settings now; models added now; models removed or
    /// redefined once they are idle (what is in flight finishes on the old one).
    fn on_reload(&mut self, config: Arc<Config>) -> Vec<String> {
        let mut changes = Vec::new();
        let previous = std::mem::replace(&mut self.config, config.clone());
        for (key, was, now, unset) in [
            ("budget", previous.budget, config.budget, "no limit"),
            ("reserve", previous.reserve, config.reserve, "none"),
        ] {
            if was != now {
                let say = |b: Option<modelyard_config::ByteSize>| {
                    b.map_or(unset.to_string(), |b| b.to_string())
                };
                let change = format!("{key} {} → {}", say(was), say(now));
                self.emit_budget(format!("reload: {change}"));
                changes.push(change);
            }
        }
        self.ledger
            .set_configured(config.budget.map_or(u64::MAX, |b| b.0));
        self.announced = self.ledger.configured();
        self.follow_memory(self.available);
        let names: Vec<ModelKey> = self.slots.keys().cloned().collect();
        for m in names {
            let slot = self.slots.get_mut(&m).expect("listed");
            match config.models.get(&*m) {
                None => {
                    slot.stale = true;
                    fail_queue(slot, &m, SupervisorError::UnknownModel);
                    if previous.models.contains_key(&*m) {
                        changes.push(format!("removed {m}"));
                    }
                }
                Some(def) => {
                    let backend = config.backends.get(&def.backend).cloned();
                    // What can change under a running process, changes now.
                    slot.group.clone_from(&def.group);
                    slot.pinned = def.pinned;
                    slot.idle = config.idle_timeout_of(def).duration();
                    if Some(&slot.def.1) != backend.as_ref()
                        || slot.def.0.backend != def.backend
                        || slot.def.0.memory != def.memory
                        || slot.def.0.upstream != def.upstream
                        || slot.def.0.args != def.args
                    {
                        slot.stale = true;
                    }
                    // Reported against the last config, so a change still waiting for
                    // its model to be idle is not reported again.
                    let before = previous.models.get(&*m);
                    let before_backend = before.and_then(|b| previous.backends.get(&b.backend));
                    if before != Some(def) || before_backend != backend.as_ref() {
                        changes.push(format!("changed {m}"));
                    }
                }
            }
        }
        for name in config.models.keys() {
            if !self.slots.contains_key(name.as_str()) {
                self.add_model(name);
                changes.push(format!("added {name}"));
            }
        }
        self.fit_budget("reload: the budget shrank");
        changes
    }

    /// Stale models (removed or redefined by a reload) leave once idle; once cold
    /// they are rebuilt from the current config, or dropped if it has them no more.
    fn settle_definitions(&mut self) {
        let stale: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| s.stale)
            .map(|(k, _)| k.clone())
            .collect();
        for m in stale {
            let slot = &self.slots[&m];
            let inst = &self.instances[&slot.instance];
            let run = inst.run;
            if slot.phase == Phase::Ready && slot.in_flight == 0 && slot.counted {
                let why = if self.config.models.contains_key(&*m) {
                    "reload: its definition changed"
                } else {
                    "reload: removed from the config"
                };
                self.begin_drain(&m, Reason::Reload, why);
                continue;
            }
            let cold = !slot.phase.holds_memory() || !slot.counted;
            if !cold {
                continue;
            }
            // A model redefined on a server that stays as it was is rebuilt at once;
            // one whose server changed waits for that server to stop.
            let def = self.config.models.get(&*m);
            let same_server = inst.loads
                && def.is_some_and(|d| {
                    d.backend == slot.def.0.backend
                        && self.config.backends.get(&d.backend) == Some(&slot.def.1)
                });
            if !same_server && matches!(run, Run::Starting | Run::Up | Run::Stopping) {
                let key = slot.instance.clone();
                self.maybe_stop_server(&key);
                continue;
            }
            let slot = self.slots.remove(&m).expect("listed");
            let key = slot.instance.clone();
            if let Some(inst) = self.instances.get_mut(&key) {
                inst.models.retain(|x| *x != m);
                if inst.models.is_empty() {
                    if inst.handle.is_none() {
                        self.instances.remove(&key);
                    } else {
                        self.maybe_stop_server(&key);
                    }
                }
            }
            if self.config.models.contains_key(&*m) {
                self.add_model(&m);
                let fresh = self.slots.get_mut(&m).expect("just added");
                fresh.queue = slot.queue;
                fresh.recent_loads = slot.recent_loads;
            }
        }
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
                    reply,
                } => self.on_acquire(model, deadline, reply),
                Msg::Released { model, generation } => self.on_released(model, generation),
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
                        if slot.phase.holds_memory() {
                            slot.idle_override = Some(idle);
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
                let unloading = self.slots.values().any(|s| s.unloading);
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

    // ---- messages -------------------------------------------------------------

    fn on_acquire(&mut self, model: String, deadline: Instant, reply: Reply) {
        if self.shutting_down {
            let _ = reply.send(Err(SupervisorError::ShuttingDown));
            return;
        }
        self.settle_abandoned();
        let queued: usize = self.slots.values().map(|s| s.queue.len()).sum();
        let max_queue = self.config.max_queue;
        // A model a reload removed is gone for new requests, even while it drains.
        let known = self.config.models.contains_key(&model);
        let Some((key, slot)) = self.slots.get_key_value(model.as_str()).filter(|_| known) else {
            let lease = self
                .remote_lease(&model)
                .unwrap_or(Err(SupervisorError::UnknownModel(model)));
            let _ = reply.send(lease);
            return;
        };
        let key = key.clone();
        // A model draining for a swap still serves its own requests for a while:
        // one swap later instead of two (there and back).
        let swap_grace = slot.phase == Phase::Draining
            && (slot.in_flight > 0 || linger_until(slot).is_some())
            && slot.serve_until.is_some_and(|t| Instant::now() < t);
        if let Some(why) = &self.instances[&slot.instance].down {
            let _ = reply.send(Err(SupervisorError::Unreachable {
                model,
                backend: self.instances[&slot.instance].backend_name.clone(),
                reason: why.clone(),
            }));
            return;
        }
        if (slot.phase == Phase::Ready || swap_grace) && slot.queue.is_empty() {
            let lease = self.lease(&key);
            let _ = reply.send(lease);
            return;
        }
        if let Some(at) = slot.retry_at.filter(|at| *at > deadline) {
            let _ = reply.send(Err(SupervisorError::BackingOff {
                model,
                failures: slot.failures,
                retry_in: at.saturating_duration_since(Instant::now()),
                last_error: slot.last_error.clone().unwrap_or_default(),
            }));
            return;
        }
        if queued >= max_queue {
            let _ = reply.send(Err(SupervisorError::QueueFull { model, max_queue }));
            return;
        }
        self.arrivals += 1;
        let seq = self.arrivals;
        let slot = self.slots.get_mut(&key).expect("looked up above");
        self.events.send(Event::new(
            Kind::Queued,
            &key,
            format!("{} waiting", slot.queue.len() + 1),
        ));
        slot.queue.push_back(Waiter {
            reply,
            deadline,
            since: Instant::now(),
            seq,
        });
    }

    fn on_released(&mut self, model: ModelKey, generation: u64) {
        let Some(slot) = self.slots.get_mut(&model) else {
            return;
        };
        let current = self.instances.get(&slot.instance).map(|i| i.generation);
        if current != Some(generation) || slot.in_flight == 0 {
            return;
        }
        slot.in_flight -= 1;
        slot.last_used = Instant::now();
        if slot.phase == Phase::Draining && slot.in_flight == 0 {
            // The swap it drained for may have been given up meanwhile.
            self.settle_abandoned();
        }
        let slot = &self.slots[&model];
        if slot.phase == Phase::Draining && slot.in_flight == 0 {
            let key = slot.instance.clone();
            if self.instances[&key].loads {
                self.try_unload(&model);
            } else {
                self.try_stop(&key);
            }
        }
    }

    fn on_start_done(&mut self, key: InstanceKey, generation: u64, result: Result<(), String>) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation || inst.run != Run::Starting {
            return;
        }
        match result {
            Ok(()) => {
                tracing::info!(instance = %key, "backend ready");
                inst.run = Run::Up;
                inst.up_since = Instant::now();
                let took = inst.launched_at.elapsed();
                let models = inst.models.clone();
                let loads = inst.loads;
                for m in models {
                    let slot = self.slots.get_mut(&m).expect("instance models exist");
                    if slot.phase == Phase::Starting && loads {
                        self.begin_load(&m);
                    } else if slot.phase == Phase::Starting {
                        self.mark_ready(&m, took);
                    }
                }
            }
            Err(reason) => {
                let reason = format!("{reason}{}", tail_note(&inst.logs));
                tracing::warn!(instance = %key, "backend failed to start: {reason}");
                if let Some(h) = inst.handle.as_mut() {
                    h.stop();
                }
                inst.run = Run::Stopping;
                // Its memory is not back until the process has exited.
                self.fail_starting(&key, &reason, Phase::Stopping);
            }
        }
    }

    fn on_exited(&mut self, key: InstanceKey, generation: u64, info: Option<ExitInfo>) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation {
            return;
        }
        let was = inst.run;
        let requested = info.is_some_and(|i| i.requested);
        let what = info.map_or("exited".to_string(), |i| i.to_string());
        inst.run = Run::Down;
        inst.handle = None;
        inst.measured = None;
        // The process is gone: so is the server's own memory.
        self.ledger.release(&Holder::Server(key.clone()));
        self.record_processes();
        let inst = self.instances.get_mut(&key).expect("looked up above");
        let ran_for = inst.up_since.elapsed();
        let reason = format!("the process {what}{}", tail_note(&inst.logs));
        let backend = inst.backend_name.clone();
        let models = inst.models.clone();
        if !requested {
            tracing::warn!(instance = %key, "backend {what} unexpectedly");
        }
        for m in models {
            let slot = self.slots.get_mut(&m).expect("instance models exist");
            let phase = slot.phase;
            if !phase.holds_memory() {
                continue;
            }
            let why = slot.unload_why.take();
            let (kind, detail) = match (requested, phase, why) {
                (true, _, why) => (Kind::Unloaded, why.unwrap_or_default()),
                (false, Phase::Stopping, Some(why)) => (Kind::Unloaded, format!("{why}; {reason}")),
                (false, Phase::Stopping, None) => (Kind::Unloaded, reason.clone()),
                (false, _, _) => (Kind::Crashed, reason.clone()),
            };
            // The memory is back: the reservation goes.
            self.now_cold(&m, kind, detail);
            let slot = self.slots.get_mut(&m).expect("instance models exist");
            if requested {
                // A clean stop after a clean start ends a run of failures.
                if slot.last_error.is_none() {
                    slot.failures = 0;
                    slot.retry_at = None;
                }
                continue;
            }
            if was == Run::Up && ran_for >= STABLE_AFTER {
                slot.failures = 0;
            }
            if phase != Phase::Stopping {
                note_failure(slot, &reason);
            }
            if phase == Phase::Starting {
                fail_queue(slot, &m, |model| SupervisorError::StartFailed {
                    model,
                    backend: backend.clone(),
                    reason: format!("{reason} before it was ready"),
                });
            }
        }
    }

    /// The one place a model's phase changes. A move not in lifecycle.rs's table
    /// is refused. Into a phase that holds memory it reserves the model's memory
    /// (refused if that would overdraw the budget); out of one it releases it:
    /// every caller moves a model out of memory only once the memory is back.
    fn try_enter(&mut self, m: &ModelKey, next: Phase) -> Result<(), Refused> {
        let slot = self.slots.get_mut(m).expect("exists");
        let from = slot.phase;
        if !lifecycle::legal(from, next) {
            return Err(Refused::Illegal { from, to: next });
        }
        match (from.holds_memory(), next.holds_memory()) {
            (false, true) => self.ledger.reserve(Holder::Model(m.clone()), slot.memory)?,
            (true, false) => {
                self.ledger.release(&Holder::Model(m.clone()));
            }
            _ => {}
        }
        slot.phase = next;
        #[cfg(test)]
        self.audit.moves.push((from, next));
        Ok(())
    }

    /// [`Self::try_enter`] where the move must be possible (the table lists it,
    /// the policy made room): a refusal is a bug, said and not applied. Whether
    /// it moved.
    fn enter(&mut self, m: &ModelKey, next: Phase) -> bool {
        match self.try_enter(m, next) {
            Ok(()) => true,
            Err(e) => {
                self.bug(format!("{m}: {e}"));
                false
            }
        }
    }

    /// A move or a reservation refused where none should be: logged; tests
    /// record it and fail on it; other debug builds stop here.
    fn bug(&mut self, what: String) {
        tracing::error!("supervisor bug, refused: {what}");
        #[cfg(test)]
        self.audit.refused.push(what);
        #[cfg(not(test))]
        debug_assert!(false, "supervisor bug, refused: {what}");
    }

    /// `m`'s memory is back: its reservation goes, and with it everything that
    /// only holds while it is loaded. `detail` empty: the reason its unload was
    /// asked for.
    fn now_cold(&mut self, m: &ModelKey, kind: Kind, detail: String) {
        let slot = self.slots.get_mut(m).expect("exists");
        // An unload we asked for says why we asked.
        let detail = match slot.unload_why.take() {
            Some(why) if detail.is_empty() => why,
            _ => detail,
        };
        self.enter(m, Phase::Cold);
        let slot = self.slots.get_mut(m).expect("exists");
        slot.in_flight = 0;
        slot.serve_until = None;
        slot.idle_override = None;
        slot.measured = None;
        slot.unloading = false;
        self.emit(Event::new(kind, m, detail));
    }

    /// A change of the budget, for the whole router.
    fn emit_budget(&self, detail: String) {
        tracing::info!("budget: {detail}");
        self.emit(Event::new(Kind::Budget, "", detail));
    }

    /// Publishes `e` to the events stream, the status page and the metrics.
    fn emit(&self, e: Event) {
        self.events.send(e);
    }

    fn on_unload(&mut self, model: Option<String>) -> Result<Vec<String>, SupervisorError> {
        let targets: Vec<ModelKey> = match &model {
            Some(name) => {
                let (key, slot) = self
                    .slots
                    .get_key_value(name.as_str())
                    .ok_or_else(|| SupervisorError::UnknownModel(name.clone()))?;
                if slot.phase == Phase::Starting {
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
            if self.slots[&m].phase == Phase::Ready && self.slots[&m].counted {
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

    /// Rewrites the state file with every process group running now.
    fn record_processes(&self) {
        let Some(file) = &self.state else { return };
        let groups: Vec<Group> = self
            .instances
            .iter()
            .filter_map(|(key, inst)| {
                let pid = inst.handle.as_ref()?.pid()?;
                Some(Group {
                    pid,
                    started: state::start_time(pid),
                    name: key.to_string(),
                })
            })
            .collect();
        file.write(&groups);
    }

    // ---- scheduling -------------------------------------------------------------

    fn start_model(&mut self, m: &ModelKey) {
        let key = self.slots[m].instance.clone();
        if !self.enter(m, Phase::Starting) {
            return;
        }
        self.emit(Event::new(Kind::Loading, m, ""));
        let slot = self.slots.get_mut(m).expect("exists");
        slot.retry_at = None;
        slot.load_started = Instant::now();
        slot.why = "its backend is starting".into();
        let inst = self.instances.get_mut(&key).expect("instance exists");
        match inst.run {
            Run::Up | Run::External if inst.loads => {
                slot.why = "its server is loading it".into();
                self.begin_load(m);
            }
            Run::Up => {
                // A shared server already running: the model is there.
                self.enter(m, Phase::Ready);
                self.emit_ready(m, Duration::ZERO);
                self.serve_queue(m);
            }
            Run::Starting => {}
            Run::Down => self.launch(&key),
            Run::External | Run::Stopping => unreachable!("schedule skips these"),
        }
    }

    fn launch(&mut self, key: &InstanceKey) {
        // A shared server's own memory is held from its start until its exit.
        let server = Holder::Server(key.clone());
        if let Err(e) = self
            .ledger
            .reserve(server.clone(), self.instances[key].base)
        {
            self.bug(format!("{key}: {e}"));
            self.fail_starting(
                key,
                "no room in the budget for the server itself",
                Phase::Cold,
            );
            return;
        }
        let inst = self.instances.get_mut(key).expect("instance exists");
        inst.generation += 1;
        let prepared = prepare(inst, &self.config);
        let result = prepared.and_then(|(spec, endpoint)| {
            let launch = Launch {
                key: key.clone(),
                generation: inst.generation,
                spec,
                health_url: endpoint.url(&inst.backend.health),
                start_timeout: inst.backend.start_timeout,
                logs: inst.logs.clone(),
            };
            self.effects
                .start(launch, self.tx.clone())
                .map(|h| (h, endpoint))
        });
        match result {
            Ok((handle, endpoint)) => {
                inst.measured = None;
                inst.warned = false;
                inst.handle = Some(handle);
                inst.endpoint = Some(endpoint);
                inst.run = Run::Starting;
                inst.launched_at = Instant::now();
                self.record_processes();
            }
            Err(reason) => {
                self.ledger.release(&server);
                self.fail_starting(key, &reason, Phase::Cold);
            }
        }
    }

    fn emit_ready(&self, m: &ModelKey, took: Duration) {
        self.emit(Event::ready(m, took));
    }

    /// Every model of `key` that was starting: counted as a failure, its waiters
    /// told why, and moved to `then`.
    fn fail_starting(&mut self, key: &InstanceKey, reason: &str, then: Phase) {
        let inst = &self.instances[key];
        let backend = inst.backend_name.clone();
        for m in inst.models.clone() {
            if self.slots[&m].phase == Phase::Starting {
                self.enter(&m, then);
                let slot = self.slots.get_mut(&m).expect("instance models exist");
                note_failure(slot, reason);
                self.emit(Event::new(Kind::Failed, &m, reason));
                let slot = self.slots.get_mut(&m).expect("instance models exist");
                fail_queue(slot, &m, |model| SupervisorError::StartFailed {
                    model,
                    backend: backend.clone(),
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Takes no new requests for `m` (and the models sharing its process, which go
    /// with it), lets what is in flight finish, then stops.
    fn begin_drain(&mut self, m: &ModelKey, reason: Reason, why: &str) {
        let key = self.slots[m].instance.clone();
        let inst = &self.instances[&key];
        let loads = inst.loads;
        // A server that unloads one model at a time keeps its others.
        let models = if loads {
            vec![m.clone()]
        } else {
            inst.models.clone()
        };
        for other in models {
            if self.slots[&other].phase == Phase::Ready {
                self.enter(&other, Phase::Draining);
                let s = self.slots.get_mut(&other).expect("exists");
                let detail = if other == *m {
                    why.to_string()
                } else {
                    format!("{why} (shares a server with {m})")
                };
                tracing::info!(model = %other, "unloading: {detail}");
                s.unload_why = Some(detail.clone());
                self.emit(Event::evicting(&other, reason, detail));
            }
        }
        if loads {
            self.try_unload(m);
        } else {
            self.try_stop(&key);
        }
    }

    fn try_stop(&mut self, key: &InstanceKey) {
        let inst = self.instances.get_mut(key).expect("instance exists");
        let all_done = inst.models.iter().all(|m| {
            let s = &self.slots[m];
            !s.phase.holds_memory()
                || (s.phase == Phase::Draining && s.in_flight == 0 && linger_until(s).is_none())
        });
        if !all_done || !matches!(inst.run, Run::Up | Run::Starting) {
            return;
        }
        for m in inst.models.clone() {
            if self.slots[&m].phase == Phase::Draining {
                self.enter(&m, Phase::Stopping);
            }
        }
        tracing::info!(instance = %key, "stopping backend");
        let inst = self.instances.get_mut(key).expect("instance exists");
        inst.run = Run::Stopping;
        if let Some(h) = inst.handle.as_mut() {
            h.stop();
        }
    }

    /// A model's load finished: it serves its queue, and the load counts toward
    /// how long the next is expected to take.
    fn mark_ready(&mut self, m: &ModelKey, took: Duration) {
        self.enter(m, Phase::Ready);
        let slot = self.slots.get_mut(m).expect("exists");
        slot.ready_at = Instant::now();
        slot.last_error = None;
        if slot.recent_loads.len() == RECENT_LOADS {
            slot.recent_loads.pop_front();
        }
        slot.recent_loads.push_back(took);
        self.emit_ready(m, took);
        self.serve_queue(m);
    }

    fn serve_queue(&mut self, m: &ModelKey) {
        while let Some(w) = self.slots.get_mut(m).and_then(|s| s.queue.pop_front()) {
            if w.reply.is_closed() {
                continue;
            }
            let lease = self.lease(m);
            // A lease nobody waits for any more is dropped here, and released.
            let _ = w.reply.send(lease);
        }
    }

    fn lease(&mut self, m: &ModelKey) -> Result<Lease, SupervisorError> {
        let slot = self.slots.get_mut(m).expect("exists");
        let inst = &self.instances[&slot.instance];
        let endpoint = inst
            .endpoint
            .clone()
            .ok_or_else(|| SupervisorError::StartFailed {
                model: m.to_string(),
                backend: inst.backend_name.clone(),
                reason: "its url is not usable".into(),
            })?;
        let now = Instant::now();
        slot.in_flight += 1;
        slot.last_used = now;
        slot.admitted = [slot.admitted[1], Some(now)];
        Ok(Lease {
            model: m.to_string(),
            upstream_model: slot.upstream.clone(),
            scheme: endpoint.scheme,
            authority: endpoint.authority,
            base_path: endpoint.base_path,
            api_key: inst.backend.api_key.clone(),
            kind: inst.backend.kind,
            context_window: inst.context_window,
            release: Release {
                model: m.clone(),
                generation: inst.generation,
                tx: self.tx.clone(),
            },
        })
    }

    /// A model routes.yaml does not name but a remote backend lists: nothing of
    /// ours to start or count, so a lease at once (or why not).
    fn remote_lease(&self, model: &str) -> Option<Result<Lease, SupervisorError>> {
        let inst = self.remote_serving(model)?;
        if let Some(why) = &inst.down {
            return Some(Err(SupervisorError::Unreachable {
                model: model.to_string(),
                backend: inst.backend_name.clone(),
                reason: why.clone(),
            }));
        }
        let endpoint = inst.endpoint.clone()?;
        Some(Ok(Lease {
            model: model.to_string(),
            upstream_model: model.to_string(),
            scheme: endpoint.scheme,
            authority: endpoint.authority,
            base_path: endpoint.base_path,
            api_key: inst.backend.api_key.clone(),
            kind: inst.backend.kind,
            context_window: None,
            release: Release {
                model: model.into(),
                generation: inst.generation,
                tx: self.tx.clone(),
            },
        }))
    }

    /// The remote backend listing `model`, first by backend name, if any; names
    /// routes.yaml gives (as models or aliases) are never taken from a remote.
    fn remote_serving(&self, model: &str) -> Option<&Instance> {
        if self.config.resolve(model).is_some() {
            return None;
        }
        self.instances
            .values()
            .filter(|i| i.backend.kind == modelyard_config::BackendKind::Remote)
            .filter(|i| i.listed.iter().any(|n| n == model))
            .min_by(|a, b| a.backend_name.cmp(&b.backend_name))
    }

    /// The ledger as the states say it should be: a check on the transitions
    /// that reserve and release.
    fn used_by_states(&self) -> u64 {
        self.slots
            .values()
            .filter(|s| s.phase.holds_memory())
            .map(|s| s.memory)
            .sum::<u64>()
            + self.servers_reserved()
    }

    fn servers_reserved(&self) -> u64 {
        self.instances
            .values()
            .filter(|i| server_holds(i.run))
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
                    phase: if s.phase == Phase::Cold && s.retry_at.is_some() {
                        Phase::Failed
                    } else {
                        s.phase
                    },
                    declared: s.memory,
                    measured: match (s.phase.holds_memory(), inst.loads) {
                        (false, _) => None,
                        (true, true) => s.measured,
                        (true, false) => inst.measured,
                    },
                    reserved: if s.phase.holds_memory() { s.memory } else { 0 },
                    in_flight: s.in_flight,
                    queued: s.queue.len(),
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
                    last_error: s.last_error.clone().or_else(|| inst.down.clone()),
                    context_window: inst.context_window,
                }
            })
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        let mut remote_models: Vec<crate::RemoteModel> = self
            .instances
            .values()
            .filter(|i| i.down.is_none())
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

    /// Fails every waiter and asks every process to stop; the run loop returns
    /// once each has exited (SIGKILL after its stop_timeout guarantees it).
    fn shutdown(&mut self) {
        self.shutting_down = true;
        for (name, slot) in self.slots.iter_mut() {
            fail_queue(slot, name, |_| SupervisorError::ShuttingDown);
        }
        for inst in self.instances.values_mut() {
            if let Some(h) = inst.handle.as_mut() {
                h.stop();
                inst.run = Run::Stopping;
            }
        }
        // What we loaded on a server we do not own would outlive us there.
        let loaded: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                let inst = &self.instances[&s.instance];
                inst.run == Run::External && inst.loads && s.phase.holds_memory() && !s.unloading
            })
            .map(|(k, _)| k.clone())
            .collect();
        for m in loaded {
            if let Some(op) = self.model_op(&m, true) {
                self.slots.get_mut(&m).expect("exists").unloading = true;
                self.effects.model_op(op, self.tx.clone());
            }
        }
    }
}

/// Whether a server's process (and so its own memory) may be present.
fn server_holds(run: Run) -> bool {
    matches!(run, Run::Starting | Run::Up | Run::Stopping)
}

fn median(loads: &VecDeque<Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = loads.iter().copied().collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

fn note_failure(slot: &mut Slot, reason: &str) {
    slot.failures += 1;
    slot.last_error = Some(reason.to_string());
    slot.retry_at = (slot.failures >= 2).then(|| {
        let exp = (slot.failures - 2).min(16);
        Instant::now() + Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
    });
}

fn fail_queue(slot: &mut Slot, model: &str, err: impl Fn(String) -> SupervisorError) {
    for w in slot.queue.drain() {
        let _ = w.reply.send(Err(err(model.to_string())));
    }
}

fn tail_note(logs: &LogRing) -> String {
    let tail = logs.run_tail(5);
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", tail.join(" | "))
    }
}

/// The argv, environment and address of the next process for `inst`.
fn prepare(inst: &Instance, config: &Config) -> Result<(Spec, Endpoint), String> {
    let b = &inst.backend;
    let argv = b.command.clone().ok_or("the backend has no command")?;
    let port = process::free_port()
        .map_err(|e| format!("no free port: {e}"))?
        .to_string();
    let (upstream, extra) = match &inst.model {
        Some(name) => {
            let m = &config.models[name];
            (m.upstream_name(name).to_string(), m.args.clone())
        }
        None => (String::new(), Vec::new()),
    };
    let fill = |s: &String| s.replace("${PORT}", &port).replace("${MODEL}", &upstream);
    let argv: Vec<String> = argv.iter().chain(extra.iter()).map(fill).collect();
    let env = b.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
    let url = match &b.url {
        Some(u) => fill(u),
        None => format!("http://127.0.0.1:{port}"),
    };
    let endpoint = Endpoint::parse(&url).ok_or_else(|| format!("`{url}` is not a usable URL"))?;
    let name = match &inst.model {
        Some(m) => format!("{}/{m}", inst.backend_name),
        None => inst.backend_name.clone(),
    };
    let mut spec = Spec {
        name,
        argv,
        env,
        stop_timeout: b.stop_timeout,
    };
    let ctx = Prepare {
        port,
        budget: config.budget.map(|b| b.0),
        models: inst.models.len(),
    };
    adapter(b.kind).prepare(&mut spec, &ctx);
    Ok((spec, endpoint))
}
