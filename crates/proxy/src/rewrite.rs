//! Model names on the way out and back, without re-encoding anything else.
//!
//! Requests: the top-level `model` value is spliced in place; every other byte of
//! the client's body reaches the backend as sent. Responses: each `"model":"…"`
//! string value is replaced by the name the client used, chunk by chunk, holding
//! back only a tail that could be the start of one (never a whole SSE event).

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// What a request body says about routing.
pub struct Routed {
    pub model: String,
    /// The request asked for a streamed answer.
    pub stream: bool,
    /// Byte range of the `model` value (with its quotes) in the body.
    span: (usize, usize),
}

/// Reads the top-level `model` of a JSON object body.
pub fn peek_model(body: &[u8]) -> Result<Routed, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    // serde would also read a struct from an array; requests are objects.
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(ApiError::BadJson("the body must be a JSON object".into()));
    }
    crate::body_keys::check(text)?;
    let peek: Peek = serde_json::from_str(text).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let raw = peek.model.ok_or(ApiError::MissingModel)?;
    let model: String = serde_json::from_str(raw.get()).map_err(|_| ApiError::ModelNotString)?;
    // RawValue borrows from `text`, so its offset is where the value stands.
    let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
    Ok(Routed {
        model,
        stream: peek.stream.as_ref().and_then(serde_json::Value::as_bool) == Some(true),
        span: (start, start + raw.get().len()),
    })
}

impl Routed {
    /// The body with `model` replaced by `upstream`.
    pub fn with_model(&self, body: &[u8], upstream: &str) -> Bytes {
        let quoted = serde_json::to_string(upstream).expect("a string always encodes");
        let mut out = BytesMut::with_capacity(body.len() + quoted.len());
        out.extend_from_slice(&body[..self.span.0]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[self.span.1..]);
        out.freeze()
    }
}

const KEY: &[u8] = b"\"model\"";
/// A `"model"` whose value has not ended this far on is not a name: pass it on.
const MAX_HELD: usize = 4096;

/// Replaces every `"model": "<string>"` value in a byte stream.
pub struct ModelRewriter {
    replacement: Vec<u8>,
    held: BytesMut,
}

/// Built once: building the searcher costs more than a small reply's search.
static KEY_FINDER: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(KEY));

impl ModelRewriter {
    pub fn new(client_name: &str) -> Self {
        ModelRewriter {
            replacement: serde_json::to_vec(client_name).expect("a string always encodes"),
            held: BytesMut::new(),
        }
    }

    /// Returns what can be sent now; may keep a short tail for the next chunk.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let data = if self.held.is_empty() {
            chunk
        } else {
            self.held.extend_from_slice(&chunk);
            self.held.split().freeze()
        };
        let mut out: Option<BytesMut> = None;
        let mut copied = 0;
        let mut pos = 0;
        while let Some(found) = KEY_FINDER.find(&data[pos..]) {
            let key_at = pos + found;
            match value_span(&data, key_at + KEY.len()) {
                Scan::Value(start, end) => {
                    let o = out.get_or_insert_with(|| BytesMut::with_capacity(data.len() + 32));
                    o.extend_from_slice(&data[copied..start]);
                    o.extend_from_slice(&self.replacement);
                    copied = end;
                    pos = end;
                }
                Scan::NotAName => pos = key_at + KEY.len(),
                Scan::Incomplete if data.len() - key_at < MAX_HELD => {
                    self.held.extend_from_slice(&data[key_at..]);
                    return emit(out, &data, copied, key_at);
                }
                Scan::Incomplete => pos = key_at + KEY.len(),
            }
        }
        // A chunk may end inside the key itself.
        let tail = partial_key_len(&data[pos.max(copied)..]);
        let keep_from = data.len() - tail;
        self.held.extend_from_slice(&data[keep_from..]);
        emit(out, &data, copied, keep_from)
    }

    /// What was held back when the stream ends.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| self.held.split().freeze())
    }
}

fn emit(out: Option<BytesMut>, data: &Bytes, copied: usize, upto: usize) -> Bytes {
    match out {
        None => data.slice(..upto),
        Some(mut o) => {
            o.extend_from_slice(&data[copied..upto]);
            o.freeze()
        }
    }
}

