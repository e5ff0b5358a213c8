//! The memory ledger: one reservation per model that holds memory (starting,
//! ready, draining, stopping) and per running shared server (its own memory),
//! against the budget.
//!
//! The rule, kept by this type and nowhere else: **a reservation that would take
//! the sum above the budget is refused** ([`Ledger::reserve`] returns
//! [`Overdraw`]). A reservation is released only when the memory is really back:
//! the process exited, or the server confirmed the unload ([`Ledger::release`]
//! is called from the transitions that say so, never on a request to stop).
//!
//! The budget moves: with a `reserve` it follows the machine's free memory, and a
//! reload may shrink it. Memory already reserved cannot be taken back by a
//! number, so when the budget falls below what is held the *ceiling* stays at
//! what was held (busy models finish first) and comes down to the budget once
//! the releases bring the sum under it. The sum never exceeds the ceiling.
//!
//! The policy (`policy::admit`) decides from a read-only view: the budget, and
//! what each model holds.

use std::collections::HashMap;

use crate::owner::{InstanceKey, ModelKey};

/// Who holds a reservation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    /// A model: its declared memory (plus its own process's base memory).
    Model(ModelKey),
    /// A shared server's own memory, from its start until its exit.
    Server(InstanceKey),
}

/// A reservation the budget has no room for: a bug in whoever asked (the
/// policy should not have admitted it), or an adoption that does not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{holder:?} asked for {bytes} bytes with {held} of {budget} held")]
pub(crate) struct Overdraw {
    pub holder: Holder,
    pub bytes: u64,
    pub held: u64,
    pub budget: u64,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    /// The budget routes.yaml gives (u64::MAX: none).
    configured: u64,
    /// What reservations may sum to now: `configured`, or less while the machine
    /// is short of memory.
    budget: u64,
    /// What the sum may be: the budget, or what was held when the budget fell
    /// below it, until the sum has come down to the budget.
    ceiling: u64,
    reservations: HashMap<Holder, u64>,
    held: u64,
}

impl Ledger {
    pub fn new(configured: u64) -> Ledger {
        Ledger {
            configured,
            budget: configured,
            ceiling: configured,
            reservations: HashMap::new(),
            held: 0,
        }
    }

    pub fn configured(&self) -> u64 {
        self.configured
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn held(&self) -> u64 {
        self.held
    }

    /// What `holder` has reserved (0: nothing).
    #[cfg(test)]
    pub fn of(&self, holder: &Holder) -> u64 {
        self.reservations.get(holder).copied().unwrap_or(0)
    }

    /// Reserves `bytes` for `holder`, unless that takes the sum above the budget.
    /// Nothing (zero bytes) always fits: it moves no sum.
    pub fn reserve(&mut self, holder: Holder, bytes: u64) -> Result<(), Overdraw> {
        debug_assert!(
            !self.reservations.contains_key(&holder),
            "{holder:?} reserved twice"
        );
        if bytes == 0 {
            return Ok(());
        }
        if self.held.saturating_add(bytes) > self.budget {
            return Err(Overdraw {
                holder,
                bytes,
                held: self.held,
                budget: self.budget,
            });
        }
        self.held += bytes;
        self.reservations.insert(holder, bytes);
        Ok(())
    }

    /// The memory of `holder` is back; returns how much it held.
    pub fn release(&mut self, holder: &Holder) -> u64 {
        let bytes = self.reservations.remove(holder).unwrap_or(0);
        self.held -= bytes;
        if self.held <= self.budget {
            self.ceiling = self.budget;
        }
        bytes
    }

    /// A new configured budget (a reload); the current one follows it.
    pub fn set_configured(&mut self, configured: u64) {
        self.configured = configured;
        self.set_budget(configured);
    }

    /// The budget moved (free memory changed, or a reload): what is held stays
    /// held, under a ceiling that comes down as it is released.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
        self.ceiling = budget.max(self.held);
    }

    /// Whether the invariant holds: the sum is within the ceiling.
    pub fn within_ceiling(&self) -> bool {
        self.held <= self.ceiling
    }

    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(n: &str) -> Holder {
        Holder::Model(n.into())
    }

    #[test]
    fn a_reservation_that_would_overdraw_is_refused_and_changes_nothing() {
        let mut l = Ledger::new(48);
        l.reserve(model("daily"), 32).unwrap();
        let err = l.reserve(model("deep"), 41).unwrap_err();
        assert_eq!((err.held, err.budget), (32, 48));
        assert_eq!(l.held(), 32);
        assert_eq!(l.of(&model("deep")), 0);
        l.reserve(model("small"), 16).unwrap();
        assert_eq!(l.held(), 48, "exactly the budget fits");
    }

    #[test]
    fn release_gives_back_what_was_reserved_once() {
        let mut l = Ledger::new(48);
        l.reserve(Holder::Server("o".into()), 1).unwrap();
        l.reserve(model("o"), 5).unwrap();
        assert_eq!(l.release(&model("o")), 5);
        assert_eq!(l.release(&model("o")), 0, "a second release frees nothing");
        assert_eq!(l.held(), 1);
    }

    #[test]
    fn a_shrunk_budget_keeps_what_is_held_under_a_ceiling_that_comes_down() {
        let mut l = Ledger::new(48);
        l.reserve(model("daily"), 32).unwrap();
        l.reserve(model("embed"), 2).unwrap();
        l.set_budget(20);
        assert!(l.within_ceiling());
        assert_eq!(l.ceiling(), 34);
        assert!(
            l.reserve(model("small"), 1).is_err(),
            "no room above the budget"
        );
        assert!(l.reserve(model("zero"), 0).is_ok(), "nothing always fits");
        l.release(&model("embed"));
        assert_eq!(l.ceiling(), 34, "still above the budget");
        l.release(&model("daily"));
        assert_eq!(l.ceiling(), 20);
    }
}
