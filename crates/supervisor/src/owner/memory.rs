//! The budget that follows the machine: measured memory, the system's available
//! memory and `reserve`, and what goes when they say the models no longer fit.

use super::*;

impl<E: Effects> Owner<E> {
    /// With a `reserve`, the budget follows the machine: what is available now plus
    /// what our own processes hold, less the reserve, and never above the
    /// configured budget. When that falls below what the ledger holds, idle models
    /// go (least recently used first; never pinned ones, never work in flight);
    /// new loads wait for room either way.
    pub(super) fn follow_memory(&mut self, available: Option<u64>) {
        let Some(reserve) = self.config.reserve.map(|r| r.0) else {
            self.available = None;
            self.ledger.set_budget(self.ledger.configured());
            return;
        };
        // A sample that could not be read changes nothing.
        let Some(avail) = available else { return };
        self.available = Some(avail);
        let machine = avail
            .saturating_add(self.held_measured())
            .saturating_sub(reserve);
        let budget = self.ledger.configured().min(machine);
        if budget == self.ledger.budget() {
            return;
        }
        let shrank = budget < self.ledger.budget();
        self.ledger.set_budget(budget);
        self.announce_budget(avail, reserve);
        // While a model loads, its memory moves from "available" to "ours" between
        // two samples; judge once it is in.
        let loading = self.slots.values().any(|s| s.phase() == Phase::Starting);
        if shrank && !loading {
            let why = format!(
                "free memory is short: {} available, {} reserved for the system",
                modelyard_config::ByteSize(avail),
                modelyard_config::ByteSize(reserve)
            );
            self.fit_budget(&why);
        }
    }

    /// A `budget` event when the budget moved by a twentieth or more since the
    /// last one, or came back to routes.yaml's: what it is now and why.
    fn announce_budget(&mut self, avail: u64, reserve: u64) {
        let (was, now) = (self.announced, self.ledger.budget());
        let step = was.max(now) / 20;
        let back = now == self.ledger.configured();
        if was == now || (!back && was.abs_diff(now) < step) {
            return;
        }
        self.announced = now;
        let b = modelyard_config::ByteSize;
        let configured = match self.ledger.configured() {
            u64::MAX => "no limit".to_string(),
            c => b(c).to_string(),
        };
        let detail = if back {
            format!(
                "back to routes.yaml's {configured}: {} available, {} reserved for the system",
                b(avail),
                b(reserve)
            )
        } else {
            format!(
                "{} {} (routes.yaml says {configured}): {} available, {} reserved for the system",
                if now < was { "down to" } else { "up to" },
                b(now),
                b(avail),
                b(reserve)
            )
        };
        self.emit_budget(detail);
    }

    /// Why the budget is lower than routes.yaml says, if it is.
    pub(super) fn budget_note(&self) -> String {
        match self.available {
            Some(avail) if self.ledger.budget() < self.ledger.configured() => format!(
                " (the budget is down from {} to {} while only {} is available)",
                modelyard_config::ByteSize(self.ledger.configured()),
                modelyard_config::ByteSize(self.ledger.budget()),
                modelyard_config::ByteSize(avail)
            ),
            _ => String::new(),
        }
    }

    /// What our backends hold now, as measured: their process trees, and the
    /// models on servers we do not run, as those servers report them.
    pub(super) fn held_measured(&self) -> u64 {
        let trees: u64 = self
            .instances
            .values()
            .filter(|i| i.handle.is_some())
            .filter_map(|i| i.measured)
            .sum();
        let attached: u64 = self
            .slots
            .values()
            .filter(|s| s.phase().holds_memory() && s.counted)
            .filter(|s| self.instances[&s.instance].handle.is_none())
            .filter_map(|s| s.measured)
            .sum();
        trees + attached
    }

    /// When the budget shrank: idle models go until the ledger fits.
    pub(super) fn fit_budget(&mut self, why: &str) {
        // Memory already on its way out counts as gone.
        let staying = |o: &Self| {
            o.ledger.held()
                - o.slots
                    .values()
                    .filter(|s| matches!(s.phase(), Phase::Draining | Phase::Stopping))
                    .map(|s| s.memory)
                    .sum::<u64>()
        };
        while staying(self) > self.ledger.budget() {
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| {
                    s.phase() == Phase::Ready && !s.pinned && s.in_flight == 0 && s.memory > 0
                })
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(v) => self.begin_drain(&v, Reason::MemoryPressure, why),
                None => {
                    tracing::warn!(
                        used = self.ledger.held(),
                        budget = self.ledger.budget(),
                        "the ledger is above the new budget until busy models finish"
                    );
                    return;
                }
            }
        }
    }

    pub(super) fn on_measured(&mut self, samples: Vec<(u32, Option<u64>)>) {
        for (key, inst) in self.instances.iter_mut() {
            let Some(pid) = inst.handle.as_ref().and_then(|h| h.pid()) else {
                continue;
            };
            let Some((_, bytes)) = samples.iter().find(|(p, _)| *p == pid) else {
                continue;
            };
            inst.measured = *bytes;
            let declared: u64 = inst
                .models
                .iter()
                .map(|m| &self.slots[m])
                .filter(|s| s.phase().holds_memory())
                .map(|s| s.memory)
                .sum();
            if let Some(b) = *bytes {
                if declared > 0 && b > declared && !inst.warned {
                    inst.warned = true;
                    tracing::warn!(
                        instance = %key,
                        measured = %modelyard_config::ByteSize(b),
                        declared = %modelyard_config::ByteSize(declared),
                        "backend holds more memory than routes.yaml declares; raise its `memory` so the budget stays true"
                    );
                }
            }
        }
    }
}
