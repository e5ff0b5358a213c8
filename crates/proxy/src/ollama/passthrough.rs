//! A request for a model on an Ollama backend goes through as the client sent it,
//! byte for byte, but for values spliced in place: `model` becomes the name the
//! backend knows, and `keep_alive` becomes `-1` (added when absent). The router
//! owns unloading on every Ollama it routes to, run or attached: it already
//! applied the client's keep_alive to its own idle timer, and an Ollama left to
//! expire the model by its own clock (a client's value, or an attached server's
//! OLLAMA_KEEP_ALIVE, 5m by default) would free memory behind the ledger.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

#[derive(Deserialize)]
struct Spans<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    // A `null` is a value to replace too, not an absent field to add.
    #[serde(borrow, default, deserialize_with = "present")]
    keep_alive: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The body for the backend. It was already read whole by
/// [`super::request::parse`], so an error here only guards against misuse.
pub fn splice(body: &[u8], upstream: &str) -> Result<Bytes, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let spans: Spans = serde_json::from_str(text).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let at = |raw: &RawValue| {
        // RawValue borrows from `text`, so its offset is where the value stands.
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        (start, start + raw.get().len())
    };
    let mut edits = Vec::new();
    let model = spans.model.ok_or(ApiError::MissingModel)?;
    edits.push((
        at(model),
        serde_json::to_string(upstream).expect("a string always encodes"),
    ));
    match spans.keep_alive {
        Some(k) => edits.push((at(k), "-1".to_string())),
        None => {
            // Just inside the object's brace; `model` follows, so the comma fits.
            let brace = text.find('{').ok_or(ApiError::MissingModel)?;
            edits.push(((brace + 1, brace + 1), "\"keep_alive\":-1,".to_string()));
        }
    }
    edits.sort_by_key(|(span, _)| span.0);
    let mut out = BytesMut::with_capacity(body.len() + upstream.len());
    let mut copied = 0;
    for ((start, end), with) in edits {
        out.extend_from_slice(&body[copied..start]);
        out.extend_from_slice(with.as_bytes());
        copied = end;
    }
    out.extend_from_slice(&body[copied..]);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(body: &str, up: &str) -> String {
        String::from_utf8(splice(body.as_bytes(), up).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn only_model_and_keep_alive_change() {
        assert_eq!(
            s(
                r#"{"keep_alive" : "5m", "messages":[{"role":"user","content":"\"model\": 1.50"}], "model":"mine","options":{"temperature":1.50}}"#,
                "qwen3:8b"
            ),
            r#"{"keep_alive" : -1, "messages":[{"role":"user","content":"\"model\": 1.50"}], "model":"qwen3:8b","options":{"temperature":1.50}}"#
        );
        assert_eq!(
            s("{\n  \"model\": \"a\",\n  \"prompt\": \"x\"\n}", "b\"c"),
            "{\"keep_alive\":-1,\n  \"model\": \"b\\\"c\",\n  \"prompt\": \"x\"\n}"
        );
        assert_eq!(
            s(r#"{"model":"a","keep_alive":null}"#, "b"),
            r#"{"model":"b","keep_alive":-1}"#
        );
    }

    #[test]
    fn an_absent_keep_alive_is_added_so_ollama_never_expires_the_model_itself() {
        assert_eq!(
            s(r#" {"model":"a"}"#, "b"),
            r#" {"keep_alive":-1,"model":"b"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&s(r#"{"model":"a","x":1}"#, "b")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "b", "x": 1, "keep_alive": -1})
        );
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        assert!(splice(b"{}", "x").is_err());
        assert!(splice(b"{\"model\":", "x").is_err());
        assert!(splice(&[0xff, 0xfe], "x").is_err());
    }
}
