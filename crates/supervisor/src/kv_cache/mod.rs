//! The conversation survives the swap: a llama.cpp server's KV cache is saved to
//! disk before the router stops it and restored after its next start, so the
//! next turn of a long conversation is not prefilled again from scratch.
//!
//! Both sides are bounded and neither can cost a request: the save runs while
//! nothing is in flight (the drain is over) within `save_timeout`, after which the
//! server stops anyway; the restore runs after the server is healthy and before
//! its model is reported ready, within `restore_timeout`, after which the model
//! serves without it. Every outcome is an event (`kv_saved`, `kv_restored`,
//! `kv_failed`) and a count for /metrics. The files cost disk, not memory: the
//! ledger never sees them.

mod files;
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelyard_config::{Backend, BackendKind};
use serde::Serialize;
use tokio::time::Instant;

use crate::backends::Http;
use crate::events::{now_ms, Event, EventLog, Kind};
use files::{Manifest, SavedSlot};
use server::{Moved, Server};

/// Where a backend instance keeps its cache on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    /// `kv_cache.dir`, whose size is capped.
    pub root: PathBuf,
    /// The instance's own directory in it.
    pub dir: PathBuf,
    /// `kv_cache.max`.
    pub max: u64,
}

impl Place {
    /// None: the backend keeps no cache on disk.
    pub fn of(backend: &Backend, instance: &str) -> Option<Place> {
        let kv = backend.kv_cache.as_ref()?;
        let root = kv.root()?;
        Some(Place {
            dir: root.join(files::dir_name(instance)),
            root,
            max: kv.max.bytes(),
        })
    }
}

/// How to keep one llama.cpp server's slots across its restarts.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The configured model, for events and metrics.
    pub model: String,
    /// The router's name for the process, part of what a set must match.
    pub instance: String,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub max: u64,
    pub save_timeout: Duration,
    pub restore_timeout: Duration,
    pub base: String,
    pub api_key: Option<String>,
}

impl Plan {
    /// The plan for a process of `backend` serving `model` at `base`; None when
    /// it keeps no cache through the slots API (oMLX keeps its own).
    pub fn new(
        backend: &Backend,
        instance: &str,
        model: Option<&str>,
        base: String,
    ) -> Option<Plan> {
        let kv = backend.kv_cache.as_ref()?;
        if backend.kind != BackendKind::Openai {
            return None;
        }
        let Place { root, dir, max } = Place::of(backend, instance)?;
        Some(Plan {
            model: model.unwrap_or(instance).to_string(),
            instance: instance.to_string(),
            root,
            dir,
            max,
            save_timeout: kv.save_timeout,
            restore_timeout: kv.restore_timeout,
            base,
            api_key: backend.api_key.clone(),
        })
    }

    fn server<'a>(&'a self, http: &'a Http, limit: Duration) -> Server<'a> {
        Server {
            http,
            base: &self.base,
            api_key: self.api_key.as_deref(),
            limit,
        }
    }
}

/// What was saved and restored for one model since the router started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvCounts {
    pub saves: u64,
    pub restores: u64,
    pub failures: u64,
    pub saved_bytes: u64,
    pub restored_bytes: u64,
    /// Prompt tokens put back by restores: what the next turns need not prefill.
    pub restored_tokens: u64,
}

/// Counts per model, shared between the effects that count and whoever reads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats(Arc<Mutex<BTreeMap<String, KvCounts>>>);

impl Stats {
    fn add(&self, model: &str, f: impl FnOnce(&mut KvCounts)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(model.to_string()).or_default());
    }

    pub fn all(&self) -> BTreeMap<String, KvCounts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where outcomes go: the event log and the counts.
#[derive(Clone, Debug)]
pub(crate) struct Reporter {
    pub events: EventLog,
    pub stats: Stats,
}

