//! `GET /admin/requests` and `/admin/requests/summary`: the request log, read.
//! Records name clients and (with `capture`) hold prompts, so they are as
//! private as a backend's output: the admin key and this machine, like logs.

use std::time::Duration;

use http::StatusCode;
use modelyard_reqlog::{Query, RequestLog};
use serde_json::json;

use crate::body::{self, Body};
use crate::error::ApiError;
use crate::Inner;

/// Records in one page unless `limit` says otherwise, and the most it may say.
const PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// What the summary covers unless `since` says otherwise: a day.
const DAY: Duration = Duration::from_secs(24 * 3600);

fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn invalid(field: &str, reason: String) -> ApiError {
    ApiError::InvalidField {
        field: field.into(),
        reason,
    }
}

/// `since=1h`: a span back from now, as Unix ms.
fn since(query: &str, default: Option<Duration>) -> Result<Option<u64>, ApiError> {
    let span = match param(query, "since") {
        None => default,
        Some(s) => {
            let s = crate::percent_decode(s);
            Some(humantime::parse_duration(s.trim()).map_err(|e| {
                invalid(
                    "since",
                    format!(
                        "`{}` is not a span back from now such as 30m, 1h or 7d ({e})",
                        crate::echo::shown(&s)
                    ),
                )
            })?)
        }
    };
    Ok(span.map(|d| modelyard_reqlog::now_ms().saturating_sub(d.as_millis() as u64)))
}

fn number<T: std::str::FromStr>(query: &str, key: &str, what: &str) -> Result<Option<T>, ApiError> {
    param(query, key)
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(key, format!("`{}` is not {what}", crate::echo::shown(v))))
        })
        .transpose()
}

/// The query a request's parameters ask for.
pub(crate) fn parse(query: &str) -> Result<Query, ApiError> {
    let limit = number::<usize>(query, "limit", "a number of records such as 50")?.unwrap_or(PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let slow = match param(query, "slow") {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => {
            return Err(invalid(
                "slow",
                format!("`{}` is not true or false", crate::echo::shown(v)),
            ))
        }
    };
    Ok(Query {
        model: param(query, "model").map(crate::percent_decode),
        since_ms: since(query, None)?,
        slow,
        before: number(query, "before", "a record id")?,
        offset: number(query, "offset", "a number of records")?.unwrap_or(0),
        limit,
    })
}

fn log(inner: &Inner) -> Result<RequestLog, ApiError> {
    inner.requests.clone().ok_or(ApiError::RequestLogOff)
}

/// Runs `read` on a connection of its own, off the runtime (SQLite blocks).
async fn reading<T: Send + 'static>(
    log: &RequestLog,
    read: impl FnOnce(modelyard_reqlog::Reader) -> Result<T, modelyard_reqlog::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.reader().and_then(read))
        .await
        .map_err(|e| ApiError::RequestLog(format!("reading the request log failed: {e}")))?
        .map_err(|e| ApiError::RequestLog(e.to_string()))
}

/// A page of records, newest (or with `slow`, slowest) first, and the query
/// for the next page.
pub(crate) async fn list(inner: &Inner, query: &str) -> Result<http::Response<Body>, ApiError> {
    let log = log(inner)?;
    let q = parse(query)?;
    let page = {
        let q = q.clone();
        reading(&log, move |r| r.query(&q)).await?
    };
    let next = (page.len() == q.limit).then(|| {
        let mut next: Vec<String> = query
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("before=") && !kv.starts_with("offset="))
            .map(str::to_string)
            .collect();
        if q.slow {
            next.push(format!("offset={}", q.offset + q.limit));
        } else if let Some(last) = page.last() {
            next.push(format!("before={}", last.id));
        }
        format!("/admin/requests?{}", next.join("&"))
    });
    Ok(body::json_response(
        StatusCode::OK,
        &json!({
            "requests": page,
            "next": next,
            "log": about(inner, &log),
        }),
    ))
}

/// Per model since `since` (a day by default): requests, tokens, swaps and the
/// time spent waiting for them.
pub(crate) async fn summary(inner: &Inner, query: &str) -> Result<http::Response<Body>, ApiError> {
    let log = log(inner)?;
    let since_ms = since(query, Some(DAY))?.unwrap_or(0);
    let models = reading(&log, move |r| r.summary(since_ms)).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &json!({
            "since_ms": since_ms,
            "models": models,
            "log": about(inner, &log),
        }),
    ))
}

fn about(inner: &Inner, log: &RequestLog) -> serde_json::Value {
    json!({
        "path": log.path(),
        "written": log.written(),
        "dropped": log.dropped(),
        "capture": inner.capture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_a_query_and_bad_ones_name_themselves() {
        let q = parse("model=qwen3%3A8b&slow=true&limit=5&offset=10").unwrap();
        assert_eq!(q.model.as_deref(), Some("qwen3:8b"));
        assert!(q.slow);
        assert_eq!((q.limit, q.offset, q.before), (5, 10, None));
        let q = parse("since=1h&before=42").unwrap();
        let hour_ago = modelyard_reqlog::now_ms() - 3_600_000;
        assert!(q.since_ms.unwrap().abs_diff(hour_ago) < 5_000);
        assert_eq!((q.limit, q.before, q.slow), (PAGE, Some(42), false));
        for (bad, field) in [
            ("since=soon", "since"),
            ("limit=0", "limit"),
            ("limit=lots", "limit"),
            ("slow=maybe", "slow"),
            ("before=x", "before"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("`{field}`")), "{bad}: {e}");
        }
    }
}
