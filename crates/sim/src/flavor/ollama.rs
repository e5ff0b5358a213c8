//! `--flavor ollama`: Ollama 0.33's routes, its on-demand loading and its
//! own keep-alive and max-loaded scheduler.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clock::rfc3339;
use super::declared_models;
use super::keep_alive::{self, KeepAlive};
use super::pool::{AcquireError, Eviction, Lease, ModelView, Pool};
use crate::args::Args;
use crate::completions::Kind;
use crate::embeddings::fnv1a;
use crate::response::{bad_request, json_response, openai_error, ResponseBody};
use crate::routes::{
    model_list, read_body, serve_completion, serve_embeddings, serve_messages, serve_responses,
    Inference, Serving, MAX_BODY_BYTES, MODEL_CREATED,
};
use crate::state::SimState;
use crate::streaming::StreamExtras;

pub const VERSION: &str = "0.33.0";
/// What every model reports; Ollama's automatic default below 24 GiB VRAM.
pub const CONTEXT_LENGTH: u64 = 4096;
/// Ollama's automatic limit on CPU-only machines.
const DEFAULT_MAX_LOADED: usize = 3;

#[derive(Debug)]
pub struct Ollama {
    pub pool: Arc<Pool>,
    /// OLLAMA_KEEP_ALIVE, for requests without `keep_alive` and all of /v1.
    pub default_keep_alive: KeepAlive,
}

impl Ollama {
    pub fn new(args: &Args) -> Result<Self, String> {
        let default_keep_alive = match std::env::var("OLLAMA_KEEP_ALIVE") {
            Ok(v) if !v.trim().is_empty() => {
                KeepAlive::from_env(&v).map_err(|e| format!("OLLAMA_KEEP_ALIVE={v:?}: {e}"))?
            }
            _ => keep_alive::DEFAULT,
        };
        let max_loaded = match std::env::var("OLLAMA_MAX_LOADED_MODELS") {
            Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
                Ok(0) => DEFAULT_MAX_LOADED,
                Ok(n) => n,
                Err(_) => return Err(format!("OLLAMA_MAX_LOADED_MODELS={v:?} is not a count")),
            },
            _ => DEFAULT_MAX_LOADED,
        };
        Ok(Self {
            pool: Pool::new(
                declared_models(args)?,
                args.load_time,
                Eviction::MaxLoaded(max_loaded),
                args.unload_time,
                super::pool::Naming::Tagged,
            ),
            default_keep_alive,
        })
    }

    pub async fn route(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match (&method, path.as_str()) {
            (&Method::GET | &Method::HEAD, "/") => text(StatusCode::OK, "Ollama is running"),
            (&Method::GET, "/health") => text(StatusCode::OK, "Ollama is running"),
            (&Method::GET | &Method::HEAD, "/api/version") => {
                json_response(StatusCode::OK, &json!({"version": VERSION}))
            }
            (&Method::GET | &Method::HEAD, "/api/tags") => self.tags(),
            (&Method::GET, "/api/ps") => self.ps(),
            (&Method::POST, "/api/show") => self.show(state, request).await,
            (&Method::POST, "/api/generate") => {
                super::ollama_native::generate(self, state, request, false).await
            }
            (&Method::POST, "/api/chat") => {
                super::ollama_native::generate(self, state, request, true).await
            }
            (&Method::POST, "/api/embed") => {
                super::ollama_native::embed(self, state, request).await
            }
            (&Method::POST, "/api/embeddings") => {
                super::ollama_native::embeddings(self, state, request).await
            }
            (&Method::GET, "/v1/models") => self.openai_models(),
            (&Method::POST, "/v1/chat/completions") => {
                self.openai(state, request, Inference::Completion(Kind::Chat))
                    .await
            }
            (&Method::POST, "/v1/completions") => {
                self.openai(state, request, Inference::Completion(Kind::Text))
                    .await
            }
            // Stateless, as Ollama serves it since 0.13.3.
            (&Method::POST, "/v1/responses") => {
                self.openai(state, request, Inference::Responses).await
            }
            (&Method::POST, "/v1/embeddings") => {
                self.openai(state, request, Inference::Embeddings).await
            }
            // Anthropic's API, as Ollama serves it for Claude Code.
            (&Method::POST, "/v1/messages") => self.messages(state, request).await,
            _ => text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    fn tags(&self) -> Response<ResponseBody> {
        let models: Vec<Value> = self
            .pool
            .models()
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "model": m.name,
                    "modified_at": modified_at(),
                    "size": m.size,
                    "digest": digest(&m.name),
                    "details": details(&m.name),
                })
            })
            .collect();
        json_response(StatusCode::OK, &json!({"models": models}))
    }

    fn ps(&self) -> Response<ResponseBody> {
        let mut loaded: Vec<ModelView> = self
            .pool
            .models()
            .into_iter()
            .filter(|m| m.loaded)
            .collect();
        loaded.sort_by_key(|m| std::cmp::Reverse(m.expires_at));
        let models: Vec<Value> = loaded
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "model": m.name,
                    "size": m.size,
                    "digest": digest(&m.name),
                    "details": details(&m.name),
                    "expires_at": m.expires_at.map(rfc3339),
                    "size_vram": m.size,
                    "context_length": CONTEXT_LENGTH,
                })
            })
            .collect();
        json_response(StatusCode::OK, &json!({"models": models}))
    }

    async fn show(&self, state: &SimState, request: Request<Incoming>) -> Response<ResponseBody> {
        let body = match read_body(state, request, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let Some(model) = model_field(&body) else {
            return error(StatusCode::BAD_REQUEST, "model is required");
        };
        if !self.pool.knows(model) {
            return error(StatusCode::NOT_FOUND, format!("model '{model}' not found"));
        }
        json_response(
            StatusCode::OK,
            &json!({
                "license": "",
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": details(model),
                "model_info": {
                    "general.architecture": "sim",
                    "sim.context_length": CONTEXT_LENGTH,
                },
                "capabilities": capabilities(model),
                "modified_at": modified_at(),
            }),
        )
    }

    fn openai_models(&self) -> Response<ResponseBody> {
        let models = self.pool.models();
        model_list(models.iter().map(|m| m.name.as_str()), "library", &[])
    }

    /// `/v1` has no `keep_alive`: models load on demand and stay for
    /// OLLAMA_KEEP_ALIVE. `kind` None is embeddings.
    async fn openai(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
        kind: Inference,
    ) -> Response<ResponseBody> {
        let openai_404 = |message: String| {
            openai_error(
                StatusCode::NOT_FOUND,
                message,
                "not_found_error",
                None,
                None,
            )
        };
        let body = match read_body(state, request, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => return bad_request(e.to_string(), None),
        };
        let Some(model) = model_field(&body) else {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "model is required",
                "invalid_request_error",
                Some("model"),
                None,
            );
        };
        let lease = match self.pool.acquire(model, self.default_keep_alive).await {
            Ok(lease) => lease,
            Err(AcquireError::Unknown) => return openai_404(not_found_message(model)),
            Err(e) => {
                return openai_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    load_error_message(e),
                    "api_error",
                    None,
                    None,
                )
            }
        };
        let serving = Serving {
            stream: StreamExtras {
                hold: Some(Box::new(lease)),
                ..StreamExtras::default()
            },
            leading_space: false,
        };
        match kind {
            Inference::Completion(kind) => {
                serve_completion(state, &body, model, kind, serving).await
            }
            Inference::Responses => serve_responses(state, &body, model, serving).await,
            Inference::Embeddings => serve_embeddings(state, &body, model, serving),
            Inference::Messages => serve_messages(state, &body, model, serving).await,
        }
    }

    /// `POST /v1/messages`: the model loaded on demand, errors in Anthropic's shape.
    async fn messages(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let refuse = |status: StatusCode, kind: &str, message: &str| {
            crate::messages::error_response(status, kind, message)
        };
        let body = match read_body(state, request, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &e.to_string(),
                )
            }
        };
        let Some(model) = model_field(&body) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model is required",
            );
        };
        let lease = match self.pool.acquire(model, self.default_keep_alive).await {
            Ok(lease) => lease,
            Err(AcquireError::Unknown) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    &not_found_message(model),
                )
            }
            Err(e) => {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    &load_error_message(e),
                )
            }
        };
        let serving = Serving {
            stream: StreamExtras {
                hold: Some(Box::new(lease)),
                ..StreamExtras::default()
            },
            leading_space: false,
        };
        serve_messages(state, &body, model, serving).await
    }

    /// Loads `model` for one request; the error is the native reply.
    pub async fn acquire(
        &self,
        model: &str,
        keep_alive: KeepAlive,
    ) -> Result<Lease, Response<ResponseBody>> {
        self.pool
            .acquire(model, keep_alive)
            .await
            .map_err(|e| match e {
                AcquireError::Unknown => error(StatusCode::NOT_FOUND, not_found_message(model)),
                other => error(StatusCode::INTERNAL_SERVER_ERROR, load_error_message(other)),
            })
    }
}

