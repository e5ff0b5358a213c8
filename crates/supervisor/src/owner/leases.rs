//! Where a request becomes a lease: an acquire is served at once when its
//! model is ready (or draining within its swap grace), refused when it cannot
//! be served in time, or queued; a queue is served when its model becomes
//! ready. A lease's drop comes back here as `Released`, which may let a
//! draining model stop.

use super::*;

impl<E: Effects> Owner<E> {
    pub(super) fn on_acquire(
        &mut self,
        model: String,
        deadline: Instant,
        ask: crate::Ask,
        reply: Reply,
        id: u64,
    ) {
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
        let swap_grace = slot.phase() == Phase::Draining
            && (slot.in_flight > 0 || linger_until(slot).is_some())
            && slot.serve_until().is_some_and(|t| Instant::now() < t);
        if let Some(why) = self.instances[&slot.instance].down() {
            let _ = reply.send(Err(SupervisorError::Unreachable {
                model,
                backend: self.instances[&slot.instance].backend_name.clone(),
                reason: why.to_string(),
            }));
            return;
        }
        if (slot.phase() == Phase::Ready || swap_grace) && slot.queue.is_empty() {
            let lease = self.lease(&key, ask);
            let _ = reply.send(lease);
            return;
        }
        if let Some(at) = slot.retry_at().filter(|at| *at > deadline) {
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
        let waiting = slot.queue.len() + 1;
        self.emit(Event::new(Kind::Queued, &key, format!("{waiting} waiting")));
        let slot = self.slots.get_mut(&key).expect("looked up above");
        slot.queue.push_back(Waiter {
            reply,
            deadline,
            since: Instant::now(),
            seq,
            id,
            ask,
        });
    }

    pub(super) fn on_released(
        &mut self,
        model: ModelKey,
        generation: u64,
        interactive: bool,
        client: u64,
    ) {
        let Some(slot) = self.slots.get_mut(&model) else {
            return;
        };
        let current = self.instances.get(&slot.instance).map(|i| i.generation);
        if current != Some(generation) || slot.in_flight == 0 {
            return;
        }
        slot.in_flight -= 1;
        if let Some(n) = slot.in_flight_by.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                slot.in_flight_by.remove(&client);
            }
        }
        slot.last_used = Instant::now();
        if interactive {
            slot.interactive_in_flight = slot.interactive_in_flight.saturating_sub(1);
            slot.last_interactive = Some(slot.last_used);
        }
        if slot.phase() == Phase::Draining && slot.in_flight == 0 {
            // The swap it drained for may have been given up meanwhile.
            self.settle_abandoned();
        }
        let slot = &self.slots[&model];
        if slot.phase() == Phase::Draining && slot.in_flight == 0 {
            let key = slot.instance.clone();
            if self.instances[&key].loads {
                self.try_unload(&model);
            } else {
                self.try_stop(&key);
            }
        }
    }

    pub(super) fn serve_queue(&mut self, m: &ModelKey) {
        while let Some(w) = self.slots.get_mut(m).and_then(|s| s.queue.pop_front()) {
            if w.reply.is_closed() {
                continue;
            }
            let lease = self.lease(m, w.ask);
            // A lease nobody waits for any more is dropped here, and released.
            let _ = w.reply.send(lease);
        }
    }

    pub(super) fn lease(
        &mut self,
        m: &ModelKey,
        ask: crate::Ask,
    ) -> Result<Lease, SupervisorError> {
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
        *slot.in_flight_by.entry(ask.client).or_default() += 1;
        slot.last_used = now;
        slot.admitted = [slot.admitted[1], Some((now, ask.client))];
        let interactive = ask.priority == crate::Priority::Interactive;
        if interactive {
            slot.interactive_in_flight += 1;
            slot.last_interactive = Some(now);
        }
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
                interactive,
                client: ask.client,
                tx: self.tx.clone(),
            },
        })
    }

    /// A model routes.yaml does not name but a remote backend lists: nothing of
    /// ours to start or count, so a lease at once (or why not).
    pub(super) fn remote_lease(&self, model: &str) -> Option<Result<Lease, SupervisorError>> {
        let inst = self.remote_serving(model)?;
        if let Some(why) = inst.down() {
            return Some(Err(SupervisorError::Unreachable {
                model: model.to_string(),
                backend: inst.backend_name.clone(),
                reason: why.to_string(),
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
                interactive: false,
                // Not a slot of ours: its release counts nothing.
                client: 0,
                tx: self.tx.clone(),
            },
        }))
    }

    /// The remote backend listing `model`, first by backend name, if any; names
    /// routes.yaml gives (as models or aliases) are never taken from a remote.
    pub(super) fn remote_serving(&self, model: &str) -> Option<&Instance> {
        if self.config.resolve(model).is_some() {
            return None;
        }
        self.instances
            .values()
            .filter(|i| i.backend.kind == modelyard_config::BackendKind::Remote)
            .filter(|i| i.listed.iter().any(|n| n == model))
            .min_by(|a, b| a.backend_name.cmp(&b.backend_name))
    }
}