impl Reporter {
    fn emit(&self, kind: Kind, model: &str, detail: String) {
        if kind == Kind::KvFailed {
            tracing::warn!(model, "KV cache: {detail}");
            self.stats.add(model, |c| c.failures += 1);
        } else {
            tracing::info!(model, "KV cache: {detail}");
        }
        // Events are otherwise the owner's; the log is shared and ordered by
        // its lock, and these concern no state the owner holds.
        self.events.send(Event {
            at_ms: now_ms(),
            kind,
            model: model.to_string(),
            detail,
            load_ms: None,
            reason: None,
        });
    }

    pub fn failed(&self, model: &str, detail: String) {
        self.emit(Kind::KvFailed, model, detail);
    }
}

/// Makes the directory the server writes to; llama.cpp does not.
pub(crate) fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// What a save or a restore moved, over all slots.
#[derive(Debug, Default)]
struct Done {
    slots: Vec<u32>,
    moved: Moved,
    evicted: files::Evicted,
}

impl Done {
    fn add(&mut self, id: u32, m: Moved) {
        self.slots.push(id);
        self.moved.tokens += m.tokens;
        self.moved.bytes += m.bytes;
    }

    fn describe(&self, took: Duration) -> String {
        let ids: Vec<String> = self.slots.iter().map(u32::to_string).collect();
        format!(
            "slot{} {}: {} tokens, {} in {} ms",
            if self.slots.len() == 1 { "" } else { "s" },
            ids.join(", "),
            self.moved.tokens,
            modelyard_config::ByteSize(self.moved.bytes),
            took.as_millis()
        )
    }
}

/// Saves every slot that holds a conversation, within the plan's save_timeout.
/// Never fails: what goes wrong is reported, and the caller stops the server.
pub(crate) async fn save(http: &Http, plan: &Plan, report: &Reporter) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(plan.save_timeout, save_slots(http, plan)).await;
    let took = started.elapsed();
    match outcome {
        Ok(Ok(None)) => tracing::debug!(model = %plan.model, "KV cache: no slot in use, nothing saved"),
        Ok(Ok(Some(done))) => {
            let m = done.moved;
            report.stats.add(&plan.model, |c| {
                c.saves += 1;
                c.saved_bytes += m.bytes;
            });
            let mut detail = done.describe(took);
            if !done.evicted.dirs.is_empty() {
                detail.push_str(&format!(
                    "; {} older set{} deleted to stay within kv_cache.max",
                    done.evicted.dirs.len(),
                    if done.evicted.dirs.len() == 1 { "" } else { "s" }
                ));
            }
            if done.evicted.dirs.contains(&plan.dir) {
                report.failed(
                    &plan.model,
                    format!(
                        "saved {} but deleted it: larger than kv_cache.max ({})",
                        modelyard_config::ByteSize(m.bytes),
                        modelyard_config::ByteSize(plan.max)
                    ),
                );
            } else {
                report.emit(Kind::KvSaved, &plan.model, detail);
            }
        }
        Ok(Err(e)) => report.failed(&plan.model, format!("save failed, the server stops without it: {e}")),
        Err(_) => report.failed(
            &plan.model,
            format!(
                "save did not finish within kv_cache.save_timeout ({}); the server stops without it",
                humantime::format_duration(plan.save_timeout)
            ),
        ),
    }
}

