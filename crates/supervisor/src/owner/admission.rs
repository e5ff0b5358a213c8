//! Who gets memory next, and what goes: the queue in arrival order through the
//! policy, idle unloads, and the deadlines the owner sleeps until.

use super::*;

impl<E: Effects> Owner<E> {
    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        // Waiters out of time get the reason they waited.
        for (name, slot) in self.slots.iter_mut() {
            for w in slot.queue.take_expired(now) {
                let waited = now.saturating_duration_since(w.since);
                if w.ask.priority == crate::Priority::Background {
                    let why = if slot.why.is_empty() {
                        "interactive requests kept the machine busy".to_string()
                    } else {
                        slot.why.clone()
                    };
                    let _ = w.reply.send(Err(SupervisorError::Yielded {
                        model: name.to_string(),
                        waited,
                        why,
                    }));
                    continue;
                }
                let _ = w.reply.send(Err(SupervisorError::Timeout {
                    model: name.to_string(),
                    waited,
                    why: {
                        let why = if slot.why.is_empty() {
                            "its backend is still starting"
                        } else {
                            &slot.why
                        };
                        // What a swap costs, so the client can judge a retry.
                        match median(&slot.recent_loads) {
                            Some(t) => format!(
                                "{why}; {name} usually loads in ~{:.0}s",
                                t.as_secs_f64().max(1.0)
                            ),
                            None => why.to_string(),
                        }
                    },
                }));
            }
        }
        self.unload_idle();
        self.end_lingering();
    }

    /// Models that lingered after a swap was decided and saw no new request go now.
    pub(super) fn end_lingering(&mut self) {
        self.settle_abandoned();
        let done: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.phase() == Phase::Draining
                    && s.in_flight == 0
                    && s.serve_until().is_some()
                    && linger_until(s).is_none()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for m in done {
            let key = self.slots[&m].instance.clone();
            if self.instances[&key].loads {
                self.try_unload(&m);
            } else {
                self.try_stop(&key);
            }
        }
    }

    /// Models idle past their timeout go (a shared server's once all of its are).
    pub(super) fn unload_idle(&mut self) {
        let now = Instant::now();
        let idle: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| idle_deadline(s).is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for m in &idle {
            // A shared server that cannot unload one model goes only when every
            // model it holds is idle.
            let inst = &self.instances[&self.slots[m].instance];
            let all_idle = inst.loads
                || inst
                    .models
                    .iter()
                    .all(|o| !self.slots[o].phase().holds_memory() || idle.contains(o));
            if all_idle && self.slots[m].phase() == Phase::Ready {
                let slot = &self.slots[m];
                let (reason, why) = match (slot.idle_for, slot.idle) {
                    (IdleFor::KeepAlive(_), _) => (
                        Reason::KeepAlive,
                        "the request's keep_alive ran out".to_string(),
                    ),
                    (IdleFor::Config, Some(d)) => (
                        Reason::Idle,
                        format!("idle for {}", humantime::format_duration(d)),
                    ),
                    (IdleFor::Config, None) => (Reason::Idle, "idle".to_string()),
                };
                self.begin_drain(m, reason, &why);
            }
        }
    }

    /// Gives waiting models their memory, oldest waiter first.
    pub(super) fn schedule(&mut self) {
        if self.shutting_down {
            return;
        }
        let now = Instant::now();
        self.settle_abandoned();
        // Models a person waits for first, then background work; each in arrival order.
        let mut waiting: Vec<(crate::Priority, u64, ModelKey)> = self
            .slots
            .iter()
            .filter_map(|(k, s)| s.queue.front().map(|w| (w.ask.priority, w.seq, k.clone())))
            .collect();
        waiting.sort();
        let mut promised = 0u64;
        for (priority, _, m) in waiting {
            let slot = &self.slots[&m];
            match slot.life.state {
                State::Ready => {
                    self.serve_queue(&m);
                    continue;
                }
                State::Starting | State::Draining { .. } | State::Stopping { .. } => continue,
                State::Cold { .. } => {}
            }
            if let Some(at) = slot.retry_at().filter(|at| *at > now) {
                let why = format!(
                    "it failed {} times in a row (last: {}); next start in {}s",
                    slot.failures,
                    slot.last_error.as_deref().unwrap_or("unknown"),
                    at.saturating_duration_since(now).as_secs_f64().ceil()
                );
                self.slots.get_mut(&m).expect("exists").why = why;
                continue;
            }
            if self.instances[&slot.instance].run == Run::Stopping {
                self.slots.get_mut(&m).expect("exists").why = "its backend is restarting".into();
                continue;
            }
            let inst = &self.instances[&slot.instance];
            // Starting a shared server also reserves the server's own memory.
            let need = slot.memory + if inst.run == Run::Down { inst.base } else { 0 };
            let decision = {
                let mut target = self.view(&m);
                target.memory = need;
                let mut others: Vec<View> = self
                    .slots
                    .keys()
                    .filter(|k| **k != m)
                    .map(|k| self.view(k))
                    .collect();
                others.extend(self.server_views());
                Decision::from(admit_as(
                    self.ledger.budget(),
                    promised,
                    priority,
                    &target,
                    &others,
                ))
            };
            match decision {
                Decision::Start => self.start_model(&m),
                Decision::Evict(victims) => {
                    let names: Vec<String> = victims.iter().map(|v| v.to_string()).collect();
                    let serve_until = now + self.config.max_swap_delay;
                    let client = self.slots[&m].queue.front().map_or(0, |w| w.ask.client);
                    for v in &victims {
                        // A request of another client's being answered (it was
                        // queued for this model, or came just before): someone
                        // else is using it.
                        let others_in_flight = self
                            .slots
                            .get(v)
                            .is_some_and(|s| s.in_flight_by.keys().any(|&c| c != client));
                        let swap = Swap {
                            serve_until,
                            client,
                            decided: now,
                            others_in_flight,
                        };
                        self.begin_drain_until(
                            v,
                            Reason::MakeRoom,
                            &format!("to make room for {m}"),
                            Some(swap),
                        );
                    }
                    self.slots.get_mut(&m).expect("exists").why = format!(
                        "waiting for {} to unload{}",
                        names.join(", "),
                        self.budget_note()
                    );
                    promised += need;
                }
                Decision::Wait(why) => {
                    // Memory on its way back is promised to this waiter.
                    promised += need;
                    let why = format!("{why}{}", self.budget_note());
                    self.slots.get_mut(&m).expect("exists").why = why;
                }
                Decision::Blocked(why) | Decision::Yield(why) => {
                    // Memory nothing can free is promised to nobody.
                    let why = format!("{why}{}", self.budget_note());
                    self.slots.get_mut(&m).expect("exists").why = why;
                }
            }
        }
        self.check_ledger();
    }

    /// Reserves `m`'s memory (the policy has made room) and starts it: its
    /// backend launches, its server loads it, or a running shared server already
    /// has it.
    pub(super) fn start_model(&mut self, m: &ModelKey) {
        let key = self.slots[m].instance.clone();
        if !self.enter(m, State::Starting) {
            return;
        }
        self.emit(Event::new(Kind::Loading, m, ""));
        let slot = self.slots.get_mut(m).expect("exists");
        slot.load_started = Instant::now();
        slot.why = "its backend is starting".into();
        let inst = self.instances.get_mut(&key).expect("instance exists");
        match inst.run {
            Run::Up | Run::External { .. } if inst.loads => {
                slot.why = "its server is loading it".into();
                self.begin_load(m);
            }
            Run::Up => {
                // A shared server already running: the model is there.
                self.enter(m, State::Ready);
                self.emit_ready(m, Duration::ZERO);
                self.serve_queue(m);
            }
            Run::Starting => {}
            Run::Down => self.launch(&key),
            Run::External { .. } | Run::Stopping => unreachable!("schedule skips these"),
        }
    }

    /// A model draining to make room for requests that are all gone (their
    /// clients gave up, or their time ran out) serves again: swapping it out
    /// would only cost its next request a load. Waiters whose client went away
    /// have left their queues already (`Abandoned`), so this looks at models,
    /// never at waiters. Not while shutting down: the waiters were told so,
    /// and a model on its way out is kept for nobody.
    pub(super) fn settle_abandoned(&mut self) {
        if self.shutting_down || self.slots.values().any(|s| !s.queue.is_empty()) {
            return;
        }
        let kept: Vec<ModelKey> = self
            .slots
            .iter()
            .filter(|(_, s)| s.serve_until().is_some() && !s.life.unload_asked)
            .map(|(k, _)| k.clone())
            .collect();
        for name in kept {
            self.enter(&name, State::Ready);
            tracing::info!(model = %name, "kept: the requests it was making room for were abandoned");
            self.emit(Event::new(
                Kind::Kept,
                &name,
                "the requests it was making room for were abandoned",
            ));
        }
    }

    pub(super) fn view(&self, m: &ModelKey) -> View<'_> {
        let (m, s) = self.slots.get_key_value(m).expect("exists");
        View {
            name: m,
            memory: s.memory,
            group: s.group.as_deref(),
            // Another machine's models are never ours to unload.
            pinned: s.pinned || !s.counted,
            phase: if s.counted { s.phase() } else { Phase::Cold },
            in_flight: s.in_flight,
            last_used: s.last_used,
            interactive: s.interactive_in_flight > 0
                || s.queue.len() > s.queue.background()
                || s.last_interactive
                    .is_some_and(|t| Instant::now() < t + self.config.interactive_grace),
        }
    }

    /// The running shared servers' own memory, as reservations the policy may not
    /// choose (it goes when the server's last model does).
    pub(super) fn server_views(&self) -> Vec<View<'_>> {
        self.instances
            .iter()
            .filter(|(_, i)| i.base > 0 && i.run.holds_memory())
            .map(|(k, i)| View {
                name: k,
                memory: i.base,
                group: None,
                pinned: true,
                phase: Phase::Ready,
                in_flight: 0,
                last_used: i.up_since,
                interactive: false,
            })
            .collect()
    }

    /// When the owner must next wake: the earliest waiter's deadline (read from
    /// each queue's index: O(log n), not a scan of every waiter), an idle unload,
    /// the end of a backoff someone waits for, the end of a linger. The loop asks
    /// after every message, so this costs O(models), never O(waiters).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        // An overdue idle unload that waits on a co-resident model is not due again
        // until that one is; counting it would spin.
        let later = |d: &Instant| *d > now;
        // Background work waiting for a person's grace to run out is retried then.
        let grace = self.config.interactive_grace;
        let yielding = self.slots.values().any(|s| s.queue.background() > 0);
        self.slots
            .values()
            .flat_map(|s| {
                s.queue
                    .next_deadline()
                    .into_iter()
                    .chain(idle_deadline(s).filter(later))
                    .chain(s.retry_at().filter(|_| !s.queue.is_empty()).filter(later))
                    .chain(linger_until(s))
                    .chain(
                        s.last_interactive
                            .map(|t| t + grace)
                            .filter(|_| yielding)
                            .filter(later),
                    )
            })
            .min()
    }
}

