use bytes::Bytes;
use serde_json::{json, Value};

use crate::reply::{reply_fields, Reply};

/// Which OpenAI endpoint a generation answers; they differ only in object
/// names and whether text lives in `message`/`delta` or `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// Everything needed to render one request's reply, streamed or not, so both
/// paths produce the same content.
#[derive(Debug, Clone)]
pub struct Generation {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub tokens: u64,
    pub prompt_tokens: u64,
    /// "length" when the request's own limit cut generation short.
    pub finish_reason: &'static str,
    pub stream: bool,
    pub include_usage: bool,
    /// The tool this reply calls instead of answering: the first of the
    /// request's `tools`, unless the conversation already ends with a tool's
    /// result, which is then answered in words (an agent loop's two turns).
    pub tool_call: Option<ToolCall>,
    /// The whole content when `response_format` asks for JSON: one JSON
    /// text, sent as a single token so a stream's deltas join into it.
    pub structured: Option<String>,
    /// Asked to think (`reasoning_effort` other than "none"): the reply
    /// carries `reasoning_content` first, as llama.cpp writes a thinking
    /// model's reasoning.
    pub reasoning: bool,
}

/// The reasoning a thinking reply carries, before its answer.
pub const REASONING: &str = "the user wants an answer. ";

/// A call the reply makes: the tool's name and its arguments as a JSON text,
/// made to follow the tool's `parameters` schema.
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// Token `i` of every reply. Fixed text keeps replies deterministic, so tests
/// can compare streamed and non-streamed output byte for byte.
pub fn token_text(i: u64) -> String {
    format!("t{i} ")
}

pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