pub fn not_found_message(model: &str) -> String {
    format!("model \"{model}\" not found, try pulling it first")
}

fn load_error_message(e: AcquireError) -> String {
    match e {
        AcquireError::Unknown => "model not found".to_owned(),
        AcquireError::Insufficient(m) | AcquireError::LoadFailed(m) => m,
    }
}

pub fn model_field(body: &Value) -> Option<&str> {
    body.get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
}

/// Ollama's native error shape.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    json_response(status, &json!({"error": message.into()}))
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .expect("static response parts are valid")
}

fn modified_at() -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(MODEL_CREATED))
}

/// A stable sha256-length hex digest per name, so clients that key on
/// digests see the same model across restarts.
fn digest(name: &str) -> String {
    (0u8..4)
        .map(|seed| format!("{:016x}", fnv1a([seed].iter().chain(name.as_bytes()))))
        .collect()
}

fn details(name: &str) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "sim",
        "families": ["sim"],
        "parameter_size": parameter_size(name),
        "quantization_level": "Q4_0",
    })
}

/// What Ollama says a model can do: an embedding model (by its name, as the
/// library names them) embeds; the others complete and, as the sim answers
/// tool calls, take tools.
fn capabilities(name: &str) -> Value {
    if name.contains("embed") {
        json!(["embedding"])
    } else {
        json!(["completion", "tools"])
    }
}

/// "8B" for a tag like `qwen3:8b`, as Ollama's library names suggest.
fn parameter_size(name: &str) -> String {
    name.rsplit_once(':')
        .map(|(_, tag)| tag.to_ascii_uppercase())
        .filter(|tag| {
            tag.strip_suffix(['B', 'M'])
                .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
        })
        .unwrap_or_else(|| "1B".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_to_details() {
        assert_eq!(parameter_size("qwen3:8b"), "8B");
        assert_eq!(parameter_size("q:0.6b"), "0.6B");
        assert_eq!(parameter_size("plain"), "1B");
        assert_eq!(parameter_size("x:latest"), "1B");
        assert_eq!(digest("a").len(), 64);
        assert_eq!(digest("a"), digest("a"));
        assert_ne!(digest("a"), digest("b"));
    }
}
