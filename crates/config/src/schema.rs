//! The shape of routes.yaml. Every struct refuses unknown keys: a typo must be an
//! error that names the key, never a setting silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::size::ByteSize;
use crate::timeout::{span, Timeout};
use crate::{count, listen};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the router listens; loopback by default.
    #[serde(default = "defaults::listen", with = "listen")]
    pub listen: SocketAddr,
    /// What models may hold together. Absent: no limit.
    #[serde(default)]
    pub budget: Option<ByteSize>,
    /// Memory kept for the system and other apps: when set, the budget also
    /// follows the machine, min(budget, available now + what our models hold − reserve).
    #[serde(default)]
    pub reserve: Option<ByteSize>,
    /// Default for every model; `never` keeps models loaded.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Timeout,
    /// How long a request may wait for its model to start or for memory.
    #[serde(default = "defaults::queue_timeout", with = "span")]
    pub queue_timeout: Duration,
    /// How long a swap may be put off while the model being unloaded still serves
    /// requests for itself, so interleaved requests do not swap back and forth.
    #[serde(default = "defaults::max_swap_delay", with = "span")]
    pub max_swap_delay: Duration,
    /// How long after its last interactive request a model is still counted
    /// as someone's: background work may not evict it until then.
    #[serde(default = "defaults::interactive_grace", with = "span")]
    pub interactive_grace: Duration,
    /// How long a background request may wait for interactive work to be done
    /// with the machine before it gets a 503 (`yielded_to_interactive`).
    #[serde(default = "defaults::background_queue_timeout", with = "span")]
    pub background_queue_timeout: Duration,
    /// Client keys whose requests are background work unless their
    /// `x-modelyard-priority` header says otherwise (a notes app's indexer).
    #[serde(default)]
    pub background_keys: Vec<String>,
    /// How long a backend may go silent in the middle of a response.
    #[serde(default = "defaults::upstream_idle_timeout")]
    pub upstream_idle_timeout: Timeout,
    /// What a streamed request hears while its model loads.
    #[serde(default)]
    pub loading_progress: LoadingProgress,
    /// How long a streamed request waits for its model before the router
    /// commits a 200 and sends progress; a failure sooner keeps its status.
    #[serde(default = "defaults::progress_after", with = "span")]
    pub progress_after: Duration,
    /// Requests that may wait at once, across all models.
    #[serde(default = "defaults::max_queue", with = "count")]
    pub max_queue: usize,
    /// Largest request body accepted.
    #[serde(default = "defaults::max_body")]
    pub max_body: ByteSize,
    /// `max_body` for particular request paths (`/v1/embeddings: 64MiB`), so
    /// batches of embeddings and chats can differ.
    #[serde(default)]
    pub max_body_by_path: BTreeMap<String, ByteSize>,
    /// How deeply a request's JSON may nest; checked on the bytes before parsing.
    #[serde(default = "defaults::max_json_depth", with = "count")]
    pub max_json_depth: usize,
    /// Headers a request may carry.
    #[serde(default = "defaults::max_headers", with = "count")]
    pub max_headers: usize,
    /// Bytes all of a request's header lines may take together.
    #[serde(default = "defaults::max_header_size")]
    pub max_header_size: ByteSize,
    /// Bytes of a request's path and query.
    #[serde(default = "defaults::max_uri_length")]
    pub max_uri_length: ByteSize,
    /// How long a client may take to send a request's headers, and how long an
    /// idle connection stays open.
    #[serde(default = "defaults::header_timeout", with = "span")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    #[serde(default = "defaults::body_timeout", with = "span")]
    pub body_timeout: Duration,
    /// A client connection with no request in flight for this long is closed
    /// (HTTP/2 with a GOAWAY).
    #[serde(default = "defaults::idle_connection_timeout", with = "span")]
    pub idle_connection_timeout: Duration,
    /// Client connections open at once; past it a new one gets 503 and is closed.
    #[serde(default = "defaults::max_connections", with = "count")]
    pub max_connections: usize,
    /// How long connecting to a backend may take.
    #[serde(default = "defaults::upstream_connect_timeout", with = "span")]
    pub upstream_connect_timeout: Duration,
    /// How long an unused connection to a backend is kept for the next request.
    #[serde(default = "defaults::upstream_pool_idle", with = "span")]
    pub upstream_pool_idle: Duration,
    /// Largest backend reply the router reads whole (non-streamed JSON).
    #[serde(default = "defaults::max_response")]
    pub max_response: ByteSize,
    /// How long a backend may take to send response headers.
    #[serde(default = "defaults::upstream_timeout")]
    pub upstream_timeout: Timeout,
    /// Listening on a non-loopback address must be meant: it makes every model
    /// reachable from other machines.
    #[serde(default)]
    pub expose: bool,
    /// Host names (beyond loopback names and IP addresses) that requests may name
    /// in `Host`; anything else is refused as DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example`) allowed to call the router, with CORS.
    /// Pages the router serves itself are always allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Required (as `Authorization: Bearer …`) by mutating admin calls when set.
    #[serde(default)]
    pub admin_key: Option<String>,
    /// Keys clients must send (`Authorization: Bearer …` or `x-api-key`) to use the
    /// model APIs; none: open. Prefer `api_keys_file` or MODELYARD_API_KEYS.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// A file of client keys, one per line (`#` starts a comment).
    #[serde(default)]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Every client key, from `api_keys` and `api_keys_file`, filled in on load.
    #[serde(skip)]
    pub client_keys: Vec<String>,
    /// Allow mutating admin calls from peers other than loopback.
    #[serde(default)]
    pub admin_remote: bool,
    /// Models (or aliases) loaded in the background when the router starts, and
    /// when a reload adds them; they then idle out like any other unless pinned.
    #[serde(default)]
    pub preload: Vec<String>,
    /// Where the router records the backend processes it started, so a later run
    /// can end any that outlived it. Default: the user's state dir.
    #[serde(default)]
    pub state_file: Option<std::path::PathBuf>,
    /// A record of every model request (SQLite), or `off`. Default: on, in the
    /// user's data dir, 30 days, 100 MB, no bodies.
    #[serde(default)]
    pub request_log: crate::RequestLog,
    #[serde(default)]
    pub backends: BTreeMap<String, Backend>,
    #[serde(default)]
    pub models: BTreeMap<String, Model>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum LoadingProgress {
    /// SSE comments: keep the connection alive, invisible to clients.
    #[default]
    Comments,
    /// Also a `reasoning_content` delta saying what loads, for chat clients that show it.
    Reasoning,
    /// Wait silently.
    Off,
}

