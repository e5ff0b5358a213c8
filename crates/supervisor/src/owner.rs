//! The one task that owns every instance's lifecycle state. Everything else sends
//! it messages; nothing else reads or changes that state, so a decision and the
//! change it leads to can never race (a read that gates a mutation is a bug).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use modelyard_config::{Backend, Config};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::SupervisorError;
use crate::health::wait_healthy;
use crate::lease::{Lease, Release};
use crate::logs::LogRing;
use crate::process::{self, ExitInfo, Running, Spec};

/// An instance is one backend process: per model for `openai` backends with a
/// command, shared by all of a backend's models otherwise.
pub(crate) type InstanceKey = Arc<str>;

pub(crate) type Reply = oneshot::Sender<Result<Lease, SupervisorError>>;

#[derive(Debug)]
pub(crate) enum Msg {
    Acquire {
        model: String,
        reply: Reply,
    },
    Released {
        key: InstanceKey,
        generation: u64,
    },
    StartDone {
        key: InstanceKey,
        generation: u64,
        result: Result<(), String>,
    },
    Exited {
        key: InstanceKey,
        generation: u64,
        info: ExitInfo,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// Where an instance answers.
#[derive(Clone, Debug)]
struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Option<Endpoint> {
        let uri: Uri = url.parse().ok()?;
        Some(Endpoint {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}://{}{}{}",
            self.scheme, self.authority, self.base_path, path
        )
    }
}

enum State {
    /// Not ours to start or stop: `url` without `command`.
    External(Endpoint),
    Cold,
    Starting {
        waiters: Vec<(String, Reply)>,
        proc: Running,
        endpoint: Endpoint,
        health: JoinHandle<()>,
    },
    Ready {
        // Held so that dropping the state stops the process.
        #[allow(dead_code)]
        proc: Running,
        endpoint: Endpoint,
    },
}

struct Instance {
    backend_name: String,
    backend: Backend,
    /// Set when the instance serves one model only.
    model: Option<String>,
    state: State,
    generation: u64,
    in_flight: usize,
    logs: LogRing,
}

pub(crate) struct Owner {
    config: Arc<Config>,
    instances: HashMap<InstanceKey, Instance>,
    tx: mpsc::UnboundedSender<Msg>,
    shutting_down: bool,
}

pub(crate) fn instance_key(config: &Config, model: &str) -> Option<InstanceKey> {
    let m = config.models.get(model)?;
    let b = config.backends.get(&m.backend)?;
    Some(if b.kind.process_per_model() && b.command.is_some() {
        format!("{}/{model}", m.backend).into()
    } else {
        m.backend.as_str().into()
    })
}

impl Owner {
    pub fn new(config: Arc<Config>, tx: mpsc::UnboundedSender<Msg>) -> Owner {
        let mut instances = HashMap::new();
        for (model, m) in &config.models {
            let Some(key) = instance_key(&config, model) else {
                continue;
            };
            let backend = config.backends[&m.backend].clone();
            let state = match (&backend.command, &backend.url) {
                (None, Some(url)) => Endpoint::parse(url).map_or(State::Cold, State::External),
                _ => State::Cold,
            };
            let per_model = backend.kind.process_per_model() && backend.command.is_some();
            instances.entry(key).or_insert_with(|| Instance {
                backend_name: m.backend.clone(),
                backend,
                model: per_model.then(|| model.clone()),
                state,
                generation: 0,
                in_flight: 0,
                logs: LogRing::default(),
            });
        }
        Owner {
            config,
            instances,
            tx,
            shutting_down: false,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Acquire { model, reply } => self.acquire(model, reply),
                Msg::Released { key, generation } => {
                    if let Some(inst) = self.instances.get_mut(&key) {
                        if inst.generation == generation {
                            inst.in_flight = inst.in_flight.saturating_sub(1);
                        }
                    }
                }
                Msg::StartDone {
                    key,
                    generation,
                    result,
                } => self.start_done(key, generation, result),
                Msg::Exited {
                    key,
                    generation,
                    info,
                } => self.exited(key, generation, info),
                Msg::Shutdown { done } => {
                    self.shutdown().await;
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn lease(&mut self, key: &InstanceKey, model: &str) -> Result<Lease, SupervisorError> {
        let inst = self
            .instances
            .get_mut(key)
            .expect("instance exists for a configured model");
        let endpoint = match &inst.state {
            State::External(e) | State::Ready { endpoint: e, .. } => e.clone(),
            _ => unreachable!("leases are only made for ready instances"),
        };
        let m = &self.config.models[model];
        inst.in_flight += 1;
        Ok(Lease {
            model: model.to_string(),
            upstream_model: m.upstream_name(model).to_string(),
            scheme: endpoint.scheme,
            authority: endpoint.authority,
            base_path: endpoint.base_path,
            api_key: inst.backend.api_key.clone(),
            release: Release {
                key: key.clone(),
                generation: inst.generation,
                tx: self.tx.clone(),
            },
        })
    }

    fn acquire(&mut self, model: String, reply: Reply) {
        if self.shutting_down {
            let _ = reply.send(Err(SupervisorError::ShuttingDown));
            return;
        }
        let Some(key) = instance_key(&self.config, &model) else {
            let _ = reply.send(Err(SupervisorError::UnknownModel(model)));
            return;
        };
        let inst = self
            .instances
            .get_mut(&key)
            .expect("instance exists for a configured model");
        match &mut inst.state {
            State::External(_) | State::Ready { .. } => {
                // A lease the client no longer waits for is dropped here and released.
                let _ = reply.send(self.lease(&key, &model));
            }
            State::Starting { waiters, .. } => waiters.push((model, reply)),
            State::Cold => self.start(key, model, reply),
        }
    }

    fn start(&mut self, key: InstanceKey, model: String, reply: Reply) {
        let inst = self.instances.get_mut(&key).expect("instance exists");
        inst.generation += 1;
        let generation = inst.generation;
        let fail = |reason: String| SupervisorError::StartFailed {
            model: model.clone(),
            backend: inst.backend_name.clone(),
            reason,
        };
        let (spec, endpoint) = match prepare(inst, &self.config) {
            Ok(x) => x,
            Err(reason) => {
                let _ = reply.send(Err(fail(reason)));
                return;
            }
        };
        let tx = self.tx.clone();
        let exit_key = key.clone();
        let proc = match process::spawn(&spec, &inst.logs, move |info| {
            let _ = tx.send(Msg::Exited {
                key: exit_key,
                generation,
                info,
            });
        }) {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(fail(format!("cannot run `{}`: {e}", spec.argv[0]))));
                return;
            }
        };
        tracing::info!(instance = %key, pid = proc.pid, "starting backend");
        let health_url = endpoint.url(&inst.backend.health);
        let timeout = inst.backend.start_timeout;
        let tx = self.tx.clone();
        let health_key = key.clone();
        let health = tokio::spawn(async move {
            let result = wait_healthy(&health_url, timeout).await;
            let _ = tx.send(Msg::StartDone {
                key: health_key,
                generation,
                result,
            });
        });
        inst.state = State::Starting {
            waiters: vec![(model, reply)],
            proc,
            endpoint,
            health,
        };
    }

    fn start_done(&mut self, key: InstanceKey, generation: u64, result: Result<(), String>) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation || !matches!(inst.state, State::Starting { .. }) {
            return;
        }
        let State::Starting {
            waiters,
            proc,
            endpoint,
            ..
        } = std::mem::replace(&mut inst.state, State::Cold)
        else {
            unreachable!()
        };
        match result {
            Ok(()) => {
                tracing::info!(instance = %key, "backend ready");
                inst.state = State::Ready { proc, endpoint };
                for (model, reply) in waiters {
                    let lease = self.lease(&key, &model);
                    let _ = reply.send(lease);
                }
            }
            Err(reason) => {
                // Dropping `proc` stops the process.
                drop(proc);
                let tail = tail_note(&inst.logs);
                tracing::warn!(instance = %key, "backend failed to start: {reason}");
                let backend = inst.backend_name.clone();
                fail_all(waiters, |model| SupervisorError::StartFailed {
                    model,
                    backend: backend.clone(),
                    reason: format!("{reason}{tail}"),
                });
            }
        }
    }

