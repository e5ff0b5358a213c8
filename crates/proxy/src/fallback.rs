//! Requests a model's server would refuse go to the model's `fallback` instead,
//! decided before anything is sent. Today that is apfel: Apple's on-device model
//! has a small context window (4096 tokens on macOS 26, 8192 on 27, which it
//! reports on /health), rejects some OpenAI parameters, reads no images and serves
//! neither completions nor embeddings. Without a fallback such a request gets a
//! 400 that says why, instead of apfel's own refusal or its silent trimming of the
//! conversation's oldest turns.

use modelyard_config::{BackendKind, Config};
use serde_json::Value;

use crate::error::ApiError;
use crate::Inner;

/// The window apfel reports on the oldest macOS it runs on, until it reports one.
pub(crate) const APFEL_WINDOW: u32 = 4096;
/// What apfel keeps for the answer when the request does not say (its default).
const APFEL_OUTPUT_RESERVE: u64 = 512;
/// Parameters apfel refuses with a 400 whatever their value.
const APFEL_REFUSES: &[&str] = &["stop", "presence_penalty", "frequency_penalty"];

/// Where a request goes: its model, or that model's fallback and why.
pub(crate) struct Choice {
    pub model: String,
    pub fell_back: Option<String>,
}

/// Whether `model` (a configured name) can fall back at all: only then is the
/// request worth looking at.
pub(crate) fn can_fall_back(config: &Config, model: &str) -> bool {
    kind(config, model) == Some(BackendKind::Apfel)
}

/// `choose`, with the context window the model's server last reported.
pub(crate) async fn route(
    state: &Inner,
    config: &Config,
    model: &str,
    path: &str,
    body: &[u8],
) -> Result<Choice, ApiError> {
    let window = if can_fall_back(config, model) {
        let snap = state.supervisor.snapshot().await;
        snap.and_then(|s| s.model(model).and_then(|m| m.context_window))
    } else {
        None
    };
    choose(config, model, path, body, window)
}

impl Choice {
    /// The `x-modelyard-fallback` header's text when the request went elsewhere.
    pub(crate) fn note(&self, asked_for: &str) -> Option<String> {
        let why = self.fell_back.as_ref()?;
        Some(format!("{asked_for} -> {}: {why}", self.model))
    }
}

/// Picks the model that will serve this request. `window` is the model's
/// context window as its server last reported it.
pub(crate) fn choose(
    config: &Config,
    model: &str,
    path: &str,
    body: &[u8],
    window: Option<u32>,
) -> Result<Choice, ApiError> {
    let stay = || {
        Ok(Choice {
            model: model.to_string(),
            fell_back: None,
        })
    };
    if kind(config, model) != Some(BackendKind::Apfel) {
        return stay();
    }
    let Some(reason) = apfel_refuses(path, body, window.unwrap_or(APFEL_WINDOW)) else {
        return stay();
    };
    match config.models[model]
        .fallback
        .as_deref()
        .and_then(|f| config.resolve(f))
    {
        Some(to) => Ok(Choice {
            model: to.to_string(),
            fell_back: Some(reason.message),
        }),
        None => Err(ApiError::CannotServe {
            model: model.to_string(),
            reason: reason.message,
            code: reason.code,
        }),
    }
}

fn kind(config: &Config, model: &str) -> Option<BackendKind> {
    let m = config.models.get(model)?;
    Some(config.backends.get(&m.backend)?.kind)
}

pub(crate) struct Refusal {
    pub message: String,
    pub code: &'static str,
}

fn refusal(code: &'static str, message: String) -> Option<Refusal> {
    Some(Refusal { message, code })
}

/// Why apfel would not take this request as it is, if it would not.
fn apfel_refuses(path: &str, body: &[u8], window: u32) -> Option<Refusal> {
    if !path.ends_with("/chat/completions") && !path.ends_with("/responses") {
        let what = path.rsplit('/').next().unwrap_or(path);
        return refusal(
            "unsupported_endpoint",
            format!("apfel does not serve {what}"),
        );
    }
    // The body was read as a JSON object already to find its model.
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let set = |k: &str| req.get(k).is_some_and(|v| !v.is_null());
    if let Some(p) = APFEL_REFUSES.iter().find(|p| set(p)) {
        return refusal(
            "unsupported_parameter",
            format!("apfel does not accept `{p}`"),
        );
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return refusal(
            "unsupported_parameter",
            "apfel does not accept `logprobs`".into(),
        );
    }
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return refusal(
            "unsupported_parameter",
            "apfel gives one choice (`n` must be 1)".into(),
        );
    }
    let messages = req.get("messages").and_then(Value::as_array);
    let parts = messages
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content")?.as_array())
        .flatten();
    for part in parts {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "text" {
            return refusal(
                "unsupported_content",
                format!("apfel reads text only, not `{kind}`"),
            );
        }
    }
    let reserve = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| req.get(*k).and_then(Value::as_u64))
        .unwrap_or(APFEL_OUTPUT_RESERVE);
    let needs = estimate_tokens(messages.map(Vec::as_slice).unwrap_or_default()) + reserve;
    if needs > u64::from(window) {
        return refusal(
            "context_length_exceeded",
            format!(
                "the conversation needs about {needs} tokens (with {reserve} for the answer) and apfel's context window is {window}"
            ),
        );
    }
    None
}

