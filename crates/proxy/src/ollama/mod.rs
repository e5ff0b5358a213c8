//! Ollama's native API on the router's front (`/api/*`), so clients built for
//! Ollama (Open WebUI, the `ollama` libraries) can point at the router.
//!
//! A model on an Ollama backend gets the request as sent, model renamed
//! ([`passthrough`]); any other backend gets the OpenAI request that asks the same
//! ([`request`]) and its answer is turned back into Ollama's ([`reply`], [`stream`]).
//! The catalog routes answer from the router's own config and ledger ([`catalog`]).
//! Errors use Ollama's `{"error": "…"}` (the one `ApiError`, rendered for
//! [`Dialect::Ollama`]). docs/ollama-api.md is the user's view of all this.

mod catalog;
mod keep_alive;
mod model;
mod passthrough;
#[cfg(test)]
mod proptests;
mod reply;
mod request;
#[cfg(test)]
mod round_trip;
mod stream;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use modelyard_config::Config;

use crate::body::{self, Body};
use crate::error::{ApiError, Dialect};
use crate::Inner;

/// Answers one request under `/api/`.
pub(crate) async fn handle(
    state: Arc<Inner>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let result = match (&method, path.as_str()) {
        (_, "/api/tags") if get => Ok(catalog::tags(
            &state.config(),
            &state.learned,
            modified(&state),
        )),
        (_, "/api/version") if get => Ok(catalog::version()),
        (&Method::GET, "/api/ps") => match state.supervisor.snapshot().await {
            Some(snap) => Ok(catalog::ps(&state.config(), &snap, SystemTime::now())),
            None => Err(ApiError::Supervisor(
                modelyard_supervisor::SupervisorError::ShuttingDown,
            )),
        },
        (&Method::POST, "/api/show") => show(&state, req).await,
        (&Method::POST, p) => match request::Endpoint::from_path(p) {
            Some(endpoint) => return model::respond(state, req, endpoint, peer).await,
            None => Err(no_route(&method, &path)),
        },
        _ => Err(no_route(&method, &path)),
    };
    match result {
        Ok(v) => body::json_response(StatusCode::OK, &v),
        Err(e) => e.render(Dialect::Ollama),
    }
}

fn no_route(method: &Method, path: &str) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: crate::echo::shown(path),
    }
}

/// `modified_at` for every model: when the router started, which is when it
/// last read the config that defines them.
fn modified(state: &Inner) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(state.started_unix)
}

/// `POST /api/show {"model"}` (older clients send `name`).
async fn show(state: &Inner, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let (parts, body) = req.into_parts();
    let config = state.config();
    let bytes = crate::limits::read_body(&config, parts.uri.path(), &parts.headers, body).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let name = match v.get("model").or_else(|| v.get("name")) {
        Some(serde_json::Value::String(s)) => s.clone(),
        None | Some(serde_json::Value::Null) => return Err(ApiError::MissingModel),
        Some(_) => return Err(ApiError::ModelNotString),
    };
    let config = state.config();
    let model = resolve(&config, &name)?;
    let facts = crate::learned::learn(state, &model).await;
    catalog::show(
        &config,
        &state.learned,
        &name,
        facts.as_ref(),
        modified(state),
    )
}

/// The configured model `name` stands for. Ollama clients often add the default
/// tag (`qwen3` → `qwen3:latest`), so a `:latest` the config does not have is
/// read as the bare name.
pub(crate) fn resolve(config: &Config, name: &str) -> Result<String, ApiError> {
    crate::models::resolve(config, name).or_else(|e| {
        name.strip_suffix(":latest")
            .and_then(|bare| config.resolve(bare))
            .map(str::to_string)
            .ok_or(e)
    })
}
