//! The loader against anything a user (or a damaged file) could hand it: any
//! bytes, and YAML shaped like routes.yaml with any values in any place. It
//! must answer Ok or a list of issues, each naming a key, never panic.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::load_str;

/// Values of every type, including the strings keys expect (sizes, durations,
/// addresses, argv pieces) and ones they do not.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        // Edges that any::<i64>/<f64> reach only by luck.
        prop::sample::select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(f64::MIN_POSITIVE),
            json!(-0.0),
            json!(0.5),
        ]),
        prop_oneof![
            Just("48GB"),
            Just("1.5GiB"),
            Just("-3MB"),
            Just("10m"),
            Just("never"),
            Just("0s"),
            Just("127.0.0.1:0"),
            Just("http://127.0.0.1:9"),
            Just("${PORT}"),
            Just("${MODEL}"),
            Just("/v1/embeddings"),
            Just("openai"),
            Just("omlx"),
            Just("ollama"),
        ]
        .prop_map(|s| json!(s)),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_/]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn mapping(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(keys).prop_map(String::from),
        "[a-z_]{1,6}"
    ];
    prop::collection::vec((key, value()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

const TOP: &[&str] = &[
    "listen",
    "budget",
    "reserve",
    "idle_timeout",
    "queue_timeout",
    "max_queue",
    "max_body",
    "max_body_by_path",
    "max_json_depth",
    "max_headers",
    "max_header_size",
    "max_uri_length",
    "header_timeout",
    "body_timeout",
    "max_connections",
    "upstream_connect_timeout",
    "upstream_pool_idle",
    "idle_connection_timeout",
    "max_response",
    "upstream_timeout",
    "expose",
    "allowed_hosts",
    "allowed_origins",
    "api_keys",
    "preload",
    "loading_progress",
    "progress_after",
];
const BACKEND: &[&str] = &[
    "kind",
    "command",
    "url",
    "health",
    "start_timeout",
    "stop_timeout",
    "api_key",
    "env",
    "memory",
];
const MODEL: &[&str] = &[
    "backend",
    "upstream",
    "memory",
    "group",
    "aliases",
    "pinned",
    "idle_timeout",
    "args",
    "fallback",
];

/// A routes.yaml: known top-level keys (and typos) with any values, plus
/// backends and models whose fields are known keys with any values.
fn routes() -> impl Strategy<Value = Value> {
    let named = |keys| prop::collection::vec(("[a-c]", mapping(keys)), 0..3);
    (mapping(TOP), named(BACKEND), named(MODEL)).prop_map(|(mut top, backends, models)| {
        let obj = top.as_object_mut().expect("a mapping");
        obj.insert(
            "backends".into(),
            Value::Object(backends.into_iter().collect()),
        );
        obj.insert("models".into(), Value::Object(models.into_iter().collect()));
        top
    })
}

proptest! {
    // The loader is fast; many cases make rare value/key pairings (a huge
    // number under a duration key) likely in every run, not one run in ten.
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_load_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = load_str("fuzz", &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn any_routes_shaped_yaml_loads_or_names_its_problems(doc in routes(), block in any::<bool>()) {
        // JSON is YAML; block style reaches the line index as users write it.
        let text = if block {
            let mut out = String::new();
            block_yaml(&doc, 0, &mut out);
            out
        } else {
            doc.to_string()
        };
        if let Err(e) = load_str("fuzz", &text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

/// Block-style YAML for a value, scalars written as JSON (which YAML reads).
fn block_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                out.push_str(&format!("{pad}{}:", Value::String(k.clone())));
                nested(v, indent, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for v in a {
                out.push_str(&format!("{pad}-"));
                nested(v, indent, out);
            }
        }
        scalar => out.push_str(&format!("{pad}{scalar}\n")),
    }
}

fn nested(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            out.push('\n');
            block_yaml(v, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            block_yaml(v, indent + 2, out);
        }
        scalar => out.push_str(&format!(" {scalar}\n")),
    }
}