/// Whose wait counts: a person's (`interactive`) or a job's (`background`),
/// which never makes a person wait for a swap.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Interactive,
    Background,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Background => "background",
        }
    }

    /// A header's value (`x-modelyard-priority`), case-insensitive.
    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "interactive" => Some(Priority::Interactive),
            "background" => Some(Priority::Background),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Any OpenAI-compatible server; with a `command`, one process per model.
    #[default]
    Openai,
    /// One oMLX server hosting many models.
    Omlx,
    /// One Ollama server hosting many models.
    Ollama,
    /// Apple's on-device model through `apfel --serve`.
    Apfel,
    /// Another machine's server: no lifecycle.
    Remote,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Openai => "openai",
            BackendKind::Omlx => "omlx",
            BackendKind::Ollama => "ollama",
            BackendKind::Apfel => "apfel",
            BackendKind::Remote => "remote",
        }
    }

    /// Whether each model of such a backend gets a process of its own.
    pub fn process_per_model(self) -> bool {
        matches!(self, BackendKind::Openai)
    }

    /// Whether the server loads and unloads models one by one through its API.
    pub fn loads_models(self) -> bool {
        matches!(self, BackendKind::Omlx | BackendKind::Ollama)
    }

    /// Whether the router tells the server its port (through its environment), so
    /// the command needs no `${PORT}`.
    pub fn port_from_env(self) -> bool {
        matches!(
            self,
            BackendKind::Omlx | BackendKind::Ollama | BackendKind::Apfel
        )
    }
}

impl Backend {
    /// Whether its models' memory is ours to count: the router starts the server,
    /// or loads and unloads its models. Not so for another machine, nor for a
    /// server someone else runs with its model always loaded.
    pub fn counts_memory(&self) -> bool {
        self.command.is_some() || self.kind.loads_models()
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    #[serde(default)]
    pub kind: BackendKind,
    /// argv of the server; `${PORT}` becomes a free port, `${MODEL}` the upstream name.
    #[serde(default, deserialize_with = "crate::argv::optional::deserialize")]
    pub command: Option<Vec<String>>,
    /// Where the server listens, for one the router does not start or one with a fixed port.
    #[serde(default)]
    pub url: Option<String>,
    /// Readiness probe; 200 means ready.
    #[serde(default = "defaults::health")]
    pub health: String,
    #[serde(default = "defaults::start_timeout", with = "span")]
    pub start_timeout: Duration,
    #[serde(default = "defaults::stop_timeout", with = "span")]
    pub stop_timeout: Duration,
    /// Sent upstream as `Authorization: Bearer …`; never shown to clients.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Extra environment for the process; `${PORT}` is filled in here too.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Memory the server holds by itself, charged while its process runs.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// A tool used for one job and then put away (image, speech, video servers):
    /// its models' idle_timeout defaults to ONE_SHOT_IDLE instead of the top level's.
    #[serde(default)]
    pub one_shot: bool,
    /// Keep each model's KV cache on disk across unloads: llama.cpp's slots are
    /// saved before its server stops and restored after it starts again; oMLX is
    /// pointed at a persistent SSD cache directory. See docs/operations.md.
    #[serde(default)]
    pub kv_cache: Option<KvCache>,
}

/// Where and within what limits a backend's KV cache lives on disk.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KvCache {
    /// The directory (one subdirectory per model); default: the user's cache
    /// directory, `modelyard/kv-cache` in it.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
    /// The most all saved caches in `dir` may take; the least recently used go first.
    #[serde(default = "defaults::kv_max")]
    pub max: ByteSize,
    /// How long saving may hold up a stop; past it the server stops anyway.
    #[serde(default = "defaults::kv_timeout", with = "span")]
    pub save_timeout: Duration,
    /// How long restoring may hold up a start; past it the model serves without.
    #[serde(default = "defaults::kv_timeout", with = "span")]
    pub restore_timeout: Duration,
}

