//! The last lines a backend printed: shown when it fails to start, by
//! `modelyard logs`, and live to whoever follows them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

const KEEP: usize = 500;

/// A backend's recent output, kept across its restarts.
#[derive(Clone, Debug)]
pub struct LogRing {
    kept: Arc<Mutex<Kept>>,
    live: broadcast::Sender<String>,
}

#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<String>,
    /// Lines ever pushed, and how many had been when the current process
    /// started: its own lines are the ones after that.
    pushed: u64,
    run_from: u64,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing {
            kept: Arc::default(),
            live: broadcast::channel(KEEP).0,
        }
    }
}

impl LogRing {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, line: String) {
        {
            let mut k = self.kept();
            if k.lines.len() == KEEP {
                k.lines.pop_front();
            }
            k.lines.push_back(line.clone());
            k.pushed += 1;
        }
        let _ = self.live.send(line);
    }

    /// A new process starts: what it prints is its own run's.
    pub(crate) fn begin_run(&self) {
        let mut k = self.kept();
        k.run_from = k.pushed;
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let k = self.kept();
        k.lines
            .iter()
            .skip(k.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last `n` lines of the current (or last) process: what explains its
    /// failure, without an earlier attempt's lines in between.
    pub fn run_tail(&self, n: usize) -> Vec<String> {
        let k = self.kept();
        let own = (k.pushed - k.run_from).min(k.lines.len() as u64) as usize;
        let n = n.min(own);
        k.lines.iter().skip(k.lines.len() - n).cloned().collect()
    }

    /// The last `n` lines and every line after them, with none lost in between.
    pub fn follow(&self, n: usize) -> (Vec<String>, broadcast::Receiver<String>) {
        let k = self.kept();
        // Subscribed under the lock, so no line falls between the tail and the feed.
        let rx = self.live.subscribe();
        let tail = k
            .lines
            .iter()
            .skip(k.lines.len().saturating_sub(n))
            .cloned()
            .collect();
        (tail, rx)
    }

    /// Copies lines from a child's pipe until it closes.
    pub(crate) fn read_from(
        &self,
        name: String,
        pipe: impl AsyncRead + Unpin + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "backend", instance = %name, "{line}");
                ring.push(line);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_explained_by_its_own_process_s_lines_only() {
        let ring = LogRing::default();
        ring.begin_run();
        for l in ["starting", "no port bound", "SIGTERM, exiting"] {
            ring.push(l.into());
        }
        ring.begin_run();
        assert!(
            ring.run_tail(5).is_empty(),
            "the new process said nothing yet"
        );
        ring.push("starting".into());
        ring.push("no port bound".into());
        assert_eq!(ring.run_tail(5), ["starting", "no port bound"]);
        assert_eq!(ring.run_tail(1), ["no port bound"]);
        assert_eq!(
            ring.tail(3),
            ["SIGTERM, exiting", "starting", "no port bound"]
        );
        // Past what the ring keeps, the run's lines are the ones still there.
        for i in 0..KEEP + 10 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(
            ring.run_tail(2),
            [format!("line {}", KEEP + 8), format!("line {}", KEEP + 9)]
        );
    }
}
