//! A model's state (its slot) and the one place it changes: `enter` applies a
//! move from lifecycle.rs's table, reserving or releasing the model's memory in
//! the ledger. What only exists in one state is carried by that [`State`]
//! variant (a backoff's `retry_at`, a swap, why it goes); [`Life`] holds the
//! state and the two facts that last across states. The moves built on `enter`
//! (ready, drained, cold again, failed) are below.

use super::*;

pub(super) struct Slot {
    pub(super) instance: InstanceKey,
    /// Declared memory plus, for a process of its own, its backend's.
    pub(super) memory: u64,
    pub(super) group: Option<String>,
    pub(super) pinned: bool,
    pub(super) idle: Option<Duration>,
    /// How long it may idle before it unloads, until it next does.
    pub(super) idle_for: IdleFor,
    pub(super) upstream: String,
    /// Where it is in its life, and what about that crosses its states.
    pub(super) life: Life,
    pub(super) in_flight: usize,
    /// Whose requests are in flight (client, how many): whether someone other
    /// than the client a swap is for is being answered (see linger_until).
    pub(super) in_flight_by: BTreeMap<u64, usize>,
    pub(super) last_used: Instant,
    /// When its last two requests were admitted, and by which client: closer
    /// than a load's time apart and not only from the client a swap is for,
    /// they make a burst a swap waits out (see linger_until).
    pub(super) admitted: [Option<(Instant, u64)>; 2],
    /// Interactive requests in flight, and when the last one was admitted or
    /// ended: background work may not evict it while either says a person uses it.
    pub(super) interactive_in_flight: usize,
    pub(super) last_interactive: Option<Instant>,
    pub(super) queue: Queue,
    /// Why its queue waits, for the 503 a waiter gets if it gives up.
    pub(super) why: String,
    /// Its run of failed starts, until a clean stop or unload ends it. Not part
    /// of [`State`]: the count lives through the retries it is about
    /// (Starting, then Cold or Stopping again) and through a model that ran a
    /// while and crashed; the backoff it sets is held by the state it applies in.
    pub(super) failures: u32,
    pub(super) last_error: Option<String>,
    /// The config it was made from.
    pub(super) def: (modelyard_config::Model, Backend),
    /// How long its last few loads took, to say how long the next will.
    pub(super) recent_loads: VecDeque<Duration>,
    /// Whether its memory is ours to count: not for another machine's model, nor
    /// for a server we neither start nor load models on.
    pub(super) counted: bool,
    /// Its size as its server reports it (servers that load models one by one).
    pub(super) measured: Option<u64>,
    /// When its current load began, and when it was ready.
    pub(super) load_started: Instant,
    pub(super) ready_at: Instant,
}

/// A model's lifecycle: where it is ([`State`], whose variants carry what
/// exists only in them) and two facts that belong to no one state, because
/// each lasts across several.
pub(super) struct Life {
    /// Change it only through `Owner::enter`, which checks lifecycle.rs's table.
    pub(super) state: State,
    /// An unload was asked of its server and has not been answered. Asked on the
    /// way into Stopping, and again while Stopping if the server still holds it;
    /// but at shutdown the router asks a server it does not run to unload what it
    /// loaded there whatever state that is in, without moving it (Ready to
    /// Stopping is no move, work in flight is not cut), and waits for the
    /// answers before it exits. So it is no part of Stopping.
    pub(super) unload_asked: bool,
    /// Removed or redefined by a reload: it leaves once idle, then is rebuilt or
    /// dropped. About the config it was made from, not where it is: a stale
    /// model goes through Ready, Draining and Stopping like any other, and only
    /// what happens once it is cold differs.
    pub(super) stale: bool,
}

impl Life {
    pub(super) fn new(state: State) -> Life {
        Life {
            state,
            unload_asked: false,
            stale: false,
        }
    }
}

/// A drain to make room for another model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Swap {
    /// Until when the drained model still serves its own requests (and may
    /// linger while its burst goes on, see linger_until).
    pub(super) serve_until: Instant,
    /// The client the swap is for, and when it was decided: what another
    /// client asks since (or was being answered at that moment) may make it
    /// linger, see linger_until.
    pub(super) client: u64,
    pub(super) decided: Instant,
    /// Whether a request of a client other than `client` was being answered
    /// by the drained model when the swap was decided.
    pub(super) others_in_flight: bool,
}

