//! A value that follows a JSON schema, made up deterministically: the
//! arguments of a simulated tool call and the content of a structured
//! (`response_format`) answer. Clients that validate what they get — an
//! agent framework parsing a tool's arguments, instructor checking a pydantic
//! model — then accept the simulator's answer as they would a real model's.

use serde_json::{json, Map, Value};

/// How deep `$ref`s and nesting are followed; a recursive schema (a tree of
/// nodes) stops there with the smallest value its type allows.
const MAX_DEPTH: usize = 8;

/// A value valid against `schema`, for the subset of JSON Schema that tool
/// definitions and structured-output schemas use: `type` (or a list of
/// them), `properties` with `required`, `items`, `enum`, `const`,
/// `anyOf`/`oneOf`/`allOf`, `$ref` into `$defs`/`definitions`, `default`,
/// and the numeric and length bounds.
pub fn example(schema: &Value) -> Value {
    build(schema, schema, 0)
}

fn build(schema: &Value, root: &Value, depth: usize) -> Value {
    let Some(s) = schema.as_object() else {
        // `true` or a missing schema accepts anything.
        return json!("sim");
    };
    if depth > MAX_DEPTH {
        return smallest(s);
    }
    if let Some(value) = s.get("const") {
        return value.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(default) = s.get("default") {
        return default.clone();
    }
    if let Some(target) = s.get("$ref").and_then(Value::as_str) {
        return match resolve(root, target) {
            Some(found) => build(found, root, depth + 1),
            None => json!({}),
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = s.get(key).and_then(Value::as_array) {
            // The first option that is not `null`, so an Optional[X] field
            // gets an X.
            let pick = options
                .iter()
                .find(|o| o.get("type") != Some(&json!("null")))
                .or(options.first());
            if let Some(pick) = pick {
                return build(pick, root, depth + 1);
            }
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut merged = Map::new();
        for part in all {
            if let Value::Object(fields) = build(part, root, depth + 1) {
                merged.extend(fields);
            }
        }
        return Value::Object(merged);
    }
    match type_of(s) {
        "object" => object(s, root, depth),
        "array" => {
            let item = s
                .get("items")
                .map_or(json!("sim"), |i| build(i, root, depth + 1));
            let count = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let count = match s.get("maxItems").and_then(Value::as_u64) {
                Some(max) => count.min(max),
                None => count,
            };
            Value::Array(vec![item; usize::try_from(count).unwrap_or(1)])
        }
        "string" => string(s),
        "integer" => {
            let low = s.get("minimum").and_then(Value::as_i64).unwrap_or(1);
            let high = s.get("maximum").and_then(Value::as_i64).unwrap_or(i64::MAX);
            json!(low.max(1).min(high))
        }
        "number" => {
            let low = s.get("minimum").and_then(Value::as_f64).unwrap_or(1.5);
            let high = s.get("maximum").and_then(Value::as_f64).unwrap_or(f64::MAX);
            json!(low.max(1.5).min(high))
        }
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("sim"),
    }
}

/// The declared type, the first non-null of a list, or what the keywords
/// present imply.
fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ if s.contains_key("items") => "array",
        _ => "string",
    }
}

/// Every property, required or not: a client's model with optional fields
/// still parses, and a test sees each field filled.
fn object(s: &Map<String, Value>, root: &Value, depth: usize) -> Value {
    let mut out = Map::new();
    if let Some(properties) = s.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            out.insert(name.clone(), build(property, root, depth + 1));
        }
    }
    Value::Object(out)
}

fn string(s: &Map<String, Value>) -> Value {
    let text = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2026-01-01T00:00:00Z",
        Some("date") => "2026-01-01",
        Some("time") => "00:00:00Z",
        Some("email") => "sim@example.com",
        Some("uri" | "url") => "https://example.com/sim",
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        _ => "sim",
    };
    let mut text = text.to_owned();
    let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0);
    while (text.chars().count() as u64) < min {
        text.push('x');
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        text = text
            .chars()
            .take(usize::try_from(max).unwrap_or(0))
            .collect();
    }
    Value::String(text)
}

/// The least a recursive schema can end with.
fn smallest(s: &Map<String, Value>) -> Value {
    match type_of(s) {
        "object" => json!({}),
        "array" => json!([]),
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("sim"),
    }
}

/// `#/$defs/Name` (pydantic) or `#/definitions/Name` (older generators).
fn resolve<'a>(root: &'a Value, target: &str) -> Option<&'a Value> {
    root.pointer(target.strip_prefix('#')?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_gets_every_property_with_its_type() {
        let schema = json!({"type": "object", "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 3, "maximum": 7},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "hourly": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        }, "required": ["city"]});
        assert_eq!(
            example(&schema),
            json!({"city": "sim", "days": 3, "unit": "celsius", "hourly": true, "tags": ["sim"]})
        );
    }

    #[test]
    fn pydantic_refs_and_optionals_resolve() {
        // What pydantic's model_json_schema() writes for a nested model and
        // an Optional[int].
        let schema = json!({
            "$defs": {"Address": {"type": "object", "properties": {"zip": {"type": "string", "minLength": 5}}}},
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/Address"},
                "age": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
                "kind": {"const": "person"},
            },
        });
        assert_eq!(
            example(&schema),
            json!({"home": {"zip": "simxx"}, "age": 1, "kind": "person"})
        );
    }

    #[test]
    fn a_recursive_schema_ends() {
        let schema = json!({
            "$defs": {"Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
            "$ref": "#/$defs/Node",
        });
        let value = example(&schema);
        assert!(value["children"][0]["children"].is_array());
    }

    #[test]
    fn no_schema_is_an_empty_object_for_tools() {
        assert_eq!(example(&json!({})), json!("sim"));
        assert_eq!(example(&json!({"type": "object"})), json!({}));
        assert_eq!(example(&json!({"type": ["null", "number"]})), json!(1.5));
    }
}