/// A deliberately generous count: four ASCII characters per token, one per other
/// character (CJK text runs near one token per character), and a few per message.
fn estimate_tokens(messages: &[Value]) -> u64 {
    let text_tokens = |s: &str| {
        let ascii = s.bytes().filter(u8::is_ascii).count() as u64;
        let other = s.chars().filter(|c| !c.is_ascii()).count() as u64;
        ascii.div_ceil(4) + other
    };
    messages
        .iter()
        .map(|m| {
            let content = match m.get("content") {
                Some(Value::String(s)) => text_tokens(s),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text")?.as_str())
                    .map(text_tokens)
                    .sum(),
                _ => 0,
            };
            content + 4
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        modelyard_config::load_str(
            "t",
            r#"
backends:
  apfel: {kind: apfel, command: [apfel, --serve]}
  p: {command: [x, "${PORT}"]}
models:
  apple: {backend: apfel, memory: 1GB, fallback: big}
  lone: {backend: apfel, memory: 1GB}
  big: {backend: p, memory: 1GB, aliases: [b]}
"#,
        )
        .unwrap()
        .config
    }

    fn chat(extra: &str, text: &str) -> Vec<u8> {
        format!(r#"{{"model":"apple","messages":[{{"role":"user","content":{text:?}}}]{extra}}}"#)
            .into_bytes()
    }

    const CHAT: &str = "/v1/chat/completions";

    #[test]
    fn what_apfel_takes_stays_there() {
        let c = choose(&config(), "apple", CHAT, &chat("", "hi"), None).unwrap();
        assert_eq!((c.model.as_str(), c.fell_back), ("apple", None));
    }

    #[test]
    fn a_conversation_past_the_window_goes_to_the_fallback() {
        let long = "word ".repeat(4000); // ~5000 tokens
        let c = choose(&config(), "apple", CHAT, &chat("", &long), None).unwrap();
        assert_eq!(c.model, "big");
        assert!(c.fell_back.unwrap().contains("context window is 4096"));
        // macOS 27 reports 8192: the same conversation fits.
        let c = choose(&config(), "apple", CHAT, &chat("", &long), Some(8192)).unwrap();
        assert_eq!(c.model, "apple");
    }

    #[test]
    fn cjk_text_counts_a_token_per_character() {
        let text = "語".repeat(3700);
        let c = choose(&config(), "apple", CHAT, &chat("", &text), None).unwrap();
        assert_eq!(c.model, "big");
    }

    #[test]
    fn refused_parameters_images_and_endpoints_go_to_the_fallback() {
        let cases: [(&str, Vec<u8>); 6] = [
            (CHAT, chat(r#","stop":["\n"]"#, "hi")),
            (CHAT, chat(r#","logprobs":true"#, "hi")),
            (CHAT, chat(r#","n":2"#, "hi")),
            (CHAT, chat(r#","presence_penalty":0.5"#, "hi")),
            (
                CHAT,
                br#"{"model":"apple","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:"}}]}]}"#.to_vec(),
            ),
            ("/v1/embeddings", br#"{"model":"apple","input":"x"}"#.to_vec()),
        ];
        for (path, body) in cases {
            let c = choose(&config(), "apple", path, &body, None).unwrap();
            assert_eq!(c.model, "big", "{}", String::from_utf8_lossy(&body));
        }
        let ok = chat(r#","stop":null,"n":1,"logprobs":false"#, "hi");
        assert_eq!(
            choose(&config(), "apple", CHAT, &ok, None).unwrap().model,
            "apple"
        );
    }

    #[test]
    fn without_a_fallback_the_client_is_told_why() {
        let body = chat(r#","stop":["x"]"#, "hi").to_vec();
        let body = String::from_utf8(body).unwrap().replace("apple", "lone");
        let Err(e) = choose(&config(), "lone", CHAT, body.as_bytes(), None) else {
            panic!("must refuse")
        };
        let text = e.to_string();
        assert!(
            text.contains("`stop`") && text.contains("fallback"),
            "{text}"
        );
    }

    #[test]
    fn other_backends_are_never_second_guessed() {
        let body = br#"{"model":"big","stop":["x"],"messages":[]}"#;
        assert_eq!(
            choose(&config(), "big", CHAT, body, None).unwrap().model,
            "big"
        );
    }
}
