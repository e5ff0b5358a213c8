use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use crate::completions::{Generation, Kind};
use crate::embeddings;
use crate::flavor::FlavorState;
use crate::forms;
use crate::messages::Message;
use crate::reply::Reply;
use crate::response::{
    bad_request, json_response, loading, not_found, openai_error, unix_now, ResponseBody,
};
use crate::responses::Answer;
use crate::state::SimState;
use crate::streaming::{aborted, spawn_stream, StreamExtras};

/// Large enough for any realistic prompt, small enough that a runaway client
/// cannot balloon the sim's memory beyond what `--memory` asked for.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// `created` for every model, fixed so `/v1/models` replies are reproducible.
pub const MODEL_CREATED: u64 = 1_700_000_000;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What an OpenAI-style inference route asks for; every flavor maps its paths
/// onto these.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Inference {
    Completion(Kind),
    Responses,
    Embeddings,
    /// Anthropic's `/v1/messages`.
    Messages,
}

pub async fn handle(
    state: Arc<SimState>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let request_id = request.headers().get(REQUEST_ID).cloned();
    // /sim/* belongs to the simulator, not the emulated API: the same in every
    // flavor, and never behind a flavor's key.
    let mut response =
        match crate::flavor::sim_route(&state, request.method(), request.uri().path()) {
            Some(ours) => ours,
            None => match &state.flavor {
                FlavorState::Openai => route(&state, request).await,
                FlavorState::Ollama(ollama) => ollama.route(&state, request).await,
                FlavorState::Omlx(omlx) => omlx.route(&state, request).await,
                FlavorState::Apfel(apfel) => apfel.route(&state, request).await,
            },
        };
    if let Some(id) = request_id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    Ok(response)
}

async fn route(state: &Arc<SimState>, request: Request<Incoming>) -> Response<ResponseBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if path.starts_with("/v1/") && !state.is_ready() {
        return loading();
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => health(state),
        (&Method::GET, "/v1/models") => models(state),
        (&Method::POST, "/v1/chat/completions") => {
            inference(state, request, Inference::Completion(Kind::Chat)).await
        }
        (&Method::POST, "/v1/completions") => {
            inference(state, request, Inference::Completion(Kind::Text)).await
        }
        (&Method::POST, "/v1/responses") => inference(state, request, Inference::Responses).await,
        (&Method::POST, "/v1/embeddings") => inference(state, request, Inference::Embeddings).await,
        (&Method::POST, "/v1/messages") => messages(state, request).await,
        (&Method::POST, "/v1/messages/count_tokens") => count_tokens(state, request).await,
        (
            &Method::POST,
            "/v1/audio/transcriptions"
            | "/v1/audio/translations"
            | "/v1/images/edits"
            | "/v1/images/variations",
        ) => forms::upload(state, request).await,
        (_, p) if p.starts_with("/sim/echo") => forms::echo(state, request).await,
        // GET routes that take ?model= (a voice list, say): described, not served.
        (&Method::GET, p) if p.starts_with("/v1/") => forms::echo(state, request).await,
        _ => not_found(format!("no route for {method} {path}")),
    }
}

fn health(state: &SimState) -> Response<ResponseBody> {
    if state.is_ready() {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading"}),
        )
    }
}

fn models(state: &SimState) -> Response<ResponseBody> {
    model_list(
        state.models.iter().map(String::as_str),
        "modelyard-sim",
        &[],
    )
}