/// Whose idle timeout a loaded model follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdleFor {
    /// routes.yaml's (`idle_timeout`, the model's or the default).
    Config,
    /// The `keep_alive` of a request (None: never), until the model next unloads.
    KeepAlive(Option<Duration>),
}

/// Where a model is in its life, with what exists only in that state. The
/// moves between states are lifecycle.rs's table (in terms of [`Phase`], what
/// the status page shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Not loaded. After repeated failed starts, no start before `retry_at`
    /// (a backoff); None, it starts when asked.
    Cold {
        retry_at: Option<Instant>,
    },
    Starting,
    Ready,
    /// Chosen to go: what is in flight finishes. Drained to make room for a
    /// swap, it holds that [`Swap`]; drained for any other reason, None. `why`
    /// it was chosen goes on into Stopping, for the `unloaded` event.
    Draining {
        swap: Option<Swap>,
        why: String,
    },
    /// Asked to exit or to be unloaded; its memory is back once it has. A start
    /// that failed while its process runs is stopped with its backoff already
    /// running: `retry_at` goes on into Cold. `why`: the drain's, if one led here.
    Stopping {
        retry_at: Option<Instant>,
        why: Option<String>,
    },
}

impl State {
    pub(super) fn phase(&self) -> Phase {
        match self {
            State::Cold { .. } => Phase::Cold,
            State::Starting => Phase::Starting,
            State::Ready => Phase::Ready,
            State::Draining { .. } => Phase::Draining,
            State::Stopping { .. } => Phase::Stopping,
        }
    }
}

impl Slot {
    pub(super) fn phase(&self) -> Phase {
        self.life.state.phase()
    }

    /// No start before this: the backoff of a run of failed starts, held while
    /// it is cold or still stopping.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self.life.state {
            State::Cold { retry_at } | State::Stopping { retry_at, .. } => retry_at,
            _ => None,
        }
    }

    /// The swap a model is draining for, if it is.
    pub(super) fn swap(&self) -> Option<Swap> {
        match self.life.state {
            State::Draining { swap, .. } => swap,
            _ => None,
        }
    }

    /// Why it was chosen to go, while it drains or stops: for the `unloaded`
    /// event that ends it.
    pub(super) fn unload_why(&self) -> Option<&str> {
        match &self.life.state {
            State::Draining { why, .. } => Some(why),
            State::Stopping { why, .. } => why.as_deref(),
            _ => None,
        }
    }

    /// Until when a model draining for a swap still serves its own requests.
    pub(super) fn serve_until(&self) -> Option<Instant> {
        self.swap().map(|s| s.serve_until)
    }
}

/// Counts a failed start (or a crash) of a model that is now cold or
/// stopping, and from the second in a row sets the backoff its state holds.
pub(super) fn note_failure(slot: &mut Slot, reason: &str) {
    slot.failures += 1;
    slot.last_error = Some(reason.to_string());
    let backoff = (slot.failures >= 2).then(|| {
        let exp = (slot.failures - 2).min(16);
        Instant::now() + Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
    });
    match &mut slot.life.state {
        State::Cold { retry_at } | State::Stopping { retry_at, .. } => *retry_at = backoff,
        // Only after a refused move (a bug, already said): nothing to hold it.
        _ => {}
    }
}

/// A clean stop ended the run of failures: the count and any backoff go.
pub(super) fn clear_failures(slot: &mut Slot) {
    slot.failures = 0;
    if let State::Cold { retry_at } | State::Stopping { retry_at, .. } = &mut slot.life.state {
        *retry_at = None;
    }
}

pub(super) fn fail_queue(slot: &mut Slot, model: &str, err: impl Fn(String) -> SupervisorError) {
    for w in slot.queue.drain() {
        let _ = w.reply.send(Err(err(model.to_string())));
    }
}

