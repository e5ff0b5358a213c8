//! OpenAI's Responses API (`POST /v1/responses`), stateless as oMLX, apfel,
//! Ollama and llama.cpp serve it: the same tokens as a chat completion, in
//! the Responses shapes, one message with one text part.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::completions::{
    answer_text, budget, count_words, optional_bool, optional_u64, token_text,
};
use crate::reply::{reply_fields, Reply};

/// created, in_progress, output_item.added, content_part.added: the events
/// before the first delta, which `sequence_number`s count from.
const OPENING_EVENTS: u64 = 4;

#[derive(Debug, Clone)]
pub struct Answer {
    id: String,
    created_at: u64,
    model: String,
    tokens: u64,
    input_tokens: u64,
    /// `max_output_tokens` cut it short.
    incomplete: bool,
    stream: bool,
}

impl Answer {
    /// Validates a request body; `model` has already been checked against
    /// the served models.
    pub fn from_request(
        body: &Value,
        model: &str,
        configured_tokens: u64,
        created_at: u64,
    ) -> Result<Self, (String, &'static str)> {
        if !matches!(body.get("previous_response_id"), None | Some(Value::Null)) {
            return Err((
                "previous_response_id is not supported: this server is stateless, send the whole conversation as 'input'".into(),
                "previous_response_id",
            ));
        }
        let stream = optional_bool(body, "stream")?.unwrap_or(false);
        let (tokens, finish_reason) =
            budget(optional_u64(body, "max_output_tokens")?, configured_tokens);
        let instructions = match body.get("instructions") {
            None | Some(Value::Null) => 0,
            Some(text @ Value::String(_)) => count_words(text),
            Some(_) => return Err(("'instructions' must be a string".into(), "instructions")),
        };
        Ok(Self {
            id: String::new(),
            created_at,
            model: model.to_owned(),
            tokens,
            input_tokens: (instructions + input_words(body.get("input"))?).max(1),
            incomplete: finish_reason == "length",
            stream,
        })
    }

    fn status(&self) -> &'static str {
        if self.incomplete {
            "incomplete"
        } else {
            "completed"
        }
    }

    /// The one output item shares the response's number.
    fn item_id(&self) -> String {
        self.id.replacen("resp_", "msg_", 1)
    }

    fn response(&self, status: &str, output: Value, usage: Value) -> Value {
        let incomplete_details = if status == "incomplete" {
            json!({"reason": "max_output_tokens"})
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete_details,
            "model": self.model,
            "output": output,
            "usage": usage,
        })
    }

    fn usage(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.tokens,
        })
    }

    fn message(&self, status: &str, content: Value) -> Value {
        json!({
            "type": "message",
            "id": self.item_id(),
            "status": status,
            "role": "assistant",
            "content": content,
        })
    }

    /// An event about the text part: where it is, plus `fields`.
    fn part_event(&self, sequence: u64, kind: &str, mut fields: Value) -> Bytes {
        fields["item_id"] = json!(self.item_id());
        fields["output_index"] = json!(0);
        fields["content_index"] = json!(0);
        event(sequence, kind, fields)
    }
}

impl Reply for Answer {
    fn set_number(&mut self, number: u64) {
        self.id = format!("resp_sim_{number}");
    }

    reply_fields!();

    fn full_response(&self) -> Value {
        let part = text_part(&answer_text(self.tokens));
        let message = self.message(self.status(), json!([part]));
        self.response(self.status(), json!([message]), self.usage())
    }

    fn opening_events(&self) -> Vec<Bytes> {
        let started = json!({"response": self.response("in_progress", json!([]), Value::Null)});
        vec![
            event(0, "response.created", started.clone()),
            event(1, "response.in_progress", started),
            event(
                2,
                "response.output_item.added",
                json!({"output_index": 0, "item": self.message("in_progress", json!([]))}),
            ),
            self.part_event(
                3,
                "response.content_part.added",
                json!({"part": text_part("")}),
            ),
        ]
    }

    fn token_event(&self, i: u64) -> Bytes {
        self.part_event(
            OPENING_EVENTS + i,
            "response.output_text.delta",
            json!({"delta": token_text(i), "logprobs": []}),
        )
    }

    fn closing_events(&self) -> Vec<Bytes> {
        let next = OPENING_EVENTS + self.tokens;
        let text = answer_text(self.tokens);
        let full = self.full_response();
        let last = format!("response.{}", self.status());
        vec![
            self.part_event(
                next,
                "response.output_text.done",
                json!({"text": text, "logprobs": []}),
            ),
            self.part_event(
                next + 1,
                "response.content_part.done",
                json!({"part": text_part(&text)}),
            ),
            event(
                next + 2,
                "response.output_item.done",
                json!({"output_index": 0, "item": full["output"][0]}),
            ),
            event(next + 3, &last, json!({"response": full})),
        ]
    }

    /// Responses streams report errors as an `error` event and simply end.
    fn abort_events(&self, sent: u64) -> Vec<Bytes> {
        vec![event(
            OPENING_EVENTS + sent,
            "error",
            json!({
                "code": "server_error",
                "message": "Request aborted: the model was unloaded",
                "param": null,
            }),
        )]
    }
}

