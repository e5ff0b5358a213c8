//! The few JSON calls adapters make to a server's own API: bounded in time and in
//! size, so a server that hangs or babbles cannot hold the owner's work.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Status answers are small; anything larger is not one.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// What a server answered: the status and the body as JSON (Null if it was not).
pub(crate) struct Answer {
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

impl Http {
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        api_key: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(key) = api_key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
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
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            // oMLX pads JSON with leading spaces while it works.
            let json = serde_json::from_str(text.trim_start()).unwrap_or(Value::Null);
            Ok(Answer { status, json, text })
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| format!("{url} did not answer within {}s", limit.as_secs_f64()))?
    }

    /// A GET whose status is all that is wanted (a health check): the body is
    /// not read, and the caller bounds the wait.
    pub async fn status(
        &self,
        uri: &http::Uri,
    ) -> Result<StatusCode, hyper_util::client::legacy::Error> {
        let req = Request::get(uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("a GET of a parsed URI is a request");
        self.client.request(req).await.map(|r| r.status())
    }

    pub async fn get(
        &self,
        url: &str,
        api_key: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, String> {
        self.call(Method::GET, url, None, api_key, limit).await
    }

    pub async fn post(
        &self,
        url: &str,
        body: &Value,
        api_key: Option<&str>,
        limit: Duration,
    ) -> Result<Answer, String> {
        self.call(Method::POST, url, Some(body), api_key, limit)
            .await
    }
}
