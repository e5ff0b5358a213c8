//! Finding the `model` field of a multipart/form-data body (RFC 7578) in the
//! part of it read so far, so an upload can be routed and then streamed on
//! without the router holding the file.
//!
//! The scanner is fed the same growing prefix again and again and resumes where
//! it stopped, so a file part that comes before `model` costs one pass, not one
//! per chunk. It reads no more than it must: the first `model` part routes the
//! upload. What follows is streamed on, watched by [`LaterModel`] for a second
//! `model` part, which a server that reads the last one would obey instead.

use std::ops::Range;

use memchr::memmem;

/// Part headers longer than this are not a form a client meant to send.
const MAX_PART_HEADERS: usize = 16 * 1024;

/// The boundary of a `multipart/form-data` content type: None when the type is
/// something else, Err when it is a form without a usable boundary.
pub(crate) fn form_boundary(content_type: &str) -> Option<Result<Vec<u8>, String>> {
    let (mime, rest) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let boundary = match param(rest, "boundary") {
        Ok(Some(b)) => b,
        Ok(None) => return Some(Err("multipart/form-data without a boundary".into())),
        Err(e) => return Some(Err(e)),
    };
    // RFC 2046 §5.1.1: 1 to 70 characters.
    if boundary.is_empty() || boundary.len() > 70 {
        return Some(Err(format!(
            "boundary must be 1 to 70 characters, not {}",
            boundary.len()
        )));
    }
    Some(Ok(boundary.into_bytes()))
}

/// The value of parameter `name` in `; k=v; k2="quoted; value"` (RFC 9110 §5.6.6).
fn param(mut rest: &str, name: &str) -> Result<Option<String>, String> {
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(None);
        }
        let Some((key, after)) = rest.split_once('=') else {
            return Ok(None);
        };
        // A bare flag (`; foo;`) has no value: skip it.
        if let Some(i) = key.find(';') {
            rest = &rest[i + 1..];
            continue;
        }
        let after = after.trim_start();
        let (val, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                unquote(quoted).ok_or_else(|| format!("unterminated quoted value in `{rest}`"))?
            }
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        if key.trim().eq_ignore_ascii_case(name) {
            return Ok(Some(val));
        }
        rest = next;
    }
}

/// What the prefix read so far says about the form's `model`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The first `model` part: its value and where the value stands in the body.
    Found {
        model: String,
        span: Range<usize>,
    },
    /// Undecided until more of the body has been read.
    NeedMore,
    /// The form closed without a `model` part.
    NoModel,
    Malformed(String),
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Before the first delimiter; a preamble may come first.
    Preamble {
        searched: usize,
    },
    /// At a delimiter line, `at` being its leading `--`.
    Delimiter {
        at: usize,
    },
    /// At the first byte of a part's headers.
    Headers {
        at: usize,
    },
    /// Inside a part's content, looking for the delimiter that ends it.
    Content {
        start: usize,
        model: bool,
        searched: usize,
    },
    Done,
}

pub(crate) struct FormScanner {
    /// `--boundary`, which opens a delimiter line.
    dash: Vec<u8>,
    /// CRLF `--boundary`: a delimiter anywhere after the first.
    delimiter: Vec<u8>,
    state: State,
}

impl FormScanner {
    pub(crate) fn new(boundary: &[u8]) -> Self {
        let dash = [b"--".as_slice(), boundary].concat();
        let delimiter = [b"\r\n".as_slice(), &dash].concat();
        FormScanner {
            dash,
            delimiter,
            state: State::Preamble { searched: 0 },
        }
    }

