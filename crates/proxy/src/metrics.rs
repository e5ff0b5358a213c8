//! `GET /metrics`: what the router did, in Prometheus' text format. Request
//! metrics are recorded once per request, when its response ends; lifecycle
//! metrics come from the supervisor's events; the ledger is read at scrape time.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use modelyard_supervisor::{Event, Kind, KvCounts, Reason, Snapshot, Supervisor};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub model: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    pub model: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KvLabels {
    pub model: String,
    /// save or restore.
    pub op: &'static str,
}

/// The KV cache's counts, kept by the supervisor and brought up to date here at
/// each scrape (under the lock, so two scrapes cannot both add the same rise).
#[derive(Default)]
struct KvSeries {
    ops: Family<KvLabels, Counter>,
    failures: Family<ModelLabel, Counter>,
    bytes: Family<KvLabels, Counter>,
    restored_tokens: Family<ModelLabel, Counter>,
    /// From responses: what the backend's prompt cache (restored or not) saved.
    cached_tokens: Family<ModelLabel, Counter>,
    lock: std::sync::Mutex<()>,
}

impl KvSeries {
    fn follow(&self, kv: &std::collections::BTreeMap<String, KvCounts>) {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for (model, k) in kv {
            let by = |op| KvLabels {
                model: model.clone(),
                op,
            };
            raise_to(&self.ops.get_or_create(&by("save")), k.saves);
            raise_to(&self.ops.get_or_create(&by("restore")), k.restores);
            raise_to(&self.bytes.get_or_create(&by("save")), k.saved_bytes);
            raise_to(&self.bytes.get_or_create(&by("restore")), k.restored_bytes);
            raise_to(&self.failures.get_or_create(&label(model)), k.failures);
            raise_to(
                &self.restored_tokens.get_or_create(&label(model)),
                k.restored_tokens,
            );
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EvictionLabels {
    pub model: String,
    pub reason: &'static str,
}

type Histograms = Family<ModelLabel, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    // 1 ms to ~65 s: a cached reply to a long generation.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Brings a counter up to a total kept elsewhere (it only rises). The caller
/// holds a lock, or two scrapes could both add the same difference.
fn raise_to(c: &Counter, total: u64) {
    c.inc_by(total.saturating_sub(c.get()));
}

fn speed_buckets() -> Histogram {
    // 1 to ~4000 tokens/s: a 70B model on a laptop to a cached tiny one.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

fn load_buckets() -> Histogram {
    // 0.1 s to ~7 min: a small model to a 41 GB one from a cold disk.
    Histogram::new(exponential_buckets(0.1, 2.0, 13))
}

/// Handles on one model's series (each a shared reference into the registry).
#[derive(Default)]
struct PerModel {
    ok: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
    first_byte: OnceLock<Histogram>,
    queue_wait: OnceLock<Histogram>,
    prompt: OnceLock<Counter>,
    completion: OnceLock<Counter>,
    first_token: OnceLock<Histogram>,
    speed: OnceLock<Histogram>,
}

pub(crate) struct Metrics {
    registry: Registry,
    per_model: std::sync::RwLock<std::collections::HashMap<String, Arc<PerModel>>>,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms,
    first_byte: Histograms,
    first_token: Histograms,
    speed: Histograms,
    tokens: Family<TokenLabels, Counter>,
    log_written: Counter,
    log_dropped: Counter,
    queue_wait: Histograms,
    loads: Family<ModelLabel, Counter>,
    load_duration: Histograms,
    evictions: Family<EvictionLabels, Counter>,
    crashes: Family<ModelLabel, Counter>,
    budget: Gauge,
    used: Gauge,
    declared: Family<ModelLabel, Gauge>,
    measured: Family<ModelLabel, Gauge>,
    reserved: Family<ModelLabel, Gauge>,
    kv: Arc<KvSeries>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("modelyard");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            first_byte: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            first_token: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            speed: Family::new_with_constructor(speed_buckets as fn() -> Histogram),
            tokens: Family::default(),
            log_written: Counter::default(),
            log_dropped: Counter::default(),
            queue_wait: Family::new_with_constructor(load_buckets as fn() -> Histogram),
            loads: Family::default(),
            load_duration: Family::new_with_constructor(load_buckets as fn() -> Histogram),
            evictions: Family::default(),
            crashes: Family::default(),
            budget: Gauge::default(),
            used: Gauge::default(),
            declared: Family::default(),
            measured: Family::default(),
            reserved: Family::default(),
            kv: Arc::default(),
            registry: Registry::default(),
            per_model: Default::default(),
        };
        r.register(
            "requests",
            "Model requests by model and HTTP status",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from request to the end of the response",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "time_to_first_byte",
            "Time from request to the first byte of the response body",
            Unit::Seconds,
            m.first_byte.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "Time from request to the first byte of a streamed response (SSE or NDJSON)",
            Unit::Seconds,
            m.first_token.clone(),
        );
        r.register(
            "tokens_per_second",
            "Completion tokens per second of a streamed response, after its first token",
            m.speed.clone(),
        );
        r.register(
            "request_log_written",
            "Records written to the request log",
            m.log_written.clone(),
        );
        r.register(
            "request_log_dropped",
            "Records the request log dropped because its writer was behind",
            m.log_dropped.clone(),
        );
        r.register(
            "tokens",
            "Tokens reported in responses' usage, by kind (prompt, completion)",
            m.tokens.clone(),
        );
        r.register_with_unit(
            "queue_wait",
            "Time a request waited for its model to be ready",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        r.register("loads", "Model loads completed", m.loads.clone());
        r.register_with_unit(
            "load_duration",
            "Time from starting a model to ready",
            Unit::Seconds,
            m.load_duration.clone(),
        );
        r.register(
            "evictions",
            "Models unloaded, by reason (idle, keep_alive, make_room, memory_pressure, reload, manual)",
            m.evictions.clone(),
        );
        r.register(
            "backend_crashes",
            "Backends that exited unexpectedly; the next request restarts them",
            m.crashes.clone(),
        );
        r.register_with_unit("budget", "Memory budget", Unit::Bytes, m.budget.clone());
        r.register_with_unit(
            "ledger_used",
            "Memory reserved in the ledger",
            Unit::Bytes,
            m.used.clone(),
        );
        r.register_with_unit(
            "model_declared",
            "Memory a model declares in routes.yaml",
            Unit::Bytes,
            m.declared.clone(),
        );
        r.register_with_unit(
            "model_measured",
            "Resident memory of the process serving a model, last sampled",
            Unit::Bytes,
            m.measured.clone(),
        );
        r.register_with_unit(
            "model_reserved",
            "Memory reserved for a model now",
            Unit::Bytes,
            m.reserved.clone(),
        );
        r.register(
            "kv_cache_operations",
            "KV cache saves (before a server stops) and restores (after it starts) that succeeded",
            m.kv.ops.clone(),
        );
        r.register(
            "kv_cache_failures",
            "KV cache saves or restores that failed or timed out (the swap went on without them)",
            m.kv.failures.clone(),
        );
        r.register_with_unit(
            "kv_cache",
            "KV cache bytes written by saves and read by restores",
            Unit::Bytes,
            m.kv.bytes.clone(),
        );
        r.register(
            "kv_cache_restored_tokens",
            "Prompt tokens put back by restores, which the next turns need not prefill",
            m.kv.restored_tokens.clone(),
        );
        r.register(
            "prompt_cached_tokens",
            "Prompt tokens a backend took from its cache instead of evaluating them, as its replies say (llama.cpp's timings.cache_n)",
            m.kv.cached_tokens.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The model's series, looked up by name without building a label (a
    /// String) and hashing it for each of the five a request touches. Each
    /// series is still created on first use only, so /metrics shows the same.
    fn of(&self, model: &str) -> Arc<PerModel> {
        if let Some(m) = self
            .per_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
        {
            return m.clone();
        }
        let mut cache = self.per_model.write().unwrap_or_else(|e| e.into_inner());
        // Names come from the config (unknown ones are "-"), so this stays small.
        cache.entry(model.to_string()).or_default().clone()
    }

    pub fn request(&self, model: &str, status: u16, took: Duration) {
        let m = self.of(model);
        let count = |status| {
            self.requests
                .get_or_create(&RequestLabels {
                    model: model.to_string(),
                    status,
                })
                .clone()
        };
        if status == 200 {
            m.ok.get_or_init(|| count(200)).inc();
        } else {
            count(status).inc();
        }
        m.duration
            .get_or_init(|| self.duration.get_or_create(&label(model)).clone())
            .observe(took.as_secs_f64());
    }

    pub fn first_byte(&self, model: &str, after: Duration) {
        self.of(model)
            .first_byte
            .get_or_init(|| self.first_byte.get_or_create(&label(model)).clone())
            .observe(after.as_secs_f64());
    }

    pub fn tokens(&self, model: &str, prompt: u64, completion: u64) {
        let m = self.of(model);
        let token = |kind| {
            self.tokens
                .get_or_create(&TokenLabels {
                    model: model.to_string(),
                    kind,
                })
                .clone()
        };
        m.prompt.get_or_init(|| token("prompt")).inc_by(prompt);
        m.completion
            .get_or_init(|| token("completion"))
            .inc_by(completion);
    }

    pub fn cached_tokens(&self, model: &str, n: u64) {
        self.kv.cached_tokens.get_or_create(&label(model)).inc_by(n);
    }

    /// A streamed response's first token, and its tokens per second when its
    /// usage said how many.
    pub fn stream(&self, model: &str, first: Duration, speed: Option<f64>) {
        let m = self.of(model);
        m.first_token
            .get_or_init(|| self.first_token.get_or_create(&label(model)).clone())
            .observe(first.as_secs_f64());
        if let Some(s) = speed {
            m.speed
                .get_or_init(|| self.speed.get_or_create(&label(model)).clone())
                .observe(s);
        }
    }

    /// The request log's counts so far (they only rise).
    pub fn request_log(&self, written: u64, dropped: u64) {
        // One scrape at a time, or two could both add the same difference.
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        raise_to(&self.log_written, written);
        raise_to(&self.log_dropped, dropped);
    }

    pub fn queue_wait(&self, model: &str, waited: Duration) {
        self.of(model)
            .queue_wait
            .get_or_init(|| self.queue_wait.get_or_create(&label(model)).clone())
            .observe(waited.as_secs_f64());
    }

    fn event(&self, e: &Event) {
        match e.kind {
            Kind::Ready => {
                self.loads.get_or_create(&label(&e.model)).inc();
                let secs = e.load_ms.unwrap_or(0) as f64 / 1000.0;
                self.load_duration
                    .get_or_create(&label(&e.model))
                    .observe(secs);
            }
            Kind::Evicting => {
                // The supervisor says why; an event without a reason is none
                // of these (it should not happen) and is counted apart.
                let reason = e.reason.map_or("other", Reason::as_str);
                self.evictions
                    .get_or_create(&EvictionLabels {
                        model: e.model.clone(),
                        reason,
                    })
                    .inc();
            }
            Kind::Crashed => {
                self.crashes.get_or_create(&label(&e.model)).inc();
            }
            _ => {}
        }
    }

    /// The exposition, with the ledger as it is now.
    pub fn render(
        &self,
        snap: Option<&Snapshot>,
        kv: &std::collections::BTreeMap<String, KvCounts>,
    ) -> String {
        self.kv.follow(kv);
        if let Some(s) = snap {
            self.budget.set(i64::try_from(s.budget).unwrap_or(i64::MAX));
            self.used.set(s.used as i64);
            for m in &s.models {
                let l = label(&m.name);
                self.declared.get_or_create(&l).set(m.declared as i64);
                self.reserved.get_or_create(&l).set(m.reserved as i64);
                self.measured
                    .get_or_create(&l)
                    .set(m.measured.unwrap_or(0) as i64);
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        classic_text(&out)
    }
}

/// The crate writes OpenMetrics conventions; the classic format (0.0.4) that
/// Prometheus and its parsers read names a counter's HELP and TYPE after its
/// `_total` sample and has no UNIT lines. Without this, counters read as untyped.
fn classic_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn label(model: &str) -> ModelLabel {
    ModelLabel {
        model: model.to_string(),
    }
}

/// Counts lifecycle events for as long as the supervisor runs.
pub(crate) fn follow_events(metrics: Arc<Metrics>, supervisor: &Supervisor) {
    let mut rx = supervisor.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => metrics.event(&e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_typed_by_their_sample_name() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# HELP x_bytes Size.\n# TYPE x_bytes gauge\n# UNIT x_bytes bytes\nx_bytes 5\n# EOF\n";
        assert_eq!(
            super::classic_text(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n# HELP x_bytes Size.\n# TYPE x_bytes gauge\nx_bytes 5\n"
        );
    }

    #[test]
    fn kv_cache_counts_show_as_counters_that_follow_the_supervisor() {
        let m = super::Metrics::new();
        let mut kv = std::collections::BTreeMap::new();
        let mut c = modelyard_supervisor::KvCounts {
            saves: 1,
            saved_bytes: 72_000_000,
            ..Default::default()
        };
        kv.insert("smol".to_string(), c.clone());
        m.render(None, &kv);
        c.saves = 2;
        c.restores = 1;
        c.restored_tokens = 739;
        c.failures = 1;
        kv.insert("smol".to_string(), c);
        let out = m.render(None, &kv);
        for line in [
            "modelyard_kv_cache_operations_total{model=\"smol\",op=\"save\"} 2",
            "modelyard_kv_cache_operations_total{model=\"smol\",op=\"restore\"} 1",
            "modelyard_kv_cache_bytes_total{model=\"smol\",op=\"save\"} 72000000",
            "modelyard_kv_cache_failures_total{model=\"smol\"} 1",
            "modelyard_kv_cache_restored_tokens_total{model=\"smol\"} 739",
            "# TYPE modelyard_kv_cache_operations_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
    }
}
