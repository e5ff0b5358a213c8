//! Backend lifecycle behind one call: `acquire(model, deadline) -> Lease`.
//!
//! Today it starts a backend on the first request for one of its models (one start
//! shared by every request that arrives meanwhile), stops every process when the
//! router exits, and restarts a backend that died on the next request. The memory
//! ledger, eviction and idle unloading grow behind the same interface.

mod error;
mod health;
mod lease;
mod logs;
mod owner;
mod process;

use std::sync::Arc;

use modelyard_config::Config;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};

pub use error::SupervisorError;
pub use lease::Lease;
pub use process::ExitInfo;

use owner::{Msg, Owner};

/// A handle to the supervisor; cheap to clone.
#[derive(Clone, Debug)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Supervisor {
    /// Starts the owner task. Call [`Supervisor::shutdown`] before exiting so that
    /// every backend process is stopped.
    pub fn start(config: Arc<Config>) -> Supervisor {
        // Unbounded because a lease's release must never be lost or wait; the
        // number of messages is bounded by the requests in flight.
        let (tx, rx) = mpsc::unbounded_channel();
        let owner = Owner::new(config, tx.clone());
        tokio::spawn(owner.run(rx));
        Supervisor { tx }
    }

    /// Waits until `model` (a configured name, not an alias) is ready, starting its
    /// backend if needed, and returns a lease on it. Giving up on the returned
    /// future (the client went away) loses nothing: a lease that arrives for
    /// nobody is released at once.
    pub async fn acquire(&self, model: &str, deadline: Instant) -> Result<Lease, SupervisorError> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Acquire {
                model: model.to_string(),
                reply,
            })
            .map_err(|_| SupervisorError::ShuttingDown)?;
        match timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SupervisorError::ShuttingDown),
            Err(_) => Err(SupervisorError::Timeout {
                model: model.to_string(),
                waited: started.elapsed(),
                why: "its backend is still starting".into(),
            }),
        }
    }

    /// Stops every backend process (SIGTERM, then SIGKILL after its stop_timeout)
    /// and returns when all have exited. Later acquires fail with ShuttingDown.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}
