//! What the owner asks of the world — start an instance, stop it — behind a trait,
//! so the owner's decisions run on a paused clock in tests with a fake.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use modelyard_config::BackendKind;

use crate::backends::{adapter, Http, Target};
use crate::health::wait_healthy;
use crate::logs::LogRing;
use crate::owner::{InstanceKey, ModelKey, Msg};
use crate::process::{self, Running, Spec};

/// A started instance; dropping it must stop it.
pub(crate) trait Handle: Send {
    /// Asks it to exit; `Msg::Exited` follows once it has.
    fn stop(&mut self);
    fn pid(&self) -> Option<u32>;
}

/// How to start one instance and tell when it is ready.
pub(crate) struct Launch {
    pub key: InstanceKey,
    pub generation: u64,
    pub spec: Spec,
    pub health_url: String,
    pub start_timeout: Duration,
    pub logs: LogRing,
}

/// A load or an unload of one model on a server that does them one by one.
pub(crate) struct ModelOp {
    pub model: ModelKey,
    /// The server's generation, so an answer from a server since restarted is ignored.
    pub generation: u64,
    pub kind: BackendKind,
    pub target: Target,
    pub unload: bool,
}

pub(crate) trait Effects: Send + 'static {
    /// Starts the instance. Later sends `StartDone` (ready or not) and, whenever
    /// it ends, `Exited`, both tagged with the launch's generation.
    fn start(
        &mut self,
        launch: Launch,
        tx: UnboundedSender<Msg>,
    ) -> Result<Box<dyn Handle>, String>;

    /// Asks the server to load or unload a model; `ModelDone` follows.
    fn model_op(&mut self, op: ModelOp, tx: UnboundedSender<Msg>);
}

/// Real processes, and real calls to their servers' APIs (health checks
/// included), through one HTTP client.
pub(crate) struct Processes {
    http: Http,
}

impl Processes {
    pub(crate) fn new(http: Http) -> Processes {
        Processes { http }
    }
}

struct Real {
    proc: Running,
    health: tokio::task::JoinHandle<()>,
}

impl Handle for Real {
    fn stop(&mut self) {
        self.health.abort();
        self.proc.stop();
    }
    fn pid(&self) -> Option<u32> {
        Some(self.proc.pid)
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        self.health.abort();
    }
}

impl Effects for Processes {
    fn start(
        &mut self,
        launch: Launch,
        tx: UnboundedSender<Msg>,
    ) -> Result<Box<dyn Handle>, String> {
        let Launch {
            key,
            generation,
            spec,
            health_url,
            start_timeout,
            logs,
        } = launch;
        let exit_tx = tx.clone();
        let exit_key = key.clone();
        let proc = process::spawn(&spec, &logs, move |info| {
            let _ = exit_tx.send(Msg::Exited {
                key: exit_key,
                generation,
                info: Some(info),
            });
        })
        .map_err(|e| format!("cannot run `{}`: {e}", spec.argv[0]))?;
        tracing::info!(instance = %key, pid = proc.pid, "starting backend");
        let http = self.http.clone();
        let health = tokio::spawn(async move {
            let result = wait_healthy(&http, &health_url, start_timeout).await;
            let _ = tx.send(Msg::StartDone {
                key,
                generation,
                result,
            });
        });
        Ok(Box::new(Real { proc, health }))
    }

    fn model_op(&mut self, op: ModelOp, tx: UnboundedSender<Msg>) {
        let http = self.http.clone();
        tokio::spawn(async move {
            let a = adapter(op.kind);
            let result = if op.unload {
                a.unload(http, op.target).await
            } else {
                a.load(http, op.target).await
            };
            let _ = tx.send(Msg::ModelDone {
                model: op.model,
                generation: op.generation,
                unload: op.unload,
                result,
            });
        });
    }
}
