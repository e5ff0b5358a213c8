//! What a router's tests need to see of uploads and non-model paths: multipart
//! forms (`/v1/audio/*`, `/v1/images/edits`) answered with every part's length and
//! hash, and an echo of any other request, so a test can prove a body arrived
//! byte for byte without the sim sending megabytes back.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::response::{bad_request, json_response, openai_error, ResponseBody};
use crate::routes::{headers_json, MAX_BODY_BYTES};
use crate::state::SimState;

/// FNV-1a, 64 bits: enough to tell a changed byte, and simple to recompute in a test.
pub fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

async fn collect(body: Incoming) -> Result<Bytes, Response<ResponseBody>> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(bad_request("body too large", None)),
        Err(e) => Err(bad_request(format!("cannot read request body: {e}"), None)),
    }
}

/// Any request, described: method, path, query, headers, body length and hash.
pub async fn echo(state: &SimState, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let body = match collect(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let seen = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers_json(&parts.headers),
        "body_bytes": body.len(),
        "body_fnv1a64": fnv1a64(&body),
    });
    state.stats.record_last_request(seen.clone());
    state.stats.begin().complete();
    json_response(
        StatusCode::OK,
        &json!({"object": "sim.echo", "request": seen}),
    )
}

/// An OpenAI multipart endpoint: the form's parts, each with its length and hash,
/// `text` for a transcription client. The model must be one this sim serves.
pub async fn upload(state: &Arc<SimState>, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let boundary = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(boundary);
    let Some(boundary) = boundary else {
        return bad_request("expected multipart/form-data with a boundary", None);
    };
    let body = match collect(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let fields = match split(&body, boundary.as_bytes()) {
        Ok(f) => f,
        Err(e) => return bad_request(format!("malformed multipart body: {e}"), None),
    };
    let model = fields
        .iter()
        .find(|f| f.name == "model")
        .map(|f| String::from_utf8_lossy(f.content).into_owned());
    let described: Vec<Value> = fields.iter().map(Field::describe).collect();
    state.stats.record_last_request(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "headers": headers_json(&parts.headers),
        "body_bytes": body.len(),
        "parts": described,
    }));
    let Some(model) = model else {
        return bad_request("you must provide a 'model' form field", Some("model"));
    };
    if !state.serves(&model) {
        return openai_error(
            StatusCode::NOT_FOUND,
            format!("model '{model}' is not served here"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        );
    }
    state.stats.begin().complete();
    json_response(
        StatusCode::OK,
        &json!({
            "text": format!("{} parts received", described.len()),
            "model": model,
            "body_bytes": body.len(),
            "parts": described,
        }),
    )
}

struct Field<'a> {
    name: String,
    filename: Option<String>,
    content: &'a [u8],
}

impl Field<'_> {
    fn describe(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "filename": self.filename,
            "bytes": self.content.len(),
            "fnv1a64": fnv1a64(self.content),
        });
        if self.filename.is_none() && self.content.len() <= 1024 {
            v["value"] = json!(String::from_utf8_lossy(self.content));
        }
        v
    }
}

fn boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The parts of a whole form body (RFC 7578), strictly: CRLF line ends, a
/// closing delimiter at the end.
fn split<'a>(body: &'a [u8], boundary: &[u8]) -> Result<Vec<Field<'a>>, String> {
    let dash = [b"--".as_slice(), boundary].concat();
    let delimiter = [b"\r\n".as_slice(), &dash].concat();
    let mut at = if body.starts_with(&dash) {
        dash.len()
    } else {
        memchr::memmem::find(body, &delimiter).ok_or("no boundary")? + delimiter.len()
    };
    let mut fields = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(fields);
        }
        let rest = body[at..]
            .strip_prefix(b"\r\n")
            .ok_or("a boundary is not followed by CRLF")?;
        at += 2;
        let head_end = if rest.starts_with(b"\r\n") {
            0
        } else {
            memchr::memmem::find(rest, b"\r\n\r\n").ok_or("unterminated part headers")? + 2
        };
        let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| "headers not UTF-8")?;
        let start = at + head_end + 2;
        let len = memchr::memmem::find(&body[start..], &delimiter).ok_or("no closing boundary")?;
        let disposition = head
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(v)
            })
            .unwrap_or("");
        fields.push(Field {
            name: param(disposition, "name").unwrap_or_default(),
            filename: param(disposition, "filename"),
            content: &body[start..start + len],
        });
        at = start + len + delimiter.len();
    }
}

/// A `key="value"` (or unquoted) parameter of a Content-Disposition.
fn param(disposition: &str, key: &str) -> Option<String> {
    disposition.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_form_into_its_fields() {
        let body = b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--x\r\n--xx\r\nContent-Disposition: form-data; name=model\r\n\r\nwhisper\r\n--xx--\r\n";
        let f = split(body, b"xx").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].name.as_str(), f[0].filename.as_deref()),
            ("file", Some("a.wav"))
        );
        assert_eq!(f[0].content, b"RIFF\r\n--x");
        assert_eq!(
            (f[1].name.as_str(), f[1].content),
            ("model", b"whisper".as_slice())
        );
        assert!(split(b"--xx\r\nbroken", b"xx").is_err());
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), "cbf29ce484222325");
        assert_eq!(fnv1a64(b"a"), "af63dc4c8601ec8c");
    }
}
