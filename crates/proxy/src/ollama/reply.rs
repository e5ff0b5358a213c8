//! OpenAI answers turned back into Ollama's: one JSON object for a whole reply,
//! NDJSON lines for a stream (one per delta, then the `done` line with the
//! metrics). Pure: the clock readings come in as [`Timing`].

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::request::Shape;

/// What the router measured of one request, for Ollama's metrics (nanoseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// From the request's arrival to the end of the reply.
    pub total: Duration,
    /// Waiting for the model: its load, or its turn.
    pub load: Duration,
    /// From sending upstream to the first token (the prompt's evaluation).
    pub prompt_eval: Duration,
    /// From the first token to the last.
    pub eval: Duration,
}

/// Token counts from an OpenAI `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
}

impl Usage {
    pub fn from_openai(v: &Value) -> Usage {
        let u = &v["usage"];
        Usage {
            prompt: u["prompt_tokens"].as_u64(),
            completion: u["completion_tokens"].as_u64(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Ollama knows two reasons a generation ends: its stop, or its length limit.
pub fn done_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "length",
        _ => "stop",
    }
}

/// Adds the final line's metrics; counts only when the backend said them.
pub fn add_metrics(out: &mut Map<String, Value>, t: Timing, usage: Usage) {
    out.insert("total_duration".into(), json!(nanos(t.total)));
    out.insert("load_duration".into(), json!(nanos(t.load)));
    if let Some(n) = usage.prompt {
        out.insert("prompt_eval_count".into(), json!(n));
    }
    out.insert("prompt_eval_duration".into(), json!(nanos(t.prompt_eval)));
    if let Some(n) = usage.completion {
        out.insert("eval_count".into(), json!(n));
    }
    out.insert("eval_duration".into(), json!(nanos(t.eval)));
}

/// The start of every chat or generate line: `model` and `created_at`.
fn head(model: &str, created_at: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("model".into(), json!(model));
    m.insert("created_at".into(), json!(created_at));
    m
}

/// The text (and thinking, tool calls) of one piece of output, in `shape`.
fn put_output(
    m: &mut Map<String, Value>,
    shape: Shape,
    content: &str,
    thinking: Option<&str>,
    tool_calls: Option<Vec<Value>>,
) {
    match shape {
        Shape::Chat => {
            let mut msg = Map::new();
            msg.insert("role".into(), json!("assistant"));
            msg.insert("content".into(), json!(content));
            if let Some(t) = thinking.filter(|t| !t.is_empty()) {
                msg.insert("thinking".into(), json!(t));
            }
            if let Some(calls) = tool_calls.filter(|c| !c.is_empty()) {
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            m.insert("message".into(), Value::Object(msg));
        }
        _ => {
            m.insert("response".into(), json!(content));
            if let Some(t) = thinking.filter(|t| !t.is_empty()) {
                m.insert("thinking".into(), json!(t));
            }
            if let Some(calls) = tool_calls.filter(|c| !c.is_empty()) {
                m.insert("tool_calls".into(), Value::Array(calls));
            }
        }
    }
}

/// An OpenAI tool call as Ollama's: `arguments` is an object, not a string.
fn tool_call_in(c: &Value) -> Value {
    let f = &c["function"];
    let arguments = match &f["arguments"] {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({})),
        Value::Object(o) => Value::Object(o.clone()),
        _ => json!({}),
    };
    json!({"function": {"name": f["name"].as_str().unwrap_or_default(), "arguments": arguments}})
}

/// The reply to a load-only request: Ollama's `done_reason` "load" or "unload".
pub fn load_reply(shape: Shape, model: &str, created_at: &str, unload: bool) -> Value {
    match shape {
        Shape::Embed => json!({"model": model, "embeddings": []}),
        Shape::Embeddings => json!({"embedding": []}),
        _ => {
            let mut m = head(model, created_at);
            put_output(&mut m, shape, "", None, None);
            m.insert("done".into(), json!(true));
            m.insert(
                "done_reason".into(),
                json!(if unload { "unload" } else { "load" }),
            );
            Value::Object(m)
        }
    }
}

/// A whole (non-streamed) OpenAI reply as Ollama's; Err says what was missing.
pub fn whole(
    shape: Shape,
    model: &str,
    created_at: &str,
    v: &Value,
    t: Timing,
) -> Result<Value, String> {
    let usage = Usage::from_openai(v);
    match shape {
        Shape::Embed | Shape::Embeddings => {
            let mut data: Vec<&Value> = v["data"]
                .as_array()
                .ok_or("the backend's embeddings reply has no `data` list")?
                .iter()
                .collect();
            data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
            let vectors: Vec<Value> = data.iter().map(|d| d["embedding"].clone()).collect();
            if vectors.iter().any(|e| !e.is_array()) {
                return Err("the backend's embeddings reply has an entry without a vector".into());
            }
            if shape == Shape::Embeddings {
                let first = vectors.into_iter().next().unwrap_or_else(|| json!([]));
                return Ok(json!({ "embedding": first }));
            }
            let mut m = Map::new();
            m.insert("model".into(), json!(model));
            m.insert("embeddings".into(), Value::Array(vectors));
            m.insert("total_duration".into(), json!(nanos(t.total)));
            m.insert("load_duration".into(), json!(nanos(t.load)));
            if let Some(n) = usage.prompt {
                m.insert("prompt_eval_count".into(), json!(n));
            }
            Ok(Value::Object(m))
        }
        _ => {
            let choice = v["choices"]
                .get(0)
                .ok_or("the backend's reply has no `choices`")?;
            let (content, thinking, calls) = if shape == Shape::GenerateRaw {
                (choice["text"].as_str().unwrap_or_default(), None, None)
            } else {
                let msg = &choice["message"];
                let calls = msg["tool_calls"]
                    .as_array()
                    .map(|c| c.iter().map(tool_call_in).collect());
                (
                    msg["content"].as_str().unwrap_or_default(),
                    // llama.cpp and DeepSeek say `reasoning_content`; Ollama's
                    // own OpenAI layer and vLLM say `reasoning`.
                    msg["reasoning_content"]
                        .as_str()
                        .or_else(|| msg["reasoning"].as_str()),
                    calls,
                )
            };
            let mut m = head(model, created_at);
            put_output(&mut m, shape, content, thinking, calls);
            m.insert("done".into(), json!(true));
            m.insert(
                "done_reason".into(),
                json!(done_reason(choice["finish_reason"].as_str())),
            );
            add_metrics(&mut m, t, usage);
            Ok(Value::Object(m))
        }
    }
}

/// An error reply's message: OpenAI's `error.message`, Ollama's `error`, or the
/// text itself.
pub fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let from_json = v.as_ref().and_then(|v| match &v["error"] {
        Value::String(s) => Some(s.clone()),
        e => e["message"].as_str().map(str::to_string),
    });
    from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// The most of one unfinished SSE event held while waiting for its end.
const MAX_EVENT: usize = 16 << 20;

/// OpenAI SSE in, Ollama NDJSON out, as the bytes arrive; holds back only an
/// unfinished event.
pub struct StreamTranslator {
    shape: Shape,
    model: String,
    buf: Vec<u8>,
    finish: Option<String>,
    usage: Usage,
    /// Tool calls arrive in pieces (name, then argument fragments), by index.
    calls: Vec<(String, String)>,
    /// A content or thinking delta has been sent (the first token's time).
    pub started: bool,
    /// An error line was sent; nothing may follow it.
    pub failed: bool,
}

impl StreamTranslator {
    pub fn new(shape: Shape, model: &str) -> Self {
        StreamTranslator {
            shape,
            model: model.to_string(),
            buf: Vec::new(),
            finish: None,
            usage: Usage::default(),
            calls: Vec::new(),
            started: false,
            failed: false,
        }
    }

    /// The NDJSON lines the complete events in `chunk` (and before) make.
    pub fn feed(&mut self, chunk: &[u8], created_at: &str) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            if !self.failed {
                self.event(&event, created_at, &mut out);
            }
        }
        if self.buf.len() > MAX_EVENT && !self.failed {
            // One token's event is a few hundred bytes; this is a backend babbling.
            self.buf = Vec::new();
            let msg = format!(
                "the backend sent an SSE event of more than {} MiB without ending it",
                MAX_EVENT >> 20
            );
            out.extend(self.error_line(&msg));
        }
        out
    }