    /// Scans `body`, which must extend the prefix given to the previous call.
    pub(crate) fn scan(&mut self, body: &[u8]) -> Scan {
        loop {
            match self.state {
                State::Done => return Scan::NoModel,
                State::Preamble { searched } => {
                    if body.len() < self.dash.len() {
                        return Scan::NeedMore;
                    }
                    if body.starts_with(&self.dash) {
                        self.state = State::Delimiter { at: 0 };
                        continue;
                    }
                    match self.find_delimiter(body, searched) {
                        Ok(at) => self.state = State::Delimiter { at: at + 2 },
                        Err(searched) => {
                            self.state = State::Preamble { searched };
                            return Scan::NeedMore;
                        }
                    }
                }
                State::Delimiter { at } => {
                    let after = at + self.dash.len();
                    let Some(rest) = body.get(after..).filter(|r| r.len() >= 2) else {
                        return Scan::NeedMore;
                    };
                    if rest.starts_with(b"--") {
                        self.state = State::Done;
                        return Scan::NoModel;
                    }
                    // Transport padding may follow a delimiter before its CRLF.
                    let pad = rest
                        .iter()
                        .take_while(|&&b| b == b' ' || b == b'\t')
                        .count();
                    match rest.get(pad..pad + 2) {
                        None if pad < 1024 => return Scan::NeedMore,
                        Some(b"\r\n") => {
                            self.state = State::Headers {
                                at: after + pad + 2,
                            }
                        }
                        _ => {
                            return Scan::Malformed(
                                "a boundary line is followed by something other than CRLF".into(),
                            )
                        }
                    }
                }
                State::Headers { at } => {
                    let rest = &body[at.min(body.len())..];
                    let end = if rest.starts_with(b"\r\n") {
                        Some(0)
                    } else {
                        memmem::find(rest, b"\r\n\r\n").map(|i| i + 2)
                    };
                    let Some(end) = end else {
                        if rest.len() > MAX_PART_HEADERS {
                            return Scan::Malformed(format!(
                                "a part's headers run past {MAX_PART_HEADERS} bytes"
                            ));
                        }
                        return Scan::NeedMore;
                    };
                    let name = match field_name(&rest[..end]) {
                        Ok(name) => name,
                        Err(e) => return Scan::Malformed(e),
                    };
                    let start = at + end + 2;
                    self.state = State::Content {
                        start,
                        model: name.as_deref() == Some("model"),
                        searched: start,
                    };
                }
                State::Content {
                    start,
                    model,
                    searched,
                } => match self.find_delimiter(body, searched) {
                    Ok(end) if model => {
                        return match std::str::from_utf8(&body[start..end]) {
                            Ok(name) => Scan::Found {
                                model: name.to_string(),
                                span: start..end,
                            },
                            Err(_) => Scan::Malformed("the `model` field is not UTF-8".into()),
                        };
                    }
                    Ok(end) => self.state = State::Delimiter { at: end + 2 },
                    Err(searched) => {
                        self.state = State::Content {
                            start,
                            model,
                            searched,
                        };
                        return Scan::NeedMore;
                    }
                },
            }
        }
    }

    /// Where the next CRLF-led delimiter starts at or after `from`; else how far a
    /// later search may resume (a delimiter may straddle the end of `body`).
    fn find_delimiter(&self, body: &[u8], from: usize) -> Result<usize, usize> {
        let from = from.min(body.len());
        match memmem::find(&body[from..], &self.delimiter) {
            Some(i) => Ok(from + i),
            None => Err(body
                .len()
                .saturating_sub(self.delimiter.len() - 1)
                .max(from)),
        }
    }
}

/// Watches the rest of a form as it streams past for a second part named
/// `model` (in any case): the router routed and charged the first, and a
/// backend that keeps the last value of a repeated field would run the other.
/// It holds at most one delimiter and one part's headers between chunks.
pub(crate) struct LaterModel {
    delimiter: Vec<u8>,
    /// The unread end of the previous chunk: a delimiter, or a part's headers,
    /// may straddle two chunks.
    carry: Vec<u8>,
}

impl LaterModel {
    pub(crate) fn new(boundary: &[u8]) -> Self {
        LaterModel {
            delimiter: [b"\r\n--".as_slice(), boundary].concat(),
            carry: Vec::new(),
        }
    }

    /// Feeds the next bytes of the body; true once a `model` part has begun.
    pub(crate) fn feed(&mut self, data: &[u8]) -> bool {
        self.carry.extend_from_slice(data);
        let buf = std::mem::take(&mut self.carry);
        let mut from = 0;
        while let Some(i) = memmem::find(&buf[from..], &self.delimiter) {
            let headers_at = from + i + self.delimiter.len();
            let Some(end) = memmem::find(&buf[headers_at..], b"\r\n\r\n") else {
                // Headers not all here yet: keep them, within reason.
                if buf.len() - (from + i) <= MAX_PART_HEADERS {
                    self.carry = buf[from + i..].to_vec();
                } else {
                    self.carry = buf[buf.len() - (self.delimiter.len() - 1)..].to_vec();
                }
                return false;
            };
            let headers = &buf[headers_at..headers_at + end + 2];
            if let Ok(Some(name)) = field_name(headers) {
                if name.eq_ignore_ascii_case("model") {
                    return true;
                }
            }
            from = headers_at + end;
        }
        let keep = buf.len().saturating_sub(self.delimiter.len() - 1).max(from);
        self.carry = buf[keep..].to_vec();
        false
    }
}