impl KvCache {
    /// `dir`, or the user's cache directory's `modelyard/kv-cache`.
    pub fn root(&self) -> Option<std::path::PathBuf> {
        self.dir
            .clone()
            .or_else(|| dirs::cache_dir().map(|d| d.join("modelyard").join("kv-cache")))
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub backend: String,
    /// The name the backend knows the model by; the model's own name by default.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// At most one model of a group is loaded at a time.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub idle_timeout: Option<Timeout>,
    /// Appended to the backend's command when each model runs its own process.
    #[serde(default, deserialize_with = "crate::argv::deserialize")]
    pub args: Vec<String>,
    /// Where requests this model cannot take go instead (apfel: past its context
    /// window, or with parameters it refuses).
    #[serde(default)]
    pub fallback: Option<String>,
    /// What the model can do, as Ollama's `/api/show` says it (clients such as
    /// Open WebUI and LangChain read it); guessed from the name when not given.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// The model's context window in tokens, when known.
    #[serde(default)]
    pub context: Option<u64>,
    /// The priority of its requests when neither their header nor their key
    /// says one: `background` for an embedding model used for indexing.
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// One thing a model can do, in Ollama's words.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Completion,
    Embedding,
    Tools,
    Vision,
    Thinking,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Completion => "completion",
            Capability::Embedding => "embedding",
            Capability::Tools => "tools",
            Capability::Vision => "vision",
            Capability::Thinking => "thinking",
        }
    }
}

impl Model {
    /// The capabilities routes.yaml declares, or, when it declares none, a
    /// guess from the names: embedding models are named so by convention
    /// (`nomic-embed-text`, `bge-m3`, `Qwen3-Embedding`), and such a model
    /// cannot complete.
    pub fn capabilities(&self, name: &str) -> Vec<Capability> {
        if !self.capabilities.is_empty() {
            return self.capabilities.clone();
        }
        let names = format!("{name} {}", self.upstream_name(name)).to_ascii_lowercase();
        if ["embed", "bge-", "minilm", "e5-"]
            .iter()
            .any(|k| names.contains(k))
        {
            vec![Capability::Embedding]
        } else {
            vec![Capability::Completion]
        }
    }

    pub fn upstream_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.upstream.as_deref().unwrap_or(name)
    }
}

mod defaults {
    use super::*;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 11434))
    }
    pub fn idle_timeout() -> Timeout {
        Timeout::After(Duration::from_secs(600))
    }
    pub fn queue_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn max_swap_delay() -> Duration {
        Duration::from_secs(10)
    }
    pub fn interactive_grace() -> Duration {
        Duration::from_secs(60)
    }
    pub fn background_queue_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn max_queue() -> usize {
        256
    }
    pub fn max_body() -> ByteSize {
        ByteSize(32 << 20)
    }
    pub fn max_json_depth() -> usize {
        64
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_header_size() -> ByteSize {
        ByteSize(64 << 10)
    }
    pub fn max_uri_length() -> ByteSize {
        ByteSize(8 << 10)
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn body_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_connections() -> usize {
        256
    }
    pub fn upstream_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn progress_after() -> Duration {
        Duration::from_secs(2)
    }
    pub fn idle_connection_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn upstream_pool_idle() -> Duration {
        Duration::from_secs(90)
    }
    pub fn max_response() -> ByteSize {
        ByteSize(128 << 20)
    }
    pub fn upstream_timeout() -> Timeout {
        Timeout::After(Duration::from_secs(600))
    }
    pub fn upstream_idle_timeout() -> Timeout {
        Timeout::After(Duration::from_secs(300))
    }
    pub fn health() -> String {
        "/health".into()
    }
    pub fn start_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn stop_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn kv_max() -> ByteSize {
        ByteSize(20_000_000_000)
    }
    pub fn kv_timeout() -> Duration {
        Duration::from_secs(5)
    }
}
