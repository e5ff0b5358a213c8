//! An Ollama request, read and turned into the OpenAI request that asks the same
//! of any other backend. Pure: bytes in, a [`Parsed`] or a 400 that names the
//! field out, never a panic (see the property tests).

use serde_json::{json, Map, Value};

use super::keep_alive::{self, KeepAlive};
use crate::error::ApiError;

/// The four Ollama routes that run a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
    /// `/api/embed`: `input` is a string or a list, the reply has `embeddings`.
    Embed,
    /// `/api/embeddings` (the older one): one `prompt`, the reply has `embedding`.
    Embeddings,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/api/chat",
            Endpoint::Generate => "/api/generate",
            Endpoint::Embed => "/api/embed",
            Endpoint::Embeddings => "/api/embeddings",
        }
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        [
            Endpoint::Chat,
            Endpoint::Generate,
            Endpoint::Embed,
            Endpoint::Embeddings,
        ]
        .into_iter()
        .find(|e| e.path() == path)
    }
}

/// What the reply to a translated request must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `message: {role, content}` from a chat completion.
    Chat,
    /// `response` from a chat completion (generate with a template).
    Generate,
    /// `response` from a text completion (generate with `raw`).
    GenerateRaw,
    Embed,
    Embeddings,
}

/// An OpenAI path and its body (without `model`).
pub type OpenAiCall = (&'static str, Map<String, Value>);

/// A request read: routing facts for every backend, and the OpenAI version of it.
#[derive(Debug)]
pub struct Parsed {
    /// The name the client asked for.
    pub model: String,
    pub keep_alive: Option<KeepAlive>,
    /// Ollama streams unless told `stream: false` (embeddings never stream).
    pub stream: bool,
    /// Nothing to compute (no messages, no prompt, no input): only load the model
    /// (or, with keep_alive 0, unload it), as Ollama does.
    pub load_only: bool,
    /// The OpenAI path and body (without `model`, set once the lease names the
    /// upstream); None for a load-only request.
    pub openai: Option<OpenAiCall>,
    pub shape: Shape,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Reads an Ollama request body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Parsed, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(ApiError::BadJson("the body must be a JSON object".into()));
    }
    crate::body_keys::check(text)?;
    let v: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let model = match v.get("model") {
        None | Some(Value::Null) => return Err(ApiError::MissingModel),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::ModelNotString),
    };
    let keep_alive = keep_alive::parse(v.get("keep_alive"))?;
    let stream = match endpoint {
        Endpoint::Embed | Endpoint::Embeddings => false,
        _ => opt_bool(&v, "stream")?.unwrap_or(true),
    };
    let (shape, openai) = match endpoint {
        Endpoint::Chat => (Shape::Chat, chat(&v, stream)?),
        Endpoint::Generate => generate(&v, stream)?,
        Endpoint::Embed => (Shape::Embed, embed(&v)?),
        Endpoint::Embeddings => (Shape::Embeddings, embeddings(&v)?),
    };
    Ok(Parsed {
        model,
        keep_alive,
        stream,
        load_only: openai.is_none(),
        openai,
        shape,
    })
}

fn opt_bool(v: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(key, "must be true or false")),
    }
}

fn opt_str<'a>(v: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(key, "must be a string")),
    }
}

/// `stream`, and with it the request for real token counts at the end.
fn streaming(out: &mut Map<String, Value>, stream: bool) {
    out.insert("stream".into(), json!(stream));
    if stream {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
}

fn chat(v: &Map<String, Value>, stream: bool) -> Result<Option<OpenAiCall>, ApiError> {
    let messages = match v.get("messages") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(m)) if m.is_empty() => return Ok(None),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(invalid("messages", "must be a list of messages")),
    };
    let mut translated = messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    link_tool_results(messages, &mut translated);
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(translated));
    match v.get("tools") {
        None | Some(Value::Null) => {}
        // ollama-python sends `tools: []` with every chat; OpenAI's API (and
        // servers that follow it strictly) refuse an empty list.
        Some(Value::Array(t)) if t.is_empty() => {}
        // Ollama's tool definitions are OpenAI's: {type, function:{name, description, parameters}}.
        Some(tools @ Value::Array(_)) => {
            out.insert("tools".into(), tools.clone());
        }
        Some(_) => return Err(invalid("tools", "must be a list of tools")),
    }
    common(v, &mut out, stream)?;
    Ok(Some(("/v1/chat/completions", out)))
}

