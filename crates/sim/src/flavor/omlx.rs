//! `--flavor omlx`: oMLX 0.5.0's routes, its per-model load/unload/status
//! API, its LRU eviction under a memory ceiling, and its response quirks.

use std::sync::Arc;

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::clock::{epoch_seconds, monotonic_seconds};
use super::declared_models;
use super::keep_alive::KeepAlive;
use super::pool::{AcquireError, Eviction, Pool, UnloadError};
use crate::args::Args;
use crate::completions::Kind;
use crate::response::{bad_request, json_response, openai_error, ResponseBody};
use crate::routes::{
    model_list, read_body, serve_completion, serve_embeddings, serve_messages, serve_responses,
    Inference, Serving, MAX_BODY_BYTES,
};
use crate::state::SimState;
use crate::streaming::StreamExtras;

/// oMLX's fallback context window when a model states none.
const MAX_CONTEXT: u64 = 32768;

#[derive(Debug)]
pub struct Omlx {
    pub pool: Arc<Pool>,
    ceiling: Option<u64>,
    api_key: Option<String>,
}

impl Omlx {
    pub fn new(args: &Args) -> Result<Self, String> {
        Ok(Self {
            pool: Pool::new(
                declared_models(args)?,
                args.load_time,
                Eviction::Ceiling(args.memory_guard),
                // Its unload frees memory before replying.
                std::time::Duration::ZERO,
                super::pool::Naming::Exact,
            ),
            ceiling: args.memory_guard,
            api_key: args.api_key.clone(),
        })
    }

