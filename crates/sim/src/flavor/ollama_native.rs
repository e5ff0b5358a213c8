//! Ollama's native inference routes: `/api/generate`, `/api/chat` (NDJSON
//! streams), `/api/embed` and `/api/embeddings`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::clock::rfc3339;
use super::keep_alive::KeepAlive;
use super::ollama::{error, model_field, not_found_message, Ollama};
use super::pool::Lease;
use crate::completions::{count_words, token_text};
use crate::embeddings::{self as vectors, DEFAULT_DIMENSIONS};
use crate::response::{json_response, ResponseBody};
use crate::routes::{crash_before_reply, read_body, MAX_BODY_BYTES};
use crate::state::SimState;
use crate::stats::RequestGuard;
use crate::streaming::ChannelBody;

/// So the first token reaches the client before a crashing process dies.
const CRASH_FLUSH_GRACE: Duration = Duration::from_millis(100);

/// The parts of a generate or chat request that decide what happens.
struct Ask {
    model: String,
    keep_alive: KeepAlive,
    stream: bool,
    /// Empty prompt or messages: a load or unload request, not inference.
    empty: bool,
    num_predict: Option<u64>,
    prompt_tokens: u64,
}

fn parse_ask(ollama: &Ollama, body: &Value, chat: bool) -> Result<Ask, String> {
    let model = model_field(body).ok_or("model is required")?.to_owned();
    let keep_alive =
        KeepAlive::from_json(body.get("keep_alive"))?.unwrap_or(ollama.default_keep_alive);
    let stream = match body.get("stream") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("invalid stream value {other}")),
    };
    let (empty, prompt_tokens) = if chat {
        match body.get("messages") {
            None | Some(Value::Null) => (true, 0),
            Some(Value::Array(messages)) => (
                messages.is_empty(),
                messages
                    .iter()
                    .map(|m| count_words(m.get("content").unwrap_or(&Value::Null)))
                    .sum(),
            ),
            Some(_) => return Err("messages must be an array".into()),
        }
    } else {
        match body.get("prompt") {
            None | Some(Value::Null) => (true, 0),
            Some(Value::String(p)) => (p.is_empty(), count_words(&json!(p))),
            Some(_) => return Err("prompt must be a string".into()),
        }
    };
    // Negative means "until done" in Ollama, which here is --tokens.
    let num_predict = match body.get("options").and_then(|o| o.get("num_predict")) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n as u64),
            Some(_) => None,
            None => return Err(format!("invalid num_predict {v}")),
        },
    };
    Ok(Ask {
        model,
        keep_alive,
        stream,
        empty,
        num_predict,
        prompt_tokens: prompt_tokens.max(1),
    })
}

/// `/api/generate` (`chat` false) and `/api/chat`.
pub async fn generate(
    ollama: &Ollama,
    state: &Arc<SimState>,
    request: Request<Incoming>,
    chat: bool,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let body = match read_body(state, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let ask = match parse_ask(ollama, &body, chat) {
        Ok(ask) => ask,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let reply = Reply {
        chat,
        model: ask.model.clone(),
        answer: Answer::from_request(&body, chat),
    };
    if ask.empty {
        if ask.keep_alive == KeepAlive::For(Duration::ZERO) {
            // Like Ollama, answer before the memory is back: the unload
            // happens after --unload-time, and only once the model is idle.
            if !ollama.pool.expire(&ask.model) {
                return error(StatusCode::NOT_FOUND, not_found_message(&ask.model));
            }
            return json_response(StatusCode::OK, &reply.done("unload"));
        }
        return match ollama.acquire(&ask.model, ask.keep_alive).await {
            Ok(lease) => {
                drop(lease);
                json_response(StatusCode::OK, &reply.done("load"))
            }
            Err(response) => response,
        };
    }
    if !ollama.pool.knows(&ask.model) {
        return error(StatusCode::NOT_FOUND, not_found_message(&ask.model));
    }
    let guard = state.stats.begin();
    let crash = state.should_crash(guard.number());
    let lease = match ollama.acquire(&ask.model, ask.keep_alive).await {
        Ok(lease) => lease,
        Err(response) => return response,
    };
    let tokens = if reply.answer.fixed() {
        1
    } else {
        ask.num_predict
            .map_or(state.tokens, |n| n.min(state.tokens))
    };
    let run = Run {
        done_reason: if tokens < state.tokens && !reply.answer.fixed() {
            "length"
        } else {
            "stop"
        },
        reply,
        tokens,
        prompt_tokens: ask.prompt_tokens,
        started,
        load_duration: lease.load_duration,
        eval_started: Instant::now(),
    };
    if ask.stream {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(stream(
            tx,
            run,
            guard,
            lease,
            state.token_delay,
            crash,
            state.stall_after,
        ));
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(ChannelBody::new(rx).boxed())
            .expect("static response parts are valid");
    }
    if crash {
        crash_before_reply(guard.number());
    }
    let work = state
        .token_delay
        .saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX));
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
    let value = run.reply.whole(tokens, run.final_fields());
    guard.complete();
    drop(lease);
    json_response(StatusCode::OK, &value)
}