/// Gives each tool result the id of the call it answers. Ollama's messages
/// carry no ids (a result names its tool in `tool_name`, or follows the calls in
/// order), OpenAI's must: a `role: tool` message without `tool_call_id` is
/// refused by strict servers, which broke every agent loop's second turn. A
/// result is matched to the latest assistant message's calls by `tool_name`,
/// else by position among the results that follow it.
fn link_tool_results(ollama: &[Value], openai: &mut [Value]) {
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut taken: Vec<bool> = Vec::new();
    for (theirs, ours) in ollama.iter().zip(openai.iter_mut()) {
        let Some(out) = ours.as_object_mut() else {
            continue;
        };
        match out.get("role").and_then(Value::as_str) {
            Some("assistant") => {
                calls = out
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(|cs| {
                        cs.iter()
                            .map(|c| {
                                let id = c["id"].as_str().unwrap_or_default().to_string();
                                let name = c["function"]["name"].as_str().unwrap_or_default();
                                (id, name.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                taken = vec![false; calls.len()];
            }
            Some("tool") if !out.contains_key("tool_call_id") => {
                let named = theirs
                    .get("tool_name")
                    .or_else(|| theirs.get("name"))
                    .and_then(Value::as_str);
                let by_name =
                    named.and_then(|n| (0..calls.len()).find(|&k| !taken[k] && calls[k].1 == n));
                if let Some(k) = by_name.or_else(|| taken.iter().position(|t| !t)) {
                    taken[k] = true;
                    out.insert("tool_call_id".into(), json!(calls[k].0));
                }
            }
            _ => {}
        }
    }
}

/// One Ollama message as an OpenAI one: images become `image_url` parts, tool
/// calls get string arguments and ids.
fn message(i: usize, m: &Value) -> Result<Value, ApiError> {
    let field = |k: &str| format!("messages[{i}].{k}");
    let m = m
        .as_object()
        .ok_or_else(|| invalid(format!("messages[{i}]"), "must be an object"))?;
    let role = match m.get("role") {
        Some(Value::String(r)) => r.clone(),
        _ => return Err(invalid(field("role"), "must be a string")),
    };
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err(invalid(field("content"), "must be a string")),
    };
    let images = images(m.get("images"), &field("images"))?;
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("content".into(), with_images(content, images));
    if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
        let calls = calls
            .as_array()
            .ok_or_else(|| invalid(field("tool_calls"), "must be a list"))?;
        let calls = calls
            .iter()
            .enumerate()
            .map(|(j, c)| tool_call_out(c, i, j))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) {
        out.insert("tool_call_id".into(), json!(id));
    }
    Ok(Value::Object(out))
}

fn tool_call_out(c: &Value, i: usize, j: usize) -> Result<Value, ApiError> {
    let field = format!("messages[{i}].tool_calls[{j}].function");
    let f = c
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(&field, "must be an object with a name"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{field}.name"), "must be a string"))?;
    // OpenAI carries arguments as a JSON string; Ollama as an object.
    let arguments = match f.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
    };
    let id = c
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("call_{i}_{j}"), str::to_string);
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
}

/// Ollama's `images` (base64, no MIME type) as data URLs.
fn images(v: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|img| {
                img.as_str()
                    .map(|b64| format!("data:{};base64,{b64}", sniff_mime(b64)))
                    .ok_or_else(|| invalid(field, "must be a list of base64 strings"))
            })
            .collect(),
        Some(_) => Err(invalid(field, "must be a list of base64 strings")),
    }
}

