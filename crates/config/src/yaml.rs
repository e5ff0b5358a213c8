//! routes.yaml's values, read with yaml-rust2 (the parser the line index already
//! walks) and handed to figment as a [`Format`]: one YAML parser for the crate,
//! and a maintained one.
//!
//! Plain scalars resolve as YAML 1.2's core schema says: `~`, `null` (any case
//! form) and nothing are null, `true`/`false` (the same) are booleans, whole
//! numbers (also `0x…`, `0o…`) are integers, `1.5`, `1e3`, `.inf`, `.nan` are
//! floats, and everything else (`yes`, `10m`, `48GB`) is a string. Quoted and
//! block scalars, and scalars tagged `!!str`, are strings. A key written twice
//! keeps its last value (the line index reports it as an error). Aliases are
//! copies of what their anchor names; merge keys (`<<`) are ordinary keys.

use figment::providers::Format;
use serde::de::{DeserializeOwned, Error as _};
use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The [`Format`] figment reads routes.yaml with.
pub(crate) struct Yaml;

impl Format for Yaml {
    type Error = serde_json::Error;

    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        T::deserialize(parse(text)?)
    }
}

/// The one document of `text` as a value (an empty text is an empty mapping).
fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut b = Builder::default();
    Parser::new_from_str(text)
        .load(&mut b, true)
        .map_err(|e| serde_json::Error::custom(e.to_string()))?;
    if let Some(e) = b.error {
        return Err(serde_json::Error::custom(e));
    }
    match b.docs.len() {
        0 => Ok(Value::Object(Map::new())),
        1 => Ok(b.docs.pop().expect("one")),
        _ => Err(serde_json::Error::custom(
            "deserializing from YAML containing more than one document is not supported",
        )),
    }
}

enum Open {
    Seq(Vec<Value>, usize),
    /// The mapping, the key waiting for its value, and its anchor.
    Map(Map<String, Value>, Option<String>, usize),
}

#[derive(Default)]
struct Builder {
    docs: Vec<Value>,
    stack: Vec<Open>,
    anchors: std::collections::HashMap<usize, Value>,
    error: Option<String>,
}

impl Builder {
    /// Whether the next node is a mapping's key.
    fn awaiting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Open::Map(_, None, _)))
    }

    fn put(&mut self, v: Value, anchor: usize, at: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        if self.awaiting_key() {
            // Scalar keys arrive as text (see `key`); anything else cannot name a key.
            let what = match v {
                Value::Array(_) => "sequence",
                Value::Object(_) => "map",
                _ => "value",
            };
            self.error.get_or_insert(format!(
                "invalid type: {what}, expected a string at line {} column {}",
                at.line(),
                at.col() + 1
            ));
            self.key(String::new());
            return;
        }
        match self.stack.last_mut() {
            None => self.docs.push(v),
            Some(Open::Seq(items, _)) => items.push(v),
            Some(Open::Map(map, key, _)) => {
                let k = key.take().expect("a key precedes its value");
                map.insert(k, v);
            }
        }
    }

    /// A mapping's key, as written (`5:` and `true:` name the keys "5" and "true").
    fn key(&mut self, text: String) {
        if let Some(Open::Map(_, key, _)) = self.stack.last_mut() {
            *key = Some(text);
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, at: Marker) {
        match ev {
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(Vec::new(), anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(Map::new(), None, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (v, anchor) = match self.stack.pop() {
                    Some(Open::Seq(items, a)) => (Value::Array(items), a),
                    Some(Open::Map(map, _, a)) => (Value::Object(map), a),
                    None => return,
                };
                self.put(v, anchor, at);
            }
            Event::Scalar(text, _, _, _) if self.awaiting_key() => self.key(text),
            Event::Scalar(text, style, anchor, tag) => {
                let as_string =
                    style != TScalarStyle::Plain || tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if as_string {
                    Value::String(text)
                } else {
                    resolve(text)
                };
                self.put(v, anchor, at);
            }
            Event::Alias(id) => {
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.put(v, 0, at);
            }
            _ => {}
        }
    }
}

/// A plain scalar's value under YAML 1.2's core schema.
fn resolve(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return float(f64::NAN),
        _ => {}
    }
    let t = text.as_str();
    let radix = |digits: &str, r| u64::from_str_radix(digits, r).ok();
    let unsigned = match (t.strip_prefix("0x"), t.strip_prefix("0o")) {
        (Some(hex), _) => radix(hex, 16),
        (_, Some(oct)) => radix(oct, 8),
        _ if t.bytes().all(|b| b.is_ascii_digit()) || is_signed_digits(t, b'+') => {
            t.parse::<u64>().ok()
        }
        _ => None,
    };
    if let Some(n) = unsigned {
        return Value::Number(n.into());
    }
    if is_signed_digits(t, b'-') {
        if let Ok(n) = t.parse::<i64>() {
            return Value::Number(n.into());
        }
    }
    let numeric = t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if numeric {
        if let Ok(f) = t.parse::<f64>() {
            return float(f);
        }
    }
    Value::String(text)
}

fn is_signed_digits(t: &str, sign: u8) -> bool {
    t.len() > 1 && t.as_bytes()[0] == sign && t[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Non-finite floats have no JSON number; they are kept as the strings YAML
/// writes them as (no routes.yaml key takes one).
fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_resolve_as_yaml_1_2_core() {
        let v = parse(
            "a: ~\nb: Null\nc: TRUE\nd: yes\ne: 5\nf: -5\ng: 1.5\nh: 1e3\ni: 0x10\nj: '5'\nk: !!str 5\nl: 48GB\nm: 10m\nn: nan\n",
        )
        .unwrap();
        let expected = serde_json::json!({
            "a": null, "b": null, "c": true, "d": "yes", "e": 5, "f": -5, "g": 1.5,
            "h": 1000.0, "i": 16, "j": "5", "k": "5", "l": "48GB", "m": "10m", "n": "nan"
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn aliases_copy_and_the_last_of_a_repeated_key_wins() {
        let v = parse("a: &x {p: 1}\nb: *x\nc: 1\nc: 2\n").unwrap();
        assert_eq!(v, serde_json::json!({"a": {"p": 1}, "b": {"p": 1}, "c": 2}));
    }

    #[test]
    fn one_document_only_and_nothing_is_an_empty_map() {
        assert_eq!(parse("").unwrap(), serde_json::json!({}));
        assert_eq!(parse("# just this\n").unwrap(), serde_json::json!({}));
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.to_string().contains("more than one document"), "{e}");
    }
}
