//! One adapter per backend kind, chosen by `kind:` in routes.yaml: how to start
//! its server so that its own scheduler stays out of the ledger's way, and how to
//! load, unload and list its models through its own API. See docs/backends/.

mod apfel;
mod ollama;
mod omlx;
mod remote;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use modelyard_config::BackendKind;

pub(crate) use modelyard_http::Http;

use crate::process::Spec;

pub(crate) type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One model on one server, for a load or an unload.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The server's base URL, e.g. `http://127.0.0.1:8000`.
    pub base: String,
    /// The name the server knows the model by.
    pub upstream: String,
    pub api_key: Option<String>,
    /// How long the whole operation may take.
    pub limit: Duration,
}

/// Where and how to ask a running server about itself.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    pub base: String,
    pub health: String,
    pub api_key: Option<String>,
}

/// A server's own account of itself, polled while it runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    /// The models it holds now, with their size where it says (None: it cannot tell).
    pub resident: Option<Vec<Resident>>,
    /// The most tokens one request may carry, where the server says.
    pub context_window: Option<u32>,
    /// The model names it serves, where it lists them (another machine's).
    pub listed: Option<Vec<String>>,
}

impl Report {
    /// What a server that hosts many models says it holds.
    fn holding(resident: Vec<Resident>) -> Report {
        Report {
            resident: Some(resident),
            ..Report::default()
        }
    }
}

/// GETs the server's health path, which must answer 2xx.
async fn healthy(http: &Http, p: &Probe) -> Result<modelyard_http::Answer, String> {
    let a = http
        .get(
            &format!("{}{}", p.base, p.health),
            p.api_key.as_deref(),
            POLL_LIMIT,
        )
        .await
        .map_err(|e| e.to_string())?;
    if !a.status.is_success() {
        return Err(format!("{} answered {}", p.health, a.status));
    }
    Ok(a)
}

#[derive(Clone, Debug)]
pub(crate) struct Resident {
    pub name: String,
    pub bytes: Option<u64>,
}

/// What an adapter may add to a server's command and environment.
pub(crate) struct Prepare {
    pub port: String,
    pub budget: Option<u64>,
    /// How many configured models the server hosts.
    pub models: usize,
    /// Where it keeps its KV cache on disk, if routes.yaml says to.
    pub kv_cache: Option<crate::kv_cache::Place>,
}

/// What differs between kinds of server. Whether a kind loads models one by one
/// is `BackendKind::loads_models`; those kinds implement `load` and `unload`.
pub(crate) trait Adapter: Sync {
    /// Settings that make the server listen where the router expects and leave
    /// eviction to the router. The user's own settings win.
    fn prepare(&self, _spec: &mut Spec, _ctx: &Prepare) {}

    /// The upstream name when routes.yaml gives none.
    fn default_upstream(&self) -> Option<&'static str> {
        None
    }

    /// Loads the model; returns once the server says it is loaded.
    fn load(&self, _http: Http, _target: Target) -> Pending<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Unloads the model; returns once the server says its memory is back.
    fn unload(&self, _http: Http, _target: Target) -> Pending<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// What the server reports of itself; an error if it does not answer.
    fn report(&self, http: Http, p: Probe) -> Pending<Result<Report, String>> {
        Box::pin(async move {
            healthy(&http, &p).await?;
            Ok(Report::default())
        })
    }
}

/// How long one status poll may take.
pub(crate) const POLL_LIMIT: Duration = Duration::from_secs(3);

/// How often an unload is checked for having really freed the memory.
const CONFIRM_EVERY: Duration = Duration::from_millis(100);

pub(crate) fn adapter(kind: BackendKind) -> &'static dyn Adapter {
    match kind {
        BackendKind::Openai => &Openai,
        BackendKind::Omlx => &omlx::Omlx,
        BackendKind::Ollama => &ollama::Ollama,
        BackendKind::Apfel => &apfel::Apfel,
        BackendKind::Remote => &remote::Remote,
    }
}

/// Any OpenAI-compatible server (llama.cpp's llama-server, mlx_lm.server, vLLM):
/// one model per process, there while the process runs. With `kv_cache` it is
/// llama.cpp's, told where its slots are saved and restored.
struct Openai;
impl Adapter for Openai {
    fn prepare(&self, spec: &mut Spec, ctx: &Prepare) {
        if let Some(place) = &ctx.kv_cache {
            // llama.cpp joins this and the file name without a separator.
            let dir = format!("{}/", place.dir.display().to_string().trim_end_matches('/'));
            spec.argv.extend(["--slot-save-path".into(), dir]);
        }
    }
}

/// Sets `key` in the child's environment unless routes.yaml already does.
fn default_env(spec: &mut Spec, key: &str, value: impl Into<String>) {
    if !spec.env.iter().any(|(k, _)| k == key) {
        spec.env.push((key.to_string(), value.into()));
    }
}

/// Whether a server's name for a model is the one routes.yaml gives (Ollama adds
/// `:latest` to a name without a tag).
pub(crate) fn same_model(listed: &str, upstream: &str) -> bool {
    listed == upstream
        || (!upstream.contains(':') && listed.strip_suffix(":latest") == Some(upstream))
}

