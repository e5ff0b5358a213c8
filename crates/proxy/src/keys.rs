//! Keys clients present: compared in constant time, never logged or echoed.

use http::{header, HeaderMap};
use modelyard_config::Config;

use crate::error::ApiError;

/// The key a request carries: `Authorization: Bearer …` (OpenAI's SDKs) or
/// `x-api-key` (Anthropic-style clients).
pub(crate) fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// The credentials of an `Authorization: Bearer …` value; the scheme's name is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` count too.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
}

/// Whether a request may use the model APIs: always when no client keys are
/// configured, else only with one of them.
pub(crate) fn client_allowed(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    if config.client_keys.is_empty() {
        return Ok(());
    }
    let Some(given) = presented(headers) else {
        return Err(ApiError::ClientKey { given: false });
    };
    // Every key is compared, so the time says nothing about which one came close.
    let matched = config
        .client_keys
        .iter()
        .fold(false, |ok, k| same(given.as_bytes(), k.as_bytes()) | ok);
    if matched {
        Ok(())
    } else {
        Err(ApiError::ClientKey { given: true })
    }
}

/// Compares in time that depends on the lengths only, not on where they differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(super::bearer("Bearer k1"), Some("k1"));
        assert_eq!(super::bearer("bearer k1"), Some("k1"));
        assert_eq!(super::bearer("BEARER  k1"), Some("k1"));
        assert_eq!(super::bearer("Basic k1"), None);
        assert_eq!(super::bearer("Bearerk1"), None);
    }

    #[test]
    fn compares_keys_exactly() {
        assert!(super::same(b"secret", b"secret"));
        assert!(!super::same(b"secret", b"secreT"));
        assert!(!super::same(b"secret", b"secret2"));
        assert!(!super::same(b"", b"x"));
    }
}
