//! What a backend says about a model it serves — capabilities, context window,
//! Ollama's `details` — asked once and kept, so `/api/show`, `/api/tags` and
//! `/v1/models` can tell clients the truth (Open WebUI hides the tool and image
//! buttons of a model that does not say `tools` or `vision`).
//!
//! Asked only where it is cheap: a model whose server is already running
//! (asking never starts one), on `/api/show`. An Ollama server answers its own
//! `/api/show`; llama.cpp's `llama-server` answers `/props` (its context size
//! and whether it takes images); oMLX's `/v1/models/status` says each model's
//! engine (vision, embedding, text) and context window. What routes.yaml declares always wins; a
//! guess from the name is the last resort ([`modelyard_config::Model::capabilities`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::BodyExt;
use modelyard_config::{BackendKind, Config};
use modelyard_supervisor::policy::Phase;
use serde_json::{json, Value};

use crate::client::Outgoing;
use crate::Inner;

/// How long one question may take; past it the model keeps its guessed facts
/// and the next `/api/show` asks again.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of a reply read: an `/api/show` carries the chat template and the
/// tokenizer's metadata, some hundreds of KiB.
const MAX_REPLY: usize = 8 << 20;

/// What a backend said about one model.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Facts {
    /// In Ollama's words; empty when the backend did not say.
    pub capabilities: Vec<String>,
    pub context: Option<u64>,
    /// Ollama's `details` object, as its server gave it.
    pub details: Option<Value>,
}

/// The facts learned so far, by configured model name. A model whose backend
/// was asked and had nothing to say is kept with empty facts, so it is not
/// asked again.
#[derive(Default)]
pub(crate) struct Learned {
    facts: Mutex<HashMap<String, Facts>>,
}

impl Learned {
    pub fn get(&self, model: &str) -> Option<Facts> {
        self.facts.lock().ok()?.get(model).cloned()
    }

    fn put(&self, model: &str, facts: Facts) {
        if let Ok(mut map) = self.facts.lock() {
            map.insert(model.to_owned(), facts);
        }
    }

    /// Forgets everything: a reload may have pointed a name at another model.
    pub fn clear(&self) {
        if let Ok(mut map) = self.facts.lock() {
            map.clear();
        }
    }
}

/// The capabilities to report for `model`: routes.yaml's, else the backend's,
/// else the guess from its names.
pub(crate) fn capabilities(config: &Config, learned: &Learned, model: &str) -> Vec<String> {
    let Some(m) = config.models.get(model) else {
        return vec!["completion".into()];
    };
    if m.capabilities.is_empty() {
        if let Some(facts) = learned.get(model).filter(|f| !f.capabilities.is_empty()) {
            return facts.capabilities;
        }
    }
    m.capabilities(model)
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect()
}

/// The facts for `model`, asking its backend first if it has not been asked
/// and its server is running. Never starts anything, never fails: a backend
/// that cannot be asked leaves the model as it was.
pub(crate) async fn learn(state: &Inner, model: &str) -> Option<Facts> {
    if let Some(known) = state.learned.get(model) {
        return Some(known);
    }
    let config = state.config();
    let m = config.models.get(model)?;
    let kind = config.backends.get(&m.backend)?.kind;
    let snap = state.supervisor.snapshot().await?;
    let status = snap.model(model)?;
    if status.phase != Phase::Ready {
        return None;
    }
    let endpoint = status.endpoint.clone()?;
    let upstream = m.upstream_name(model).to_owned();
    let key = config.backends.get(&m.backend)?.api_key.as_deref();
    let (method, path, body) = match kind {
        BackendKind::Ollama => (
            Method::POST,
            "/api/show",
            json!({"model": upstream}).to_string(),
        ),
        BackendKind::Openai => (Method::GET, "/props", String::new()),
        BackendKind::Omlx => (Method::GET, "/v1/models/status", String::new()),
        _ => return None,
    };
    let facts = match ask(state, method, &endpoint, path, body, key).await {
        Asked::Said(reply) => match kind {
            BackendKind::Ollama => from_ollama_show(&reply),
            BackendKind::Omlx => from_omlx_status(&reply, &upstream),
            _ => from_llama_props(&reply),
        },
        // A server without the route (not llama.cpp, an old Ollama): nothing
        // to learn, and no reason to ask again.
        Asked::NoSuchRoute => Facts::default(),
        Asked::Failed => return None,
    };
    state.learned.put(model, facts.clone());
    Some(facts)
}

enum Asked {
    Said(Value),
    NoSuchRoute,
    Failed,
}

/// One question to a backend, with the backend's own key (`api_key`) if it has one.
async fn ask(
    state: &Inner,
    method: Method,
    endpoint: &str,
    path: &str,
    body: String,
    key: Option<&str>,
) -> Asked {
    let url = if endpoint.contains("://") {
        format!("{}{path}", endpoint.trim_end_matches('/'))
    } else {
        format!("http://{endpoint}{path}")
    };
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let Ok(request) = request.body(Outgoing::Whole(Bytes::from(body))) else {
        return Asked::Failed;
    };
    let exchange = async {
        let reply = state.client.send(request).await.ok()?;
        let status = reply.status();
        let bytes = http_body_util::Limited::new(reply.into_body(), MAX_REPLY)
            .collect()
            .await
            .ok()?
            .to_bytes();
        Some((status, bytes))
    };
    match tokio::time::timeout(ASK_TIMEOUT, exchange).await {
        Ok(Some((status, _))) if status.as_u16() == 404 || status.as_u16() == 405 => {
            Asked::NoSuchRoute
        }
        Ok(Some((status, bytes))) if status.is_success() => {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) if v.is_object() => Asked::Said(v),
                _ => Asked::NoSuchRoute,
            }
        }
        _ => Asked::Failed,
    }
}

