//! `GET /v1/models` and `GET /v1/models/{id}`: every configured model and alias in
//! OpenAI's shape; aliases carry `alias_for` so clients can tell them apart, and
//! models a remote backend lists without routes.yaml naming them carry `remote`.

use http::{Response, StatusCode};
use modelyard_config::Config;
use modelyard_supervisor::{RemoteModel, Snapshot};
use serde_json::{json, Value};

use crate::body::{self, Body};
use crate::error::ApiError;
use crate::learned::Learned;

fn entry(config: &Config, learned: &Learned, created: u64, name: &str) -> Option<Value> {
    let model_name = config.resolve(name)?;
    let m = &config.models[model_name];
    let mut v = json!({
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": format!("modelyard/{}", m.backend),
        // Not OpenAI's, but what LM Studio and vLLM add and clients such as
        // Open WebUI read: whether to offer chat, tools, images, embeddings.
        "capabilities": crate::learned::capabilities(config, learned, model_name),
    });
    let context = m
        .context
        .or_else(|| learned.get(model_name).and_then(|f| f.context));
    if let Some(n) = context {
        v["context_length"] = json!(n);
    }
    if model_name != name {
        v["alias_for"] = json!(model_name);
    } else if !m.aliases.is_empty() {
        v["aliases"] = json!(m.aliases);
    }
    Some(v)
}

/// What a remote backend lists and routes.yaml does not name.
fn remote_entry(created: u64, m: &RemoteModel) -> Value {
    json!({
        "id": m.name,
        "object": "model",
        "created": created,
        "owned_by": format!("modelyard/{}", m.backend),
        "remote": true,
    })
}

pub(crate) fn list(
    config: &Config,
    learned: &Learned,
    snap: Option<&Snapshot>,
    created: u64,
) -> Response<Body> {
    let remote = snap.map(|s| s.remote_models.as_slice()).unwrap_or_default();
    let data: Vec<Value> = config
        .models
        .iter()
        .flat_map(|(name, m)| std::iter::once(name).chain(m.aliases.iter()))
        .filter_map(|n| entry(config, learned, created, n))
        .chain(remote.iter().map(|m| remote_entry(created, m)))
        .collect();
    body::json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

pub(crate) fn one(
    config: &Config,
    learned: &Learned,
    snap: Option<&Snapshot>,
    created: u64,
    id: &str,
) -> Response<Body> {
    let remote = snap.and_then(|s| s.remote_model(id));
    match entry(config, learned, created, id).or_else(|| remote.map(|m| remote_entry(created, m))) {
        Some(v) => body::json_response(StatusCode::OK, &v),
        None => ApiError::UnknownModel {
            name: crate::echo::shown(id),
            close: close_matches(config, id),
        }
        .into_response(),
    }
}

/// The configured model `name` (a model or an alias) stands for, or a 404 that
/// names the closest matches.
pub(crate) fn resolve(config: &Config, name: &str) -> Result<String, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::InvalidField {
            field: "model".into(),
            reason: "is empty; name one of the models listed at GET /v1/models".into(),
        });
    }
    config
        .resolve(name)
        .map(str::to_string)
        .ok_or_else(|| ApiError::UnknownModel {
            close: close_matches(config, name),
            name: crate::echo::shown(name),
        })
}

/// Up to three configured names or aliases that `wanted` is probably a typo of.
pub(crate) fn close_matches(config: &Config, wanted: &str) -> Vec<String> {
    let names = config
        .models
        .iter()
        .flat_map(|(n, m)| std::iter::once(n.as_str()).chain(m.aliases.iter().map(String::as_str)));
    modelyard_config::close_names(wanted, names)
        .into_iter()
        .take(3)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_matches_are_slips_not_other_names() {
        let yaml = "backends:\n  b: {url: \"http://127.0.0.1:9\"}\nmodels:\n  default: {backend: b}\n  code: {backend: b}\n  qwen3-32b: {backend: b, aliases: [qwen]}\n";
        let config = modelyard_config::load_str("t", yaml).unwrap().config;
        let close = |w: &str| close_matches(&config, w);
        assert_eq!(close("defualt"), ["default"], "a swap is one slip");
        assert_eq!(close("qwen3-32"), ["qwen3-32b"]);
        assert_eq!(close("Code"), ["code"]);
        assert!(close("nope").is_empty(), "{:?}", close("nope"));
        assert!(close("llama").is_empty());
    }
}
