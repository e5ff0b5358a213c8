//! Readiness: a starting backend is ready once its health path answers 200.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{sleep, timeout, Instant};

/// The longest the probe waits between polls of a starting backend.
const MAX_PROBE_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) async fn wait_healthy(url: &str, limit: Duration) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad health URL {url}: {e}"))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + limit;
    let mut interval = Duration::from_millis(25);
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match timeout(Duration::from_secs(2), client.get(uri.clone())).await {
            Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => return Ok(()),
            Ok(Ok(resp)) => last = format!("{} answered {}", uri.path(), resp.status()),
            Ok(Err(e)) => last = format!("{e}"),
            Err(_) => last = format!("{} did not answer within 2s", uri.path()),
        }
        sleep(interval.min(deadline.saturating_duration_since(Instant::now()))).await;
        interval = (interval * 2).min(MAX_PROBE_INTERVAL);
    }
    Err(format!(
        "not healthy within start_timeout ({}s); last probe: {last}",
        limit.as_secs()
    ))
}
