//! The keys of a request body that the router reads or sets appear once.
//!
//! The router routes (and charges the budget) by the `model` it reads; the
//! backend runs the `model` it reads. Parsers disagree about a key given twice
//! (serde's maps keep the last, some keep the first) and about case: Go's
//! encoding/json, which Ollama uses, matches field names case-insensitively, with
//! Unicode's simple folding (`ſ` is an `s`, the Kelvin sign a `k`). So
//! `{"model":"small","MODEL":"huge:70b"}` was routed to `small` and ran
//! `huge:70b` outside the budget. A body in which any such key appears twice,
//! compared the way a backend may compare it, is refused with a 400 naming it.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::ApiError;

/// Every top-level key the router reads or sets, on any API.
const GUARDED: [&str; 4] = ["model", "stream", "keep_alive", "options"];

/// A key as a case-insensitive matcher may see it.
fn folded(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Refuses a JSON object body in which a guarded key appears more than once.
/// Values are skipped, not built, so this costs one pass over the bytes.
pub(crate) fn check(text: &str) -> Result<(), ApiError> {
    let mut de = serde_json::Deserializer::from_str(text);
    match (&mut de).deserialize_map(Keys) {
        Ok(Some((first, second))) => Err(ApiError::RepeatedKey {
            first: crate::echo::shown(&first),
            second: crate::echo::shown(&second),
        }),
        // Not an object, or not JSON: the caller's own parse says which.
        Ok(None) | Err(_) => Ok(()),
    }
}

/// The query string's counterpart: `model` (in any case) given once at most.
pub(crate) fn check_query(query: &str) -> Result<(), ApiError> {
    let mut first: Option<&str> = None;
    for pair in query.split('&') {
        let key = pair.split('=').next().unwrap_or("");
        if folded(&crate::percent_decode(&key.replace('+', " "))) == "model" {
            if let Some(f) = first {
                return Err(ApiError::RepeatedKey {
                    first: crate::echo::shown(f),
                    second: crate::echo::shown(key),
                });
            }
            first = Some(key);
        }
    }
    Ok(())
}

struct Keys;

impl<'de> Visitor<'de> for Keys {
    /// The first pair of keys that collide, as written.
    type Value = Option<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen: [Option<String>; GUARDED.len()] = Default::default();
        let mut collision = None;
        // Every entry is read, a collision or not: serde_json refuses a map
        // left half read, and that error would pass for "not JSON".
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<IgnoredAny>()?;
            let f = folded(&key);
            if let Some(i) = GUARDED.iter().position(|g| *g == f) {
                match &seen[i] {
                    Some(first) if collision.is_none() => {
                        collision = Some((first.clone(), key));
                    }
                    Some(_) => {}
                    None => seen[i] = Some(key),
                }
            }
        }
        Ok(collision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> Option<(String, String)> {
        match check(body) {
            Err(ApiError::RepeatedKey { first, second }) => Some((first, second)),
            Err(e) => panic!("{e}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn a_key_a_backend_may_read_twice_is_refused() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(
            refused(r#"{"model":"a","MODEL":"b"}"#),
            pair("model", "MODEL")
        );
        assert_eq!(
            refused(r#"{"model":"a","model":"b"}"#),
            pair("model", "model")
        );
        // An escape is the same key once decoded.
        assert_eq!(
            refused(r#"{"model":"a","mod\u0065l":"b"}"#),
            pair("model", "model")
        );
        assert_eq!(
            refused(r#"{"keep_alive":-1,"Keep_Alive":"0s"}"#),
            pair("keep_alive", "Keep_Alive")
        );
        // Go folds the long s and the Kelvin sign into s and k.
        assert_eq!(
            refused("{\"stream\":false,\"\u{017F}tream\":true}"),
            pair("stream", "\u{017F}tream")
        );
        assert_eq!(
            refused("{\"keep_alive\":1,\"\u{212A}eep_alive\":0}"),
            pair("keep_alive", "\u{212A}eep_alive")
        );
        assert_eq!(
            refused(r#"{"options":{},"OPTIONS":{"num_ctx":1}}"#),
            pair("options", "OPTIONS")
        );
    }

    #[test]
    fn a_repeated_key_is_found_wherever_it_stands() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(
            refused(r#"{"Model":"x","model":"m","messages":[]}"#),
            pair("Model", "model")
        );
        assert_eq!(
            refused(r#"{"model":"x","model":"m","messages":[{"role":"user"}]}"#),
            pair("model", "model")
        );
    }

    #[test]
    fn other_keys_and_nested_ones_are_the_backends_business() {
        assert_eq!(
            refused(r#"{"model":"a","messages":[{"model":"x","MODEL":"y"}]}"#),
            None
        );
        assert_eq!(
            refused(r#"{"model":"a","temperature":1,"temperature":2}"#),
            None
        );
        assert_eq!(refused(r#"{"Model":"a"}"#), None);
        assert_eq!(refused("[1,2]"), None);
        assert_eq!(refused("not json"), None);
    }

    #[test]
    fn a_query_names_its_model_once() {
        assert!(check_query("model=a&x=1").is_ok());
        assert!(check_query("model=a&MODEL=b").is_err());
        assert!(check_query("model=a&model=b").is_err());
        assert!(check_query("model=a&%6Dodel=b").is_err());
    }
}
