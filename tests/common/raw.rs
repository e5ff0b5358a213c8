//! The server side of HTTP/1.1 as the tests' raw-socket backends need it: one
//! request read off a connection, so each backend says only how it answers.

use std::io::BufRead;

/// One request as a backend received it.
pub struct RawRequest {
    /// The request line, e.g. `POST /v1/chat/completions HTTP/1.1`.
    pub line: String,
    /// The header lines as sent, each ending in CRLF.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// Reads the next request (a body by Content-Length only); None once the
    /// client has closed, or on a request cut short.
    pub fn read(reader: &mut impl BufRead) -> Option<RawRequest> {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let (mut head, mut length) = (String::new(), 0);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).ok()? == 0 {
                return None;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            head.push_str(&h);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(RawRequest {
            line: line.trim_end().to_string(),
            head,
            body,
        })
    }

    pub fn is_get(&self) -> bool {
        self.line.starts_with("GET ")
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}
