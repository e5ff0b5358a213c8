//! A request for a model on an Ollama backend goes through as the client sent it,
//! byte for byte, but for values spliced in place: `model` becomes the name the
//! backend knows, and, on an Ollama server the router runs, a `keep_alive`
//! becomes `-1`. There the router owns unloading (it already applied the client's
//! keep_alive to its own idle timer); letting Ollama also expire the model on its
//! own would free memory behind the ledger. An Ollama server the router only
//! points at (a `url`, no `command`) is not the router's to manage: its client's
//! keep_alive reaches it unchanged.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

#[derive(Deserialize)]
struct Spans<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    keep_alive: Option<&'a RawValue>,
}

/// The body for the backend; `owned`: the router runs this server, so it keeps
/// the model loaded until the router says otherwise. The body was already read
/// whole by [`super::request::parse`], so an error here only guards against misuse.
pub fn splice(body: &[u8], upstream: &str, owned: bool) -> Result<Bytes, ApiError> {
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
    if let Some(k) = spans.keep_alive.filter(|k| owned && k.get() != "null") {
        edits.push((at(k), "-1".to_string()));
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
        String::from_utf8(splice(body.as_bytes(), up, true).unwrap().to_vec()).unwrap()
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
            "{\n  \"model\": \"b\\\"c\",\n  \"prompt\": \"x\"\n}"
        );
        assert_eq!(
            s(r#"{"model":"a","keep_alive":null}"#, "b"),
            r#"{"model":"b","keep_alive":null}"#
        );
    }

    #[test]
    fn a_server_the_router_does_not_run_gets_keep_alive_as_sent() {
        let body = br#"{"model":"a","keep_alive":"5m"}"#;
        assert_eq!(
            &splice(body, "b", false).unwrap()[..],
            br#"{"model":"b","keep_alive":"5m"}"#
        );
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        assert!(splice(b"{}", "x", true).is_err());
        assert!(splice(b"{\"model\":", "x", true).is_err());
        assert!(splice(&[0xff, 0xfe], "x", true).is_err());
    }
}