pub(super) fn median(loads: &VecDeque<Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = loads.iter().copied().collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// How many recent loads the typical load time is the median of.
pub(super) const RECENT_LOADS: usize = 5;

/// Repeated failures wait 1 s, 2 s, 4 s … up to this before the next start.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl<E: Effects> Owner<E> {
    /// The one place a model's phase changes. A move not in lifecycle.rs's table
    /// is refused. Into a phase that holds memory it reserves the model's memory
    /// (refused if that would overdraw the budget); out of one it releases it:
    /// every caller moves a model out of memory only once the memory is back.
    pub(super) fn try_enter(&mut self, m: &ModelKey, next: State) -> Result<(), Refused> {
        let slot = self.slots.get_mut(m).expect("exists");
        let (from, to) = (slot.phase(), next.phase());
        if !lifecycle::legal(from, to) {
            return Err(Refused::Illegal { from, to });
        }
        match (from.holds_memory(), to.holds_memory()) {
            (false, true) => self.ledger.reserve(Holder::Model(m.clone()), slot.memory)?,
            (true, false) => {
                self.ledger.release(&Holder::Model(m.clone()));
            }
            _ => {}
        }
        slot.life.state = next;
        #[cfg(test)]
        self.audit.moves.push((from, to));
        Ok(())
    }

    /// [`Self::try_enter`] where the move must be possible (the table lists it,
    /// the policy made room): a refusal is a bug, said and not applied. Whether
    /// it moved.
    pub(super) fn enter(&mut self, m: &ModelKey, next: State) -> bool {
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
    pub(super) fn bug(&mut self, what: String) {
        tracing::error!("supervisor bug, refused: {what}");
        #[cfg(test)]
        self.audit.refused.push(what);
        #[cfg(not(test))]
        debug_assert!(false, "supervisor bug, refused: {what}");
    }

    /// `m`'s memory is back: its reservation goes, and with it everything that
    /// only holds while it is loaded. `detail` empty: the reason its unload was
    /// asked for.
    pub(super) fn now_cold(&mut self, m: &ModelKey, kind: Kind, detail: String) {
        let slot = self.slots.get_mut(m).expect("exists");
        // An unload we asked for says why we asked.
        let detail = match slot.unload_why() {
            Some(why) if detail.is_empty() => why.to_string(),
            _ => detail,
        };
        // A backoff set while it was stopping goes on.
        let retry_at = slot.retry_at();
        self.enter(m, State::Cold { retry_at });
        let slot = self.slots.get_mut(m).expect("exists");
        slot.in_flight = 0;
        slot.in_flight_by.clear();
        slot.idle_for = IdleFor::Config;
        slot.interactive_in_flight = 0;
        slot.measured = None;
        slot.life.unload_asked = false;
        self.emit(Event::new(kind, m, detail));
    }

    /// A model's load finished: it serves its queue, and the load counts toward
    /// how long the next is expected to take.
    pub(super) fn mark_ready(&mut self, m: &ModelKey, took: Duration) {
        self.enter(m, State::Ready);
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

    /// Every model of `key` that was starting: counted as a failure, its waiters
    /// told why, and moved to `then`.
    pub(super) fn fail_starting(&mut self, key: &InstanceKey, reason: &str, then: State) {
        let inst = &self.instances[key];
        let backend = inst.backend_name.clone();
        for m in inst.models.clone() {
            if self.slots[&m].phase() == Phase::Starting {
                self.enter(&m, then.clone());
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

    /// A drained `m` goes on to Stopping (its process stops or its server
    /// unloads it), taking why it was chosen to go for the `unloaded` event.
    pub(super) fn stop_drained(&mut self, m: &ModelKey) {
        let why = self.slots[m].unload_why().map(str::to_string);
        self.enter(
            m,
            State::Stopping {
                retry_at: None,
                why,
            },
        );
    }

    /// Takes no new requests for `m` (and the models sharing its process, which go
    /// with it), lets what is in flight finish, then stops.
    pub(super) fn begin_drain(&mut self, m: &ModelKey, reason: Reason, why: &str) {
        self.begin_drain_until(m, reason, why, None);
    }

    /// [`Self::begin_drain`]; with a `swap`, `m` (drained to make room for it)
    /// still serves its own requests until the swap's `serve_until`, even if it
    /// was already draining with the models sharing its process.
    pub(super) fn begin_drain_until(
        &mut self,
        m: &ModelKey,
        reason: Reason,
        why: &str,
        swap: Option<Swap>,
    ) {
        if swap.is_some() {
            if let State::Draining { swap: s, .. } =
                &mut self.slots.get_mut(m).expect("exists").life.state
            {
                *s = swap;
            }
        }
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
            if self.slots[&other].phase() == Phase::Ready {
                let swap = swap.filter(|_| other == *m);
                let detail = if other == *m {
                    why.to_string()
                } else {
                    format!("{why} (shares a server with {m})")
                };
                self.enter(
                    &other,
                    State::Draining {
                        swap,
                        why: detail.clone(),
                    },
                );
                tracing::info!(model = %other, "unloading: {detail}");
                self.emit(Event::evicting(&other, reason, detail));
            }
        }
        if loads {
            self.try_unload(m);
        } else {
            self.try_stop(&key);
        }
    }
}
