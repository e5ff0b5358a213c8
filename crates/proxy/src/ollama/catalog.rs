//! What Ollama clients ask about models: `/api/tags` (all of them), `/api/ps`
//! (those in memory), `/api/show` (one), `/api/version`. All answered from the
//! router's config and ledger, whatever the backend; nothing is sent upstream.

use std::time::{Duration, SystemTime};

use modelyard_config::{BackendKind, Config};
use modelyard_supervisor::{policy::Phase, Snapshot};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::learned::{self, Facts, Learned};

/// The Ollama release whose API this front follows: `docs/BACKENDS.md` §3 was
/// read from ollama v0.33.0-rc2, and every shape here is that one's. Clients
/// compare this against a minimum (Open WebUI, the `ollama` CLI warn or turn
/// features off for old servers), so it must be a real release, not ours.
pub const OLLAMA_VERSION: &str = "0.33.0";

/// Go's longest Duration (~292 years): what Ollama adds to now for "forever".
const FOREVER: Duration = Duration::from_secs(292 * 365 * 86_400);

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A stable, digest-shaped id (64 hex digits) for a configured model. Ollama's is
/// the sha256 of the model's manifest; clients use it only to tell models apart
/// (and to see that two names are the same model), which a hash of the name does.
pub fn digest(model: &str) -> String {
    (0..4u64)
        .map(|lane| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ lane.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in model.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            format!("{h:016x}")
        })
        .collect()
}

/// `details`: what the config tells; empty strings where it does not.
fn details(config: &Config, model: &str) -> Value {
    let format = config
        .models
        .get(model)
        .and_then(|m| config.backends.get(&m.backend))
        .map_or("", |b| match b.kind {
            BackendKind::Ollama => "gguf",
            BackendKind::Omlx => "mlx",
            _ => "",
        });
    json!({
        "parent_model": "",
        "format": format,
        "family": "",
        "families": null,
        "parameter_size": "",
        "quantization_level": "",
    })
}

fn declared(config: &Config, model: &str) -> u64 {
    config
        .models
        .get(model)
        .and_then(|m| m.memory)
        .map_or(0, |s| s.bytes())
}

/// `GET /api/tags`: every model, and each alias as an entry of its own with the
/// model's digest — as `ollama cp` makes a second name for the same model. Every
/// name listed is one the router accepts in `model`.
pub fn tags(config: &Config, known: &Learned, modified: SystemTime) -> Value {
    let modified_at = rfc3339(modified);
    let models: Vec<Value> = config
        .models
        .iter()
        .flat_map(|(name, m)| {
            std::iter::once(name.as_str())
                .chain(m.aliases.iter().map(String::as_str))
                .map(move |n| (n, name.as_str()))
        })
        .map(|(listed, model)| {
            json!({
                "name": listed,
                "model": listed,
                "modified_at": modified_at,
                "size": declared(config, model),
                "digest": digest(model),
                "details": known
                    .get(model)
                    .and_then(|f| f.details)
                    .unwrap_or_else(|| details(config, model)),
                "capabilities": learned::capabilities(config, known, model),
            })
        })
        .collect();
    json!({ "models": models })
}

/// `GET /api/ps`: the models holding memory now (ready, or finishing before they
/// go). Models on a server the router only points at hold none of its budget and
/// are always "ready"; what that server has loaded the router does not know.
pub fn ps(config: &Config, snap: &Snapshot, now: SystemTime) -> Value {
    let mut loaded: Vec<(SystemTime, Value)> = snap
        .models
        .iter()
        .filter(|m| matches!(m.phase, Phase::Ready | Phase::Draining) && m.reserved > 0)
        .map(|m| {
            // In use, pinned or `never`: no unload is scheduled.
            let expires = now + m.idle_unload_in.unwrap_or(FOREVER);
            let size = m.measured.unwrap_or(m.declared);
            let entry = json!({
                "name": m.name,
                "model": m.name,
                "size": size,
                // Apple silicon's memory is unified: what the model holds, the GPU can use.
                "size_vram": size,
                "digest": digest(&m.name),
                "details": details(config, &m.name),
                "expires_at": rfc3339(expires),
            });
            (expires, entry)
        })
        .collect();
    // Ollama's order: latest expiry first.
    loaded.sort_by_key(|(expires, _)| std::cmp::Reverse(*expires));
    json!({ "models": loaded.into_iter().map(|(_, v)| v).collect::<Vec<_>>() })
}

/// `POST /api/show` for a configured name (or alias), with what its backend
/// said of it (`facts`) where routes.yaml does not say.
pub fn show(
    config: &Config,
    known: &Learned,
    name: &str,
    facts: Option<&Facts>,
    modified: SystemTime,
) -> Result<Value, ApiError> {
    let model = super::resolve(config, name)?;
    let entry = config.models.get(&model);
    let upstream = entry.map_or(model.as_str(), |m| m.upstream_name(&model));
    let capabilities = learned::capabilities(config, known, &model);
    let mut model_info = json!({"general.architecture": "", "general.basename": upstream});
    let context = entry
        .and_then(|m| m.context)
        .or_else(|| facts.and_then(|f| f.context));
    if let Some(n) = context {
        // Clients look for a key ending in `.context_length`.
        model_info["modelyard.context_length"] = json!(n);
    }
    Ok(json!({
        "license": "",
        "modelfile": format!("# served by modelyard as {model}\nFROM {upstream}\n"),
        "parameters": "",
        "template": "",
        "details": facts
            .and_then(|f| f.details.clone())
            .unwrap_or_else(|| details(config, &model)),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": rfc3339(modified),
    }))
}

pub fn version() -> Value {
    json!({ "version": OLLAMA_VERSION })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        modelyard_config::load_str(
            "t",
            "backends: {o: {kind: ollama, url: \"http://127.0.0.1:1\"}, a: {url: \"http://127.0.0.1:2\"}}\n\
             models:\n  alpha: {backend: a, memory: 1MB, aliases: [first]}\n  emb: {backend: o, upstream: \"nomic:latest\", memory: 2GB}\n",
        )
        .unwrap()
        .config
    }

    #[test]
    fn tags_list_models_and_aliases_with_shared_digests() {
        let v = tags(&config(), &Learned::default(), SystemTime::UNIX_EPOCH);
        let names: Vec<&str> = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["alpha", "first", "emb"]);
        let m = &v["models"];
        assert_eq!(m[0]["digest"], m[1]["digest"], "an alias is the same model");
        assert_ne!(m[0]["digest"], m[2]["digest"]);
        assert_eq!(m[0]["digest"].as_str().unwrap().len(), 64);
        assert_eq!(m[0]["size"], 1_000_000);
        assert_eq!(m[2]["size"], 2_000_000_000u64);
        assert_eq!(m[2]["details"]["format"], "gguf");
        assert_eq!(m[0]["modified_at"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn show_knows_aliases_and_refuses_strangers() {
        let known = Learned::default();
        let v = show(&config(), &known, "first", None, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(v["capabilities"], json!(["completion"]));
        let e = show(&config(), &known, "alpah", None, SystemTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(e.status(), 404);
        assert_eq!(
            e.message(crate::error::Dialect::Ollama),
            "model 'alpah' not found; did you mean `alpha`?"
        );
    }

    #[test]
    fn digest_is_stable() {
        assert_eq!(digest("alpha"), digest("alpha"));
        assert!(digest("alpha").chars().all(|c| c.is_ascii_hexdigit()));
    }
}