/// OpenAI's `GET /v1/models` for `ids`, each entry with a flavor's own `extra` fields.
pub fn model_list<'a>(
    ids: impl Iterator<Item = &'a str>,
    owned_by: &str,
    extra: &[(&str, Value)],
) -> Response<ResponseBody> {
    let data: Vec<Value> = ids
        .map(|id| {
            let mut entry = json!({
                "id": id,
                "object": "model",
                "created": MODEL_CREATED,
                "owned_by": owned_by,
            });
            for (k, v) in extra {
                entry[*k] = v.clone();
            }
            entry
        })
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn inference(
    state: &Arc<SimState>,
    request: Request<Incoming>,
    kind: Inference,
) -> Response<ResponseBody> {
    let body = match read_body(state, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return bad_request(e.to_string(), None),
    };
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return bad_request("you must provide a 'model' string", Some("model"));
    };
    if !state.serves(model) {
        return openai_error(
            StatusCode::NOT_FOUND,
            format!(
                "model '{model}' is not served here (serving: {})",
                state.models.join(", ")
            ),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        );
    }
    if let Some(failure) = state.fail {
        state.stats.begin().complete();
        return crate::misbehave::respond(failure);
    }
    match kind {
        Inference::Completion(kind) => {
            serve_completion(state, &body, model, kind, Serving::default()).await
        }
        Inference::Responses => serve_responses(state, &body, model, Serving::default()).await,
        Inference::Embeddings => serve_embeddings(state, &body, model, Serving::default()),
        Inference::Messages => serve_messages(state, &body, model, Serving::default()).await,
    }
}

/// `POST /v1/messages`: Anthropic's API, its errors in Anthropic's shape.
async fn messages(state: &Arc<SimState>, request: Request<Incoming>) -> Response<ResponseBody> {
    let invalid = |message: &str| {
        crate::messages::error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    };
    let body = match read_body(state, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return invalid(&e.to_string()),
    };
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return invalid("model: Field required");
    };
    if !state.serves(model) {
        return crate::messages::error_response(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("model: {model}"),
        );
    }
    if let Some(failure) = state.fail {
        state.stats.begin().complete();
        return crate::misbehave::respond(failure);
    }
    serve_messages(state, &body, model, Serving::default()).await
}

/// Anthropic's Messages API for a validated model: a 400 in Anthropic's
/// shape for a body it would refuse.
pub async fn serve_messages(
    state: &Arc<SimState>,
    body: &Value,
    model: &str,
    serving: Serving,
) -> Response<ResponseBody> {
    match Message::from_request(body, model, state.tokens) {
        Ok(message) => serve_reply(state, Ok(message), serving).await,
        Err((message, _)) => crate::messages::error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &message,
        ),
    }
}

/// `POST /v1/messages/count_tokens`: the words the reply would count as input.
async fn count_tokens(state: &Arc<SimState>, request: Request<Incoming>) -> Response<ResponseBody> {
    let invalid = |message: &str| {
        crate::messages::error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    };
    let body = match read_body(state, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return invalid(&e.to_string()),
    };
    match crate::messages::input_tokens(&body) {
        Ok(n) => json_response(StatusCode::OK, &json!({"input_tokens": n})),
        Err(message) => invalid(&message),
    }
}

/// Why a request body could not be used.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Unreadable(String),
    NotJson(String),
    NotObject,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge => write!(f, "cannot read request body: length limit exceeded"),
            Self::Unreadable(e) => write!(f, "cannot read request body: {e}"),
            Self::NotJson(e) => write!(f, "request body is not valid JSON: {e}"),
            Self::NotObject => write!(f, "request body must be a JSON object"),
        }
    }
}

/// Reads a JSON object body, recording the request for `/sim/last-request`
/// whether or not it parses.
pub async fn read_body(
    state: &SimState,
    request: Request<Incoming>,
    limit: usize,
) -> Result<Value, BodyError> {
    let (parts, body) = request.into_parts();
    let raw = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(BodyError::TooLarge),
        Err(e) => return Err(BodyError::Unreadable(e.to_string())),
    };
    let parsed = serde_json::from_slice::<Value>(&raw);
    state.stats.record_last_request(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "headers": headers_json(&parts.headers),
        "body": match &parsed {
            Ok(value) => value.clone(),
            Err(_) => Value::String(String::from_utf8_lossy(&raw).into_owned()),
        },
    }));
    match parsed {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(BodyError::NotObject),
        Err(e) => Err(BodyError::NotJson(e.to_string())),
    }
}

