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
    lines: Arc<Mutex<VecDeque<String>>>,
    live: broadcast::Sender<String>,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing {
            lines: Arc::default(),
            live: broadcast::channel(KEEP).0,
        }
    }
}

impl LogRing {
    pub fn push(&self, line: String) {
        {
            let mut q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
    }

    /// The last `n` lines and every line after them, with none lost in between.
    pub fn follow(&self, n: usize) -> (Vec<String>, broadcast::Receiver<String>) {
        let q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // Subscribed under the lock, so no line falls between the tail and the feed.
        let rx = self.live.subscribe();
        let tail = q.iter().skip(q.len().saturating_sub(n)).cloned().collect();
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
