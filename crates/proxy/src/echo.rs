//! What a client sent, fit to be written back (in an error, a log line, an
//! event): control characters escaped, so input can never start a log line of
//! its own, and cut at a length a person reads, saying how long it was. A 30 MB
//! model name costs the log a line of a few hundred bytes.

/// The most characters of client input written back.
const MAX_CHARS: usize = 200;

pub(crate) fn shown(input: &str) -> String {
    Shown(input).to_string()
}

/// The request id's header, named once: a name given as text is parsed on
/// every lookup.
pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A header's value as text: bytes that are not UTF-8 become U+FFFD, so a
/// request id or User-Agent in another script is kept, not lost.
pub(crate) fn header_text(v: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

/// The request's `x-request-id`, as its log lines show it (escaped, as the
/// record has it); "-" when it has none.
pub(crate) fn request_id(id: Option<&http::HeaderValue>) -> String {
    match id {
        Some(v) if !v.is_empty() => shown(&header_text(v)),
        _ => "-".to_string(),
    }
}

/// [`shown`], written wherever it is formatted (the request log writes it
/// straight into its batch): no string of its own.
pub(crate) struct Shown<'a>(pub &'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let input = self.0;
        // Most input (a model's name, a path, a header) is short and plain:
        // written whole, without a look at each character.
        if input.len() <= MAX_CHARS && input.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return f.write_str(input);
        }
        // Runs of plain characters are written whole.
        let mut plain = 0;
        for (chars, (at, c)) in input.char_indices().enumerate() {
            if chars == MAX_CHARS {
                f.write_str(&input[plain..at])?;
                return write!(f, "… ({} bytes)", input.len());
            }
            if c.is_control() {
                f.write_str(&input[plain..at])?;
                write!(f, "{}", c.escape_default())?;
                plain = at + c.len_utf8();
            }
        }
        f.write_str(&input[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_beyond_ascii_is_shown_not_dropped() {
        let id = |b: &[u8]| request_id(Some(&http::HeaderValue::from_bytes(b).unwrap()));
        assert_eq!(id("réq-1".as_bytes()), "réq-1");
        assert_eq!(id(b"r\xe9q\t2"), "r\u{fffd}q\\t2");
        assert_eq!(id(b"plain-3"), "plain-3");
        assert_eq!(request_id(None), "-");
        assert_eq!(id(b""), "-");
    }

    #[test]
    fn input_is_escaped_and_cut() {
        assert_eq!(shown("qwen3:8b"), "qwen3:8b");
        assert_eq!(shown("a\r\nb\u{1b}[31m"), "a\\r\\nb\\u{1b}[31m");
        let long = "x".repeat(30 << 20);
        let s = shown(&long);
        assert!(s.len() < 300, "{}", s.len());
        assert!(s.ends_with(&format!("… ({} bytes)", 30 << 20)), "{s}");
        assert_eq!(shown(&"é".repeat(200)), "é".repeat(200));
        assert_eq!(
            shown(&"é".repeat(201)),
            format!("{}… (402 bytes)", "é".repeat(200))
        );
        assert_eq!(shown("\u{7f}tail"), "\\u{7f}tail");
    }
}
