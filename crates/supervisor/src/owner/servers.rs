//! Servers that host many models (oMLX, Ollama): loading and unloading one model
//! at a time through their APIs, and squaring the ledger with what each reports.

use super::*;

impl<E: Effects> Owner<E> {
    /// How to reach `m` on its server, for a load or an unload.
    pub(super) fn model_op(&self, m: &ModelKey, unload: bool) -> Option<ModelOp> {
        let slot = &self.slots[m];
        let inst = &self.instances[&slot.instance];
        let endpoint = inst.endpoint.as_ref()?;
        Some(ModelOp {
            model: m.clone(),
            generation: inst.generation,
            kind: inst.backend.kind,
            target: Target {
                base: endpoint.base(),
                upstream: slot.upstream.clone(),
                api_key: inst.backend.api_key.clone(),
                limit: if unload {
                    inst.backend.stop_timeout
                } else {
                    inst.backend.start_timeout
                },
            },
            unload,
        })
    }

    /// Asks a running server that loads models one by one to load `m`.
    pub(super) fn begin_load(&mut self, m: &ModelKey) {
        match self.model_op(m, false) {
            Some(op) => self.effects.model_op(op, self.tx.clone()),
            None => {
                let key = self.slots[m].instance.clone();
                self.fail_starting(
                    &key,
                    "its url is not usable",
                    State::Cold { retry_at: None },
                );
            }
        }
    }

    pub(super) fn on_model_done(
        &mut self,
        m: ModelKey,
        generation: u64,
        unload: bool,
        result: Result<(), String>,
    ) {
        let Some(slot) = self.slots.get_mut(&m) else {
            return;
        };
        let key = slot.instance.clone();
        if unload {
            slot.life.unload_asked = false;
        }
        let inst = &self.instances[&key];
        // A server restarted since: what it said is about a process that is gone.
        if inst.generation != generation {
            return;
        }
        let backend = inst.backend_name.clone();
        let owned = inst.handle.is_some();
        match (unload, result) {
            (false, Ok(())) if slot.phase() == Phase::Starting => {
                let took = slot.load_started.elapsed();
                self.mark_ready(&m, took);
            }
            (false, Ok(())) => {}
            (false, Err(reason)) => {
                tracing::warn!(model = %m, "{backend} could not load it: {reason}");
                if slot.phase() == Phase::Starting {
                    // The server says it holds nothing of it: the reservation goes.
                    self.enter(&m, State::Cold { retry_at: None });
                    let slot = self.slots.get_mut(&m).expect("exists");
                    note_failure(slot, &reason);
                    self.emit(Event::new(Kind::Failed, &m, reason.clone()));
                    let slot = self.slots.get_mut(&m).expect("exists");
                    fail_queue(slot, &m, |model| SupervisorError::StartFailed {
                        model,
                        backend: backend.clone(),
                        reason: reason.clone(),
                    });
                }
                self.maybe_stop_server(&key);
            }
            (true, Ok(())) => {
                if slot.phase() == Phase::Stopping {
                    self.unloaded_cleanly(&m);
                }
                self.maybe_stop_server(&key);
            }
            (true, Err(reason)) => {
                tracing::warn!(model = %m, "{backend} did not confirm the unload: {reason}");
                // Its memory is only sure to be back once the server is gone; one we
                // did not start is asked again at the next poll.
                if owned && slot.phase() == Phase::Stopping {
                    self.stop_process(&key);
                }
            }
        }
    }

    /// The servers whose own account is worth reading: those that load models one
    /// by one (to see what they really hold), those that report limits, and
    /// those we do not start (to know whether they are there at all).
    pub(super) fn polls(&self) -> Vec<Poll> {
        self.instances
            .iter()
            .filter(|(_, i)| {
                let kind = i.backend.kind;
                match i.run {
                    Run::External { .. } => true,
                    Run::Up => i.loads || kind == modelyard_config::BackendKind::Apfel,
                    _ => false,
                }
            })
            .filter_map(|(k, i)| {
                Some(Poll {
                    key: k.clone(),
                    generation: i.generation,
                    kind: i.backend.kind,
                    probe: Probe {
                        base: i.endpoint.as_ref()?.base(),
                        health: i.backend.health.clone(),
                        api_key: i.backend.api_key.clone(),
                    },
                })
            })
            .collect()
    }

