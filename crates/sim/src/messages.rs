//! Anthropic's Messages API (`POST /v1/messages`), as the Anthropic SDKs and
//! Claude Code speak it to local servers (Ollama and llama.cpp serve it too):
//! the same tokens as a chat completion in Anthropic's shapes, and a
//! `tool_use` block when the request offers `tools` — then words once the
//! conversation ends with the tool's result.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};

use crate::completions::{answer_text, budget, count_words, optional_bool, token_text};
use crate::reply::{reply_fields, Reply};
use crate::response::{json_response, ResponseBody};

#[derive(Debug, Clone)]
pub struct Message {
    id: String,
    model: String,
    tokens: u64,
    input_tokens: u64,
    stop_reason: &'static str,
    stream: bool,
    /// Name and input of the tool this reply calls instead of answering.
    tool_use: Option<(String, Value)>,
}

impl Message {
    /// Validates a request body the way Anthropic's API does; `model` has
    /// already been checked against the served models.
    pub fn from_request(
        body: &Value,
        model: &str,
        configured_tokens: u64,
    ) -> Result<Self, (String, &'static str)> {
        let stream = optional_bool(body, "stream")?.unwrap_or(false);
        let Some(max_tokens) = body.get("max_tokens") else {
            return Err(("max_tokens: Field required".into(), "max_tokens"));
        };
        let Some(max_tokens) = max_tokens.as_u64().filter(|n| *n > 0) else {
            return Err((
                "max_tokens: Input should be a positive integer".into(),
                "max_tokens",
            ));
        };
        let input_tokens = input_tokens(body).map_err(|m| (m, "messages"))?;
        let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
        let (mut tokens, mut stop_reason) = match budget(Some(max_tokens), configured_tokens) {
            (n, "length") => (n, "max_tokens"),
            (n, _) => (n, "end_turn"),
        };
        let tool_use = tool_to_use(body, messages);
        if tool_use.is_some() {
            (tokens, stop_reason) = (1, "tool_use");
        }
        Ok(Self {
            id: String::new(),
            model: model.to_owned(),
            tokens,
            input_tokens: input_tokens.max(1),
            stop_reason,
            stream,
            tool_use,
        })
    }

    fn tool_use_id(&self) -> String {
        self.id.replacen("msg_", "toolu_", 1)
    }

    fn content_block(&self, complete: bool) -> Value {
        match &self.tool_use {
            Some((name, input)) => json!({
                "type": "tool_use",
                "id": self.tool_use_id(),
                "name": name,
                "input": if complete { input.clone() } else { json!({}) },
            }),
            None => json!({
                "type": "text",
                "text": if complete { answer_text(self.tokens) } else { String::new() },
            }),
        }
    }

    fn message(&self, content: Value, stop_reason: Value, output_tokens: u64) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": output_tokens},
        })
    }
}

impl Reply for Message {
    fn set_number(&mut self, number: u64) {
        self.id = format!("msg_sim_{number}");
    }

    reply_fields!();

    fn full_response(&self) -> Value {
        self.message(
            json!([self.content_block(true)]),
            json!(self.stop_reason),
            self.tokens,
        )
    }

    fn opening_events(&self) -> Vec<Bytes> {
        vec![
            event(
                "message_start",
                json!({"message": self.message(json!([]), Value::Null, 1)}),
            ),
            event(
                "content_block_start",
                json!({"index": 0, "content_block": self.content_block(false)}),
            ),
            event("ping", json!({})),
        ]
    }

    fn token_event(&self, i: u64) -> Bytes {
        let delta = match &self.tool_use {
            Some((_, input)) => {
                json!({"type": "input_json_delta", "partial_json": input.to_string()})
            }
            None => json!({"type": "text_delta", "text": token_text(i)}),
        };
        event("content_block_delta", json!({"index": 0, "delta": delta}))
    }

    fn closing_events(&self) -> Vec<Bytes> {
        vec![
            event("content_block_stop", json!({"index": 0})),
            event(
                "message_delta",
                json!({
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": self.tokens},
                }),
            ),
            event("message_stop", json!({})),
        ]
    }

