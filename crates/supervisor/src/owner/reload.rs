//! Models made from the config, and a new config taken without dropping a
//! request: settings change at once, new models appear at once, and removed or
//! redefined ones leave once idle (what is in flight finishes on the old one).

use super::*;

impl<E: Effects> Owner<E> {
    /// Creates the slot (and, if needed, the instance) for `name` from the config.
    pub(super) fn add_model(&mut self, name: &str) {
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
                run: if external {
                    Run::External { down: None }
                } else {
                    Run::Down
                },
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
                idle_for: IdleFor::Config,
                upstream: match (&m.upstream, adapter(backend.kind).default_upstream()) {
                    (Some(u), _) => u.clone(),
                    (None, Some(fixed)) => fixed.to_string(),
                    (None, None) => name.to_string(),
                },
                life: Life::new(if counted {
                    State::Cold { retry_at: None }
                } else {
                    State::Ready
                }),
                in_flight: 0,
                in_flight_by: BTreeMap::new(),
                last_used: now,
                admitted: [None, None],
                interactive_in_flight: 0,
                last_interactive: None,
                queue: Queue::default(),
                why: String::new(),
                failures: 0,
                last_error: None,
                def: (m.clone(), backend),
                recent_loads: VecDeque::new(),
                counted,
                measured: None,
                load_started: now,
                ready_at: now,
            },
        );
    }

    /// Takes a new config: settings now; models added now; models removed or
    /// redefined once they are idle (what is in flight finishes on the old one).
    pub(super) fn on_reload(&mut self, config: Arc<Config>) -> Vec<String> {
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
                    slot.life.stale = true;
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
                        slot.life.stale = true;
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
    pub(super) fn settle_definitions(&mut self) {
        let stale: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| s.life.stale)
            .map(|(k, _)| k.clone())
            .collect();
        for m in stale {
            // Rebuilt already, with the other models of a server rebuilt whole.
            let Some(slot) = self.slots.get(&m).filter(|s| s.life.stale) else {
                continue;
            };
            let inst = &self.instances[&slot.instance];
            let server_runs = inst.run.holds_memory();
            if slot.phase() == Phase::Ready && slot.in_flight == 0 && slot.counted {
                let why = if self.config.models.contains_key(&*m) {
                    "reload: its definition changed"
                } else {
                    "reload: removed from the config"
                };
                self.begin_drain(&m, Reason::Reload, why);
                continue;
            }
            let cold = !slot.phase().holds_memory() || !slot.counted;
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
            if !same_server && server_runs {
                let key = slot.instance.clone();
                self.maybe_stop_server(&key);
                continue;
            }
            let key = slot.instance.clone();
            if self.server_redefined(&key) {
                // Not running, its own definition changed: the server is rebuilt
                // from the current config with all its models at once, once none
                // holds memory. Rebuilt one by one, each would join the instance
                // its siblings still hold, and start on the old definition.
                let holding = self.instances[&key].models.iter().any(|x| {
                    let s = &self.slots[x];
                    s.phase().holds_memory() && s.counted
                });
                if !holding {
                    let inst = self.instances.remove(&key).expect("listed");
                    for x in inst.models {
                        self.rebuild(&x);
                    }
                }
                continue;
            }
            self.rebuild(&m);
        }
    }

    /// Whether a server that is not running (none started, or one we do not
    /// start) was made from a backend definition the config no longer has.
    fn server_redefined(&self, key: &InstanceKey) -> bool {
        let inst = &self.instances[key];
        inst.handle.is_none()
            && !matches!(inst.run, Run::Starting | Run::Up | Run::Stopping)
            && self.config.backends.get(&inst.backend_name) != Some(&inst.backend)
    }

    /// Drops a cold model's slot and makes it again from the current config
    /// (with its queue and load times), or not at all if the config has it no more.
    fn rebuild(&mut self, m: &ModelKey) {
        let slot = self.slots.remove(m).expect("listed");
        let key = slot.instance.clone();
        if let Some(inst) = self.instances.get_mut(&key) {
            inst.models.retain(|x| x != m);
            if inst.models.is_empty() {
                if inst.handle.is_none() {
                    self.instances.remove(&key);
                } else {
                    self.maybe_stop_server(&key);
                }
            }
        }
        if self.config.models.contains_key(&**m) {
            self.add_model(m);
            let fresh = self.slots.get_mut(m).expect("just added");
            fresh.queue = slot.queue;
            fresh.recent_loads = slot.recent_loads;
        }
    }
}