    fn exited(&mut self, key: InstanceKey, generation: u64, info: ExitInfo) {
        let Some(inst) = self.instances.get_mut(&key) else {
            return;
        };
        if inst.generation != generation {
            return;
        }
        match std::mem::replace(&mut inst.state, State::Cold) {
            State::Starting {
                waiters, health, ..
            } => {
                health.abort();
                let tail = tail_note(&inst.logs);
                tracing::warn!(instance = %key, "backend {info} while starting");
                let backend = inst.backend_name.clone();
                fail_all(waiters, |model| SupervisorError::StartFailed {
                    model,
                    backend: backend.clone(),
                    reason: format!("the process {info} before it was ready{tail}"),
                });
            }
            State::Ready { .. } if !info.requested => {
                tracing::warn!(instance = %key, in_flight = inst.in_flight, "backend {info}; it will be restarted on the next request");
            }
            other => inst.state = other,
        }
        if matches!(inst.state, State::Cold) {
            inst.in_flight = 0;
        }
    }

    async fn shutdown(&mut self) {
        self.shutting_down = true;
        let mut runners = Vec::new();
        for inst in self.instances.values_mut() {
            match std::mem::replace(&mut inst.state, State::Cold) {
                State::Starting {
                    waiters,
                    mut proc,
                    health,
                    ..
                } => {
                    health.abort();
                    fail_all(waiters, |_| SupervisorError::ShuttingDown);
                    proc.stop();
                    runners.push(proc);
                }
                State::Ready { mut proc, .. } => {
                    proc.stop();
                    runners.push(proc);
                }
                other => inst.state = other,
            }
        }
        for mut proc in runners {
            let _ = (&mut proc.runner).await;
        }
    }
}

fn fail_all(waiters: Vec<(String, Reply)>, err: impl Fn(String) -> SupervisorError) {
    for (model, reply) in waiters {
        let _ = reply.send(Err(err(model)));
    }
}

fn tail_note(logs: &LogRing) -> String {
    let tail = logs.tail(5);
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", tail.join(" | "))
    }
}