/// What a request asks for besides words, answered as a model would: a call
/// to the first of its `tools` (until the conversation ends with a tool's
/// result), JSON for `format`, and thinking for `think`.
#[derive(Default)]
struct Answer {
    /// The call, in Ollama's shape (arguments an object, following the
    /// tool's parameter schema).
    tool_call: Option<Value>,
    /// The whole content when `format` asks for JSON.
    structured: Option<String>,
    thinking: bool,
}

impl Answer {
    fn from_request(body: &Value, chat: bool) -> Answer {
        let after_result = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["role"] == "tool");
        let tool_call = match (chat && !after_result, body["tools"].as_array()) {
            (true, Some(tools)) => tools.first().and_then(|t| {
                let function = t.get("function")?;
                let arguments = match function.get("parameters") {
                    Some(schema) if schema.get("properties").is_some() => {
                        crate::schema::example(schema)
                    }
                    _ => json!({}),
                };
                Some(json!({"function": {"name": function.get("name")?, "arguments": arguments}}))
            }),
            _ => None,
        };
        let structured = match body.get("format") {
            Some(Value::String(f)) if f == "json" => Some(json!({"answer": "t0"}).to_string()),
            Some(schema @ Value::Object(_)) => Some(crate::schema::example(schema).to_string()),
            _ => None,
        };
        let thinking = match body.get("think") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(level)) => !level.is_empty(),
            _ => false,
        };
        Answer {
            tool_call,
            structured,
            thinking,
        }
    }

    /// A tool call or a JSON answer comes whole, as one token.
    fn fixed(&self) -> bool {
        self.tool_call.is_some() || self.structured.is_some()
    }
}

/// How replies to one generate or chat request are shaped.
struct Reply {
    chat: bool,
    model: String,
    answer: Answer,
}

impl Reply {
    /// The line for token `i` of a stream: thinking comes with the first.
    fn token_line(&self, i: u64) -> Value {
        let text = match (&self.answer.tool_call, &self.answer.structured) {
            (Some(_), _) => String::new(),
            (None, Some(json)) => json.clone(),
            (None, None) => token_text(i),
        };
        let mut line = self.line(&text, None);
        self.decorate(&mut line, i == 0);
        line
    }

    /// The whole reply of `tokens` tokens, with the final fields.
    fn whole(&self, tokens: u64, done: Value) -> Value {
        let text: String = match &self.answer.structured {
            Some(json) => json.clone(),
            None if self.answer.tool_call.is_some() => String::new(),
            None => (0..tokens).map(token_text).collect(),
        };
        let mut line = self.line(&text, Some(done));
        self.decorate(&mut line, true);
        line
    }

    /// Adds the tool call and (on the first line) the thinking.
    fn decorate(&self, line: &mut Value, first: bool) {
        let target = if self.chat {
            &mut line["message"]
        } else {
            &mut *line
        };
        if first && self.answer.thinking {
            target["thinking"] = json!(crate::completions::REASONING);
        }
        if let Some(call) = &self.answer.tool_call {
            target["tool_calls"] = json!([call]);
        }
    }

    /// One NDJSON object; `done` carries the final line's extra fields.
    fn line(&self, content: &str, done: Option<Value>) -> Value {
        let mut value = json!({
            "model": self.model,
            "created_at": rfc3339(SystemTime::now()),
        });
        if self.chat {
            value["message"] = json!({"role": "assistant", "content": content});
        } else {
            value["response"] = json!(content);
        }
        value["done"] = json!(done.is_some());
        if let Some(Value::Object(extra)) = done {
            if let Value::Object(map) = &mut value {
                map.extend(extra);
            }
        }
        value
    }

    fn done(&self, reason: &str) -> Value {
        self.line("", Some(json!({"done_reason": reason})))
    }
}

struct Run {
    reply: Reply,
    tokens: u64,
    done_reason: &'static str,
    prompt_tokens: u64,
    started: Instant,
    load_duration: Duration,
    eval_started: Instant,
}

impl Run {
    /// `done_reason` and the metrics, durations in integer nanoseconds.
    fn final_fields(&self) -> Value {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The sim has no prefill; a token's worth of nothing stands in.
        let prompt_eval = Duration::from_micros(self.prompt_tokens * 10);
        json!({
            "done_reason": self.done_reason,
            "total_duration": nanos(self.started.elapsed()),
            "load_duration": nanos(self.load_duration),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": nanos(prompt_eval),
            "eval_count": self.tokens,
            "eval_duration": nanos(self.eval_started.elapsed()).max(1),
        })
    }
}