    /// Anthropic ends a failed stream with an `error` event.
    fn abort_events(&self, _sent: u64) -> Vec<Bytes> {
        vec![event(
            "error",
            error_body("api_error", "Request aborted: the model was unloaded"),
        )]
    }
}

/// What a request's `system` and `messages` count as input, or why they
/// cannot be read (as `count_tokens` and `messages` both refuse them).
pub fn input_tokens(body: &Value) -> Result<u64, String> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err("messages: Field required".into());
    };
    let mut tokens = match body.get("system") {
        None | Some(Value::Null) => 0,
        Some(system) => count_words(system),
    };
    for m in messages {
        if !matches!(m["role"].as_str(), Some("user" | "assistant")) {
            return Err("messages: each role must be 'user' or 'assistant'".into());
        }
        tokens += count_words(&m["content"]);
    }
    Ok(tokens)
}

/// The tool to call: the first offered (or the one `tool_choice` names),
/// unless `tool_choice` is none or the last message carries a tool's result.
fn tool_to_use(body: &Value, messages: &[Value]) -> Option<(String, Value)> {
    let after_result = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
    });
    let choice = &body["tool_choice"];
    if after_result || choice["type"] == "none" {
        return None;
    }
    let tools = body["tools"].as_array()?;
    let tool = match choice["type"].as_str() {
        Some("tool") => tools.iter().find(|t| t["name"] == choice["name"])?,
        _ => tools.first()?,
    };
    let input = match tool.get("input_schema") {
        Some(schema) if schema.get("properties").is_some() => crate::schema::example(schema),
        _ => json!({}),
    };
    Some((tool["name"].as_str()?.to_owned(), input))
}

/// Anthropic's error object, in a body or an `error` event.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// An error response in Anthropic's shape.
pub fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> http::Response<ResponseBody> {
    json_response(status, &error_body(kind, message))
}

/// Messages SSE: a named event whose data repeats its type.
fn event(kind: &str, mut data: Value) -> Bytes {
    data["type"] = json!(kind);
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: Value) -> Message {
        let mut m = Message::from_request(&body, "m", 3).unwrap();
        m.set_number(7);
        m
    }

    #[test]
    fn a_plain_message_in_anthropic_shape() {
        let m = message(json!({"max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]}));
        assert_eq!(
            m.full_response(),
            json!({"id": "msg_sim_7", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": "t0 t1 t2 "}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 4, "output_tokens": 3}})
        );
        let m = message(json!({"max_tokens": 2, "messages": []}));
        assert_eq!(m.full_response()["stop_reason"], "max_tokens");
    }

    #[test]
    fn tools_get_a_tool_use_then_words_after_the_result() {
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
        let m = message(json!({"max_tokens": 100, "tools": tools,
            "messages": [{"role": "user", "content": "weather?"}]}));
        let full = m.full_response();
        assert_eq!(full["stop_reason"], "tool_use");
        let block = &full["content"][0];
        assert_eq!(
            (
                block["type"].clone(),
                block["name"].clone(),
                block["input"].clone()
            ),
            (
                json!("tool_use"),
                json!("get_weather"),
                json!({"city": "sim"})
            )
        );
        assert_eq!(block["id"], "toolu_sim_7");
        let streamed: String = m
            .opening_events()
            .into_iter()
            .chain([m.token_event(0)])
            .chain(m.closing_events())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert!(streamed.starts_with("event: message_start\ndata: {"));
        assert!(streamed.contains(r#""partial_json":"{\"city\":\"sim\"}""#));
        assert!(streamed.contains(r#""stop_reason":"tool_use""#));
        assert!(streamed.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let m = message(json!({"max_tokens": 100, "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [block]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_sim_7", "content": "rain"}]},
        ]}));
        assert_eq!(m.full_response()["content"][0]["type"], "text");
    }

    #[test]
    fn refuses_what_anthropic_refuses() {
        let err = |body: Value| Message::from_request(&body, "m", 3).unwrap_err().1;
        assert_eq!(err(json!({"messages": []})), "max_tokens");
        assert_eq!(err(json!({"max_tokens": 0, "messages": []})), "max_tokens");
        assert_eq!(err(json!({"max_tokens": 5})), "messages");
        assert_eq!(
            err(json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]})),
            "messages"
        );
    }
}
