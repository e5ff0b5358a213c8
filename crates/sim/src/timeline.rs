//! `--timeline FILE`: the sim's own account of when it started, became ready
//! and was told to stop, one line per step appended to FILE:
//! `<ns since the Unix epoch> <step> <model>`.
//!
//! A benchmark of the router's swaps subtracts the backend's own load and stop
//! time from what a client waited; only the backend can say when it was ready
//! or got its SIGTERM, and the wall clock is the one clock it shares with the
//! benchmark (another process). Several sims may share one file: each line is
//! one `write` to a file opened for appending.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The open file and the model named on each line; unset without the flag.
static TIMELINE: OnceLock<(Mutex<File>, String)> = OnceLock::new();

/// A step of the sim's life.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// The process is running (its first act, before the port is bound).
    Start,
    /// `/health` answers 200 from the next moment on.
    Ready,
    /// SIGTERM or SIGINT arrived; the process exits right after.
    Term,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Start => "start",
            Step::Ready => "ready",
            Step::Term => "term",
        }
    }
}

/// Opens `path` for appending and records the start; every later `mark` goes there.
pub fn open(path: &Path, model: &str) -> Result<(), String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("--timeline {}: {e}", path.display()))?;
    let _ = TIMELINE.set((Mutex::new(file), model.to_owned()));
    mark(Step::Start);
    Ok(())
}

/// Appends `step` with the time now, if there is a timeline.
pub fn mark(step: Step) {
    let Some((file, model)) = TIMELINE.get() else {
        return;
    };
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let line = format!("{ns} {} {model}\n", step.name());
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = file.write_all(line.as_bytes()) {
        eprintln!("modelyard-sim: cannot write the timeline: {e}");
    }
}
