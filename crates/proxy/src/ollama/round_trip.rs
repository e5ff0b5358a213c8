//! Round trips through the translation: an Ollama request turned into OpenAI's
//! and read back the way an OpenAI server (or Ollama's own OpenAI layer)
//! understands it keeps every field the client sent that OpenAI can express —
//! `format`, the `options` with OpenAI names, `think` — and an OpenAI reply
//! turned into Ollama's keeps its text, thinking, tool calls and counts.
//!
//! `back` is the reading an OpenAI server makes of our request: written here,
//! independently of `request.rs`, from the OpenAI and Ollama docs.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::reply::{whole, StreamTranslator, Timing};
use super::request::{parse, Endpoint, Shape};

/// The Ollama fields (of `format`, `options`, `think`) an OpenAI request says.
fn back(openai: &Map<String, Value>) -> Map<String, Value> {
    let mut ollama = Map::new();
    match openai.get("response_format") {
        Some(f) if f["type"] == "json_object" => {
            ollama.insert("format".into(), json!("json"));
        }
        Some(f) if f["type"] == "json_schema" => {
            ollama.insert("format".into(), f["json_schema"]["schema"].clone());
        }
        _ => {}
    }
    let mut options = Map::new();
    for key in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "stop",
    ] {
        if let Some(v) = openai.get(key) {
            options.insert(key.into(), v.clone());
        }
    }
    if let Some(n) = openai.get("max_tokens") {
        options.insert("num_predict".into(), n.clone());
    }
    if !options.is_empty() {
        ollama.insert("options".into(), Value::Object(options));
    }
    match openai.get("reasoning_effort").and_then(Value::as_str) {
        Some("none") => {
            ollama.insert("think".into(), json!(false));
        }
        Some(level) => {
            ollama.insert("think".into(), json!(level));
        }
        None => {}
    }
    ollama
}

/// What the client's fields mean, in the form `back` gives them: `think: true`
/// is thinking at the usual ("medium") level, a lone stop string a list of one,
/// numbers as the JSON numbers an OpenAI server reads.
fn meaning(sent: &Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(f) = sent.get("format") {
        m.insert("format".into(), f.clone());
    }
    if let Some(Value::Object(opts)) = sent.get("options") {
        let mut o = Map::new();
        for (k, v) in opts {
            let v = match (k.as_str(), v) {
                ("stop", Value::String(s)) => json!([s]),
                ("stop", list) => list.clone(),
                ("seed", n) => json!(n.as_f64().unwrap() as i64),
                ("num_predict", n) => json!(n.as_f64().unwrap() as u64),
                (_, n) => json!(n.as_f64().unwrap()),
            };
            o.insert(k.clone(), v);
        }
        if !o.is_empty() {
            m.insert("options".into(), Value::Object(o));
        }
    }
    match sent.get("think") {
        Some(Value::Bool(true)) => {
            m.insert("think".into(), json!("medium"));
        }
        Some(t) => {
            m.insert("think".into(), t.clone());
        }
        None => {}
    }
    m
}

fn schema() -> impl Strategy<Value = Value> {
    let property = prop_oneof![
        Just(json!({"type": "string"})),
        Just(json!({"type": "integer"})),
        Just(json!({"type": "array", "items": {"type": "number"}})),
        Just(json!({"type": "string", "enum": ["a", "b"]})),
    ];
    prop::collection::btree_map("[a-z]{1,6}", property, 0..4).prop_map(|props| {
        let required: Vec<&String> = props.keys().collect();
        json!({"type": "object", "properties": props, "required": required})
    })
}

/// A sampling value as clients write them, in hundredths (serde_json reads
/// the 17th digit of an arbitrary double back one ulp off).
fn hundredths(low: i32, high: i32) -> impl Strategy<Value = f64> {
    (low..=high).prop_map(|n| f64::from(n) / 100.0)
}

/// The `options` a client may send that OpenAI has names for.
fn options() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(hundredths(0, 200)),
        prop::option::of(hundredths(0, 100)),
        prop::option::of(hundredths(-200, 200)),
        prop::option::of(hundredths(-200, 200)),
        prop::option::of(0i64..1_000_000),
        prop::option::of(0u64..100_000),
        prop::option::of(prop_oneof![
            "[a-z\\n]{1,4}".prop_map(Value::String),
            prop::collection::vec("[a-z\\n]{1,4}", 1..3).prop_map(|v| json!(v)),
        ]),
    )
        .prop_map(|(t, p, pp, fp, seed, n, stop)| {
            let mut o = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            };
            put("temperature", t.map(|x| json!(x)));
            put("top_p", p.map(|x| json!(x)));
            put("presence_penalty", pp.map(|x| json!(x)));
            put("frequency_penalty", fp.map(|x| json!(x)));
            put("seed", seed.map(|x| json!(x)));
            put("num_predict", n.map(|x| json!(x)));
            put("stop", stop);
            o
        })
}

