//! Properties of the request path before anything is routed: whatever bytes a
//! client sends, the depth check and the model extraction answer (a verdict, a
//! model, or a 400-class error) without panicking, and agree with a real parser.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::limits::nests_deeper;
use crate::rewrite::peek_model;

/// Any JSON value a few levels deep, strings included that hold brackets,
/// quotes and escapes, which the depth check must not count.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        r#"[\[\]{}"\\a-z ]{0,10}"#.prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z\"\\[{]{1,4}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #[test]
    fn the_depth_check_agrees_with_the_parsed_depth(v in any_json(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        let d = depth(&v);
        prop_assert!(!nests_deeper(text.as_bytes(), d), "{text} is {d} deep");
        if d > 0 {
            prop_assert!(nests_deeper(text.as_bytes(), d - 1), "{text} is {d} deep");
        }
    }

    #[test]
    fn arbitrary_bytes_get_a_verdict_or_a_client_error(bytes in prop::collection::vec(any::<u8>(), 0..512), limit in 0usize..8) {
        let _ = nests_deeper(&bytes, limit);
        match peek_model(&bytes) {
            Ok(r) => {
                // Whatever was accepted, the model can be renamed in place.
                let out = r.with_model(&bytes, "up\"stream");
                let v: Value = serde_json::from_slice(&out).expect("the renamed body is JSON");
                prop_assert_eq!(&v["model"], "up\"stream");
            }
            Err(e) => prop_assert_eq!(e.status().as_u16(), 400, "{}", e),
        }
    }

    #[test]
    fn damaged_requests_get_a_verdict_or_a_client_error(v in any_json(), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
        let mut text = serde_json::to_vec(&json!({"model": "m", "x": v})).unwrap();
        let at = cut.index(text.len());
        text[at] = junk;
        let _ = nests_deeper(&text, 4);
        if let Err(e) = peek_model(&text) {
            prop_assert_eq!(e.status().as_u16(), 400, "{}", e);
        }
        text.truncate(at);
        prop_assert!(peek_model(&text).is_err(), "a cut object is not a request");
    }

    #[test]
    fn any_object_with_a_model_keeps_every_other_field(mut v in any_json(), name in ".{0,12}") {
        if !v.is_object() {
            v = json!({ "x": v });
        }
        v["model"] = json!(name);
        let text = serde_json::to_vec(&v).unwrap();
        let routed = peek_model(&text).unwrap();
        prop_assert_eq!(&routed.model, &name);
        let mut renamed: Value = serde_json::from_slice(&routed.with_model(&text, "other")).unwrap();
        renamed["model"] = json!(name);
        prop_assert_eq!(renamed, v);
    }
}

#[test]
fn a_non_string_model_is_a_client_error() {
    assert!(matches!(
        peek_model(br#"{"model":[1]}"#),
        Err(ApiError::ModelNotString)
    ));
}
