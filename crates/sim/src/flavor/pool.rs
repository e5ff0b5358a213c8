//! The models a multi-model flavor knows, which of them are loaded, and the
//! backend's own scheduler deciding when they load and unload.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::clock::FOREVER;
use super::keep_alive::KeepAlive;
use crate::memory::allocate_resident;

/// How the backend makes room for a model it is about to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Ollama: at most this many loaded; the least recently used idle model
    /// goes first, and a load waits while every loaded model is busy.
    MaxLoaded(usize),
    /// oMLX: loaded sizes must stay under the ceiling (None: unlimited);
    /// idle models go in LRU order, and a load that still cannot fit fails.
    Ceiling(Option<u64>),
}

/// How a request's model name is matched to a declared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// oMLX: the exact model id.
    Exact,
    /// Ollama: `name:tag`, where a name without a tag means `name:latest`.
    Tagged,
}

impl Naming {
    fn canonical<'a>(self, name: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            Naming::Tagged if !name.contains(':') => format!("{name}:latest").into(),
            _ => name.into(),
        }
    }
}

#[derive(Debug)]
pub enum AcquireError {
    Unknown,
    /// Does not fit under the ceiling even with every idle model unloaded.
    Insufficient(String),
    LoadFailed(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum UnloadError {
    Unknown,
    NotLoaded,
}

#[derive(Debug)]
enum Slot {
    Unloaded,
    Loading {
        started: Instant,
    },
    /// The block is held only so the model's memory stays resident.
    Loaded {
        _block: Vec<u8>,
    },
}

#[derive(Debug)]
struct Entry {
    name: String,
    size: u64,
    slot: Slot,
    in_flight: u64,
    last_used: Option<Instant>,
    last_access: Option<SystemTime>,
    keep_alive: KeepAlive,
    expires_at: Option<SystemTime>,
    /// Bumped whenever the model is used or unloaded, so an expiry timer
    /// armed earlier knows it has been overtaken.
    epoch: u64,
    loads: u64,
    unloads: u64,
    /// Bumped on unload; in-flight requests watch it to abort.
    abort: watch::Sender<u64>,
}

impl Entry {
    fn is_loaded(&self) -> bool {
        matches!(self.slot, Slot::Loaded { .. })
    }

    fn occupies(&self) -> bool {
        !matches!(self.slot, Slot::Unloaded)
    }

    fn free(&mut self) {
        self.slot = Slot::Unloaded;
        self.unloads += 1;
        self.expires_at = None;
        self.epoch += 1;
        self.abort.send_modify(|n| *n += 1);
        eprintln!("modelyard-sim: unloaded {}", self.name);
    }
}

/// What the routes report about one model.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub name: String,
    pub size: u64,
    pub loaded: bool,
    pub loading_started: Option<Instant>,
    pub last_access: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Pool {
    entries: Mutex<Vec<Entry>>,
    /// Woken on every load, unload and finished request, so waiting loads
    /// re-check whether they can proceed.
    changed: Notify,
    load_time: Duration,
    eviction: Eviction,
    /// Between an expiry decision and the memory actually coming back;
    /// Ollama replies to an unload before the runner is gone.
    unload_delay: Duration,
    naming: Naming,
}

impl Pool {
    pub fn new(
        models: Vec<(String, u64)>,
        load_time: Duration,
        eviction: Eviction,
        unload_delay: Duration,
        naming: Naming,
    ) -> Arc<Self> {
        let entries = models
            .into_iter()
            .map(|(name, size)| Entry {
                name: naming.canonical(&name).into_owned(),
                size,
                slot: Slot::Unloaded,
                in_flight: 0,
                last_used: None,
                last_access: None,
                keep_alive: KeepAlive::Forever,
                expires_at: None,
                epoch: 0,
                loads: 0,
                unloads: 0,
                abort: watch::channel(0).0,
            })
            .collect();
        Arc::new(Self {
            entries: Mutex::new(entries),
            changed: Notify::new(),
            load_time,
            eviction,
            unload_delay,
            naming,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn knows(&self, name: &str) -> bool {
        let name = self.naming.canonical(name);
        self.lock().iter().any(|e| e.name == *name)
    }

    pub fn models(&self) -> Vec<ModelView> {
        self.lock()
            .iter()
            .map(|e| ModelView {
                name: e.name.clone(),
                size: e.size,
                loaded: e.is_loaded(),
                loading_started: match e.slot {
                    Slot::Loading { started } => Some(started),
                    _ => None,
                },
                last_access: e.last_access,
                expires_at: e.expires_at,
            })
            .collect()
    }

    /// Bytes held or being loaded by models.
    pub fn memory_in_use(&self) -> u64 {
        self.lock()
            .iter()
            .filter(|e| e.occupies())
            .map(|e| e.size)
            .sum()
    }

    /// The per-model counters `/sim/stats` adds for multi-model flavors.
    pub fn stats(&self) -> Value {
        let entries = self.lock();
        let count = |f: fn(&Entry) -> u64| -> Map<String, Value> {
            entries
                .iter()
                .map(|e| (e.name.clone(), json!(f(e))))
                .collect()
        };
        let loaded: Vec<&str> = entries
            .iter()
            .filter(|e| e.is_loaded())
            .map(|e| e.name.as_str())
            .collect();
        json!({
            "loads": count(|e| e.loads),
            "unloads": count(|e| e.unloads),
            "loaded": loaded,
        })
    }

    /// Loads `name` if needed and holds it loaded until the lease drops;
    /// `keep_alive` then decides how long it stays.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        keep_alive: KeepAlive,
    ) -> Result<Lease, AcquireError> {
        let name = &*self.naming.canonical(name);
        let started = Instant::now();
        loop {
            // Created before the check so a wake-up between the check and
            // the wait is not lost.
            let notified = self.changed.notified();
            let load = {
                let mut entries = self.lock();
                let index = entries
                    .iter()
                    .position(|e| e.name == name)
                    .ok_or(AcquireError::Unknown)?;
                match entries[index].slot {
                    Slot::Loaded { .. } => {
                        return Ok(self.lease(&mut entries[index], keep_alive, started, true))
                    }
                    Slot::Loading { .. } => None,
                    Slot::Unloaded => match self.make_room(&mut entries, index)? {
                        true => {
                            entries[index].slot = Slot::Loading {
                                started: Instant::now(),
                            };
                            Some(entries[index].size)
                        }
                        false => None,
                    },
                }
            };
            if let Some(size) = load {
                // A separate task, so a client leaving mid-load neither
                // leaves the model stuck "loading" nor leaks its lease: an
                // unclaimed lease is dropped with the task's output.
                let pool = Arc::clone(self);
                let name = name.to_owned();
                let task =
                    tokio::spawn(async move { pool.load(&name, size, keep_alive, started).await });
                return task
                    .await
                    .map_err(|e| AcquireError::LoadFailed(e.to_string()))?;
            }
            notified.await;
        }
    }

    async fn load(
        self: Arc<Self>,
        name: &str,
        size: u64,
        keep_alive: KeepAlive,
        started: Instant,
    ) -> Result<Lease, AcquireError> {
        let allocate = tokio::task::spawn_blocking(move || allocate_resident(size));
        let (block, ()) = tokio::join!(allocate, tokio::time::sleep(self.load_time));
        let block = block.map_err(|e| e.to_string()).and_then(|result| result);
        let mut entries = self.lock();
        let entry = entries
            .iter_mut()
            .find(|e| e.name == name)
            .expect("declared models never go away");
        let lease = match block {
            Ok(block) => {
                entry.slot = Slot::Loaded { _block: block };
                entry.loads += 1;
                eprintln!("modelyard-sim: loaded {name} ({size} bytes)");
                Ok(self.lease(entry, keep_alive, started, false))
            }
            Err(e) => {
                entry.slot = Slot::Unloaded;
                Err(AcquireError::LoadFailed(e))
            }
        };
        drop(entries);
        self.changed.notify_waiters();
        lease
    }

    fn lease(
        self: &Arc<Self>,
        entry: &mut Entry,
        keep_alive: KeepAlive,
        started: Instant,
        was_loaded: bool,
    ) -> Lease {
        entry.in_flight += 1;
        entry.epoch += 1;
        entry.keep_alive = keep_alive;
        entry.last_used = Some(Instant::now());
        entry.last_access = Some(SystemTime::now());
        entry.expires_at = Some(expiry(keep_alive));
        Lease {
            pool: Arc::clone(self),
            name: entry.name.clone(),
            load_duration: if was_loaded {
                Duration::ZERO
            } else {
                started.elapsed()
            },
            was_loaded,
            abort: entry.abort.subscribe(),
        }
    }

    /// Unloads idle models until `index` may load: `Ok(false)` means wait
    /// for a busy model to finish.
    fn make_room(&self, entries: &mut [Entry], index: usize) -> Result<bool, AcquireError> {
        loop {
            let fits = match self.eviction {
                Eviction::MaxLoaded(max) => {
                    entries.iter().filter(|e| e.occupies()).count() < max.max(1)
                }
                Eviction::Ceiling(None) => true,
                Eviction::Ceiling(Some(ceiling)) => {
                    let used: u64 = entries
                        .iter()
                        .filter(|e| e.occupies())
                        .map(|e| e.size)
                        .sum();
                    used.saturating_add(entries[index].size) <= ceiling
                }
            };
            if fits {
                return Ok(true);
            }
            let victim = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.is_loaded() && e.in_flight == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match (victim, self.eviction) {
                (Some(victim), _) => {
                    eprintln!(
                        "modelyard-sim: evicting {} to load {}",
                        entries[victim].name, entries[index].name
                    );
                    entries[victim].free();
                }
                (None, Eviction::MaxLoaded(_)) => return Ok(false),
                (None, Eviction::Ceiling(ceiling)) => {
                    let used: u64 = entries
                        .iter()
                        .filter(|e| e.occupies())
                        .map(|e| e.size)
                        .sum();
                    return Err(AcquireError::Insufficient(format!(
                        "Insufficient memory to load {}: needs {} bytes, {} bytes in use by busy models, ceiling {} bytes",
                        entries[index].name,
                        entries[index].size,
                        used,
                        ceiling.unwrap_or(u64::MAX)
                    )));
                }
            }
        }
    }

    /// Unloads at once, aborting requests in flight on the model (oMLX).
    pub fn unload_now(&self, name: &str) -> Result<(), UnloadError> {
        let name = &*self.naming.canonical(name);
        let mut entries = self.lock();
        let entry = entries
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or(UnloadError::Unknown)?;
        if !entry.is_loaded() {
            return Err(UnloadError::NotLoaded);
        }
        entry.free();
        drop(entries);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Asks for an unload as soon as the model is idle, after the unload
    /// delay (Ollama's `keep_alive: 0`). Returns whether the model is known.
    pub fn expire(self: &Arc<Self>, name: &str) -> bool {
        let name = &*self.naming.canonical(name);
        let mut entries = self.lock();
        let Some(entry) = entries.iter_mut().find(|e| e.name == name) else {
            return false;
        };
        entry.keep_alive = KeepAlive::For(Duration::ZERO);
        if entry.is_loaded() && entry.in_flight == 0 {
            self.arm_expiry(entry);
        }
        true
    }

    /// Starts the idle countdown of a model with nothing in flight.
    fn arm_expiry(self: &Arc<Self>, entry: &mut Entry) {
        entry.epoch += 1;
        entry.expires_at = Some(expiry(entry.keep_alive));
        let wait = match entry.keep_alive {
            KeepAlive::Forever => return,
            KeepAlive::For(d) if d.is_zero() => self.unload_delay,
            KeepAlive::For(d) => d,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::clone(self);
        let (name, epoch) = (entry.name.clone(), entry.epoch);
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            let mut entries = pool.lock();
            if let Some(entry) = entries.iter_mut().find(|e| e.name == name) {
                if entry.epoch == epoch && entry.in_flight == 0 && entry.is_loaded() {
                    entry.free();
                }
            }
            drop(entries);
            pool.changed.notify_waiters();
        });
    }

    fn release(self: &Arc<Self>, name: &str) {
        let mut entries = self.lock();
        if let Some(entry) = entries.iter_mut().find(|e| e.name == name) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.last_used = Some(Instant::now());
            if entry.in_flight == 0 && entry.is_loaded() {
                self.arm_expiry(entry);
            }
        }
        drop(entries);
        self.changed.notify_waiters();
    }
}

fn expiry(keep_alive: KeepAlive) -> SystemTime {
    SystemTime::now()
        + match keep_alive {
            KeepAlive::Forever => FOREVER,
            KeepAlive::For(d) => d,
        }
}

/// One request's hold on a loaded model: while any lease lives the model
/// is busy, so neither eviction nor keep-alive expiry may take it.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    name: String,
    /// Time this request spent waiting for the model to load.
    pub load_duration: Duration,
    pub was_loaded: bool,
    abort: watch::Receiver<u64>,
}

impl Lease {
    /// Changes when the model is unloaded under the request.
    pub fn abort_signal(&self) -> watch::Receiver<u64> {
        self.abort.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(eviction: Eviction) -> Arc<Pool> {
        Pool::new(
            vec![("a".into(), 10), ("b".into(), 20), ("c".into(), 30)],
            Duration::ZERO,
            eviction,
            Duration::from_millis(1),
            Naming::Exact,
        )
    }

    fn loaded(pool: &Pool) -> Vec<String> {
        pool.models()
            .into_iter()
            .filter(|m| m.loaded)
            .map(|m| m.name)
            .collect()
    }

    #[tokio::test]
    async fn max_loaded_evicts_least_recently_used_idle() {
        let pool = pool(Eviction::MaxLoaded(2));
        drop(pool.acquire("a", KeepAlive::Forever).await.unwrap());
        let b = pool.acquire("b", KeepAlive::Forever).await.unwrap();
        assert!(!b.was_loaded);
        drop(b);
        let a = pool.acquire("a", KeepAlive::Forever).await.unwrap();
        assert!(a.was_loaded);
        drop(a);
        // b is now the least recently used.
        drop(pool.acquire("c", KeepAlive::Forever).await.unwrap());
        assert_eq!(loaded(&pool), ["a", "c"]);
        assert_eq!(pool.stats()["unloads"]["b"], 1);
        assert_eq!(pool.stats()["loads"]["a"], 1);
    }

    #[tokio::test]
    async fn ceiling_fails_when_busy_models_fill_it() {
        let pool = pool(Eviction::Ceiling(Some(45)));
        let a = pool.acquire("a", KeepAlive::Forever).await.unwrap();
        drop(pool.acquire("b", KeepAlive::Forever).await.unwrap());
        // a is busy, b idle: b goes, and a+c fit.
        let c = pool.acquire("c", KeepAlive::Forever).await.unwrap();
        assert_eq!(loaded(&pool), ["a", "c"]);
        assert!(matches!(
            pool.acquire("b", KeepAlive::Forever).await,
            Err(AcquireError::Insufficient(_))
        ));
        assert!(matches!(
            pool.acquire("x", KeepAlive::Forever).await,
            Err(AcquireError::Unknown)
        ));
        drop((a, c));
        assert_eq!(pool.unload_now("a"), Ok(()));
        assert_eq!(pool.unload_now("a"), Err(UnloadError::NotLoaded));
        assert_eq!(pool.memory_in_use(), 30);
    }

    #[tokio::test]
    async fn zero_keep_alive_unloads_after_the_last_request() {
        let pool = pool(Eviction::MaxLoaded(3));
        let lease = pool
            .acquire("a", KeepAlive::For(Duration::ZERO))
            .await
            .unwrap();
        assert!(pool.expire("a"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(loaded(&pool), ["a"], "busy models wait");
        drop(lease);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(loaded(&pool).is_empty());
    }
}
