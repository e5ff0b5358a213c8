//! Another machine's OpenAI-compatible server, or another modelyard: no process
//! and no memory of ours. Its health is polled, so requests fail fast and say why
//! while it is unreachable, and its `/v1/models` is read, so the models it serves
//! are routable and listed here without naming each one in routes.yaml.

use serde_json::Value;

use super::{healthy, Adapter, Http, Pending, Probe, Report, POLL_LIMIT};

pub(crate) struct Remote;

impl Adapter for Remote {
    fn report(&self, http: Http, p: Probe) -> Pending<Result<Report, String>> {
        Box::pin(async move {
            healthy(&http, &p).await?;
            // A server without a model list is still a server.
            let listed = match http
                .get(
                    &format!("{}/v1/models", p.base),
                    p.api_key.as_deref(),
                    POLL_LIMIT,
                )
                .await
            {
                Ok(m) if m.status.is_success() => {
                    m.json.get("data").and_then(Value::as_array).map(|d| {
                        d.iter()
                            .filter_map(|e| e.get("id")?.as_str().map(str::to_string))
                            .collect()
                    })
                }
                _ => None,
            };
            Ok(Report {
                resident: None,
                context_window: None,
                listed,
            })
        })
    }
}