pub fn sse_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl Generation {
    /// Validates a request body and decides what to generate. `model` has
    /// already been checked against the served models.
    pub fn from_request(
        kind: Kind,
        body: &Value,
        model: &str,
        configured_tokens: u64,
        created: u64,
    ) -> Result<Self, (String, &'static str)> {
        let stream = optional_bool(body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(options) => optional_bool(options, "include_usage")?.unwrap_or(false),
        };
        let limit = [
            optional_u64(body, "max_tokens")?,
            optional_u64(body, "max_completion_tokens")?,
        ]
        .into_iter()
        .flatten()
        .min();
        let (mut tokens, mut finish_reason) = budget(limit, configured_tokens);
        let tool_call = match kind {
            Kind::Chat => tool_to_call(body),
            Kind::Text => None,
        };
        let structured = match kind {
            Kind::Chat if tool_call.is_none() => structured_content(body)?,
            _ => None,
        };
        if tool_call.is_some() {
            (tokens, finish_reason) = (1, "tool_calls");
        } else if structured.is_some() {
            (tokens, finish_reason) = (1, "stop");
        }
        let prompt_tokens = match kind {
            Kind::Chat => {
                let Some(messages) = body.get("messages").and_then(Value::as_array) else {
                    return Err(("'messages' must be an array".into(), "messages"));
                };
                messages
                    .iter()
                    .map(|m| count_words(m.get("content").unwrap_or(&Value::Null)))
                    .sum()
            }
            Kind::Text => count_words(body.get("prompt").unwrap_or(&Value::Null)),
        };
        let reasoning = match body.get("reasoning_effort") {
            None | Some(Value::Null) => false,
            Some(Value::String(effort)) => kind == Kind::Chat && effort != "none",
            Some(_) => {
                return Err((
                    "'reasoning_effort' must be a string".into(),
                    "reasoning_effort",
                ))
            }
        };
        Ok(Self {
            kind,
            id: String::new(),
            created,
            model: model.to_owned(),
            tokens,
            prompt_tokens: prompt_tokens.max(1),
            finish_reason,
            stream,
            include_usage,
            tool_call,
            structured,
            reasoning,
        })
    }

    /// What the assistant says: the structured answer, or `tokens` words.
    fn content(&self, i: Option<u64>) -> String {
        match (&self.structured, i) {
            (Some(text), _) => text.clone(),
            (None, Some(i)) => token_text(i),
            (None, None) => answer_text(self.tokens),
        }
    }

    /// The call this reply makes, as OpenAI writes it (arguments are a JSON
    /// text); `index` is there in stream deltas only.
    fn call(&self, call: &ToolCall, streamed: bool) -> Value {
        let mut call = json!({
            "id": format!("call_{}", self.id),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        });
        if streamed {
            call["index"] = json!(0);
        }
        call
    }

    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
        })
    }

    /// Chat streams announce the assistant role before any content; text
    /// completions have no such chunk.
    pub fn opening_chunk(&self) -> Option<Value> {
        match self.kind {
            Kind::Chat => Some(self.chunk(vec![json!({
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": null,
            })])),
            Kind::Text => None,
        }
    }

    pub fn token_chunk(&self, i: u64) -> Value {
        if let Some(call) = &self.tool_call {
            return self.chunk(vec![json!({
                "index": 0,
                "delta": {"tool_calls": [self.call(call, true)]},
                "finish_reason": null,
            })]);
        }
        self.choice_chunk(json!(self.content(Some(i))), Value::Null)
    }

    pub fn finish_chunk(&self) -> Value {
        let content = match self.kind {
            Kind::Chat => Value::Null,
            Kind::Text => json!(""),
        };
        self.choice_chunk(content, json!(self.finish_reason))
    }

    pub fn usage_chunk(&self) -> Value {
        let mut chunk = self.chunk(Vec::new());
        chunk["usage"] = self.usage();
        chunk
    }

    /// `content` of `Null` renders an empty chat delta.
    fn choice_chunk(&self, content: Value, finish_reason: Value) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = if content.is_null() {
                    json!({})
                } else {
                    json!({"content": content})
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish_reason})
            }
            Kind::Text => json!({
                "index": 0,
                "text": content,
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        self.chunk(vec![choice])
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

impl Reply for Generation {
    fn set_number(&mut self, number: u64) {
        self.id = match self.kind {
            Kind::Chat => format!("chatcmpl-sim-{number}"),
            Kind::Text => format!("cmpl-sim-{number}"),
        };
    }

    reply_fields!();

    fn full_response(&self) -> Value {
        let text = self.content(None);
        let (object, choice) = match self.kind {
            Kind::Chat => {
                let mut message = match &self.tool_call {
                    Some(call) => json!({"role": "assistant", "content": null,
                        "tool_calls": [self.call(call, false)]}),
                    None => json!({"role": "assistant", "content": text}),
                };
                if self.reasoning {
                    message["reasoning_content"] = json!(REASONING);
                }
                (
                    "chat.completion",
                    json!({
                        "index": 0,
                        "message": message,
                        "finish_reason": self.finish_reason,
                    }),
                )
            }
            Kind::Text => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": self.finish_reason,
                }),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    fn opening_events(&self) -> Vec<Bytes> {
        let mut events: Vec<Bytes> = self.opening_chunk().iter().map(sse_event).collect();
        if self.reasoning {
            events.push(sse_event(&self.chunk(vec![json!({
                "index": 0,
                "delta": {"reasoning_content": REASONING},
                "finish_reason": null,
            })])));
        }
        events
    }

    fn token_event(&self, i: u64) -> Bytes {
        sse_event(&self.token_chunk(i))
    }

    fn closing_events(&self) -> Vec<Bytes> {
        let mut tail = vec![sse_event(&self.finish_chunk())];
        if self.include_usage {
            tail.push(sse_event(&self.usage_chunk()));
        }
        tail.push(Bytes::from_static(DONE_EVENT));
        tail
    }

    /// How oMLX ends a stream whose model was unloaded under it.
    fn abort_events(&self, _sent: u64) -> Vec<Bytes> {
        let error = json!({"error": {
            "message": "Request aborted: the model was unloaded",
            "type": "server_error",
        }});
        vec![sse_event(&error), Bytes::from_static(DONE_EVENT)]
    }
}

/// The first tool a chat request offers, unless its last message is a tool's
/// result or `tool_choice` is "none"; a named `tool_choice` picks that tool.
fn tool_to_call(body: &Value) -> Option<ToolCall> {
    let after_result = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    if after_result || body["tool_choice"] == "none" {
        return None;
    }
    let tools = body["tools"].as_array()?;
    let chosen = body.pointer("/tool_choice/function/name");
    let tool = match chosen {
        Some(name) => tools
            .iter()
            .find(|t| t.pointer("/function/name") == Some(name))?,
        None => tools.first()?,
    };
    let function = tool.get("function")?;
    Some(ToolCall {
        name: function.get("name")?.as_str()?.to_owned(),
        arguments: arguments_for(function.get("parameters")),
    })
}

/// A tool's arguments as a JSON text: an object following its parameter
/// schema, `{}` when it declares none.
pub fn arguments_for(parameters: Option<&Value>) -> String {
    match parameters {
        Some(schema) if schema.get("properties").is_some() || schema.get("$ref").is_some() => {
            crate::schema::example(schema).to_string()
        }
        _ => "{}".to_owned(),
    }
}

/// The content a `response_format` asks for: `json_object` gets an object
/// holding the words, `json_schema` a value following the schema; `text` or
/// none, plain words.
fn structured_content(body: &Value) -> Result<Option<String>, (String, &'static str)> {
    let format = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(format) => format,
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        // A model in JSON mode follows the schema its prompt describes, if any.
        Some("json_object") => Ok(Some(match schema_in_prompt(body) {
            Some(schema) => crate::schema::example(&schema).to_string(),
            None => json!({"answer": "t0"}).to_string(),
        })),
        Some("json_schema") => match format.pointer("/json_schema/schema") {
            Some(schema) => Ok(Some(crate::schema::example(schema).to_string())),
            None => Err((
                "'response_format.json_schema.schema' is required".into(),
                "response_format",
            )),
        },
        _ => Err((
            "'response_format.type' must be one of 'text', 'json_object', 'json_schema'".into(),
            "response_format",
        )),
    }
}

/// How much of a prompt is searched for a schema, and at how many `{`s.
const SCHEMA_SEARCH_BYTES: usize = 64 * 1024;
const SCHEMA_SEARCH_STARTS: usize = 64;

/// The first JSON schema (an object with `properties`) written into a chat's
/// messages, as instructor's JSON mode and many prompts put one: what a
/// model asked for `json_object` would follow.
fn schema_in_prompt(body: &Value) -> Option<Value> {
    let messages = body["messages"].as_array()?;
    let texts = messages.iter().filter_map(|m| m["content"].as_str());
    for text in texts {
        let text = &text[..floor_char_boundary(text, SCHEMA_SEARCH_BYTES)];
        for (start, _) in text.match_indices('{').take(SCHEMA_SEARCH_STARTS) {
            let mut values =
                serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
            if let Some(Ok(v)) = values.next() {
                if v.get("properties").is_some_and(Value::is_object) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// The largest char boundary at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The whole text of a reply `tokens` long.
pub fn answer_text(tokens: u64) -> String {
    (0..tokens).map(token_text).collect()
}

/// How many of the `configured` tokens to generate under a request's own
/// `limit`, and the finish reason: "length" when the limit cut it short.
pub fn budget(limit: Option<u64>, configured: u64) -> (u64, &'static str) {
    match limit {
        Some(l) if l < configured => (l, "length"),
        _ => (configured, "stop"),
    }
}

/// A stand-in for tokenisation: whitespace-separated words across all text
/// in a prompt, message content or array of content parts.
pub fn count_words(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                // Pre-tokenised prompts count one per token id.
                Value::Number(_) => 1,
                Value::Object(part) => part.get("text").map_or(0, count_words),
                other => count_words(other),
            })
            .sum(),
        _ => 0,
    }
}

pub fn optional_bool(
    body: &Value,
    field: &'static str,
) -> Result<Option<bool>, (String, &'static str)> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err((format!("'{field}' must be a boolean"), field)),
    }
}

pub fn optional_u64(
    body: &Value,
    field: &'static str,
) -> Result<Option<u64>, (String, &'static str)> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| (format!("'{field}' must be a non-negative integer"), field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Generation {
        let mut g = Generation::from_request(Kind::Chat, &body, "m", 4, 123).unwrap();
        g.set_number(7);
        g
    }

    #[test]
    fn non_streamed_chat_shape() {
        let g = chat(json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
        ]}));
        assert!(!g.stream);
        assert_eq!(
            g.full_response(),
            json!({
                "id": "chatcmpl-sim-7",
                "object": "chat.completion",
                "created": 123,
                "model": "m",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "t0 t1 t2 t3 "},
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            })
        );
    }

    #[test]
    fn a_chat_with_tools_calls_the_first_then_answers_its_result() {
        let tools =
            json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);
        let g =
            chat(json!({"messages": [{"role": "user", "content": "weather?"}], "tools": tools}));
        let r = g.full_response();
        assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
        let call = &r["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(
            call["function"]["arguments"], "{}",
            "no parameters, no arguments"
        );
        assert_eq!(call["id"], "call_chatcmpl-sim-7");
        assert!(call.get("index").is_none());
        let delta = &g.token_chunk(0)["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (delta["index"].clone(), delta["id"].clone()),
            (json!(0), call["id"].clone())
        );
        assert_eq!(
            g.finish_chunk()["choices"][0]["finish_reason"],
            "tool_calls"
        );
        // The second turn, with the tool's result: words.
        let g = chat(json!({"tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "rain"},
        ]}));
        assert_eq!(
            g.full_response()["choices"][0]["message"]["content"],
            "t0 t1 t2 t3 "
        );
        assert_eq!(g.finish_reason, "stop");
    }

    #[test]
    fn tool_arguments_follow_the_parameter_schema() {
        let tools = json!([
            {"type": "function", "function": {"name": "other", "parameters": {}}},
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            }}},
        ]);
        let g = chat(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        );
        let call = &g.full_response()["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "sim", "days": 1}));
        let g = chat(json!({"messages": [], "tools": tools, "tool_choice": "none"}));
        assert!(g.tool_call.is_none());
    }

    #[test]
    fn response_format_gets_json_streamed_or_not() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}});
        let g = chat(json!({"messages": [], "stream": true, "response_format":
            {"type": "json_schema", "json_schema": {"name": "Person", "schema": schema}}}));
        let full = g.full_response();
        let text = full["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            json!({"name": "sim", "age": 1})
        );
        assert_eq!(g.tokens, 1);
        assert_eq!(g.token_chunk(0)["choices"][0]["delta"]["content"], text);
        let g = chat(json!({"messages": [], "response_format": {"type": "json_object"}}));
        let text = g.full_response()["choices"][0]["message"]["content"].clone();
        assert!(serde_json::from_str::<Value>(text.as_str().unwrap())
            .unwrap()
            .is_object());
        // JSON mode with the schema in the prompt, as instructor's Mode.JSON writes it.
        let prompt = format!(
            "Return JSON matching this json_schema:\n\n{schema:#}\n\nNot the schema. Ünïcode {{ stray"
        );
        let g = chat(json!({"messages": [{"role": "system", "content": prompt}],
            "response_format": {"type": "json_object"}}));
        let text = g.full_response()["choices"][0]["message"]["content"].clone();
        assert_eq!(
            serde_json::from_str::<Value>(text.as_str().unwrap()).unwrap(),
            json!({"name": "sim", "age": 1})
        );
        let err = Generation::from_request(
            Kind::Chat,
            &json!({"messages": [],
            "response_format": {"type": "yaml"}}),
            "m",
            4,
            0,
        )
        .unwrap_err();
        assert_eq!(err.1, "response_format");
    }

    #[test]
    fn asked_to_reason_the_reply_reasons_first() {
        let g = chat(json!({"messages": [], "reasoning_effort": "high", "stream": true}));
        let full = g.full_response();
        assert_eq!(
            full["choices"][0]["message"]["reasoning_content"],
            REASONING
        );
        let opening = g.opening_events();
        assert_eq!(opening.len(), 2);
        assert!(String::from_utf8_lossy(&opening[1]).contains("reasoning_content"));
        let g = chat(json!({"messages": [], "reasoning_effort": "none"}));
        assert!(g.full_response()["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
    }

    #[test]
    fn request_limits_tokens() {
        let g = chat(json!({"messages": [], "max_tokens": 10, "max_completion_tokens": 2}));
        assert_eq!(
            (g.tokens, g.finish_reason, g.prompt_tokens),
            (2, "length", 1)
        );
        let g = chat(json!({"messages": [], "max_tokens": 10}));
        assert_eq!((g.tokens, g.finish_reason), (4, "stop"));
    }

    #[test]
    fn rejects_bad_fields() {
        let err = |body: Value| {
            Generation::from_request(Kind::Chat, &body, "m", 4, 0)
                .unwrap_err()
                .1
        };
        assert_eq!(err(json!({"messages": [], "stream": "yes"})), "stream");
        assert_eq!(err(json!({"messages": [], "max_tokens": -1})), "max_tokens");
        assert_eq!(err(json!({"model": "m"})), "messages");
        assert_eq!(
            err(json!({"messages": [], "stream_options": {"include_usage": 1}})),
            "include_usage"
        );
    }

    #[test]
    fn chat_chunk_shapes() {
        let g = chat(
            json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}}),
        );
        assert!(g.stream && g.include_usage);
        let base = |choices: Value| json!({"id": "chatcmpl-sim-7", "object": "chat.completion.chunk", "created": 123, "model": "m", "choices": choices});
        assert_eq!(
            g.opening_chunk().unwrap(),
            base(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])
            )
        );
        assert_eq!(
            g.token_chunk(3),
            base(json!([{"index": 0, "delta": {"content": "t3 "}, "finish_reason": null}]))
        );
        assert_eq!(
            g.finish_chunk(),
            base(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        );
        let mut usage = base(json!([]));
        usage["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5});
        assert_eq!(g.usage_chunk(), usage);
    }

    #[test]
    fn text_completion_shapes() {
        let mut g = Generation::from_request(
            Kind::Text,
            &json!({"prompt": ["a b", "c"], "max_tokens": 1}),
            "m",
            4,
            9,
        )
        .unwrap();
        g.set_number(2);
        assert!(g.opening_chunk().is_none());
        let full = g.full_response();
        assert_eq!(full["object"], "text_completion");
        assert_eq!(full["id"], "cmpl-sim-2");
        assert_eq!(full["choices"][0]["text"], "t0 ");
        assert_eq!(full["choices"][0]["finish_reason"], "length");
        assert_eq!(full["usage"]["prompt_tokens"], 3);
        assert_eq!(g.token_chunk(0)["choices"][0]["text"], "t0 ");
        assert_eq!(g.token_chunk(0)["object"], "text_completion");
        assert_eq!(g.finish_chunk()["choices"][0]["text"], "");
        assert_eq!(g.finish_chunk()["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn sse_framing() {
        assert_eq!(&sse_event(&json!({"a": 1}))[..], b"data: {\"a\":1}\n\n");
    }
}