/// Words in `input`: a string, or message items whose content is a string
/// or a list of parts. Other item types (tool outputs, references to stored
/// items) need server state or tools this server does not have.
fn input_words(input: Option<&Value>) -> Result<u64, (String, &'static str)> {
    let invalid = || {
        (
            "'input' must be a string or an array of message items ({\"role\": ..., \"content\": ...})".to_owned(),
            "input",
        )
    };
    match input {
        None | Some(Value::Null) => Err(("Missing required parameter: 'input'".into(), "input")),
        Some(text @ Value::String(_)) => Ok(count_words(text)),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.get("content") {
                Some(text @ Value::String(_)) => Ok(count_words(text)),
                Some(parts @ Value::Array(list)) if list.iter().all(Value::is_object) => {
                    Ok(count_words(parts))
                }
                _ => Err(invalid()),
            })
            .sum(),
        Some(_) => Err(invalid()),
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// Responses SSE: a named event whose data repeats its type and carries its
/// place in the stream.
fn event(sequence: u64, kind: &str, mut data: Value) -> Bytes {
    data["type"] = json!(kind);
    data["sequence_number"] = json!(sequence);
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: Value) -> Answer {
        let mut a = Answer::from_request(&body, "m", 3, 123).unwrap();
        a.set_number(7);
        a
    }

    fn rejected(body: Value) -> &'static str {
        Answer::from_request(&body, "m", 3, 0).unwrap_err().1
    }

    /// The JSON of every event, checking its framing on the way.
    fn data(events: Vec<Bytes>) -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(e).unwrap();
                let (head, rest) = text.split_once('\n').unwrap();
                let value: Value =
                    serde_json::from_str(rest.strip_prefix("data: ").unwrap().trim_end()).unwrap();
                assert!(text.ends_with("\n\n"), "{text}");
                assert_eq!(head, format!("event: {}", value["type"].as_str().unwrap()));
                value
            })
            .collect()
    }

    #[test]
    fn non_streamed_shape() {
        let a = answer(json!({"instructions": "be brief", "input": [
            {"role": "user", "content": "hello there"},
            {"role": "user", "content": [{"type": "input_text", "text": "and you"}]},
        ]}));
        assert!(!a.streamed());
        assert_eq!(
            a.full_response(),
            json!({
                "id": "resp_sim_7",
                "object": "response",
                "created_at": 123,
                "status": "completed",
                "error": null,
                "incomplete_details": null,
                "model": "m",
                "output": [{
                    "type": "message",
                    "id": "msg_sim_7",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "t0 t1 t2 ", "annotations": []}],
                }],
                "usage": {
                    "input_tokens": 6,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 3,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 9,
                },
            })
        );
    }

    #[test]
    fn max_output_tokens_makes_it_incomplete() {
        let a = answer(json!({"input": "hi", "max_output_tokens": 2, "stream": true}));
        let full = a.full_response();
        assert_eq!(full["status"], "incomplete");
        assert_eq!(full["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(full["output"][0]["content"][0]["text"], "t0 t1 ");
        let closing = data(a.closing_events());
        assert_eq!(closing[3]["type"], "response.incomplete");
        assert_eq!(closing[3]["response"], full);
    }

    #[test]
    fn stream_is_numbered_and_adds_up() {
        let a = answer(json!({"input": "hi", "stream": true}));
        let mut events = a.opening_events();
        events.extend((0..a.tokens()).map(|i| a.token_event(i)));
        events.extend(a.closing_events());
        let events = data(events);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], n, "{e}");
        }
        assert_eq!(events[0]["response"]["status"], "in_progress");
        assert_eq!(events[0]["response"]["model"], "m");
        let deltas: String = events[4..7]
            .iter()
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(events[7]["text"], deltas);
        assert_eq!(events[4]["item_id"], "msg_sim_7");
        assert_eq!(events[9]["item"]["content"][0]["text"], deltas);
        assert_eq!(events[10]["response"], a.full_response());
        assert_eq!(
            data(a.abort_events(1))[0]["sequence_number"],
            OPENING_EVENTS + 1
        );
    }

    #[test]
    fn rejects_what_a_stateless_server_cannot_answer() {
        assert_eq!(rejected(json!({})), "input");
        assert_eq!(rejected(json!({"input": 42})), "input");
        assert_eq!(rejected(json!({"input": [{"role": "user"}]})), "input");
        assert_eq!(rejected(json!({"input": [{"content": [1]}]})), "input");
        assert_eq!(
            rejected(json!({"input": "hi", "previous_response_id": "resp_1"})),
            "previous_response_id"
        );
        assert_eq!(
            rejected(json!({"input": "hi", "instructions": 1})),
            "instructions"
        );
        assert_eq!(rejected(json!({"input": "hi", "stream": "yes"})), "stream");
        assert_eq!(
            rejected(json!({"input": "hi", "max_output_tokens": -1})),
            "max_output_tokens"
        );
    }
}