    /// The final `done` line (with an event left unterminated at the end, if any).
    pub fn finish(&mut self, created_at: &str, t: Timing) -> Vec<u8> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buf);
        if !self.failed && !rest.iter().all(u8::is_ascii_whitespace) {
            self.event(&rest, created_at, &mut out);
        }
        if self.failed {
            return out;
        }
        self.flush_calls(created_at, &mut out);
        let mut m = head(&self.model, created_at);
        put_output(&mut m, self.shape, "", None, None);
        m.insert("done".into(), json!(true));
        m.insert(
            "done_reason".into(),
            json!(done_reason(self.finish.as_deref())),
        );
        add_metrics(&mut m, t, self.usage);
        line(&mut out, &Value::Object(m));
        out
    }

    /// A stream that broke: one `{"error": …}` line, as Ollama ends a failed stream.
    pub fn error_line(&mut self, message: &str) -> Vec<u8> {
        self.failed = true;
        let mut out = Vec::new();
        line(&mut out, &json!({ "error": message }));
        out
    }

    fn event(&mut self, event: &[u8], created_at: &str, out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(event);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            return; // comments, `event:` lines alone, keep-alives
        }
        let data = data.join("\n");
        if data.trim() == "[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return; // not JSON: nothing a client could use
        };
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            let msg = match e {
                Value::String(s) => s.clone(),
                e => e["message"]
                    .as_str()
                    .map_or_else(|| e.to_string(), str::to_string),
            };
            out.extend(self.error_line(&msg));
            return;
        }
        if v.get("usage").is_some_and(Value::is_object) {
            self.usage = Usage::from_openai(&v);
        }
        let Some(choice) = v["choices"].get(0) else {
            return;
        };
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
        let (content, thinking) = if self.shape == Shape::GenerateRaw {
            (choice["text"].as_str().unwrap_or_default(), None)
        } else {
            let d = &choice["delta"];
            if let Some(calls) = d["tool_calls"].as_array() {
                self.gather_calls(calls);
            }
            (
                d["content"].as_str().unwrap_or_default(),
                d["reasoning_content"]
                    .as_str()
                    .or_else(|| d["reasoning"].as_str()),
            )
        };
        if content.is_empty() && thinking.is_none_or(str::is_empty) {
            return;
        }
        self.started = true;
        let mut m = head(&self.model, created_at);
        put_output(&mut m, self.shape, content, thinking, None);
        m.insert("done".into(), json!(false));
        line(out, &Value::Object(m));
    }

    fn gather_calls(&mut self, calls: &[Value]) {
        for (k, c) in calls.iter().enumerate() {
            let i = c["index"].as_u64().map_or(k, |i| i as usize).min(1024);
            if self.calls.len() <= i {
                self.calls.resize(i + 1, (String::new(), String::new()));
            }
            let f = &c["function"];
            if let Some(n) = f["name"].as_str() {
                self.calls[i].0.push_str(n);
            }
            if let Some(a) = f["arguments"].as_str() {
                self.calls[i].1.push_str(a);
            }
        }
    }

    /// Tool calls, whole, on a line of their own before the `done` line.
    fn flush_calls(&mut self, created_at: &str, out: &mut Vec<u8>) {
        let calls: Vec<Value> = std::mem::take(&mut self.calls)
            .into_iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, args)| {
                tool_call_in(&json!({"function": {"name": name, "arguments": args}}))
            })
            .collect();
        if calls.is_empty() {
            return;
        }
        let mut m = head(&self.model, created_at);
        put_output(&mut m, self.shape, "", None, Some(calls));
        m.insert("done".into(), json!(false));
        line(out, &Value::Object(m));
    }
}

