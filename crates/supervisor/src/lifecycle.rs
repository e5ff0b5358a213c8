//! A model's lifecycle: its states and every legal move between them, in one
//! table. The owner changes a model's state in one place (`Owner::try_enter` in
//! owner/slots.rs), which reserves memory on the way into a state that holds it,
//! releases it on the way out, and refuses (debug builds: panics) a move this
//! table does not list. docs/scheduling.md shows the same table; a test below
//! keeps the two equal.
//!
//! The main line is Cold → Starting → Ready → Draining → Stopping → Cold; the
//! table adds the detours: a failed start, a crash, a model adopted from its
//! server, a drain called off.
//!
//! The owner keeps each model's state as `owner::slots::State`, whose variants
//! carry what exists only in them (a Draining model's swap and why it goes, a
//! Cold or Stopping one's backoff `retry_at`); this table is in terms of its
//! [`Phase`], what the status page shows.
//!
//! `Failed` is not a state of its own: it is `Cold { retry_at: Some(_) }`, a
//! Cold model waiting out a backoff, shown as failed on the status page.

use crate::ledger::Overdraw;
use crate::policy::Phase;

/// Every legal move: (from, to, when). Only moves between different states are
/// listed; staying is no move.
pub(crate) const TRANSITIONS: &[(Phase, Phase, &str)] = &[
    (
        Phase::Cold,
        Phase::Starting,
        "a request is admitted: its memory is reserved, its backend starts or its server loads it",
    ),
    (
        Phase::Cold,
        Phase::Ready,
        "its server holds it though we did not load it, and it fits (adopted)",
    ),
    (
        Phase::Starting,
        Phase::Ready,
        "its backend answers its health check, or its server has loaded it",
    ),
    (
        Phase::Starting,
        Phase::Cold,
        "the start or the load failed, or the process exited before it was ready",
    ),
    (
        Phase::Starting,
        Phase::Stopping,
        "the start failed while the process still runs: it is stopped",
    ),
    (
        Phase::Ready,
        Phase::Draining,
        "chosen to go: idle, keep_alive, a swap, memory pressure, a reload or a manual unload",
    ),
    (
        Phase::Ready,
        Phase::Cold,
        "its process crashed, or its server dropped it on its own",
    ),
    (
        Phase::Draining,
        Phase::Ready,
        "kept: every request it was making room for was abandoned",
    ),
    (
        Phase::Draining,
        Phase::Stopping,
        "nothing in flight and no linger: its process is stopped or its server unloads it",
    ),
    (Phase::Draining, Phase::Cold, "its process crashed"),
    (
        Phase::Stopping,
        Phase::Cold,
        "the memory is back: the process exited, or the server confirmed the unload",
    ),
];

/// Where a backend process (an instance) is. It holds its server's own memory
/// (a shared server's `memory`) while Starting, Up or Stopping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Run {
    /// Not ours to start or stop: `url` without `command`. It never moves;
    /// `down` is why its last poll did not reach it (None: it answered, or
    /// has not been asked yet).
    External {
        down: Option<String>,
    },
    Down,
    Starting,
    Up,
    Stopping,
}

impl Run {
    pub fn as_str(&self) -> &'static str {
        match self {
            Run::External { .. } => "external",
            Run::Down => "down",
            Run::Starting => "starting",
            Run::Up => "up",
            Run::Stopping => "stopping",
        }
    }

    /// Whether its process (and so its own memory) may be present.
    pub fn holds_memory(&self) -> bool {
        matches!(self, Run::Starting | Run::Up | Run::Stopping)
    }
}

/// Every legal move of an instance: (from, to, when). Staying is no move (a
/// shutdown asks a stopping process to stop again, which changes nothing).
pub(crate) const INSTANCE_TRANSITIONS: &[(Run, Run, &str)] = &[
    (
        Run::Down,
        Run::Starting,
        "a model of it is admitted: its server's own memory is reserved and its process launched",
    ),
    (Run::Starting, Run::Up, "it answers its health check"),
    (
        Run::Starting,
        Run::Stopping,
        "it failed its health check, or the router is shutting down",
    ),
    (
        Run::Up,
        Run::Stopping,
        "its models have drained, it holds none, an unload went unconfirmed, or the router is shutting down",
    ),
    (
        Run::Starting,
        Run::Down,
        "it could not be launched, or its process exited: its server's own memory is released",
    ),
    (
        Run::Up,
        Run::Down,
        "its process exited: its server's own memory is released",
    ),
    (
        Run::Stopping,
        Run::Down,
        "its process exited: its server's own memory is released",
    ),
];