/// `policy::admit`'s answer, owned (it borrows the views, which borrow the
/// owner), so the owner can act on it.
enum Decision {
    Start,
    Evict(Vec<ModelKey>),
    Wait(String),
    Blocked(String),
    Yield(String),
}

impl From<Admission<'_>> for Decision {
    fn from(a: Admission<'_>) -> Decision {
        match a {
            Admission::Start => Decision::Start,
            Admission::Evict(v) => Decision::Evict(v.into_iter().map(ModelKey::from).collect()),
            Admission::Wait(why) => Decision::Wait(why),
            Admission::Blocked(why) => Decision::Blocked(why),
            Admission::Yield(why) => {
                Decision::Yield(format!("it yields to interactive work: {why}"))
            }
        }
    }
}

/// Until when a model draining for a swap, with nothing in flight, stays to see
/// whether others still need it: as long as bringing it back would take (its
/// usual load), never past `serve_until`. Swapping away in a pause shorter than
/// that only to swap back costs a load; waiting out the pause costs at most one.
///
/// It lingers only on evidence that someone other than the client the swap is
/// for still uses it: a request from another client during the swap, one
/// already being answered when the swap was decided (it was queued for this
/// model: two people taking turns on two models keep each one a while instead
/// of swapping for every request), or a burst (its last two requests closer
/// than a load) that another client took part in. One client's burst is no
/// such evidence: a person who sent a chat and its title request, then asked
/// for another model, has moved on, and waiting for them to come back costs
/// the switch a second load's time. Another client's request that ended
/// before the swap was decided counts only as part of such a burst.
pub(super) fn linger_until(s: &Slot) -> Option<Instant> {
    if s.phase() != Phase::Draining || s.in_flight > 0 {
        return None;
    }
    let load = median(&s.recent_loads)?;
    let Swap {
        serve_until,
        client: mover,
        decided,
        others_in_flight: others_at_swap,
    } = s.swap()?;
    let [before, Some((last, last_client))] = s.admitted else {
        return None;
    };
    let asked_during_swap = last >= decided && last_client != mover;
    let shared_burst = before.is_some_and(|(at, client)| {
        last.saturating_duration_since(at) < load && (client != mover || last_client != mover)
    });
    if !asked_during_swap && !shared_burst && !others_at_swap {
        return None;
    }
    let until = serve_until.min(s.last_used + load);
    (Instant::now() < until).then_some(until)
}

pub(super) fn idle_deadline(s: &Slot) -> Option<Instant> {
    (s.phase() == Phase::Ready
        && s.in_flight == 0
        && !s.pinned
        && s.queue.is_empty()
        && s.memory > 0)
        .then_some(match s.idle_for {
            IdleFor::KeepAlive(d) => d,
            IdleFor::Config => s.idle,
        })
        .flatten()
        .map(|d| s.last_used + d)
}
