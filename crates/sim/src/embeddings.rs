use base64::Engine as _;
use serde_json::{json, Value};

pub const DEFAULT_DIMENSIONS: u64 = 8;
/// Caps `dimensions` so a typo cannot make the sim build a huge reply.
const MAX_DIMENSIONS: u64 = 4096;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Builds the `/v1/embeddings` reply, or an error message and the offending
/// parameter.
pub fn respond(body: &Value, model: &str) -> Result<Value, (String, &'static str)> {
    let inputs: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| {
                item.as_str().ok_or_else(|| {
                    (
                        "'input' must be a string or an array of strings".to_owned(),
                        "input",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err((
                "'input' must be a non-empty string or array of strings".into(),
                "input",
            ))
        }
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => v
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS).contains(d))
            .ok_or_else(|| {
                (
                    format!("'dimensions' must be an integer in 1..={MAX_DIMENSIONS}"),
                    "dimensions",
                )
            })?,
    };
    // OpenAI's SDKs for Node ask for base64 by default (little-endian f32s)
    // and decode it themselves; a float list there decodes to zeros.
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err((
                "'encoding_format' must be \"float\" or \"base64\"".into(),
                "encoding_format",
            ))
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embed(text, dimensions as usize);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({
                "object": "embedding",
                "index": index,
                "embedding": embedding,
            })
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|text| (text.split_whitespace().count() as u64).max(1))
        .sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// A deterministic unit vector for `text`: equal texts always embed equally
/// and different texts almost surely differently, which is all callers of a
/// simulated backend can check.
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dimensions as u64)
        .map(|dim| {
            let hash = fnv1a(dim.to_le_bytes().iter().chain(text.as_bytes()));
            hash as f64 / u64::MAX as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    raw.iter()
        .map(|x| if norm > 0.0 { x / norm } else { 0.0 } as f32)
        .collect()
}

pub fn fnv1a<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn deterministic_and_normalised() {
        let a = embed("hello world", 8);
        assert_eq!(a, embed("hello world", 8));
        assert_ne!(a, embed("hello world!", 8));
        assert_eq!(a.len(), 8);
        assert!((norm(&a) - 1.0).abs() < 1e-5);
        assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
        let wide = embed("hello world", 300);
        assert_eq!(wide.len(), 300);
        assert!((norm(&wide) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn base64_is_the_same_vector_as_little_endian_f32s() {
        let reply = respond(
            &json!({"input": "a b", "dimensions": 4, "encoding_format": "base64"}),
            "emb",
        )
        .unwrap();
        let text = reply["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, embed("a b", 4));
        let err = respond(&json!({"input": "a", "encoding_format": "hex"}), "emb").unwrap_err();
        assert_eq!(err.1, "encoding_format");
    }

    #[test]
    fn reply_shape() {
        let reply = respond(&json!({"input": ["a b", "c"], "dimensions": 3}), "emb").unwrap();
        assert_eq!(reply["object"], "list");
        assert_eq!(reply["model"], "emb");
        assert_eq!(reply["data"].as_array().unwrap().len(), 2);
        assert_eq!(reply["data"][1]["index"], 1);
        assert_eq!(reply["data"][1]["object"], "embedding");
        assert_eq!(reply["data"][0]["embedding"].as_array().unwrap().len(), 3);
        assert_eq!(
            reply["usage"],
            json!({"prompt_tokens": 3, "total_tokens": 3})
        );

        let single = respond(&json!({"input": "a b"}), "emb").unwrap();
        assert_eq!(single["data"][0]["embedding"], json!(embed("a b", 8)));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(respond(&json!({}), "m").unwrap_err().1, "input");
        assert_eq!(respond(&json!({"input": []}), "m").unwrap_err().1, "input");
        assert_eq!(
            respond(&json!({"input": [1, 2]}), "m").unwrap_err().1,
            "input"
        );
        assert_eq!(
            respond(&json!({"input": "x", "dimensions": 0}), "m")
                .unwrap_err()
                .1,
            "dimensions"
        );
    }
}