fn line(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(&mut *out, v).expect("a Value always encodes");
    out.push(b'\n');
}

/// Where the first complete SSE event ends, and its separator's length.
fn event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(b, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(b, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn timing() -> Timing {
        Timing {
            total: Duration::from_millis(30),
            load: Duration::from_millis(10),
            prompt_eval: Duration::from_millis(5),
            eval: Duration::from_millis(15),
        }
    }

    fn lines(b: &[u8]) -> Vec<Value> {
        String::from_utf8(b.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn whole_chat_reply() {
        let v = json!({"choices": [{"message": {"role": "assistant", "content": "hi",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
        let o = whole(Shape::Chat, "mine", NOW, &v, timing()).unwrap();
        assert_eq!(
            o,
            json!({"model": "mine", "created_at": NOW,
                "message": {"role": "assistant", "content": "hi",
                            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                "done": true, "done_reason": "length",
                "total_duration": 30_000_000, "load_duration": 10_000_000,
                "prompt_eval_count": 3, "prompt_eval_duration": 5_000_000,
                "eval_count": 2, "eval_duration": 15_000_000})
        );
        let raw = json!({"choices": [{"text": "xyz", "finish_reason": "stop"}]});
        let o = whole(Shape::GenerateRaw, "mine", NOW, &raw, timing()).unwrap();
        assert_eq!(o["response"], "xyz");
        assert!(o.get("eval_count").is_none(), "no usage, no counts");
        assert!(whole(Shape::Chat, "m", NOW, &json!({}), timing()).is_err());
    }

    #[test]
    fn whole_embeddings_in_input_order() {
        let v = json!({"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}],
                       "usage": {"prompt_tokens": 4}});
        let o = whole(Shape::Embed, "e", NOW, &v, timing()).unwrap();
        assert_eq!(o["embeddings"], json!([[1.0], [2.0]]));
        assert_eq!(o["prompt_eval_count"], 4);
        assert_eq!(o["model"], "e");
        let o = whole(Shape::Embeddings, "e", NOW, &v, timing()).unwrap();
        assert_eq!(o, json!({"embedding": [1.0]}));
    }

    const SSE: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        ": a comment\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t0 \"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t1 \"},\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"total_tokens\":4}}\n\n",
        "data: [DONE]\n\n"
    );

    fn translate(chunks: &[&[u8]]) -> Vec<u8> {
        let mut t = StreamTranslator::new(Shape::Chat, "mine");
        let mut out = Vec::new();
        for c in chunks {
            out.extend(t.feed(c, NOW));
        }
        out.extend(t.finish(NOW, timing()));
        out
    }

    #[test]
    fn stream_one_line_per_delta_then_done_with_counts() {
        let out = lines(&translate(&[SSE.as_bytes()]));
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[0],
            json!({"model": "mine", "created_at": NOW,
                   "message": {"role": "assistant", "content": "t0 "}, "done": false})
        );
        assert_eq!(out[1]["message"]["content"], "t1 ");
        let last = &out[2];
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["message"]["content"], "");
        assert_eq!(last["prompt_eval_count"], 2);
        assert_eq!(last["eval_count"], 2);
        assert_eq!(last["total_duration"], 30_000_000);
    }

    #[test]
    fn stream_is_the_same_however_it_is_cut() {
        let whole = translate(&[SSE.as_bytes()]);
        let b = SSE.as_bytes();
        for cut in 0..b.len() {
            assert_eq!(translate(&[&b[..cut], &b[cut..]]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn stream_error_event_ends_with_an_error_line() {
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n";
        let out = lines(&translate(&[sse.as_bytes()]));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1], json!({"error": "boom"}));
    }

    #[test]
    fn stream_tool_calls_are_gathered_and_generate_uses_response() {
        let sse = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
        );
        let out = lines(&translate(&[sse.as_bytes()]));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0]["message"]["tool_calls"],
            json!([{"function": {"name": "f", "arguments": {"a": 1}}}])
        );
        assert_eq!(out[1]["done_reason"], "stop");

        let mut t = StreamTranslator::new(Shape::Generate, "g");
        let out = lines(&t.feed(SSE.as_bytes(), NOW));
        assert_eq!(out[0]["response"], "t0 ");
        assert!(out[0].get("message").is_none());
    }

    #[test]
    fn load_replies() {
        assert_eq!(
            load_reply(Shape::Chat, "m", NOW, true),
            json!({"model": "m", "created_at": NOW, "message": {"role": "assistant", "content": ""},
                   "done": true, "done_reason": "unload"})
        );
        assert_eq!(load_reply(Shape::Generate, "m", NOW, false)["response"], "");
        assert_eq!(
            load_reply(Shape::Embed, "m", NOW, false)["embeddings"],
            json!([])
        );
    }

    #[test]
    fn error_messages_from_any_shape() {
        assert_eq!(error_message(br#"{"error":{"message":"nope"}}"#), "nope");
        assert_eq!(error_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message(b" plain \n"), "plain");
    }
}
