//! `--flavor apfel`: apfel 1.8.4, Apple's on-device model behind a strict
//! OpenAI chat route with a small context window and a concurrency limit.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::args::Args;
use crate::completions::Kind;
use crate::response::{json_response, loading, openai_error, ResponseBody};
use crate::routes::{read_body, serve_completion, BodyError, Serving};
use crate::state::SimState;
use crate::streaming::StreamExtras;

pub const MODEL: &str = "apple-foundationmodel";
const VERSION: &str = "1.8.4";
const CREATED: u64 = 1_719_792_000;
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// apfel's default `x_context_output_reserve`: what the prompt may not use.
const OUTPUT_RESERVE: u64 = 512;
const UNSUPPORTED: [&str; 5] = [
    "logprobs",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
];

#[derive(Debug)]
pub struct Apfel {
    context_window: u64,
    max_concurrent: usize,
    concurrency_wait: Duration,
    slots: Arc<Semaphore>,
}

impl Apfel {
    pub fn new(args: &Args) -> Self {
        Self {
            context_window: args.context_window,
            max_concurrent: args.max_concurrent,
            concurrency_wait: args.concurrency_wait,
            slots: Arc::new(Semaphore::new(args.max_concurrent)),
        }
    }

    fn active_requests(&self) -> usize {
        self.max_concurrent
            .saturating_sub(self.slots.available_permits())
    }

    pub async fn route(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        if path.starts_with("/v1/") && !state.is_ready() {
            return loading();
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/health") => self.health(state),
            (&Method::GET, "/v1/models") => self.models(),
            (&Method::POST, "/v1/chat/completions") => self.chat(state, request).await,
            (&Method::POST, "/v1/completions" | "/v1/embeddings") => openai_error(
                StatusCode::NOT_IMPLEMENTED,
                format!("{path} is not supported by the Apple Foundation Model"),
                "not_implemented",
                None,
                None,
            ),
            _ => openai_error(
                StatusCode::NOT_FOUND,
                format!("no route for {method} {path}"),
                "invalid_request_error",
                None,
                None,
            ),
        }
    }

    fn health(&self, state: &SimState) -> Response<ResponseBody> {
        let (status, label) = if state.is_ready() {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "loading")
        };
        json_response(
            status,
            &json!({
                "status": label,
                "model": MODEL,
                "version": VERSION,
                "active_requests": self.active_requests(),
                "context_window": self.context_window,
                "model_available": true,
                "prewarmed": state.is_ready(),
                "supported_languages": ["en"],
            }),
        )
    }

    fn models(&self) -> Response<ResponseBody> {
        json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{
                "id": MODEL,
                "object": "model",
                "created": CREATED,
                "owned_by": "apple",
                "context_window": self.context_window,
                "supported_parameters": [
                    "temperature", "max_tokens", "seed", "stream", "tools",
                    "tool_choice", "response_format",
                    "x_context_strategy", "x_context_max_turns", "x_context_output_reserve",
                ],
                "unsupported_parameters": UNSUPPORTED,
                "notes": "Simulated by modelyard-sim.",
            }]}),
        )
    }

    async fn chat(
        &self,
        state: &Arc<SimState>,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let body = match read_body(state, request, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return openai_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large (limit 1 MiB)",
                    "invalid_request_error",
                    None,
                    None,
                )
            }
            Err(e) => return invalid(e.to_string(), None),
        };
        if let Some(response) = self.rejection(&body) {
            return response;
        }
        let permit = match tokio::time::timeout(
            self.concurrency_wait,
            Arc::clone(&self.slots).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return openai_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Server at max concurrent capacity ({}). Try again later.",
                        self.max_concurrent
                    ),
                    "rate_limit_error",
                    None,
                    None,
                )
            }
        };
        let serving = Serving {
            stream: StreamExtras {
                hold: Some(Box::new(permit)),
                ..StreamExtras::default()
            },
            leading_space: false,
        };
        serve_completion(state, &body, MODEL, Kind::Chat, serving).await
    }

    /// Why apfel refuses this chat request, if it does.
    fn rejection(&self, body: &Value) -> Option<Response<ResponseBody>> {
        match body.get("model") {
            None | Some(Value::Null) => {}
            Some(Value::String(m)) if m == MODEL => {}
            Some(other) => {
                return Some(openai_error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "The model '{}' does not exist. The only available model is '{MODEL}'.",
                        other.as_str().unwrap_or("")
                    ),
                    "invalid_request_error",
                    Some("model"),
                    Some("model_not_found"),
                ))
            }
        }
        for param in UNSUPPORTED {
            let value = body.get(param).unwrap_or(&Value::Null);
            let rejected = match param {
                "logprobs" => value == &json!(true),
                "n" => !value.is_null() && value != &json!(1),
                _ => !value.is_null(),
            };
            if rejected {
                return Some(invalid(
                    format!("Parameter '{param}' is not supported by the Apple Foundation Model"),
                    Some(param),
                ));
            }
        }
        let messages = match body.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => messages,
            _ => {
                return Some(invalid(
                    "'messages' must not be empty".into(),
                    Some("messages"),
                ))
            }
        };
        let mut chars = 0u64;
        for message in messages {
            match message.get("content") {
                Some(Value::String(text)) => chars += text.chars().count() as u64,
                Some(Value::Array(parts)) => {
                    for part in parts {
                        let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
                        if kind.contains("image") {
                            return Some(invalid(
                                "Image content is not supported".into(),
                                Some("messages"),
                            ));
                        }
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            chars += text.chars().count() as u64;
                        }
                    }
                }
                _ => {}
            }
        }
        if chars.div_ceil(4) > self.context_window.saturating_sub(OUTPUT_RESERVE) {
            return Some(openai_error(
                StatusCode::BAD_REQUEST,
                "Input exceeds the model's context window. Shorten the conversation history.",
                "context_length_exceeded",
                None,
                Some("context_length_exceeded"),
            ));
        }
        None
    }
}

fn invalid(message: String, param: Option<&str>) -> Response<ResponseBody> {
    openai_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        None,
    )
}