    pub async fn route(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        if path == "/health" && method == Method::GET {
            return self.health();
        }
        if let Some(response) = self.unauthorized(request.headers()) {
            return response;
        }
        if let Some(rest) = path.strip_prefix("/v1/models/") {
            if method == Method::POST {
                if let Some(id) = rest.strip_suffix("/load") {
                    return self.load(&percent_decode(id)).await;
                }
                if let Some(id) = rest.strip_suffix("/unload") {
                    return self.unload(&percent_decode(id));
                }
            }
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/v1/models") => self.models(),
            (&Method::GET, "/v1/models/status") => self.status(),
            (&Method::POST, "/v1/chat/completions") => {
                self.inference(state, request, Inference::Completion(Kind::Chat))
                    .await
            }
            (&Method::POST, "/v1/completions") => {
                self.inference(state, request, Inference::Completion(Kind::Text))
                    .await
            }
            (&Method::POST, "/v1/responses") => {
                self.inference(state, request, Inference::Responses).await
            }
            (&Method::POST, "/v1/embeddings") => {
                self.inference(state, request, Inference::Embeddings).await
            }
            (&Method::POST, "/v1/messages") => {
                self.inference(state, request, Inference::Messages).await
            }
            // FastAPI's own 404.
            _ => json_response(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"})),
        }
    }

    /// The 401 for a request without the right key, when a key is set.
    fn unauthorized(&self, headers: &HeaderMap) -> Option<Response<ResponseBody>> {
        let key = self.api_key.as_ref()?;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let message = match given {
            Some(given) if given == key => return None,
            Some(_) => "Invalid API key",
            None => "API key required",
        };
        Some(openai_error(
            StatusCode::UNAUTHORIZED,
            message,
            "authentication_error",
            None,
            None,
        ))
    }

    fn health(&self) -> Response<ResponseBody> {
        let models = self.pool.models();
        json_response(
            StatusCode::OK,
            &json!({
                "status": "healthy",
                "default_model": null,
                "engine_pool": {
                    "model_count": models.len(),
                    "loaded_count": models.iter().filter(|m| m.loaded).count(),
                    "final_ceiling": self.ceiling,
                    "current_model_memory": self.pool.memory_in_use(),
                },
            }),
        )
    }

    fn models(&self) -> Response<ResponseBody> {
        let models = self.pool.models();
        model_list(
            models.iter().map(|m| m.name.as_str()),
            "omlx",
            &[("max_model_len", json!(MAX_CONTEXT))],
        )
    }

    fn status(&self) -> Response<ResponseBody> {
        let models = self.pool.models();
        let entries: Vec<Value> = models
            .iter()
            .map(|m| {
                json!({
                    "id": m.name,
                    "model_path": format!("/sim/models/{}", m.name),
                    "loaded": m.loaded,
                    "is_loading": m.loading_started.is_some(),
                    "loading_started_at": m.loading_started.map(monotonic_seconds),
                    "estimated_size": m.size,
                    "actual_size": m.loaded.then_some(m.size),
                    "pinned": false,
                    // As oMLX tells them apart: by what the model is.
                    "engine_type": if m.name.to_ascii_lowercase().contains("embed") { "embedding" } else { "batched" },
                    "model_type": "llm",
                    "last_access": m.last_access.map(epoch_seconds),
                    "max_context_window": MAX_CONTEXT,
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "final_ceiling": self.ceiling,
                "current_model_memory": self.pool.memory_in_use(),
                "model_count": models.len(),
                "loaded_count": models.iter().filter(|m| m.loaded).count(),
                "load_seconds_per_gb_estimate": null,
                "load_time_observations": 0,
                "models": entries,
            }),
        )
    }

    async fn load(&self, id: &str) -> Response<ResponseBody> {
        match self.pool.acquire(id, KeepAlive::Forever).await {
            Ok(lease) => {
                let message = if lease.was_loaded {
                    format!("Already loaded: {id}")
                } else {
                    format!("Loaded {id}")
                };
                json_response(
                    StatusCode::OK,
                    &json!({"status": "ok", "model_id": id, "message": message}),
                )
            }
            Err(e) => acquire_error(id, e),
        }
    }

    fn unload(&self, id: &str) -> Response<ResponseBody> {
        match self.pool.unload_now(id) {
            Ok(()) => json_response(StatusCode::OK, &json!({"status": "ok", "model_id": id})),
            Err(UnloadError::Unknown) => model_not_found(id),
            Err(UnloadError::NotLoaded) => openai_error(
                StatusCode::BAD_REQUEST,
                format!("Model not loaded: {id}"),
                "invalid_request_error",
                None,
                None,
            ),
        }
    }

    /// `kind` None is embeddings.
    async fn inference(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
        kind: Inference,
    ) -> Response<ResponseBody> {
        let body = match read_body(state, request, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => return bad_request(e.to_string(), None),
        };
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return openai_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Field required",
                "invalid_request_error",
                Some("model"),
                None,
            );
        };
        // Loading happens before the response starts, so load errors are
        // real statuses.
        let lease = match self.pool.acquire(model, KeepAlive::Forever).await {
            Ok(lease) => lease,
            Err(e) => return acquire_error(model, e),
        };
        let abort = Some(lease.abort_signal());
        let serving = |prelude| Serving {
            stream: StreamExtras {
                hold: Some(Box::new(lease)),
                abort,
                prelude,
            },
            leading_space: true,
        };
        match kind {
            Inference::Embeddings => serve_embeddings(state, &body, model, Serving::default()),
            Inference::Completion(kind) => {
                let serving = serving(Some(keepalive_chunk(kind)));
                serve_completion(state, &body, model, kind, serving).await
            }
            // Its keep-alive chunk is a chat or text chunk; a Responses stream
            // has events of its own, so it goes without.
            Inference::Responses => serve_responses(state, &body, model, serving(None)).await,
            // Anthropic's stream has its own keep-alive, the `ping` it opens with.
            Inference::Messages => serve_messages(state, &body, model, serving(None)).await,
        }
    }
}

/// The chunk oMLX sends at once on every stream (its "chunk" keep-alive
/// mode); the stream's id is filled in when it is known.
fn keepalive_chunk(kind: Kind) -> Value {
    match kind {
        Kind::Chat => json!({
            "id": "",
            "object": "chat.completion.chunk",
            "model": "keepalive",
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": null}],
        }),
        Kind::Text => json!({
            "id": "",
            "object": "text_completion",
            "model": "keepalive",
            "choices": [{"index": 0, "text": "", "finish_reason": null}],
        }),
    }
}

fn model_not_found(id: &str) -> Response<ResponseBody> {
    openai_error(
        StatusCode::NOT_FOUND,
        format!("Model not found: {id}"),
        "not_found_error",
        None,
        None,
    )
}

fn acquire_error(id: &str, e: AcquireError) -> Response<ResponseBody> {
    match e {
        AcquireError::Unknown => model_not_found(id),
        AcquireError::Insufficient(message) => openai_error(
            StatusCode::INSUFFICIENT_STORAGE,
            message,
            "server_error",
            None,
            None,
        ),
        AcquireError::LoadFailed(message) => openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
            "server_error",
            None,
            None,
        ),
    }
}

/// Model ids may hold `/` or `:`, which clients may percent-encode.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok();
        match (bytes[i], hex().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ids() {
        assert_eq!(percent_decode("org%2Fm%3A4bit"), "org/m:4bit");
        assert_eq!(percent_decode("plain:8b"), "plain:8b");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
    }
}
