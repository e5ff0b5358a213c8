//! What the owner asks of the world — start an instance, stop it — behind a trait,
//! so the owner's decisions run on a paused clock in tests with a fake.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use modelyard_config::BackendKind;

use crate::backends::{adapter, Http, Target};
use crate::health::wait_healthy;
use crate::kv_cache;
use crate::logs::LogRing;
use crate::owner::{InstanceKey, ModelKey, Msg};
use crate::process::{self, Running, Spec};

/// A started instance; dropping it must stop it.
pub(crate) trait Handle: Send {
    /// Asks it to exit; `Msg::Exited` follows once it has.
    fn stop(&mut self);
    /// Like `stop`, after saving what it keeps on disk across restarts (its KV
    /// cache, within its save_timeout). Nothing may be in flight: this is the
    /// end of a drain. A `stop` meanwhile stops it at once.
    fn stop_after_save(&mut self) {
        self.stop();
    }
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
    /// How to keep its KV cache across restarts, if it does.
    pub kv_cache: Option<kv_cache::Plan>,
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

/// Real processes, and real calls to their servers' APIs.
pub(crate) struct Processes {
    http: Http,
    kv: kv_cache::Reporter,
}

impl Processes {
    pub(crate) fn new(kv: kv_cache::Reporter) -> Processes {
        Processes {
            http: Http::default(),
            kv,
        }
    }
}

struct Real {
    proc: Running,
    health: tokio::task::JoinHandle<()>,
    kv: Option<(kv_cache::Plan, Http, kv_cache::Reporter)>,
    /// The save that ends in the stop, once asked for.
    saving: Option<tokio::task::JoinHandle<()>>,
}

impl Handle for Real {
    fn stop(&mut self) {
        self.health.abort();
        // Cut short, the save drops the process's stop, which stops it.
        if let Some(s) = self.saving.take() {
            s.abort();
        }
        self.proc.stop();
    }
    fn stop_after_save(&mut self) {
        // Not ready yet (or still restoring): there is nothing of this run to save.
        let ready = self.health.is_finished();
        self.health.abort();
        let Some((plan, http, report)) = self.kv.take().filter(|_| ready) else {
            return self.stop();
        };
        let Some(stop) = self.proc.take_stop() else {
            return; // asked to stop already
        };
        self.saving = Some(tokio::spawn(async move {
            kv_cache::save(&http, &plan, &report).await;
            let _ = stop.send(());
        }));
    }
    fn pid(&self) -> Option<u32> {
        Some(self.proc.pid)
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        self.health.abort();
        if let Some(s) = self.saving.take() {
            s.abort();
        }
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
            kv_cache,
        } = launch;
        let kv_cache = kv_cache.and_then(|plan| match kv_cache::make_dir(&plan.dir) {
            Ok(()) => Some(plan),
            Err(e) => {
                let dir = plan.dir.display();
                self.kv.failed(
                    &plan.model,
                    format!("cannot make {dir}: {e}; no KV cache this run"),
                );
                None
            }
        });
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
        let (http, report) = (self.http.clone(), self.kv.clone());
        let restore = kv_cache.clone();
        let health = tokio::spawn(async move {
            let result = wait_healthy(&health_url, start_timeout).await;
            // Before it is ready, so the first request finds its conversation.
            if let (Ok(()), Some(plan)) = (&result, &restore) {
                kv_cache::restore(&http, plan, &report).await;
            }
            let _ = tx.send(Msg::StartDone {
                key,
                generation,
                result,
            });
        });
        Ok(Box::new(Real {
            proc,
            health,
            kv: kv_cache.map(|p| (p, self.http.clone(), self.kv.clone())),
            saving: None,
        }))
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
