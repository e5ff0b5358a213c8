//! What a client may send: a request head within `max_headers`,
//! `max_header_size` and `max_uri_length`, and a body within its path's size,
//! `body_timeout` and `max_json_depth`. Checked before anything is routed, so a
//! hostile request costs the router no more than its own limits allow.

use bytes::Bytes;
use http::{header, HeaderMap, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use modelyard_config::Config;

use crate::error::ApiError;

/// The request line and headers against the configured limits.
pub(crate) fn check_head(config: &Config, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let length = uri_length(uri);
    let limit = config.max_uri_length.bytes();
    if length > limit {
        return Err(ApiError::UriTooLong { length, limit });
    }
    let count = headers.len();
    if count > config.max_headers {
        return Err(ApiError::TooManyHeaders {
            count,
            limit: config.max_headers,
        });
    }
    // As on the wire: `name: value\r\n`.
    let size: u64 = headers
        .iter()
        .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
        .sum();
    let limit = config.max_header_size.bytes();
    if size > limit {
        return Err(ApiError::HeadersTooLarge { size, limit });
    }
    Ok(())
}

fn uri_length(uri: &Uri) -> u64 {
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    (authority + path) as u64
}

/// A JSON request body, read whole within its limits: no more bytes than the
/// path allows (declared or sent), no longer than `body_timeout`, no deeper
/// than `max_json_depth`.
pub(crate) async fn read_body(
    config: &Config,
    path: &str,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ApiError> {
    let limit = config.max_body_for(path);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let after = config.body_timeout;
    let collected = tokio::time::timeout(after, Limited::new(body, limit_usize).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout { after })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => return Err(ApiError::BodyRead(e.to_string())),
    };
    if nests_deeper(&bytes, config.max_json_depth) {
        return Err(ApiError::TooDeep {
            limit: config.max_json_depth,
        });
    }
    Ok(bytes)
}

/// Whether `json` opens more than `limit` arrays or objects inside one another.
/// One pass over the bytes, no tree: strings are skipped (with their escapes),
/// so brackets inside them do not count. Not a validator; the parser that runs
/// afterwards refuses what is not JSON.
pub(crate) fn nests_deeper(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(!nests_deeper(nested(3).as_bytes(), 3));
        assert!(nests_deeper(nested(4).as_bytes(), 3));
        assert!(!nests_deeper(br#"{"a":{"b":"[[[[{{{{\"]]"}}"#, 2));
        assert!(nests_deeper(br#"{"a":{"b":[1]}}"#, 2));
        assert!(
            !nests_deeper(br#"{"s":"\\"}"#, 1),
            "an escaped backslash ends"
        );
        assert!(!nests_deeper(b"", 1));
    }

    #[test]
    fn head_limits_name_their_key() {
        let config = modelyard_config::load_str(
            "t",
            "max_headers: 2\nmax_header_size: 40\nmax_uri_length: 16\n",
        )
        .unwrap()
        .config;
        let uri: Uri = "/v1/models".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().unwrap());
        assert!(check_head(&config, &uri, &h).is_ok());
        let long: Uri = "/v1/models?xxxxxxxxxx".parse().unwrap();
        assert!(matches!(
            check_head(&config, &long, &h),
            Err(ApiError::UriTooLong {
                length: 21,
                limit: 16
            })
        ));
        h.insert("b", "2".parse().unwrap());
        h.append("b", "3".parse().unwrap());
        assert!(matches!(
            check_head(&config, &uri, &h),
            Err(ApiError::TooManyHeaders { count: 3, limit: 2 })
        ));
        let mut h = HeaderMap::new();
        h.insert("big", "x".repeat(40).parse().unwrap());
        let e = check_head(&config, &uri, &h).unwrap_err();
        assert!(e.to_string().contains("max_header_size"), "{e}");
    }
}
