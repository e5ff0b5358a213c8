//! Backend processes (instances): one per model for `openai` backends with a
//! command, one per backend otherwise. Starting one (argv templated, a free
//! port, its server's own memory reserved), noticing it is healthy or has
//! exited, and stopping it once every model it serves has drained.

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) base_path: String,
}

impl Endpoint {
    pub(super) fn parse(url: &str) -> Option<Endpoint> {
        let uri: Uri = url.parse().ok()?;
        Some(Endpoint {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    pub(super) fn base(&self) -> String {
        self.url("")
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!(
            "{}://{}{}{}",
            self.scheme, self.authority, self.base_path, path
        )
    }
}

pub(super) struct Instance {
    pub(super) backend_name: String,
    pub(super) backend: Backend,
    /// Set when the instance serves one model only.
    pub(super) model: Option<String>,
    pub(super) run: Run,
    pub(super) handle: Option<Box<dyn Handle>>,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) generation: u64,
    pub(super) up_since: Instant,
    pub(super) logs: LogRing,
    pub(super) models: Vec<ModelKey>,
    /// Last measured resident memory of its process tree.
    pub(super) measured: Option<u64>,
    /// Whether running above the declared size was already reported this run.
    pub(super) warned: bool,
    /// A shared server's own memory, reserved from its start until its exit.
    pub(super) base: u64,
    pub(super) launched_at: Instant,
    /// Its server loads and unloads models one by one through its API.
    pub(super) loads: bool,
    /// The most tokens one request may carry, as the server reports it.
    pub(super) context_window: Option<u32>,
    /// The models another machine says it serves.
    pub(super) listed: Vec<String>,
}

impl Instance {
    /// Why a server we do not start was unreachable at its last poll.
    pub(super) fn down(&self) -> Option<&str> {
        match &self.run {
            Run::External { down } => down.as_deref(),
            _ => None,
        }
    }
}

pub(super) fn instance_key(config: &Config, model: &str) -> Option<InstanceKey> {
    let m = config.models.get(model)?;
    let b = config.backends.get(&m.backend)?;
    Some(if b.kind.process_per_model() && b.command.is_some() {
        format!("{}/{model}", m.backend).into()
    } else {
        m.backend.as_str().into()
    })
}

pub(super) fn tail_note(logs: &LogRing) -> String {
    let tail = logs.run_tail(5);
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", tail.join(" | "))
    }
}

/// The argv, environment and address of the next process for `inst`.
pub(super) fn prepare(inst: &Instance, config: &Config) -> Result<(Spec, Endpoint), String> {
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
        kv_cache: crate::kv_cache::Place::of(b, &spec.name),
    };
    adapter(b.kind).prepare(&mut spec, &ctx);
    Ok((spec, endpoint))
}

/// A backend that ran this long before dying starts its failure count afresh.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(60);

impl<E: Effects> Owner<E> {
    /// The one place an instance's `run` changes: a move not in lifecycle.rs's
    /// instance table is refused (a bug), and a shared server's own memory is
    /// reserved on its way to Starting and released once its process is gone.
    /// Whether it moved (staying counts).
    pub(super) fn run_to(&mut self, key: &InstanceKey, next: Run) -> bool {
        let inst = self.instances.get_mut(key).expect("instance exists");
        let from = inst.run.clone();
        if from == next {
            return true;
        }
        if !lifecycle::legal_run(&from, &next) {
            self.bug(format!(
                "instance {key}: {} → {}",
                from.as_str(),
                next.as_str()
            ));
            return false;
        }
        let server = Holder::Server(key.clone());
        match (from.holds_memory(), next.holds_memory()) {
            (false, true) => {
                if let Err(e) = self.ledger.reserve(server, inst.base) {
                    self.bug(format!("{key}: {e}"));
                    return false;
                }
            }
            (true, false) => {
                self.ledger.release(&server);
            }
            _ => {}
        }
        #[cfg(test)]
        self.audit.runs.push((from, next.clone()));
        self.instances.get_mut(key).expect("instance exists").run = next;
        true
    }

    /// Asks `key`'s process to exit; `Exited` follows (SIGKILL after its
    /// stop_timeout). Every stop of a process goes through here.
    pub(super) fn stop_process(&mut self, key: &InstanceKey) {
        self.stop_process_with(key, false);
    }

    /// Like [`Self::stop_process`]; with `save`, the end of a drain, the
    /// backend first saves its KV cache (within its save_timeout).
    pub(super) fn stop_process_with(&mut self, key: &InstanceKey, save: bool) {
        let inst = self.instances.get_mut(key).expect("instance exists");
        if let Some(h) = inst.handle.as_mut() {
            if save {
                h.stop_after_save();
            } else {
                h.stop();
            }
        }
        self.run_to(key, Run::Stopping);
    }

