//! oMLX (written against 0.5.0): one server, many models, loaded and unloaded
//! through `/v1/models/{id}/load|unload` by their canonical id (the directory name:
//! those two routes do not resolve aliases). Its memory guard would evict by its
//! own LRU, so its ceiling is set at the router's budget, where the ledger keeps
//! it from ever acting. See docs/backends/omlx.md for its settings file.

use serde_json::{json, Value};

use super::{
    confirm, default_env, Adapter, Http, Pending, Prepare, Probe, Report, Resident, Target,
    POLL_LIMIT,
};
use crate::process::Spec;

pub(crate) struct Omlx;

impl Adapter for Omlx {
    fn prepare(&self, spec: &mut Spec, ctx: &Prepare) {
        default_env(spec, "OMLX_HOST", "127.0.0.1");
        default_env(spec, "OMLX_PORT", ctx.port.clone());
        if let Some(place) = &ctx.kv_cache {
            // Its own SSD cache (hot/cold KV blocks), kept where unloads and
            // restarts leave it, and bounded by kv_cache.max.
            default_env(spec, "OMLX_SSD_CACHE_DIR", place.dir.display().to_string());
            default_env(spec, "OMLX_SSD_CACHE_MAX_SIZE", size_for_omlx(place.max));
        }
        let guarded = spec.argv.iter().any(|a| a.starts_with("--memory-guard"));
        if let (Some(budget), false) = (ctx.budget, guarded) {
            // Whole decimal GB, rounded up: at or above the budget however oMLX reads it.
            let gb = budget.div_ceil(1_000_000_000);
            spec.argv
                .extend(["--memory-guard-gb".into(), gb.to_string()]);
        }
    }

    fn load(&self, http: Http, t: Target) -> Pending<Result<(), String>> {
        Box::pin(async move {
            let url = format!("{}/v1/models/{}/load", t.base, t.upstream);
            let a = http
                .post(&url, &json!({}), t.api_key.as_deref(), t.limit)
                .await
                .map_err(|e| e.to_string())?;
            match a.status.as_u16() {
                200..=299 => Ok(()),
                404 => Err(format!(
                    "oMLX has no model `{}`; upstream must be an id from its /v1/models/status (the directory name, not an alias)",
                    t.upstream
                )),
                507 => Err(format!(
                    "oMLX has no room for `{}` ({}); is its memory guard below the budget, or its `memory` in routes.yaml too small?",
                    t.upstream,
                    a.message()
                )),
                s => Err(format!("oMLX could not load `{}` ({s}): {}", t.upstream, a.message())),
            }
        })
    }

    fn unload(&self, http: Http, t: Target) -> Pending<Result<(), String>> {
        Box::pin(async move {
            let url = format!("{}/v1/models/{}/unload", t.base, t.upstream);
            let a = http
                .post(&url, &json!({}), t.api_key.as_deref(), t.limit)
                .await
                .map_err(|e| e.to_string())?;
            // 400 is "not loaded": gone already.
            if !a.status.is_success() && a.status != http::StatusCode::BAD_REQUEST {
                return Err(format!(
                    "oMLX refused to unload `{}`: {}",
                    t.upstream,
                    a.message()
                ));
            }
            confirm(t.limit, "/v1/models/status", || async {
                let listed = status(&http, &t.base, t.api_key.as_deref()).await?;
                Ok(!listed.iter().any(|r| r.name == t.upstream))
            })
            .await
        })
    }

    fn report(&self, http: Http, p: Probe) -> Pending<Result<Report, String>> {
        Box::pin(async move {
            Ok(Report::holding(
                status(&http, &p.base, p.api_key.as_deref()).await?,
            ))
        })
    }
}

/// A size as oMLX's settings read it (`20GB`, `512MB`), rounded down so its
/// cache stays within the cap.
fn size_for_omlx(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{}GB", bytes / 1_000_000_000)
    } else {
        format!("{}MB", (bytes / 1_000_000).max(1))
    }
}

/// The models oMLX holds or is loading, with their measured (else estimated) size.
async fn status(http: &Http, base: &str, api_key: Option<&str>) -> Result<Vec<Resident>, String> {
    let a = http
        .get(&format!("{base}/v1/models/status"), api_key, POLL_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    if !a.status.is_success() {
        return Err(format!(
            "/v1/models/status answered {}: {}",
            a.status,
            a.message()
        ));
    }
    let models = a
        .json
        .get("models")
        .and_then(Value::as_array)
        .ok_or("/v1/models/status did not list models")?;
    let yes = |m: &Value, k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok(models
        .iter()
        .filter(|m| yes(m, "loaded") || yes(m, "is_loading"))
        .filter_map(|m| {
            Some(Resident {
                name: m.get("id")?.as_str()?.to_string(),
                bytes: m
                    .get("actual_size")
                    .and_then(Value::as_u64)
                    .or_else(|| m.get("estimated_size").and_then(Value::as_u64)),
            })
        })
        .collect())
}