/// A valid Ollama chat or generate request with any of the translatable fields.
fn request() -> impl Strategy<Value = (Endpoint, Map<String, Value>)> {
    (
        prop_oneof![Just(Endpoint::Chat), Just(Endpoint::Generate)],
        prop::option::of(prop_oneof![Just(json!("json")), schema()]),
        options(),
        prop::option::of(prop_oneof![
            Just(json!(true)),
            Just(json!(false)),
            Just(json!("low")),
            Just(json!("medium")),
            Just(json!("high")),
        ]),
        any::<bool>(),
    )
        .prop_map(|(endpoint, format, options, think, stream)| {
            let mut m = Map::new();
            m.insert("model".into(), json!("m"));
            m.insert("stream".into(), json!(stream));
            match endpoint {
                Endpoint::Chat => {
                    m.insert(
                        "messages".into(),
                        json!([{"role": "user", "content": "hi"}]),
                    );
                }
                _ => {
                    m.insert("prompt".into(), json!("hi"));
                }
            }
            if let Some(f) = format {
                m.insert("format".into(), f);
            }
            if !options.is_empty() {
                m.insert("options".into(), Value::Object(options));
            }
            if let Some(t) = think {
                m.insert("think".into(), t);
            }
            (endpoint, m)
        })
}

proptest! {
    #[test]
    fn format_options_and_think_survive_the_round_trip((endpoint, sent) in request()) {
        let body = Value::Object(sent.clone()).to_string();
        let parsed = parse(endpoint, body.as_bytes()).expect("a valid request is translated");
        let (_, openai) = parsed.openai.expect("a prompt is not load-only");
        prop_assert_eq!(back(&openai), meaning(&sent));
    }

    /// A reply with thinking, text, tool calls and counts, whole or cut into
    /// stream deltas anywhere, comes back to the Ollama client with all four.
    #[test]
    fn replies_keep_text_thinking_tool_calls_and_counts(
        text in "[a-z ]{0,12}",
        thinking in "[a-z ]{1,12}",
        reasoning_key in prop_oneof![Just("reasoning_content"), Just("reasoning")],
        call in prop::option::of(("[a-z_]{1,8}", schema())),
        prompt in 1u64..1000,
        completion in 1u64..1000,
    ) {
        let calls: Vec<Value> = call.iter().map(|(name, args)| json!({
            "id": "call_1", "type": "function",
            "function": {"name": name, "arguments": args.to_string()},
        })).collect();
        let mut message = json!({"role": "assistant", "content": text});
        message[reasoning_key] = json!(thinking);
        if !calls.is_empty() {
            message["tool_calls"] = json!(calls);
        }
        let reply = json!({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion}});
        let out = whole(Shape::Chat, "m", "t", &reply, Timing::default()).unwrap();
        prop_assert_eq!(&out["message"]["content"], &json!(text));
        prop_assert_eq!(&out["message"]["thinking"], &json!(thinking));
        prop_assert_eq!(out["prompt_eval_count"].as_u64(), Some(prompt));
        prop_assert_eq!(out["eval_count"].as_u64(), Some(completion));
        let expected_calls: Vec<Value> = call.iter().map(|(name, args)|
            json!({"function": {"name": name, "arguments": args}})).collect();
        if expected_calls.is_empty() {
            prop_assert!(out["message"].get("tool_calls").is_none());
        } else {
            prop_assert_eq!(&out["message"]["tool_calls"], &json!(expected_calls));
        }

        // The same reply streamed (only `reasoning_content` deltas are read
        // from llama.cpp-style streams, `reasoning` from Ollama's).
        let mut sse = String::new();
        let mut push = |delta: Value, finish: Value| {
            sse.push_str(&format!("data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})));
        };
        push(json!({reasoning_key: thinking}), Value::Null);
        push(json!({"content": text}), Value::Null);
        if let Some((name, args)) = &call {
            push(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": name, "arguments": args.to_string()}}]}), Value::Null);
        }
        push(json!({}), json!("stop"));
        sse.push_str(&format!("data: {}\n\ndata: [DONE]\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})));
        let mut t = StreamTranslator::new(Shape::Chat, "m");
        let mut lines = t.feed(sse.as_bytes(), "t");
        lines.extend(t.finish("t", Timing::default()));
        let lines: Vec<Value> = String::from_utf8(lines).unwrap().lines()
            .map(|l| serde_json::from_str(l).unwrap()).collect();
        let joined = |key: &str| -> String {
            lines.iter().filter_map(|l| l["message"][key].as_str()).collect()
        };
        prop_assert_eq!(joined("thinking"), thinking);
        prop_assert_eq!(joined("content"), text);
        let streamed_calls: Vec<Value> = lines.iter()
            .filter_map(|l| l["message"]["tool_calls"].as_array())
            .flatten().cloned().collect();
        prop_assert_eq!(streamed_calls, expected_calls);
        let last = lines.last().unwrap();
        prop_assert_eq!(last["done"].as_bool(), Some(true));
        prop_assert_eq!(last["eval_count"].as_u64(), Some(completion));
    }
}

#[test]
fn think_that_is_not_a_level_is_refused_naming_the_field() {
    for bad in [json!("max"), json!(1), json!(["high"])] {
        let body = json!({"model": "m", "prompt": "hi", "think": bad}).to_string();
        let err = parse(Endpoint::Generate, body.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("think"), "{err}");
    }
}
