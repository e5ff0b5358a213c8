//! Why a call got no (whole) answer. The texts are what the supervisor has
//! always logged, down to the cause; the CLI words its own around
//! [`Error::Unreachable`].

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or a header could not make a request.
    #[error("bad request to {url}: {source}")]
    Request { url: String, source: http::Error },
    /// No connection, or it closed before an answer's head came.
    #[error("{url}: {}", with_causes(source))]
    Unreachable {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body broke off or was larger than allowed.
    #[error("{url}: reading the answer: {}", with_causes(source.as_ref()))]
    Read {
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{url} did not answer within {}s", limit.as_secs_f64())]
    TooSlow { url: String, limit: Duration },
}

/// `e` and every cause under it, outermost first: hyper's errors name only
/// their kind ("client error (Connect)"), and the why ("Connection refused")
/// is in their sources.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
