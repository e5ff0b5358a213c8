//! Why a call got no (whole) answer. The texts are what the supervisor has
//! always logged; the CLI words its own around [`Error::Unreachable`].

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or a header could not make a request.
    #[error("bad request to {url}: {source}")]
    Request { url: String, source: http::Error },
    /// No connection, or it closed before an answer's head came.
    #[error("{url}: {source}")]
    Unreachable {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body broke off or was larger than allowed.
    #[error("{url}: reading the answer: {source}")]
    Read {
        url: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{url} did not answer within {}s", limit.as_secs_f64())]
    TooSlow { url: String, limit: Duration },
}