    pub(super) fn launch(&mut self, key: &InstanceKey) {
        // A shared server's own memory is held from its start until its exit.
        if !self.run_to(key, Run::Starting) {
            self.fail_starting(
                key,
                "no room in the budget for the server itself",
                State::Cold { retry_at: None },
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
                kv_cache: crate::kv_cache::Plan::new(
                    &inst.backend,
                    key,
                    inst.model.as_deref(),
                    endpoint.base(),
                ),
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
                inst.launched_at = Instant::now();
                self.record_processes();
            }
            Err(reason) => {
                self.run_to(key, Run::Down);
                self.fail_starting(key, &reason, State::Cold { retry_at: None });
            }
        }
    }

    pub(super) fn on_start_done(
        &mut self,
        key: InstanceKey,
        generation: u64,
        result: Result<(), String>,
    ) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation || inst.run != Run::Starting {
            return;
        }
        match result {
            Ok(()) => {
                tracing::info!(instance = %key, "backend ready");
                inst.up_since = Instant::now();
                self.run_to(&key, Run::Up);
                let inst = &self.instances[&key];
                let took = inst.launched_at.elapsed();
                let models = inst.models.clone();
                let loads = inst.loads;
                for m in models {
                    let slot = self.slots.get_mut(&m).expect("instance models exist");
                    if slot.phase() == Phase::Starting && loads {
                        self.begin_load(&m);
                    } else if slot.phase() == Phase::Starting {
                        self.mark_ready(&m, took);
                    }
                }
            }
            Err(reason) => {
                let reason = format!("{reason}{}", tail_note(&inst.logs));
                tracing::warn!(instance = %key, "backend failed to start: {reason}");
                self.stop_process(&key);
                // Its memory is not back until the process has exited.
                let stopping = State::Stopping {
                    retry_at: None,
                    why: None,
                };
                self.fail_starting(&key, &reason, stopping);
            }
        }
    }

    pub(super) fn on_exited(&mut self, key: InstanceKey, generation: u64, info: Option<ExitInfo>) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation {
            return;
        }
        let was_up = inst.run == Run::Up;
        let requested = info.is_some_and(|i| i.requested);
        let what = info.map_or("exited".to_string(), |i| i.to_string());
        inst.handle = None;
        inst.measured = None;
        // The process is gone: so is the server's own memory.
        self.run_to(&key, Run::Down);
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
            let phase = slot.phase();
            if !phase.holds_memory() {
                continue;
            }
            let why = slot.unload_why().map(str::to_string);
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
                    clear_failures(slot);
                }
                continue;
            }
            if was_up && ran_for >= STABLE_AFTER {
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

    pub(super) fn try_stop(&mut self, key: &InstanceKey) {
        let inst = self.instances.get_mut(key).expect("instance exists");
        let all_done = inst.models.iter().all(|m| {
            let s = &self.slots[m];
            !s.phase().holds_memory()
                || (s.phase() == Phase::Draining && s.in_flight == 0 && linger_until(s).is_none())
        });
        if !all_done || !matches!(inst.run, Run::Up | Run::Starting) {
            return;
        }
        for m in inst.models.clone() {
            if self.slots[&m].phase() == Phase::Draining {
                self.stop_drained(&m);
            }
        }
        tracing::info!(instance = %key, "stopping backend");
        self.stop_process_with(key, true);
    }

    /// Rewrites the state file with every process group running now.
    pub(super) fn record_processes(&self) {
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

    /// Fails every waiter and asks every process to stop; the run loop returns
    /// once each has exited (SIGKILL after its stop_timeout guarantees it).
    pub(super) fn shutdown(&mut self) {
        self.shutting_down = true;
        for (name, slot) in self.slots.iter_mut() {
            fail_queue(slot, name, |_| SupervisorError::ShuttingDown);
        }
        let running: Vec<InstanceKey> = self
            .instances
            .iter()
            .filter(|(_, i)| i.handle.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in running {
            self.stop_process(&key);
        }
        // What we loaded on a server we do not own would outlive us there.
        let loaded: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                let inst = &self.instances[&s.instance];
                matches!(inst.run, Run::External { .. })
                    && inst.loads
                    && s.phase().holds_memory()
                    && !s.life.unload_asked
            })
            .map(|(k, _)| k.clone())
            .collect();
        for m in loaded {
            if let Some(op) = self.model_op(&m, true) {
                self.slots.get_mut(&m).expect("exists").life.unload_asked = true;
                self.effects.model_op(op, self.tx.clone());
            }
        }
    }
}
