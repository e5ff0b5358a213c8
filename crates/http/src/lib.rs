//! The one HTTP client that modelyard uses to ask servers things: the
//! supervisor's health checks and adapter calls (bounded in time and size, so a
//! server that hangs or babbles cannot hold the owner's work) and the CLI's
//! calls to a running router's admin API, including the streams it follows
//! (`modelyard events`, `modelyard logs --follow`).
//!
//! The proxy's forwarding to backends is not here: it relays request and
//! answer bodies as they flow and keeps its own pool per backend.

mod error;

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

pub use error::Error;
pub use http::{Method, StatusCode, Uri};

/// Status answers are small; anything larger is not one.
const MAX_ANSWER: usize = 4 << 20;

/// How long a connection the client no longer uses is kept for the next call
/// to the same address. Polls of a running server (every 2 s) reuse theirs;
/// every backend start is on a new port, a new address, so what a stopped
/// backend leaves in the pool goes after this long. (Without a timer, hyper's
/// pool never swept: each swap left its health check's handle, some 12 KB of
/// the router's memory, for good.)
const KEEP_IDLE: Duration = Duration::from_secs(10);

/// A client with its connection pool; clones share the pool.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(KEEP_IDLE)
                .build_http(),
        }
    }
}

/// What a server answered: the status and the body as JSON (Null if it was not).
pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// The server's own words for a failure, whatever its error shape.
    pub fn message(&self) -> String {
        let m = &self.json;
        m.pointer("/error/message")
            .or_else(|| m.get("error"))
            .or_else(|| m.get("detail"))
            .or_else(|| m.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| self.text.chars().take(200).collect())
    }
}

/// An answer whose body is read as it arrives, for as long as the server sends.
pub struct Streamed {
    pub status: StatusCode,
    url: String,
    body: Incoming,
}

impl Streamed {
    /// The next piece of the body; None once the server has ended it.
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    // Trailers carry nothing a reader of the body wants.
                    Err(_) => continue,
                },
                Err(e) => {
                    return Some(Err(Error::Read {
                        url: self.url.clone(),
                        source: e.into(),
                    }))
                }
            }
        }
    }

    /// The whole body, refused past `max` bytes.
    pub async fn bytes(self, max: usize) -> Result<Bytes, Error> {
        let url = self.url;
        Limited::new(self.body, max)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|source| Error::Read { url, source })
    }
}

impl Http {
    /// Sends a request and hands back the answer as soon as its head is in;
    /// the body is the caller's to read. Not bounded in time: a caller that
    /// needs a bound puts one around it.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> Result<Streamed, Error> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(key) = bearer {
            let mut value = http::HeaderValue::try_from(format!("Bearer {key}")).map_err(|e| {
                Error::Request {
                    url: url.to_string(),
                    source: e.into(),
                }
            })?;
            value.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, value);
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("JSON values serialize"))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|source| Error::Request {
                url: url.to_string(),
                source,
            })?;
        let resp: Response<Incoming> =
            self.client
                .request(req)
                .await
                .map_err(|source| Error::Unreachable {
                    url: url.to_string(),
                    source,
                })?;
        Ok(Streamed {
            status: resp.status(),
            url: url.to_string(),
            body: resp.into_body(),
        })
    }

    /// A call whose whole answer is wanted, within `limit` and a few MB.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, Error> {
        let work = async {
            let answer = self.send(method, url, body, bearer).await?;
            let status = answer.status;
            let body = answer.bytes(MAX_ANSWER).await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            // oMLX pads JSON with leading spaces while it works.
            let json = serde_json::from_str(text.trim_start()).unwrap_or(Value::Null);
            Ok(Answer { status, json, text })
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| Error::TooSlow {
                url: url.to_string(),
                limit,
            })?
    }

    /// A GET whose status is all that is wanted (a health check): the body is
    /// not read, and the caller bounds the wait.
    pub async fn status(&self, uri: &http::Uri) -> Result<StatusCode, Error> {
        let req = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("a GET of a parsed URI is a request");
        self.client
            .request(req)
            .await
            .map(|r| r.status())
            .map_err(|source| Error::Unreachable {
                url: uri.to_string(),
                source,
            })
    }

    pub async fn get(
        &self,
        url: &str,
        bearer: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, Error> {
        self.call(Method::GET, url, None, bearer, limit).await
    }

    pub async fn post(
        &self,
        url: &str,
        body: &Value,
        bearer: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, Error> {
        self.call(Method::POST, url, Some(body), bearer, limit)
            .await
    }
}

#[cfg(test)]
mod tests;