/// Whether an instance may move `from → to`.
pub(crate) fn legal_run(from: &Run, to: &Run) -> bool {
    from == to
        || INSTANCE_TRANSITIONS
            .iter()
            .any(|(f, t, _)| f == from && t == to)
}

/// A move the owner refused to apply: a bug in its caller (or, for an
/// adoption, a model that does not fit).
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{} → {} is not a legal move", .from.as_str(), .to.as_str())]
    Illegal { from: Phase, to: Phase },
    #[error(transparent)]
    Overdraw(#[from] Overdraw),
}

/// What tests check after each step: every move the owner made, and every move
/// it refused where none should have been refused.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct Audit {
    pub moves: Vec<(Phase, Phase)>,
    pub runs: Vec<(Run, Run)>,
    pub refused: Vec<String>,
}

#[cfg(test)]
impl Audit {
    /// Panics with what went wrong, if anything did.
    pub fn check(&self) {
        assert!(
            self.refused.is_empty(),
            "the owner refused: {:?}",
            self.refused
        );
        for (f, t) in &self.moves {
            assert!(legal(*f, *t), "{f:?} → {t:?} is not in the table");
        }
        for (f, t) in &self.runs {
            assert!(
                legal_run(f, t),
                "instance {f:?} → {t:?} is not in the table"
            );
        }
    }
}

/// Whether `from → to` is in the table.
pub(crate) fn legal(from: Phase, to: Phase) -> bool {
    TRANSITIONS.iter().any(|(f, t, _)| *f == from && *t == to)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the table in docs/scheduling.md that follows `marker`.
    fn documented(marker: &str) -> Vec<(String, String, String)> {
        let doc = include_str!("../../../docs/scheduling.md");
        let (_, after) = doc
            .split_once(marker)
            .expect("docs/scheduling.md has the transitions table");
        after
            .lines()
            .skip_while(|l| l.trim().is_empty())
            .take_while(|l| l.starts_with('|'))
            .skip(2) // header and rule
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                assert_eq!(cells.len(), 3, "three columns: {l}");
                (
                    cells[0].to_string(),
                    cells[1].to_string(),
                    cells[2].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn the_documented_transitions_are_the_codes() {
        let code: Vec<(String, String, String)> = TRANSITIONS
            .iter()
            .map(|(f, t, when)| (f.as_str().into(), t.as_str().into(), when.to_string()))
            .collect();
        let marker =
            "<!-- transitions: kept equal to crates/supervisor/src/lifecycle.rs by a test -->";
        assert_eq!(documented(marker), code);
    }

    #[test]
    fn the_documented_instance_transitions_are_the_codes() {
        let code: Vec<(String, String, String)> = INSTANCE_TRANSITIONS
            .iter()
            .map(|(f, t, when)| (f.as_str().into(), t.as_str().into(), when.to_string()))
            .collect();
        let marker = "<!-- instance transitions: kept equal to crates/supervisor/src/lifecycle.rs by a test -->";
        assert_eq!(documented(marker), code);
        assert!(
            INSTANCE_TRANSITIONS
                .iter()
                .all(|(f, t, _)| !matches!(f, Run::External { .. })
                    && !matches!(t, Run::External { .. })),
            "a server we do not run never moves"
        );
    }

    #[test]
    fn no_state_moves_to_itself_and_failed_is_never_entered() {
        for (f, t, _) in TRANSITIONS {
            assert_ne!(f, t);
            assert!(*f != Phase::Failed && *t != Phase::Failed);
        }
        assert!(legal(Phase::Stopping, Phase::Cold));
        assert!(
            !legal(Phase::Cold, Phase::Stopping),
            "never stop what is not there"
        );
        assert!(
            !legal(Phase::Stopping, Phase::Ready),
            "a stop is not undone"
        );
    }
}