enum Scan {
    Value(usize, usize),
    NotAName,
    Incomplete,
}

/// After `"model"`: optional spaces, a colon, spaces, then a JSON string.
fn value_span(d: &[u8], mut i: usize) -> Scan {
    let skip_ws = |i: &mut usize| {
        while *i < d.len() && matches!(d[*i], b' ' | b'\t' | b'\r' | b'\n') {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    match d.get(i) {
        None => return Scan::Incomplete,
        Some(b':') => i += 1,
        Some(_) => return Scan::NotAName,
    }
    skip_ws(&mut i);
    match d.get(i) {
        None => return Scan::Incomplete,
        Some(b'"') => {}
        Some(_) => return Scan::NotAName,
    }
    let start = i;
    i += 1;
    while i < d.len() {
        match d[i] {
            b'\\' => i += 2,
            b'"' => return Scan::Value(start, i + 1),
            _ => i += 1,
        }
    }
    Scan::Incomplete
}

/// Length of the longest suffix of `d` that is a proper prefix of `"model"`.
fn partial_key_len(d: &[u8]) -> usize {
    (1..KEY.len().min(d.len() + 1))
        .rev()
        .find(|&n| d[d.len() - n..] == KEY[..n])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, chunks: &[&str]) -> (Vec<String>, String) {
        let mut r = ModelRewriter::new(name);
        let mut outs = Vec::new();
        for c in chunks {
            outs.push(String::from_utf8(r.feed(Bytes::from(c.to_string())).to_vec()).unwrap());
        }
        let rest = r
            .finish()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .unwrap_or_default();
        let all = outs.concat() + &rest;
        (outs, all)
    }

    #[test]
    fn splices_request_model_and_keeps_other_bytes() {
        let body =
            br#"{ "messages": [{"role":"user","content":"model"}],  "model" : "deep", "x": 1 }"#;
        let r = peek_model(body).unwrap();
        assert_eq!(r.model, "deep");
        let out = r.with_model(body, "Qwen3-32B-8bit");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "messages": [{"role":"user","content":"model"}],  "model" : "Qwen3-32B-8bit", "x": 1 }"#
        );
    }

    #[test]
    fn request_errors_are_distinguished() {
        assert!(matches!(peek_model(b"{nope"), Err(ApiError::BadJson(_))));
        assert!(matches!(peek_model(b"[1]"), Err(ApiError::BadJson(_))));
        assert!(matches!(
            peek_model(b"{\"a\":1}"),
            Err(ApiError::MissingModel)
        ));
        assert!(matches!(
            peek_model(b"{\"model\":7}"),
            Err(ApiError::ModelNotString)
        ));
        assert!(matches!(
            peek_model(b"{\"model\":\"a\",\"model\":\"b\"}"),
            Err(ApiError::RepeatedKey { .. })
        ));
    }

    #[test]
    fn rewrites_whole_events_without_holding_anything() {
        let ev = "data: {\"id\":\"x\",\"model\":\"Qwen3-32B-8bit\",\"choices\":[]}\n\n";
        let (outs, _) = run("deep", &[ev, ev]);
        assert_eq!(
            outs[0],
            "data: {\"id\":\"x\",\"model\":\"deep\",\"choices\":[]}\n\n"
        );
        assert_eq!(outs[0], outs[1]);
    }

    #[test]
    fn rewrites_across_any_chunk_boundary() {
        let src = "{\"model\": \"up\\\"stream\", \"content\":\"say \\\"model\\\":\\\"x\\\"\"}";
        let want = "{\"model\": \"deep\", \"content\":\"say \\\"model\\\":\\\"x\\\"\"}";
        for cut in 0..src.len() {
            let (_, all) = run("deep", &[&src[..cut], &src[cut..]]);
            assert_eq!(all, want, "cut at {cut}");
        }
    }

    #[test]
    fn leaves_non_string_model_values_alone() {
        let (_, all) = run("deep", &["{\"model\":{\"a\":1},\"models\":\"x\"}"]);
        assert_eq!(all, "{\"model\":{\"a\":1},\"models\":\"x\"}");
    }
}