/// The image type from the first bytes of its base64 (Ollama sends none).
fn sniff_mime(b64: &str) -> &'static str {
    if b64.starts_with("/9j/") {
        "image/jpeg"
    } else if b64.starts_with("R0lG") {
        "image/gif"
    } else if b64.starts_with("UklGR") {
        "image/webp"
    } else {
        "image/png"
    }
}

fn with_images(text: String, images: Vec<String>) -> Value {
    if images.is_empty() {
        return Value::String(text);
    }
    let mut parts = vec![json!({"type": "text", "text": text})];
    parts.extend(
        images
            .into_iter()
            .map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
    );
    Value::Array(parts)
}

/// `format` and `options`, shared by chat and generate; `stream` too.
fn common(
    v: &Map<String, Value>,
    out: &mut Map<String, Value>,
    stream: bool,
) -> Result<(), ApiError> {
    match v.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(Value::Object(schema)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            );
        }
        Some(_) => {
            return Err(invalid(
                "format",
                "must be \"json\" or a JSON schema object",
            ))
        }
    }
    options(v.get("options"), out)?;
    if let Some(effort) = think(v.get("think"))? {
        out.insert("reasoning_effort".into(), json!(effort));
    }
    streaming(out, stream);
    Ok(())
}

/// Ollama's `think` as OpenAI's `reasoning_effort`, the way Ollama's own
/// OpenAI layer reads it back: `false` is "none", a level is itself, and
/// `true` (think, at the model's usual depth) is "medium".
pub fn think(v: Option<&Value>) -> Result<Option<&'static str>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(false)) => Ok(Some("none")),
        Some(Value::Bool(true)) => Ok(Some("medium")),
        Some(Value::String(level)) => match level.as_str() {
            "low" => Ok(Some("low")),
            "medium" => Ok(Some("medium")),
            "high" => Ok(Some("high")),
            _ => Err(invalid(
                "think",
                "must be true, false, \"low\", \"medium\" or \"high\"",
            )),
        },
        Some(_) => Err(invalid(
            "think",
            "must be true, false, \"low\", \"medium\" or \"high\"",
        )),
    }
}

/// The `options` OpenAI has a name for; the rest (num_ctx, top_k, mirostat, …)
/// have no OpenAI equivalent and are dropped (docs/ollama-api.md says so).
fn options(v: Option<&Value>, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    let opts = match v {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(invalid("options", "must be an object")),
    };
    let number = |key: &str| -> Result<Option<f64>, ApiError> {
        match opts.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(invalid(format!("options.{key}"), "must be a number")),
        }
    };
    for (ours, theirs) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ] {
        if let Some(x) = number(ours)? {
            out.insert(theirs.into(), json!(x));
        }
    }
    if let Some(seed) = number("seed")? {
        out.insert("seed".into(), json!(seed as i64));
    }
    // Ollama: -1 generates until done, -2 until the context is full; OpenAI: omit.
    if let Some(n) = number("num_predict")? {
        if n >= 0.0 {
            out.insert("max_tokens".into(), json!(n as u64));
        }
    }
    match opts.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop".into(), json!([s]));
        }
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            if !list.is_empty() {
                out.insert("stop".into(), Value::Array(list.clone()));
            }
        }
        Some(_) => {
            return Err(invalid(
                "options.stop",
                "must be a string or a list of strings",
            ))
        }
    }
    Ok(())
}