/// Ollama's `/api/show`: `capabilities`, `details`, and the context length
/// under `model_info["<architecture>.context_length"]`.
pub(crate) fn from_ollama_show(v: &Value) -> Facts {
    let capabilities = v["capabilities"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let context = v["model_info"].as_object().and_then(|info| {
        info.iter()
            .find(|(k, _)| k.ends_with(".context_length"))
            .and_then(|(_, n)| n.as_u64())
    });
    Facts {
        capabilities,
        context,
        details: v.get("details").filter(|d| d.is_object()).cloned(),
    }
}

/// oMLX's `/v1/models/status`: the entry for `upstream` (by id or alias), its
/// `engine_type` (a vision-language model, an embedding model, a text model)
/// and its `max_context_window`. Rerankers and audio models have no word in
/// Ollama's list and say nothing.
pub(crate) fn from_omlx_status(v: &Value, upstream: &str) -> Facts {
    let Some(entry) = v["models"].as_array().and_then(|models| {
        models
            .iter()
            .find(|m| m["id"] == upstream || m["model_alias"] == upstream)
    }) else {
        return Facts::default();
    };
    let capabilities: &[&str] = match entry["engine_type"].as_str() {
        Some("vlm") => &["completion", "vision"],
        Some("embedding") => &["embedding"],
        Some("batched" | "llm") => &["completion"],
        _ => &[],
    };
    Facts {
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        context: entry["max_context_window"].as_u64().filter(|n| *n > 0),
        details: None,
    }
}

/// llama.cpp's `/props`: the context each slot has, and whether the model
/// takes images (`modalities.vision`); an embedding server says so in
/// `default_generation_settings` only by having no chat template, which is
/// not certain enough to act on, so it says completion.
pub(crate) fn from_llama_props(v: &Value) -> Facts {
    let settings = &v["default_generation_settings"];
    let context = settings["n_ctx"]
        .as_u64()
        .or_else(|| v["n_ctx"].as_u64())
        .filter(|n| *n > 0);
    let mut capabilities = Vec::new();
    if settings.is_object() {
        capabilities.push("completion".to_owned());
        if v["modalities"]["vision"] == json!(true) {
            capabilities.push("vision".to_owned());
        }
    }
    Facts {
        capabilities,
        context,
        details: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_show_gives_capabilities_details_and_context() {
        let show = json!({
            "details": {"format": "gguf", "family": "qwen3", "parameter_size": "8.2B", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960},
            "capabilities": ["completion", "tools", "thinking"],
        });
        let facts = from_ollama_show(&show);
        assert_eq!(facts.capabilities, ["completion", "tools", "thinking"]);
        assert_eq!(facts.context, Some(40960));
        assert_eq!(facts.details.unwrap()["family"], "qwen3");
        assert_eq!(from_ollama_show(&json!({})), Facts::default());
    }

    #[test]
    fn llama_props_give_context_and_vision() {
        let props =
            json!({"default_generation_settings": {"n_ctx": 8192}, "modalities": {"vision": true}});
        let facts = from_llama_props(&props);
        assert_eq!(facts.capabilities, ["completion", "vision"]);
        assert_eq!(facts.context, Some(8192));
        assert_eq!(from_llama_props(&json!({"other": 1})), Facts::default());
    }

    #[test]
    fn omlx_status_gives_the_engine_and_the_window() {
        let status = json!({"models": [
            {"id": "Qwen3-VL-8B", "engine_type": "vlm", "max_context_window": 65536},
            {"id": "bge-m3", "engine_type": "embedding", "max_context_window": 8192},
            {"id": "Qwen3-30B-A3B-8bit", "model_alias": "qwen30", "engine_type": "batched", "max_context_window": 32768},
        ]});
        let vl = from_omlx_status(&status, "Qwen3-VL-8B");
        assert_eq!(
            (vl.capabilities, vl.context),
            (vec!["completion".into(), "vision".into()], Some(65536))
        );
        assert_eq!(
            from_omlx_status(&status, "bge-m3").capabilities,
            ["embedding"]
        );
        assert_eq!(from_omlx_status(&status, "qwen30").context, Some(32768));
        assert_eq!(from_omlx_status(&status, "other"), Facts::default());
    }

    #[test]
    fn routes_yaml_wins_then_the_backend_then_the_guess() {
        let config = modelyard_config::load_str(
            "t",
            "backends: {o: {kind: ollama, url: \"http://127.0.0.1:1\"}}\n\
             models:\n  said: {backend: o, memory: 1MB, capabilities: [completion, vision]}\n  \
             asked: {backend: o, memory: 1MB}\n  nomic-embed: {backend: o, memory: 1MB}\n",
        )
        .unwrap()
        .config;
        let learned = Learned::default();
        let tools = Facts {
            capabilities: vec!["completion".into(), "tools".into()],
            ..Facts::default()
        };
        learned.put("said", tools.clone());
        learned.put("asked", tools);
        assert_eq!(
            capabilities(&config, &learned, "said"),
            ["completion", "vision"]
        );
        assert_eq!(
            capabilities(&config, &learned, "asked"),
            ["completion", "tools"]
        );
        assert_eq!(
            capabilities(&config, &learned, "nomic-embed"),
            ["embedding"]
        );
        learned.put("nomic-embed", Facts::default());
        assert_eq!(
            capabilities(&config, &learned, "nomic-embed"),
            ["embedding"],
            "a backend that said nothing leaves the guess"
        );
    }
}
