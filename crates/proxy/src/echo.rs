//! What a client sent, fit to be written back (in an error, a log line, an
//! event): control characters escaped, so input can never start a log line of
//! its own, and cut at a length a person reads, saying how long it was. A 30 MB
//! model name costs the log a line of a few hundred bytes.

/// The most characters of client input written back.
const MAX_CHARS: usize = 200;

pub(crate) fn shown(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_CHARS + 32));
    for (chars, c) in input.chars().enumerate() {
        if chars == MAX_CHARS {
            out.push_str(&format!("… ({} bytes)", input.len()));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_escaped_and_cut() {
        assert_eq!(shown("qwen3:8b"), "qwen3:8b");
        assert_eq!(shown("a\r\nb\u{1b}[31m"), "a\\r\\nb\\u{1b}[31m");
        let long = "x".repeat(30 << 20);
        let s = shown(&long);
        assert!(s.len() < 300, "{}", s.len());
        assert!(s.ends_with(&format!("… ({} bytes)", 30 << 20)), "{s}");
        assert_eq!(shown(&"é".repeat(200)), "é".repeat(200));
    }
}