fn generate(v: &Map<String, Value>, stream: bool) -> Result<(Shape, Option<OpenAiCall>), ApiError> {
    let raw = opt_bool(v, "raw")?.unwrap_or(false);
    let shape = if raw {
        Shape::GenerateRaw
    } else {
        Shape::Generate
    };
    let prompt = opt_str(v, "prompt")?.unwrap_or_default();
    let images = images(v.get("images"), "images")?;
    if prompt.is_empty() && images.is_empty() {
        return Ok((shape, None));
    }
    let system = opt_str(v, "system")?;
    let mut out = Map::new();
    let path = if raw {
        // Raw: the prompt is already formatted; no template, so no chat.
        out.insert("prompt".into(), json!(prompt));
        "/v1/completions"
    } else {
        let mut messages = Vec::new();
        if let Some(s) = system.filter(|s| !s.is_empty()) {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": with_images(prompt.to_string(), images)}));
        out.insert("messages".into(), Value::Array(messages));
        "/v1/chat/completions"
    };
    common(v, &mut out, stream)?;
    Ok((shape, Some((path, out))))
}

fn embed(v: &Map<String, Value>) -> Result<Option<OpenAiCall>, ApiError> {
    let input = match v.get("input") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(s @ Value::String(_)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Value::Array(a.clone()),
        Some(_) => return Err(invalid("input", "must be a string or a list of strings")),
    };
    let mut out = Map::new();
    out.insert("input".into(), input);
    match v.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_u64().is_some_and(|d| d > 0) => {
            out.insert("dimensions".into(), d.clone());
        }
        Some(_) => return Err(invalid("dimensions", "must be a positive integer")),
    }
    Ok(Some(("/v1/embeddings", out)))
}

