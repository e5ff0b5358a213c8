//! Ollama (written against v0.33): one server, many models. It loads a model on an
//! empty generate request and unloads on `keep_alive: 0`, but answers before the
//! memory is back, so an unload is confirmed through `/api/ps`. Its own scheduler
//! is kept still: models never expire by themselves (`OLLAMA_KEEP_ALIVE=-1`) and
//! the count limit is at least the number of models it hosts.

use serde_json::{json, Value};

use super::{
    confirm, default_env, same_model, Adapter, Http, Pending, Prepare, Probe, Report, Resident,
    Target, POLL_LIMIT,
};
use crate::process::Spec;

pub(crate) struct Ollama;

impl Adapter for Ollama {
    fn prepare(&self, spec: &mut Spec, ctx: &Prepare) {
        default_env(spec, "OLLAMA_HOST", format!("127.0.0.1:{}", ctx.port));
        default_env(spec, "OLLAMA_KEEP_ALIVE", "-1");
        default_env(
            spec,
            "OLLAMA_MAX_LOADED_MODELS",
            ctx.models.max(1).to_string(),
        );
    }

    fn load(&self, http: Http, t: Target) -> Pending<Result<(), String>> {
        Box::pin(async move {
            let url = format!("{}/api/generate", t.base);
            let body = json!({"model": t.upstream, "keep_alive": -1});
            let a = http
                .post(&url, &body, t.api_key.as_deref(), t.limit)
                .await
                .map_err(|e| e.to_string())?;
            if a.status.is_success() {
                return Ok(());
            }
            if a.status == http::StatusCode::NOT_FOUND {
                return Err(format!(
                    "Ollama has no model `{}` (ollama pull {0}): {}",
                    t.upstream,
                    a.message()
                ));
            }
            // Embedding-only models refuse generate; an empty embed loads them.
            if a.status == http::StatusCode::BAD_REQUEST {
                let url = format!("{}/api/embed", t.base);
                let body = json!({"model": t.upstream, "input": "", "keep_alive": -1});
                let b = http
                    .post(&url, &body, t.api_key.as_deref(), t.limit)
                    .await
                    .map_err(|e| e.to_string())?;
                if b.status.is_success() {
                    return Ok(());
                }
                return Err(format!(
                    "Ollama would not load `{}`: {}",
                    t.upstream,
                    b.message()
                ));
            }
            Err(format!(
                "Ollama would not load `{}` ({}): {}",
                t.upstream,
                a.status,
                a.message()
            ))
        })
    }

    fn unload(&self, http: Http, t: Target) -> Pending<Result<(), String>> {
        Box::pin(async move {
            let url = format!("{}/api/generate", t.base);
            let body = json!({"model": t.upstream, "keep_alive": 0});
            let a = http
                .post(&url, &body, t.api_key.as_deref(), t.limit)
                .await
                .map_err(|e| e.to_string())?;
            if !a.status.is_success() && a.status != http::StatusCode::NOT_FOUND {
                return Err(format!(
                    "Ollama refused to unload `{}`: {}",
                    t.upstream,
                    a.message()
                ));
            }
            confirm(t.limit, "/api/ps", || async {
                let listed = ps(&http, &t.base, t.api_key.as_deref()).await?;
                Ok(!listed.iter().any(|r| same_model(&r.name, &t.upstream)))
            })
            .await
        })
    }

    fn report(&self, http: Http, p: Probe) -> Pending<Result<Report, String>> {
        Box::pin(async move {
            Ok(Report::holding(
                ps(&http, &p.base, p.api_key.as_deref()).await?,
            ))
        })
    }
}

/// The models Ollama holds, with their size in bytes.
async fn ps(http: &Http, base: &str, api_key: Option<&str>) -> Result<Vec<Resident>, String> {
    let a = http
        .get(&format!("{base}/api/ps"), api_key, POLL_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if !a.status.is_success() {
        return Err(format!("/api/ps answered {}", a.status));
    }
    let models = a
        .json
        .get("models")
        .and_then(Value::as_array)
        .ok_or("/api/ps did not list models")?;
    Ok(models
        .iter()
        .filter_map(|m| {
            let name = m.get("name").or_else(|| m.get("model"))?.as_str()?;
            Some(Resident {
                name: name.to_string(),
                bytes: m.get("size").and_then(Value::as_u64),
            })
        })
        .collect())
}
