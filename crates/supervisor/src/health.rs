//! Readiness: a starting backend is ready once its health path answers 200.
//!
//! The probe runs every [`PROBE_INTERVAL`] from the start to the end of the
//! start timeout, so readiness is noticed within that long of being true. (It
//! backed off to 500 ms before: a 1 s load took 1.29 s to be noticed, and a
//! 20 s one up to half a second late, on every swap.) A probe is a loopback
//! connect and a GET, refused cheaply while the server has not bound yet.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use crate::backends::Http;

/// How often a starting backend's health path is asked.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Probes `url` through the supervisor's one HTTP client (the adapters' too).
pub(crate) async fn wait_healthy(http: &Http, url: &str, limit: Duration) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad health URL {url}: {e}"))?;
    poll_until_healthy(limit, || async {
        match timeout(Duration::from_secs(2), http.status(&uri)).await {
            Ok(Ok(status)) if status == http::StatusCode::OK => Ok(()),
            Ok(Ok(status)) => Err(format!("{} answered {}", uri.path(), status)),
            Ok(Err(e)) => Err(format!("{e}")),
            Err(_) => Err(format!("{} did not answer within 2s", uri.path())),
        }
    })
    .await
}

/// Asks `probe` every [`PROBE_INTERVAL`] until it says healthy or `limit` has
/// passed; the error names the last probe's answer.
async fn poll_until_healthy<F, Fut>(limit: Duration, mut probe: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match probe().await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        sleep(PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    Err(format!(
        "not healthy within start_timeout ({}s); last probe: {last}",
        limit.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that turns healthy `after` its start, whatever that is.
    async fn noticed_after(after: Duration) -> Duration {
        let start = Instant::now();
        let ready_at = start + after;
        poll_until_healthy(Duration::from_secs(120), || async move {
            if Instant::now() >= ready_at {
                Ok(())
            } else {
                Err("503".into())
            }
        })
        .await
        .unwrap();
        Instant::now() - ready_at
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_noticed_within_20_ms_of_being_true() {
        for ms in [0, 1, 9, 250, 1_000, 1_005, 18_777, 60_001] {
            let late = noticed_after(Duration::from_millis(ms)).await;
            assert!(
                late <= Duration::from_millis(20),
                "{ms} ms load noticed {late:?} late"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_never_healthy_fails_at_its_timeout_with_its_last_answer() {
        let start = Instant::now();
        let err = poll_until_healthy(Duration::from_secs(3), || async {
            Err("/health answered 503 Service Unavailable".to_string())
        })
        .await
        .unwrap_err();
        assert!(err.contains("within start_timeout (3s)"), "{err}");
        assert!(err.contains("answered 503"), "{err}");
        let took = Instant::now() - start;
        assert!(took >= Duration::from_secs(3) && took <= Duration::from_millis(3_020));
    }
}