/// What a flavor changes about serving an OpenAI request.
#[derive(Default)]
pub struct Serving {
    pub stream: StreamExtras,
    /// oMLX commits its 200 early and pads with spaces until the JSON is
    /// ready; one leading space reproduces what a client sees.
    pub leading_space: bool,
}

pub fn serve_embeddings(
    state: &Arc<SimState>,
    body: &Value,
    model: &str,
    serving: Serving,
) -> Response<ResponseBody> {
    let reply = match embeddings::respond(body, model) {
        Ok(reply) => reply,
        Err((message, param)) => return bad_request(message, Some(param)),
    };
    let guard = state.stats.begin();
    if state.should_crash(guard.number()) {
        crash_before_reply(guard.number());
    }
    guard.complete();
    reply_json(&reply, serving.leading_space)
}

fn reply_json(value: &Value, leading_space: bool) -> Response<ResponseBody> {
    if !leading_space {
        return json_response(StatusCode::OK, value);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(format!(" {value}"))).boxed())
        .expect("static response parts are valid")
}

pub async fn serve_completion(
    state: &Arc<SimState>,
    body: &Value,
    model: &str,
    kind: Kind,
    serving: Serving,
) -> Response<ResponseBody> {
    let generation = Generation::from_request(kind, body, model, state.tokens, unix_now());
    serve_reply(state, generation, serving).await
}

/// `POST /v1/responses`, stateless.
pub async fn serve_responses(
    state: &Arc<SimState>,
    body: &Value,
    model: &str,
    serving: Serving,
) -> Response<ResponseBody> {
    let answer = Answer::from_request(body, model, state.tokens, unix_now());
    serve_reply(state, answer, serving).await
}

/// Serves a validated request (a 400 otherwise) with every knob applied the
/// same way whatever the API's shape: numbering, crashes, pacing, abort.
async fn serve_reply(
    state: &Arc<SimState>,
    reply: Result<impl Reply, (String, &'static str)>,
    serving: Serving,
) -> Response<ResponseBody> {
    let mut reply = match reply {
        Ok(reply) => reply,
        Err((message, param)) => return bad_request(message, Some(param)),
    };
    let guard = state.stats.begin();
    reply.set_number(guard.number());
    let crash = state.should_crash(guard.number());
    let Serving {
        stream: mut extras,
        leading_space,
    } = serving;
    if reply.streamed() {
        if let Some(prelude) = extras.prelude.as_mut() {
            // The keep-alive chunk reuses the stream's id.
            prelude["id"] = json!(reply.id());
        }
        let body = spawn_stream(
            reply,
            guard,
            state.token_delay,
            crash,
            state.stall_after,
            extras,
        );
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(body.boxed())
            .expect("static response parts are valid");
    }
    if crash {
        crash_before_reply(guard.number());
    }
    // If the client leaves during this wait hyper drops this future, and with
    // it the guard, which records the cancellation.
    let ticks = u32::try_from(reply.tokens()).unwrap_or(u32::MAX);
    let work = state.token_delay.saturating_mul(ticks);
    // A zero sleep still waits for the timer wheel's next 1 ms tick.
    if !work.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(work) => {}
            () = aborted(&mut extras.abort) => {
                let error = json!({"error": {
                    "message": "Request aborted: the model was unloaded",
                    "type": "server_error",
                }});
                return reply_json(&error, leading_space);
            }
        }
    }
    guard.complete();
    reply_json(&reply.full_response(), leading_space)
}

pub fn crash_before_reply(number: u64) -> ! {
    eprintln!("request {number}: crashing as instructed by --crash-after");
    std::process::exit(1);
}

/// Lowercase header names to values; repeated headers are joined the way
/// HTTP allows them to be combined.
pub fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    Value::Object(map)
}