    /// Squares the ledger with what a server says it holds: a model it dropped on
    /// its own is cold, one it still holds after an unload is asked again, and
    /// one loaded behind our back is adopted when it fits.
    pub(super) fn on_reported(
        &mut self,
        key: InstanceKey,
        generation: u64,
        asked: Instant,
        report: Result<Report, String>,
    ) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation || !matches!(inst.run, Run::Up | Run::External { .. }) {
            return;
        }
        let report = match report {
            Ok(r) => {
                if let Run::External { down } = &mut inst.run {
                    if let Some(was) = down.take() {
                        tracing::info!(backend = %inst.backend_name, "reachable again (was: {was})");
                    }
                }
                r
            }
            Err(e) => {
                if let Run::External { down } = &mut inst.run {
                    if down.is_none() {
                        tracing::warn!(backend = %inst.backend_name, "unreachable: {e}");
                    }
                    *down = Some(e);
                }
                return;
            }
        };
        if report.context_window.is_some() {
            inst.context_window = report.context_window;
        }
        if let Some(listed) = report.listed {
            inst.listed = listed;
        }
        let Some(resident) = report.resident else {
            return;
        };
        let backend = inst.backend_name.clone();
        for m in inst.models.clone() {
            let slot = self.slots.get_mut(&m).expect("instance models exist");
            let found = resident
                .iter()
                .find(|r| same_model(&r.name, &slot.upstream));
            slot.measured = found.and_then(|r| r.bytes);
            match (slot.phase(), found.is_some()) {
                (Phase::Ready, false) if slot.ready_at < asked && slot.in_flight == 0 => {
                    tracing::warn!(model = %m, "{backend} unloaded it on its own");
                    self.now_cold(
                        &m,
                        Kind::Unloaded,
                        format!("{backend} unloaded it on its own"),
                    );
                }
                (Phase::Stopping, false) if !slot.life.unload_asked => {
                    self.unloaded_cleanly(&m);
                }
                (Phase::Stopping, true) if !slot.life.unload_asked => {
                    if let Some(op) = self.model_op(&m, true) {
                        self.slots.get_mut(&m).expect("exists").life.unload_asked = true;
                        self.effects.model_op(op, self.tx.clone());
                    }
                }
                (Phase::Cold, true) if slot.queue.is_empty() && slot.retry_at().is_none() => {
                    self.adopt(&m);
                }
                _ => {}
            }
        }
        self.maybe_stop_server(&key);
    }

    /// A model its server holds though we did not load it (another client did, or
    /// a previous run): counted as ready when it fits, else left to the server.
    pub(super) fn adopt(&mut self, m: &ModelKey) {
        let slot = &self.slots[m];
        let group_taken = slot.group.as_ref().is_some_and(|g| {
            self.slots
                .values()
                .any(|o| o.phase().holds_memory() && o.group.as_ref() == Some(g))
        });
        if group_taken {
            return;
        }
        match self.try_enter(m, State::Ready) {
            Ok(()) => {}
            // Counted only if the ledger has room for it; else left to its server.
            Err(Refused::Overdraw(_)) => return,
            Err(e) => return self.bug(format!("{m}: {e}")),
        }
        let slot = self.slots.get_mut(m).expect("exists");
        slot.ready_at = Instant::now();
        slot.last_used = Instant::now();
        let backend = self.instances[&slot.instance].backend_name.clone();
        self.emit(Event::new(
            Kind::Ready,
            m,
            format!("found loaded in {backend}"),
        ));
    }

    /// The server no longer holds `m`, which we asked it to unload: cold, and
    /// as a clean stop of a process does, the end of a run of failed loads
    /// (unless its last load failed).
    fn unloaded_cleanly(&mut self, m: &ModelKey) {
        self.now_cold(m, Kind::Unloaded, String::new());
        let slot = self.slots.get_mut(m).expect("exists");
        if slot.last_error.is_none() {
            clear_failures(slot);
        }
    }

    /// Unloads a drained `m` from a server that loads models one by one.
    pub(super) fn try_unload(&mut self, m: &ModelKey) {
        let slot = &self.slots[m];
        let run = &self.instances[&slot.instance].run;
        if slot.phase() != Phase::Draining || slot.in_flight > 0 || linger_until(slot).is_some() {
            return;
        }
        if !matches!(run, Run::Up | Run::External { .. }) {
            return;
        }
        let Some(op) = self.model_op(m, true) else {
            return;
        };
        self.stop_drained(m);
        let slot = self.slots.get_mut(m).expect("exists");
        slot.life.unload_asked = true;
        tracing::info!(model = %m, "unloading from its server");
        self.effects.model_op(op, self.tx.clone());
    }

    /// Stops a server of ours that loads models one by one once it holds none and
    /// none is wanted: its own memory comes back too.
    pub(super) fn maybe_stop_server(&mut self, key: &InstanceKey) {
        let Some(inst) = self.instances.get(key) else {
            return;
        };
        if !inst.loads || inst.run != Run::Up || inst.handle.is_none() {
            return;
        }
        let unused = inst.models.iter().all(|m| {
            let s = &self.slots[m];
            !s.phase().holds_memory() && s.queue.is_empty()
        });
        if unused {
            tracing::info!(instance = %key, "stopping backend: it holds no model");
            self.stop_process(key);
        }
    }
}
