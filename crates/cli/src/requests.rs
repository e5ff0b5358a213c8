//! `modelyard requests` (the request log as a table) and `modelyard top` (a
//! view of the last minutes per model that redraws itself), both read from a
//! running router's `/admin/requests`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::remote::Target;

/// What `modelyard requests` asks for.
pub struct Filter {
    pub model: Option<String>,
    pub since: Option<String>,
    pub slow: bool,
    pub limit: usize,
}

/// A query string value, `%`-escaped.
fn escaped(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, crate::remote::UNRESERVED_KEPT).to_string()
}

pub async fn requests(t: &Target, f: Filter, json: bool) -> Result<(), String> {
    let mut path = format!("/admin/requests?limit={}", f.limit);
    if let Some(m) = &f.model {
        let _ = write!(path, "&model={}", escaped(m));
    }
    if let Some(s) = &f.since {
        let _ = write!(path, "&since={}", escaped(s));
    }
    if f.slow {
        path.push_str("&slow=true");
    }
    let v = t.call(modelyard_http::Method::GET, &path).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v["requests"]).unwrap_or_default()
        );
        return Ok(());
    }
    print!("{}", render_requests(&v["requests"]));
    Ok(())
}

/// `HH:MM:SS` in the machine's time zone; the date too when not today.
fn clock(at_ms: u64, now_ms: u64) -> String {
    let zone = jiff::tz::TimeZone::system();
    let at = jiff::Timestamp::from_millisecond(at_ms as i64).map(|t| t.to_zoned(zone.clone()));
    let now = jiff::Timestamp::from_millisecond(now_ms as i64).map(|t| t.to_zoned(zone));
    match (at, now) {
        (Ok(at), Ok(now)) if at.date() == now.date() => at.strftime("%H:%M:%S").to_string(),
        (Ok(at), _) => at.strftime("%m-%d %H:%M").to_string(),
        _ => "-".into(),
    }
}

/// Milliseconds as a person reads them: 840ms, 2.4s, 3m12s.
fn span(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1.0 => "<1ms".into(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0}ms"),
        Some(ms) if ms < 60_000.0 => format!("{:.1}s", ms / 1000.0),
        Some(ms) => {
            let s = (ms / 1000.0).round() as u64;
            format!("{}m{:02}s", s / 60, s % 60)
        }
    }
}

fn count(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |n| n.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Rows of cells as columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The records (newest first, as the router sends them) as a table.
pub fn render_requests(records: &Value) -> String {
    render_requests_at(records, now_ms())
}

fn render_requests_at(records: &Value, now_ms: u64) -> String {
    let records = records.as_array().map(Vec::as_slice).unwrap_or_default();
    if records.is_empty() {
        return "no requests recorded (yet)\n".into();
    }
    let mut rows = vec![[
        "TIME", "MODEL", "API", "STATUS", "WAIT", "SWAP", "TTFB", "TOTAL", "IN", "OUT", "TOK/S",
        "CLIENT",
    ]
    .map(String::from)
    .to_vec()];
    for r in records {
        let asked = r["model_asked"].as_str().unwrap_or("");
        let served = r["model_served"].as_str().unwrap_or("");
        let mut model = if asked == served || asked.is_empty() {
            served.to_string()
        } else if served == "-" {
            asked.to_string()
        } else {
            format!("{asked}→{served}")
        };
        // Interactive is the rule; the exception is marked.
        if r["priority"] == "background" {
            model.push_str(" (bg)");
        }
        let mut status = r["status"].to_string();
        if let Some(code) = r["error"].as_str() {
            let _ = write!(status, " {code}");
        }
        if r["cancelled"] == true {
            status.push_str(" cancelled");
        }
        let swap = match r["swap"].as_str() {
            None => "-".to_string(),
            Some(s) => {
                let gone: Vec<&str> = r["unloaded"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if gone.is_empty() {
                    s.to_string()
                } else {
                    format!("{s}, out: {}", gone.join(","))
                }
            }
        };
        // The peer's address without its port, which says nothing of who.
        let peer = r["peer"]
            .as_str()
            .map(|p| p.rsplit_once(':').map_or(p, |(host, _)| host));
        let client = [peer, r["key"].as_str(), r["user_agent"].as_str()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            clock(r["at_ms"].as_u64().unwrap_or(0), now_ms),
            model,
            r["api"].as_str().unwrap_or("").to_string(),
            status,
            span(r["queue_ms"].as_f64()),
            swap,
            span(r["ttfb_ms"].as_f64()),
            span(r["total_ms"].as_f64()),
            count(&r["prompt_tokens"]),
            count(&r["completion_tokens"]),
            r["tokens_per_s"]
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.1}")),
            client,
        ]);
    }
    table(&rows)
}

