//! One request, as the log keeps it.

use serde::{Deserialize, Serialize};

/// What happened to one model request. Times are milliseconds, kept to the
/// microsecond (a cached reply takes well under one millisecond).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The row's number, rising; 0 before it is written.
    #[serde(default)]
    pub id: i64,
    /// When the request arrived, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The `x-request-id` the router gave it (or the client sent).
    pub request_id: String,
    /// The client's address.
    pub peer: String,
    /// Which client key it presented, by its place in the config ("key 2"),
    /// never the key itself.
    pub key: Option<String>,
    pub user_agent: Option<String>,
    /// openai, ollama or anthropic.
    pub api: String,
    /// The path it asked for.
    pub route: String,
    /// The model as the client named it (an alias, say).
    pub model_asked: String,
    /// The configured model that answered (after aliases and fallbacks).
    pub model_served: String,
    pub stream: bool,
    pub status: u16,
    /// The router's error code (`x-modelyard-error`) when it refused or failed.
    pub error: Option<String>,
    /// Time spent waiting for the model to be ready.
    pub queue_ms: Option<f64>,
    /// `caused` when this request's arrival started its model's load, `waited`
    /// when it joined one under way; absent when the model was ready.
    pub swap: Option<String>,
    /// Models unloaded to make room for that load.
    #[serde(default)]
    pub unloaded: Vec<String>,
    /// Time to the first byte of the response body (the first token, for a stream).
    pub ttfb_ms: Option<f64>,
    pub total_ms: f64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Completion tokens over the time they took to come (after the first byte,
    /// for a stream).
    pub tokens_per_s: Option<f64>,
    /// The client went away before the response ended.
    pub cancelled: bool,
    /// The request's body, cut to a bound; only with `request_log.capture: true`.
    pub body: Option<String>,
    /// `interactive` or `background`, once its model was chosen; absent for a
    /// request refused before that (and for records of an older file).
    #[serde(default)]
    pub priority: Option<String>,
}