fn embeddings(v: &Map<String, Value>) -> Result<Option<OpenAiCall>, ApiError> {
    let prompt = opt_str(v, "prompt")?.unwrap_or_default();
    if prompt.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    out.insert("input".into(), json!(prompt));
    Ok(Some(("/v1/embeddings", out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(e: Endpoint, v: Value) -> Parsed {
        parse(e, v.to_string().as_bytes()).unwrap()
    }

    fn body(p: &Parsed) -> Value {
        Value::Object(p.openai.as_ref().unwrap().1.clone())
    }

    #[test]
    fn tool_results_carry_the_id_of_the_call_they_answer() {
        let p = ok(
            Endpoint::Chat,
            json!({"model": "m", "tools": [], "messages": [
                {"role": "user", "content": "weather and time?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                    {"function": {"name": "time", "arguments": {}}}]},
                // Out of order, named: matched by name.
                {"role": "tool", "tool_name": "time", "content": "12:00"},
                // Unnamed: the first call not yet answered.
                {"role": "tool", "content": "rain"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_given", "function": {"name": "weather", "arguments": {}}}]},
                {"role": "tool", "content": "sun"}
            ]}),
        );
        let b = body(&p);
        let m = &b["messages"];
        assert_eq!(m[1]["tool_calls"][0]["id"], "call_1_0");
        assert_eq!(m[1]["tool_calls"][1]["id"], "call_1_1");
        assert_eq!(m[2]["tool_call_id"], "call_1_1", "{m}");
        assert_eq!(m[3]["tool_call_id"], "call_1_0", "{m}");
        assert_eq!(m[5]["tool_call_id"], "call_given", "{m}");
        assert!(m[2].get("tool_name").is_none());
        assert!(
            b.get("tools").is_none(),
            "an empty tools list is not sent: {b}"
        );
    }

    #[test]
    fn chat_streams_by_default_and_asks_for_usage() {
        let p = ok(
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "keep_alive": "5m"}),
        );
        assert!(p.stream && !p.load_only);
        assert_eq!(p.model, "m");
        assert_eq!(
            p.keep_alive,
            Some(KeepAlive::For(std::time::Duration::from_secs(300)))
        );
        assert_eq!(p.openai.as_ref().unwrap().0, "/v1/chat/completions");
        assert_eq!(
            body(&p),
            json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
                   "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn chat_options_format_images_and_tools() {
        let p = ok(
            Endpoint::Chat,
            json!({"model": "m", "stream": false, "format": "json",
            "options": {"temperature": 0.2, "top_p": 0.9, "seed": 42, "stop": "END",
                        "num_predict": 64, "num_ctx": 8192, "top_k": 5},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "messages": [
                {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "42"}
            ]}),
        );
        let b = body(&p);
        assert_eq!(b["stream"], false);
        assert!(b.get("stream_options").is_none());
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        assert_eq!(b["temperature"], 0.2);
        assert_eq!(b["top_p"], 0.9);
        assert_eq!(b["seed"], 42);
        assert_eq!(b["stop"], json!(["END"]));
        assert_eq!(b["max_tokens"], 64);
        assert!(b.get("num_ctx").is_none() && b.get("options").is_none());
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        assert_eq!(
            b["messages"][0]["content"],
            json!([{"type": "text", "text": "look"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}])
        );
        assert_eq!(
            b["messages"][1]["tool_calls"],
            json!([{"id": "call_1_0", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}])
        );
        assert!(b.get("keep_alive").is_none());
    }

    #[test]
    fn json_schema_format() {
        let p = ok(
            Endpoint::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "format": {"type": "object"}}),
        );
        assert_eq!(
            body(&p)["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn empty_messages_or_prompt_or_input_only_load() {
        for (e, v) in [
            (Endpoint::Chat, json!({"model": "m"})),
            (Endpoint::Chat, json!({"model": "m", "messages": []})),
            (Endpoint::Generate, json!({"model": "m"})),
            (
                Endpoint::Generate,
                json!({"model": "m", "prompt": "", "keep_alive": 0}),
            ),
            (Endpoint::Embed, json!({"model": "m", "input": []})),
            (Endpoint::Embeddings, json!({"model": "m", "prompt": ""})),
        ] {
            let p = ok(e, v.clone());
            assert!(p.load_only && p.openai.is_none(), "{v}");
        }
    }

    #[test]
    fn generate_with_system_or_raw() {
        let p = ok(
            Endpoint::Generate,
            json!({"model": "m", "prompt": "why", "system": "be brief"}),
        );
        assert_eq!(p.shape, Shape::Generate);
        assert_eq!(
            body(&p)["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "why"}])
        );
        let p = ok(
            Endpoint::Generate,
            json!({"model": "m", "prompt": "[INST]x", "raw": true, "stream": false}),
        );
        assert_eq!(p.shape, Shape::GenerateRaw);
        assert_eq!(p.openai.as_ref().unwrap().0, "/v1/completions");
        assert_eq!(body(&p), json!({"prompt": "[INST]x", "stream": false}));
    }

    #[test]
    fn embeddings_both_ways() {
        let p = ok(
            Endpoint::Embed,
            json!({"model": "m", "input": ["a", "b"], "truncate": true}),
        );
        assert!(!p.stream);
        assert_eq!(body(&p), json!({"input": ["a", "b"]}));
        let p = ok(Endpoint::Embeddings, json!({"model": "m", "prompt": "a"}));
        assert_eq!(body(&p), json!({"input": "a"}));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (Endpoint::Chat, "{\"model\": ", "not valid JSON"),
            (Endpoint::Chat, "[1]", "JSON object"),
            (Endpoint::Chat, "{}", "no `model`"),
            (Endpoint::Chat, "{\"model\": 3}", "`model` must be a string"),
            (Endpoint::Chat, "{\"model\":\"m\",\"keep_alive\":\"soon\"}", "`keep_alive`"),
            (Endpoint::Chat, "{\"model\":\"m\",\"stream\":\"yes\"}", "`stream`"),
            (Endpoint::Chat, "{\"model\":\"m\",\"messages\":{}}", "`messages`"),
            (Endpoint::Chat, "{\"model\":\"m\",\"messages\":[{\"role\":1}]}", "`messages[0].role`"),
            (Endpoint::Chat, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"options\":{\"temperature\":\"hot\"}}", "`options.temperature`"),
            (Endpoint::Chat, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"format\":\"xml\"}", "`format`"),
            (Endpoint::Generate, "{\"model\":\"m\",\"prompt\":7}", "`prompt`"),
            (Endpoint::Embed, "{\"model\":\"m\",\"input\":[1]}", "`input`"),
        ];
        for (e, b, want) in cases {
            let err = parse(e, b.as_bytes()).unwrap_err();
            assert_eq!(err.status(), 400, "{b}");
            assert!(err.to_string().contains(want), "{b}: {err}");
        }
    }
}