/// Redraws the last `window` per model every `every` until interrupted; with
/// `once`, prints one view and returns.
pub async fn top(t: &Target, window: Duration, every: Duration, once: bool) -> Result<(), String> {
    let since = format!("{}s", window.as_secs().max(1));
    loop {
        let summary = t
            .call(
                modelyard_http::Method::GET,
                &format!("/admin/requests/summary?since={since}"),
            )
            .await?;
        let status = t.call(modelyard_http::Method::GET, "/admin/status").await?;
        let view = render_top(&t.url, &status, &summary, window);
        if once {
            print!("{view}");
            return Ok(());
        }
        // Home, clear, then the view: one redraw, no scrolling.
        print!("\x1b[H\x1b[2J{view}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(every).await;
    }
}

/// One view of `modelyard top`: every configured model with its state and
/// queue now, and what its requests did in the last `window`.
pub fn render_top(url: &str, status: &Value, summary: &Value, window: Duration) -> String {
    let minutes = (window.as_secs_f64() / 60.0).max(1.0 / 60.0);
    let mut out = format!(
        "modelyard at {url}: the last {} (requests per minute, mean tokens/s and first byte)\n\n",
        humantime::format_duration(window)
    );
    let mut rows = vec![[
        "MODEL",
        "STATE",
        "BUSY",
        "QUEUED",
        "REQ/MIN",
        "TOK/S",
        "TTFB",
        "IN",
        "OUT",
        "SWAPS",
        "SWAP WAIT",
        "ERRORS",
    ]
    .map(String::from)
    .to_vec()];
    let empty = Vec::new();
    let per_model = summary["models"].as_array().unwrap_or(&empty);
    let models = status["models"].as_array().unwrap_or(&empty);
    let of = |name: &str| per_model.iter().find(|m| m["model"] == name);
    let mut names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    // Models the log saw that the config no longer has (renamed, a remote's).
    names.extend(
        per_model
            .iter()
            .filter_map(|m| m["model"].as_str())
            .filter(|n| !models.iter().any(|m| m["name"] == *n)),
    );
    for name in names {
        let m = models.iter().find(|m| m["name"] == name);
        let s = of(name);
        let field = |k: &str| s.map_or(Value::Null, |s| s[k].clone());
        let requests = field("requests").as_u64().unwrap_or(0);
        rows.push(vec![
            name.to_string(),
            m.and_then(|m| m["state"].as_str())
                .unwrap_or("-")
                .to_string(),
            m.map_or("-".into(), |m| count(&m["in_flight"])),
            m.map_or("-".into(), |m| count(&m["queued"])),
            format!("{:.1}", requests as f64 / minutes),
            field("tokens_per_s")
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.1}")),
            span(field("ttfb_ms").as_f64()),
            count(&field("prompt_tokens")),
            count(&field("completion_tokens")),
            count(&field("swaps")),
            span(field("swap_wait_ms").as_f64().filter(|w| *w > 0.0)),
            count(&field("errors")),
        ]);
    }
    out.push_str(&table(&rows));
    let log = &summary["log"];
    if log["dropped"].as_u64().is_some_and(|d| d > 0) {
        let _ = writeln!(
            out,
            "\n{} records dropped (the log's writer fell behind)",
            log["dropped"]
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_reads_as_one_row_with_its_swap_and_client() {
        let now = 1_765_000_000_000;
        let v = json!([{
            "at_ms": now - 5_000, "model_asked": "default", "model_served": "qwen3-30b",
            "api": "openai", "status": 200, "error": null, "cancelled": false,
            "queue_ms": 18_200.0, "swap": "caused", "unloaded": ["qwen3-32b"],
            "ttfb_ms": 18_350.5, "total_ms": 21_000.0, "prompt_tokens": 12,
            "completion_tokens": 412, "tokens_per_s": 155.43,
            "peer": "127.0.0.1:50312", "key": null, "user_agent": "curl/8.5.0",
            "priority": "interactive",
        }, {
            "at_ms": now - 4_000, "model_asked": "nosuch", "model_served": "nosuch",
            "api": "ollama", "status": 404, "error": "model_not_found", "cancelled": false,
            "queue_ms": null, "swap": null, "unloaded": [], "ttfb_ms": null,
            "total_ms": 0.4, "prompt_tokens": null, "completion_tokens": null,
            "tokens_per_s": null, "peer": "127.0.0.1:50313", "key": "key 2", "user_agent": null,
        }, {
            "at_ms": now - 3_000, "model_asked": "embed", "model_served": "embed",
            "api": "openai", "status": 200, "error": null, "cancelled": false,
            "queue_ms": 0.1, "swap": null, "unloaded": [], "ttfb_ms": 2.0,
            "total_ms": 2.5, "prompt_tokens": 8, "completion_tokens": 0,
            "tokens_per_s": null, "peer": "127.0.0.1:50314", "key": null, "user_agent": null,
            "priority": "background",
        }]);
        let text = render_requests_at(&v, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("TIME "), "{text}");
        for cell in [
            "default→qwen3-30b",
            "18.2s",
            "caused, out: qwen3-32b",
            "18.4s",
            "21.0s",
            "412",
            "155.4",
            "127.0.0.1 curl/8.5.0",
        ] {
            assert!(lines[1].contains(cell), "{cell} in {}", lines[1]);
        }
        assert!(lines[2].contains("404 model_not_found"), "{}", lines[2]);
        assert!(lines[2].contains("127.0.0.1 key 2"), "{}", lines[2]);
        // Only background work is marked.
        assert!(!lines[1].contains("(bg)"), "{}", lines[1]);
        assert!(lines[3].contains("embed (bg)"), "{}", lines[3]);
        assert_eq!(
            render_requests_at(&json!([]), now),
            "no requests recorded (yet)\n"
        );
    }

    #[test]
    fn top_lists_every_model_with_its_last_minutes() {
        let status = json!({"models": [
            {"name": "chat", "state": "ready", "in_flight": 1, "queued": 2},
            {"name": "idle", "state": "cold", "in_flight": 0, "queued": 0},
        ]});
        let summary = json!({"models": [
            {"model": "chat", "requests": 30, "errors": 1, "prompt_tokens": 300,
             "completion_tokens": 900, "swaps": 1, "swap_wait_ms": 2500.0,
             "tokens_per_s": 41.27, "ttfb_ms": 120.0}
        ], "log": {"dropped": 3}});
        let text = render_top("http://x", &status, &summary, Duration::from_secs(300));
        let chat = text.lines().find(|l| l.starts_with("chat")).unwrap();
        for cell in ["ready", "6.0", "41.3", "120ms", "900", "2.5s"] {
            assert!(chat.contains(cell), "{cell} in {chat}");
        }
        let idle = text.lines().find(|l| l.starts_with("idle")).unwrap();
        assert!(idle.contains("cold") && idle.contains("0.0"), "{idle}");
        assert!(text.contains("3 records dropped"), "{text}");
    }
}