/// The `name` of a part from its headers (each line ending in CRLF): None for a
/// part without a form-data Content-Disposition.
fn field_name(headers: &[u8]) -> Result<Option<String>, String> {
    let text =
        std::str::from_utf8(headers).map_err(|_| "a part's headers are not UTF-8".to_string())?;
    for line in text.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        return Ok(disposition_name(value.trim()));
    }
    Ok(None)
}

/// `form-data; name="model"; filename="a b.wav"` → `model`.
fn disposition_name(value: &str) -> Option<String> {
    let (kind, rest) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    param(rest, "name").ok().flatten()
}

/// A quoted-string whose opening quote is already consumed: its value and what
/// follows the closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: &str = "----modelyard7MA4YWxk";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file, content) in parts {
            out.extend_from_slice(format!("--{B}\r\n").as_bytes());
            match file {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        out
    }

    fn scan_whole(body: &[u8]) -> Scan {
        FormScanner::new(B.as_bytes()).scan(body)
    }

    /// Feeds `body` in growing prefixes cut at `cuts`, as chunks arrive.
    fn scan_in_chunks(body: &[u8], cuts: &[usize]) -> Scan {
        let mut s = FormScanner::new(B.as_bytes());
        for &cut in cuts {
            match s.scan(&body[..cut.min(body.len())]) {
                Scan::NeedMore => {}
                done => return done,
            }
        }
        s.scan(body)
    }

    #[test]
    fn boundaries_plain_quoted_and_refused() {
        let ok = |ct: &str| form_boundary(ct).unwrap().unwrap();
        assert_eq!(ok("multipart/form-data; boundary=abc"), b"abc");
        assert_eq!(
            ok("Multipart/Form-Data;charset=utf-8;BOUNDARY=\"a b;c\""),
            b"a b;c"
        );
        assert_eq!(ok("multipart/form-data; boundary=\"q\\\"x\""), b"q\"x");
        assert!(form_boundary("application/json").is_none());
        assert!(form_boundary("multipart/mixed; boundary=x").is_none());
        assert!(form_boundary("multipart/form-data").unwrap().is_err());
        assert!(form_boundary("multipart/form-data; boundary=\"open")
            .unwrap()
            .is_err());
        assert!(
            form_boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71)))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn model_first_is_found_without_the_file() {
        let body = form(&[
            ("model", None, b"whisper"),
            ("file", Some("a.wav"), &[7; 100]),
        ]);
        let Scan::Found { model, span } = scan_whole(&body) else {
            panic!()
        };
        assert_eq!(model, "whisper");
        assert_eq!(&body[span], b"whisper");
        // Only the prefix up to the end of the model part was needed.
        let end = memmem::find(&body, b"whisper").unwrap() + 7 + 2 + 2 + B.len();
        assert!(matches!(scan_whole(&body[..end]), Scan::Found { .. }));
    }

    #[test]
    fn model_after_a_file_is_found_past_it() {
        let mut file = vec![0u8; 5000];
        // Content that looks like a boundary but is not one (no CRLF before it).
        file[100..100 + B.len() + 2].copy_from_slice(format!("--{B}").as_bytes());
        let body = form(&[
            ("file", Some("a.png"), &file),
            ("prompt", None, b"a cat"),
            ("model", None, b"sd"),
        ]);
        assert_eq!(
            scan_in_chunks(&body, &(1..body.len()).step_by(97).collect::<Vec<_>>()),
            Scan::Found {
                model: "sd".into(),
                span: {
                    let at = body.len() - (b"sd\r\n--".len() + B.len() + b"--\r\n".len());
                    at..at + 2
                }
            }
        );
    }

    #[test]
    fn no_model_part_and_broken_forms() {
        let body = form(&[("file", Some("a.wav"), b"xx"), ("language", None, b"en")]);
        assert_eq!(scan_whole(&body), Scan::NoModel);
        // A field named like model but not it, and a non-form-data disposition.
        let body = form(&[("models", None, b"x"), ("model_name", None, b"y")]);
        assert_eq!(scan_whole(&body), Scan::NoModel);
        let bad = format!("--{B}junk\r\n\r\nx\r\n--{B}--");
        assert!(matches!(scan_whole(bad.as_bytes()), Scan::Malformed(_)));
        let huge = format!("--{B}\r\nX: {}", "a".repeat(MAX_PART_HEADERS + 10));
        assert!(matches!(scan_whole(huge.as_bytes()), Scan::Malformed(_)));
        let truncated = form(&[("model", None, b"whisper")]);
        assert_eq!(
            scan_whole(&truncated[..truncated.len() - 12]),
            Scan::NeedMore
        );
    }

    #[test]
    fn preamble_padding_empty_headers_and_unquoted_names() {
        let body = format!(
            "ignored preamble\r\n--{B}  \r\n\r\nanonymous\r\n--{B}\r\ncontent-disposition: FORM-DATA; filename=\"x;name=y\"; name=model\r\n\r\nqwen\r\n--{B}--"
        );
        let Scan::Found { model, .. } = scan_whole(body.as_bytes()) else {
            panic!("{:?}", scan_whole(body.as_bytes()))
        };
        assert_eq!(model, "qwen");
    }

    #[test]
    fn disposition_names() {
        assert_eq!(
            disposition_name("form-data; name=\"model\"").as_deref(),
            Some("model")
        );
        assert_eq!(
            disposition_name("form-data; filename=\"a\\\"; name=b\"; name=\"m\"").as_deref(),
            Some("m")
        );
        assert_eq!(disposition_name("attachment; name=\"model\""), None);
        assert_eq!(disposition_name("form-data"), None);
        assert_eq!(
            disposition_name("form-data; flag; name=m").as_deref(),
            Some("m")
        );
    }

    proptest! {
        /// Wherever the model part stands and however the body is cut into
        /// chunks, the scanner finds the same value at the same place.
        #[test]
        fn found_whatever_the_order_and_the_chunking(
            file in proptest::collection::vec(any::<u8>(), 0..3000),
            model in "[a-zA-Z0-9:._/-]{1,40}",
            model_first in any::<bool>(),
            mut cuts in proptest::collection::vec(0usize..4000, 0..12),
        ) {
            let parts: Vec<(&str, Option<&str>, &[u8])> = if model_first {
                vec![("model", None, model.as_bytes()), ("file", Some("f.bin"), &file)]
            } else {
                vec![("file", Some("f.bin"), &file), ("model", None, model.as_bytes())]
            };
            let body = form(&parts);
            cuts.sort_unstable();
            match scan_in_chunks(&body, &cuts) {
                Scan::Found { model: m, span } => {
                    prop_assert_eq!(&m, &model);
                    prop_assert_eq!(&body[span], model.as_bytes());
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }

        /// Arbitrary bytes never panic the scanner.
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut s = FormScanner::new(b"b");
            let _ = s.scan(&data);
        }
    }

    #[test]
    fn a_second_model_part_is_seen_however_the_chunks_fall() {
        let body = form(&[
            ("model", None, b"whisper"),
            ("file", Some("a.wav"), &[b'x'; 3000]),
            ("MODEL", None, b"huge"),
        ]);
        let Scan::Found { span, .. } = scan_whole(&body) else {
            panic!("no model")
        };
        let rest = &body[span.end..];
        for size in [1, 7, 64, 1000, rest.len()] {
            let mut watch = LaterModel::new(B.as_bytes());
            let seen = rest.chunks(size).any(|c| watch.feed(c));
            assert!(seen, "chunks of {size}");
        }
        let one = form(&[
            ("model", None, b"whisper"),
            ("file", Some("a.wav"), b"model"),
        ]);
        let Scan::Found { span, .. } = scan_whole(&one) else {
            panic!("no model")
        };
        let mut watch = LaterModel::new(B.as_bytes());
        assert!(!one[span.end..].chunks(5).any(|c| watch.feed(c)));
    }
}
