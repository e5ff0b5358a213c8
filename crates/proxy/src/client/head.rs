//! The request head the router writes and the response head it reads, and how
//! the response's body is framed (RFC 9112 §6.3).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};

/// The most a backend's response head may take: far past any real server's, and
/// what keeps a hostile one from growing the router's buffer without end.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a backend's response head may have.
const MAX_HEADERS: usize = 128;

/// How the request's body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sending {
    None,
    /// As declared by the request's Content-Length.
    Length(u64),
    Chunked,
}

/// Writes the request line and headers for `authority`; a body of unknown
/// length goes chunked.
pub(crate) fn encode_request(parts: &Parts, authority: &str, sending: Sending) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let size = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut head = Vec::with_capacity(64 + target.len() + authority.len() + size);
    for piece in [
        parts.method.as_str(),
        " ",
        target,
        " HTTP/1.1\r\nhost: ",
        authority,
        "\r\n",
    ] {
        head.extend_from_slice(piece.as_bytes());
    }
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match sending {
        Sending::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Sending::None
            if !parts.headers.contains_key(header::CONTENT_LENGTH)
                && matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            head.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Read until the backend closes.
    Close,
}

/// A parsed response head.
pub(crate) struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once this body is read.
    pub reusable: bool,
}

pub(crate) enum Parsed {
    Partial,
    /// A 1xx reply before the real one: its length, to skip.
    Interim(usize),
    Complete(Head, usize),
}

pub(crate) fn parse_response(buf: &[u8], method: &Method) -> Result<Parsed, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("more than {MAX_HEADERS} header lines"))
        }
        Err(e) => return Err(format!("not an HTTP/1 response ({e})")),
    };
    let code = r.code.unwrap_or_default();
    if (100..200).contains(&code) && code != 101 {
        return Ok(Parsed::Interim(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| format!("status {code}"))?;
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("bad value for header {}", h.name))?;
        headers.append(name, value);
    }
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let framing = framing(*method == Method::HEAD, status, &headers)?;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // The chunks decide the length (RFC 9112 §6.3); a Content-Length beside
        // them would misframe the body the client is sent.
        headers.remove(header::CONTENT_LENGTH);
    }
    let reusable = code != 101
        && framing != Framing::Close
        && match version {
            Version::HTTP_10 => has_token(&headers, "keep-alive"),
            _ => !has_token(&headers, "close"),
        };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Complete(
        Head {
            response,
            framing,
            reusable,
        },
        len,
    ))
}

fn framing(head: bool, status: StatusCode, headers: &HeaderMap) -> Result<Framing, String> {
    let code = status.as_u16();
    if head || code == 204 || code == 304 || code < 200 {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Only chunked is decoded. Any other coding (gzip, …) would reach the
        // client undeclared once Transfer-Encoding, hop-by-hop, is taken off.
        let codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        for t in codings {
            if !t.eq_ignore_ascii_case("chunked") {
                return Err(format!(
                    "transfer coding `{t}`, which the router does not decode"
                ));
            }
        }
        return Ok(Framing::Chunked);
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let n = std::str::from_utf8(v.as_bytes())
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("a Content-Length that is not a number")?;
        if length.is_some_and(|l| l != n) {
            return Err("two different Content-Lengths".into());
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &str, method: Method) -> Head {
        match parse_response(wire.as_bytes(), &method).unwrap() {
            Parsed::Complete(h, len) => {
                assert_eq!(len, wire.len());
                h
            }
            _ => panic!("not complete"),
        }
    }

    #[test]
    fn framing_follows_the_rfc() {
        let h = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            Method::POST,
        );
        assert_eq!((h.framing, h.reusable), (Framing::Length(12), true));
        let h = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            Method::POST,
        );
        assert_eq!(h.framing, Framing::Chunked, "chunked wins over a length");
        assert!(
            !h.response.headers().contains_key(header::CONTENT_LENGTH),
            "and the length is not passed on"
        );
        let h = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            Method::HEAD,
        );
        assert_eq!(h.framing, Framing::Empty);
        let h = parse("HTTP/1.1 204 No Content\r\n\r\n", Method::POST);
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let h = parse("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        );
        assert!(!h.reusable);
        let h = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET);
        assert!(!h.reusable, "1.0 closes unless it says keep-alive");
        let h = parse(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        );
        assert!(h.reusable);
    }

    #[test]
    fn interim_replies_and_bad_heads() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            parse_response(wire, &Method::POST),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nx: y", &Method::GET),
            Ok(Parsed::Partial)
        ));
        assert!(parse_response(b"garbage\r\n\r\n", &Method::GET).is_err());
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(parse_response(two, &Method::GET).is_err());
        for wire in [
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\n",
        ] {
            assert!(
                parse_response(wire.as_bytes(), &Method::GET).is_err(),
                "{wire}"
            );
        }
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let e = parse_response(gzip, &Method::GET).err().unwrap();
        assert!(e.contains("`gzip`"), "{e}");
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x: y\r\n".repeat(200));
        let e = parse_response(many.as_bytes(), &Method::GET).err().unwrap();
        assert!(e.contains("header lines"), "{e}");
    }

    #[test]
    fn request_heads_carry_host_and_framing() {
        let (mut parts, ()) = http::Request::post("http://127.0.0.1:9/v1/x?a=1")
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        let head =
            String::from_utf8(encode_request(&parts, "127.0.0.1:9", Sending::Chunked)).unwrap();
        assert_eq!(
            head,
            "POST /v1/x?a=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let head = String::from_utf8(encode_request(&parts, "h", Sending::None)).unwrap();
        assert!(head.ends_with("content-length: 0\r\n\r\n"), "{head}");
        parts.method = Method::GET;
        let head = String::from_utf8(encode_request(&parts, "h", Sending::None)).unwrap();
        assert!(!head.contains("content-length"), "{head}");
    }
}
