//! Properties of the translation: whatever a client or a backend sends, the
//! router answers with a translation or a clear 400/502 — never a panic — and a
//! stream's translation does not depend on how its bytes were cut.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::keep_alive;
use super::passthrough::splice;
use super::reply::{whole, StreamTranslator, Timing};
use super::request::{parse, Endpoint, Shape};

fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        Just(Endpoint::Chat),
        Just(Endpoint::Generate),
        Just(Endpoint::Embed),
        Just(Endpoint::Embeddings),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Chat),
        Just(Shape::Generate),
        Just(Shape::GenerateRaw),
        Just(Shape::Embed),
        Just(Shape::Embeddings),
    ]
}

/// Any JSON value, a few levels deep, with the keys these APIs use so that the
/// interesting paths are reached.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("role".to_string()),
        Just("content".to_string()),
        Just("images".to_string()),
        Just("tool_calls".to_string()),
        Just("function".to_string()),
        Just("name".to_string()),
        Just("arguments".to_string()),
        Just("choices".to_string()),
        Just("delta".to_string()),
        Just("message".to_string()),
        Just("usage".to_string()),
        Just("data".to_string()),
        Just("embedding".to_string()),
        Just("error".to_string()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A request body: a model and any of the fields Ollama requests have, with any values.
fn request_body() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("messages"),
        Just("prompt"),
        Just("system"),
        Just("images"),
        Just("raw"),
        Just("stream"),
        Just("format"),
        Just("options"),
        Just("keep_alive"),
        Just("tools"),
        Just("input"),
        Just("dimensions"),
    ];
    (
        prop::collection::vec((field, any_json()), 0..6),
        prop::option::of(any_json()),
    )
        .prop_map(|(fields, model)| {
            let mut m: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            m.insert("model".into(), model.unwrap_or_else(|| json!("some-model")));
            Value::Object(m)
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_translated_or_refused_with_400(e in endpoint(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(err) = parse(e, &bytes) {
            prop_assert_eq!(err.status(), 400);
        }
    }

    #[test]
    fn arbitrary_requests_are_translated_or_refused_with_400(e in endpoint(), body in request_body()) {
        let bytes = body.to_string();
        match parse(e, bytes.as_bytes()) {
            Ok(p) => {
                prop_assert_eq!(p.load_only, p.openai.is_none());
                if let Some((_, out)) = &p.openai {
                    prop_assert!(!out.contains_key("keep_alive") && !out.contains_key("model"));
                }
                // Whatever was accepted can also be passed through, only renamed.
                let spliced = splice(bytes.as_bytes(), "up/stream:1").unwrap();
                let v: Value = serde_json::from_slice(&spliced).unwrap();
                prop_assert_eq!(&v["model"], "up/stream:1");
                // Parsed from the same text, so floats compare exactly.
                let mut want: Value = serde_json::from_str(&bytes).unwrap();
                want["model"] = json!("up/stream:1");
                // keep_alive is always -1, whether sent or not.
                prop_assert_eq!(&v["keep_alive"], &json!(-1));
                want["keep_alive"] = json!(-1);
                prop_assert_eq!(v, want);
            }
            Err(err) => prop_assert_eq!(err.status(), 400),
        }
    }

    #[test]
    fn keep_alive_never_panics(s in ".{0,16}", n in any::<f64>()) {
        let _ = keep_alive::parse(Some(&json!(s)));
        if n.is_finite() {
            let _ = keep_alive::parse(Some(&json!(n)));
        }
    }

    #[test]
    fn any_backend_reply_is_translated_or_refused(s in shape(), v in any_json()) {
        let _ = whole(s, "m", "now", &v, Timing::default());
    }

    #[test]
    fn any_stream_becomes_ndjson_however_it_is_cut(
        s in shape(),
        events in prop::collection::vec(any_json(), 0..6),
        junk in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut sse: Vec<u8> = events
            .iter()
            .flat_map(|e| format!("data: {e}\n\n").into_bytes())
            .collect();
        sse.extend_from_slice(&junk);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(sse.len() + 1)).collect();
        at.sort_unstable();
        let run = |bounds: &[usize]| {
            let mut t = StreamTranslator::new(s, "m");
            let mut out = Vec::new();
            let mut from = 0;
            for &b in bounds.iter().chain(std::iter::once(&sse.len())) {
                out.extend(t.feed(&sse[from..b], "now"));
                from = b;
            }
            out.extend(t.finish("now", Timing::default()));
            out
        };
        let out = run(&at);
        prop_assert_eq!(&out, &run(&[]));
        let text = String::from_utf8(out).unwrap();
        prop_assert!(text.is_empty() || text.ends_with('\n'));
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            prop_assert!(v.is_object());
        }
        // Exactly one end: a done line, or an error line.
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        prop_assert!(last["done"] == json!(true) || last.get("error").is_some());
    }
}