/// Polls `gone` until it says the model is gone, within `limit`.
async fn confirm<F, Fut>(limit: Duration, what: &str, mut gone: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match gone().await {
            Ok(true) => return Ok(()),
            Ok(false) => format!("{what} still listed it"),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + CONFIRM_EVERY > deadline {
            return Err(format!(
                "unload not confirmed within {}s: {last}",
                limit.as_secs_f64()
            ));
        }
        tokio::time::sleep(CONFIRM_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_names_match_with_or_without_the_latest_tag() {
        assert!(same_model("bge-m3:latest", "bge-m3"));
        assert!(same_model("qwen3:8b", "qwen3:8b"));
        assert!(!same_model("qwen3:8b", "qwen3"));
        assert!(!same_model("qwen3:4b", "qwen3:8b"));
    }

    #[test]
    fn routes_yaml_env_wins_over_adapter_defaults() {
        let mut spec = Spec {
            name: "o".into(),
            argv: vec!["ollama".into(), "serve".into()],
            env: vec![("OLLAMA_KEEP_ALIVE".into(), "10m".into())],
            stop_timeout: Duration::from_secs(1),
        };
        let ctx = Prepare {
            port: "4321".into(),
            budget: None,
            models: 2,
            kv_cache: None,
        };
        adapter(BackendKind::Ollama).prepare(&mut spec, &ctx);
        let env: std::collections::HashMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["OLLAMA_KEEP_ALIVE"], "10m");
        assert_eq!(env["OLLAMA_HOST"], "127.0.0.1:4321");
        assert_eq!(env["OLLAMA_MAX_LOADED_MODELS"], "2");
    }

    #[test]
    fn omlx_gets_a_memory_ceiling_at_the_budget_unless_the_command_sets_one() {
        let spec = |argv: &[&str]| Spec {
            name: "o".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            stop_timeout: Duration::from_secs(1),
        };
        let ctx = Prepare {
            port: "8000".into(),
            budget: Some(48_000_000_000),
            models: 3,
            kv_cache: None,
        };
        let mut s = spec(&["omlx", "serve"]);
        adapter(BackendKind::Omlx).prepare(&mut s, &ctx);
        // Read as decimal or binary GB, 48 is at or above the 48 GB budget.
        assert_eq!(s.argv[2..], ["--memory-guard-gb", "48"]);
        let mut s = spec(&["omlx", "serve", "--memory-guard", "safe"]);
        adapter(BackendKind::Omlx).prepare(&mut s, &ctx);
        assert_eq!(s.argv.len(), 4);
    }

    fn kv_place() -> crate::kv_cache::Place {
        crate::kv_cache::Place {
            root: "/cache/kv".into(),
            dir: "/cache/kv/llama_smol-1234abcd".into(),
            max: 20_000_000_000,
        }
    }

    #[test]
    fn a_llama_server_with_kv_cache_gets_its_own_slot_save_path_ending_in_a_slash() {
        let mut spec = Spec {
            name: "llama/smol".into(),
            argv: vec!["llama-server".into(), "--port".into(), "9".into()],
            env: vec![],
            stop_timeout: Duration::from_secs(1),
        };
        let mut ctx = Prepare {
            port: "9".into(),
            budget: None,
            models: 1,
            kv_cache: None,
        };
        adapter(BackendKind::Openai).prepare(&mut spec, &ctx);
        assert_eq!(spec.argv.len(), 3, "without kv_cache nothing is added");
        ctx.kv_cache = Some(kv_place());
        adapter(BackendKind::Openai).prepare(&mut spec, &ctx);
        assert_eq!(
            spec.argv[3..],
            ["--slot-save-path", "/cache/kv/llama_smol-1234abcd/"]
        );
    }

    #[test]
    fn omlx_with_kv_cache_keeps_its_ssd_cache_in_the_cache_dir_unless_env_says_otherwise() {
        let spec = |env: Vec<(String, String)>| Spec {
            name: "omlx".into(),
            argv: vec!["omlx".into(), "serve".into()],
            env,
            stop_timeout: Duration::from_secs(1),
        };
        let ctx = Prepare {
            port: "8000".into(),
            budget: None,
            models: 3,
            kv_cache: Some(kv_place()),
        };
        let mut s = spec(vec![]);
        adapter(BackendKind::Omlx).prepare(&mut s, &ctx);
        let env: std::collections::HashMap<_, _> = s.env.into_iter().collect();
        assert_eq!(env["OMLX_SSD_CACHE_DIR"], "/cache/kv/llama_smol-1234abcd");
        assert_eq!(env["OMLX_SSD_CACHE_MAX_SIZE"], "20GB");
        let mut s = spec(vec![("OMLX_SSD_CACHE_DIR".into(), "/fast/ssd".into())]);
        adapter(BackendKind::Omlx).prepare(&mut s, &ctx);
        let env: std::collections::HashMap<_, _> = s.env.into_iter().collect();
        assert_eq!(
            env["OMLX_SSD_CACHE_DIR"], "/fast/ssd",
            "routes.yaml's env wins"
        );
    }
}