/// The argv, environment and address of the next process for `inst`.
fn prepare(inst: &Instance, config: &Config) -> Result<(Spec, Endpoint), String> {
    let b = &inst.backend;
    let argv = b.command.clone().ok_or("the backend has no command")?;
    let port = process::free_port()
        .map_err(|e| format!("no free port: {e}"))?
        .to_string();
    let (upstream, extra) = match &inst.model {
        Some(name) => {
            let m = &config.models[name];
            (m.upstream_name(name).to_string(), m.args.clone())
        }
        None => (String::new(), Vec::new()),
    };
    let fill = |s: &String| s.replace("${PORT}", &port).replace("${MODEL}", &upstream);
    let argv: Vec<String> = argv.iter().chain(extra.iter()).map(fill).collect();
    let env = b.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
    let url = match &b.url {
        Some(u) => fill(u),
        None => format!("http://127.0.0.1:{port}"),
    };
    let endpoint = Endpoint::parse(&url).ok_or_else(|| format!("`{url}` is not a usable URL"))?;
    Ok((
        Spec {
            name: format!(
                "{}{}",
                inst.backend_name,
                inst.model
                    .as_ref()
                    .map(|m| format!("/{m}"))
                    .unwrap_or_default()
            ),
            argv,
            env,
            stop_timeout: b.stop_timeout,
        },
        endpoint,
    ))
}

/// The longest the owner waits between polls of a starting backend.
pub(crate) const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(500);