async fn save_slots(http: &Http, plan: &Plan) -> Result<Option<Done>, String> {
    let server = plan.server(http, plan.save_timeout);
    let props = server.props().await?;
    let mut in_use = server.slots_in_use().await?;
    if in_use.is_empty() {
        // Nothing new since the last save or restore (a model loaded and let go
        // unused): the set on disk is still the conversation to come back to.
        return Ok(None);
    }
    // Slots restored this run and not used since still hold their conversation,
    // though /slots lists no task for them.
    let dir = plan.dir.clone();
    if let Ok(Some(old)) = blocking(move || files::read(&dir)).await {
        let restored = old.slots.iter().map(|s| s.id);
        in_use.extend(restored.filter(|id| *id < props.total_slots));
        in_use.sort_unstable();
        in_use.dedup();
    }
    let dir = plan.dir.clone();
    // The old set is overwritten slot by slot: from here on it is no set.
    blocking(move || files::forget(&dir)).await?;
    let mut done = Done::default();
    let mut slots = Vec::new();
    for id in in_use {
        let file = files::slot_file(id);
        let m = server.save(id, &file).await?;
        if m.tokens == 0 {
            continue;
        }
        done.add(id, m);
        slots.push(SavedSlot {
            id,
            file,
            bytes: m.bytes,
            tokens: m.tokens,
        });
    }
    if slots.is_empty() {
        return Ok(None);
    }
    let manifest = Manifest {
        identity: props.identity(&plan.instance),
        slots,
        used_ms: now_ms(),
    };
    let (root, dir, max) = (plan.root.clone(), plan.dir.clone(), plan.max);
    done.evicted = blocking(move || {
        files::write(&dir, &manifest)?;
        Ok(files::enforce_cap(&root, max, &dir))
    })
    .await?;
    Ok(Some(done))
}

/// Restores the set saved for this model, if there is one that matches the
/// server, within the plan's restore_timeout. Never fails: what goes wrong is
/// reported, a set that cannot be restored is deleted, and the model serves.
pub(crate) async fn restore(http: &Http, plan: &Plan, report: &Reporter) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(plan.restore_timeout, restore_slots(http, plan)).await;
    let took = started.elapsed();
    let failed = match outcome {
        Ok(Ok(None)) => return,
        Ok(Ok(Some(done))) => {
            let m = done.moved;
            report.stats.add(&plan.model, |c| {
                c.restores += 1;
                c.restored_bytes += m.bytes;
                c.restored_tokens += m.tokens;
            });
            report.emit(Kind::KvRestored, &plan.model, done.describe(took));
            return;
        }
        Ok(Err(e)) => format!("restore failed, the model serves without it: {e}"),
        Err(_) => format!(
            "restore did not finish within kv_cache.restore_timeout ({}); the model serves without it",
            humantime::format_duration(plan.restore_timeout)
        ),
    };
    let dir = plan.dir.clone();
    let _ = blocking(move || Ok(files::remove_set(&dir))).await;
    report.failed(
        &plan.model,
        format!("{failed}; the saved cache was deleted"),
    );
}

async fn restore_slots(http: &Http, plan: &Plan) -> Result<Option<Done>, String> {
    let dir = plan.dir.clone();
    let Some(mut manifest) = blocking(move || files::read(&dir)).await? else {
        return Ok(None);
    };
    let server = plan.server(http, plan.restore_timeout);
    let props = server.props().await?;
    let here = props.identity(&plan.instance);
    if manifest.identity != here {
        return Err(format!(
            "it was saved from {} (build {}, {} tokens of context), the server runs {} (build {}, {})",
            manifest.identity.model_path,
            manifest.identity.build_info,
            manifest.identity.n_ctx,
            here.model_path,
            here.build_info,
            here.n_ctx
        ));
    }
    let mut done = Done::default();
    for slot in &manifest.slots {
        if slot.id >= props.total_slots {
            tracing::info!(model = %plan.model, slot = slot.id, "KV cache: the server has fewer slots now; not restored");
            continue;
        }
        let path = plan.dir.join(&slot.file);
        let size = blocking(move || Ok(files::size(&path))).await?;
        if size != Some(slot.bytes) {
            return Err(match size {
                None => format!("{} is missing", slot.file),
                Some(n) => format!("{} has {n} bytes, {} were saved", slot.file, slot.bytes),
            });
        }
        // Into the same slot id: requests land on the slot holding their prefix.
        done.add(slot.id, server.restore(slot.id, &slot.file).await?);
    }
    manifest.used_ms = now_ms();
    let dir = plan.dir.clone();
    blocking(move || files::write(&dir, &manifest)).await?;
    Ok(Some(done))
}

/// File work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the cache directory: {e}"))
}
