//! One request, as the log keeps it.

use std::fmt::Display;

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
    /// for a stream). Not kept: worked out from the fields above when read.
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

/// A record as a request leaves it, borrowed from wherever its caller keeps
/// the parts (header values, the peer's address, the caller's own escaping of
/// text a client chose): written straight into the batch, so recording a
/// request allocates nothing. The fields mean what [`Record`]'s do.
pub struct Entry<'a> {
    pub at_ms: u64,
    /// None when the request had none.
    pub request_id: Option<&'a dyn Display>,
    pub peer: &'a dyn Display,
    pub key: Option<&'a dyn Display>,
    pub user_agent: Option<&'a dyn Display>,
    pub api: &'a str,
    pub route: &'a dyn Display,
    pub model_asked: &'a dyn Display,
    pub model_served: &'a str,
    pub stream: bool,
    pub status: u16,
    pub error: Option<&'a str>,
    pub queue_ms: Option<f64>,
    pub swap: Option<&'a str>,
    pub unloaded: &'a [String],
    pub ttfb_ms: Option<f64>,
    pub total_ms: f64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cancelled: bool,
    pub body: Option<&'a str>,
    pub priority: Option<&'a str>,
}

impl Record {
    /// This record, to be written.
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            at_ms: self.at_ms,
            request_id: (!self.request_id.is_empty()).then_some(&self.request_id as &dyn Display),
            peer: &self.peer,
            key: self.key.as_ref().map(|k| k as &dyn Display),
            user_agent: self.user_agent.as_ref().map(|u| u as &dyn Display),
            api: &self.api,
            route: &self.route,
            model_asked: &self.model_asked,
            model_served: &self.model_served,
            stream: self.stream,
            status: self.status,
            error: self.error.as_deref(),
            queue_ms: self.queue_ms,
            swap: self.swap.as_deref(),
            unloaded: &self.unloaded,
            ttfb_ms: self.ttfb_ms,
            total_ms: self.total_ms,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cancelled: self.cancelled,
            body: self.body.as_deref(),
            priority: self.priority.as_deref(),
        }
    }
}