fn ndjson(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

async fn stream(
    tx: mpsc::Sender<Bytes>,
    run: Run,
    guard: RequestGuard,
    // Held until the stream ends, so the model counts as busy until then.
    _lease: Lease,
    token_delay: Duration,
    crash: bool,
    stall_after: Option<u64>,
) {
    // Every early return drops `guard` uncompleted, counting a cancellation.
    for i in 0..run.tokens {
        if !token_delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(token_delay) => {}
                () = tx.closed() => return,
            }
        }
        if tx.send(ndjson(&run.reply.token_line(i))).await.is_err() {
            return;
        }
        if crash {
            crash_after_flush(&tx, guard.number()).await;
        }
        if stall_after == Some(i + 1) {
            tx.closed().await;
            return;
        }
    }
    if crash {
        crash_after_flush(&tx, guard.number()).await;
    }
    let last = run.reply.line("", Some(run.final_fields()));
    if tx.send(ndjson(&last)).await.is_err() || tx.reserve().await.is_err() {
        return;
    }
    guard.complete();
}

async fn crash_after_flush(tx: &mpsc::Sender<Bytes>, number: u64) -> ! {
    let _ = tx.reserve().await;
    tokio::time::sleep(CRASH_FLUSH_GRACE).await;
    eprintln!("request {number}: crashing as instructed by --crash-after");
    std::process::exit(1);
}

/// The texts of an `/api/embed` input: a string or an array of strings.
fn embed_inputs(input: Option<&Value>) -> Result<Vec<String>, String> {
    match input {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "invalid input type".to_owned())
            })
            .collect(),
        Some(_) => Err("invalid input type".into()),
    }
}

pub async fn embed(
    ollama: &Ollama,
    state: &Arc<SimState>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let body = match read_body(state, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let parsed = model_field(&body)
        .ok_or_else(|| "model is required".to_owned())
        .and_then(|model| {
            let keep_alive = KeepAlive::from_json(body.get("keep_alive"))?;
            Ok((model, keep_alive, embed_inputs(body.get("input"))?))
        });
    let (model, keep_alive, inputs) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let keep_alive = keep_alive.unwrap_or(ollama.default_keep_alive);
    // An empty input only loads the model, as in Ollama.
    let guard = (!inputs.is_empty() && ollama.pool.knows(model)).then(|| state.stats.begin());
    let lease = match ollama.acquire(model, keep_alive).await {
        Ok(lease) => lease,
        Err(response) => return response,
    };
    if let Some(guard) = &guard {
        if state.should_crash(guard.number()) {
            crash_before_reply(guard.number());
        }
    }
    let embeddings: Vec<Vec<f32>> = inputs
        .iter()
        .map(|text| vectors::embed(text, DEFAULT_DIMENSIONS as usize))
        .collect();
    let prompt_eval_count: u64 = inputs
        .iter()
        .map(|t| (t.split_whitespace().count() as u64).max(1))
        .sum();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let reply = json!({
        "model": model,
        "embeddings": embeddings,
        "total_duration": nanos(started.elapsed()),
        "load_duration": nanos(lease.load_duration),
        "prompt_eval_count": prompt_eval_count,
    });
    drop(lease);
    if let Some(guard) = guard {
        guard.complete();
    }
    json_response(StatusCode::OK, &reply)
}

/// The older single-prompt route.
pub async fn embeddings(
    ollama: &Ollama,
    state: &Arc<SimState>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let body = match read_body(state, request, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(model) = model_field(&body) else {
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let keep_alive = match KeepAlive::from_json(body.get("keep_alive")) {
        Ok(k) => k.unwrap_or(ollama.default_keep_alive),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("");
    let guard = (!prompt.is_empty() && ollama.pool.knows(model)).then(|| state.stats.begin());
    let lease = match ollama.acquire(model, keep_alive).await {
        Ok(lease) => lease,
        Err(response) => return response,
    };
    if let Some(guard) = &guard {
        if state.should_crash(guard.number()) {
            crash_before_reply(guard.number());
        }
    }
    let embedding = if prompt.is_empty() {
        Vec::new()
    } else {
        vectors::embed(prompt, DEFAULT_DIMENSIONS as usize)
    };
    drop(lease);
    if let Some(guard) = guard {
        guard.complete();
    }
    json_response(StatusCode::OK, &json!({"embedding": embedding}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shapes() {
        let generate = Reply {
            chat: false,
            model: "m".into(),
            answer: Answer::default(),
        };
        let line = generate.line("t0 ", None);
        assert_eq!(line["response"], "t0 ");
        assert_eq!(line["done"], false);
        assert!(line.get("message").is_none());
        let unload = generate.done("unload");
        assert_eq!(unload["done_reason"], "unload");
        assert_eq!(unload["done"], true);
        assert_eq!(unload["response"], "");
        let chat = Reply {
            chat: true,
            model: "m".into(),
            answer: Answer::default(),
        };
        let line = chat.line("x", None);
        assert_eq!(
            line["message"],
            json!({"role": "assistant", "content": "x"})
        );
        assert!(line.get("response").is_none());
    }

    #[test]
    fn embed_input_forms() {
        assert_eq!(embed_inputs(None), Ok(vec![]));
        assert_eq!(embed_inputs(Some(&json!("a"))), Ok(vec!["a".to_owned()]));
        assert_eq!(embed_inputs(Some(&json!(["a", "b"]))).unwrap().len(), 2);
        assert!(embed_inputs(Some(&json!([1]))).is_err());
    }
}
