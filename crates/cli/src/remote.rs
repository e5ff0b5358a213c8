//! The commands that talk to a running router through its admin API.

use std::io::IsTerminal;
use std::time::Duration;

use modelyard_config::ByteSize;
use serde_json::Value;

use modelyard_http::{Http, Method, Streamed, Uri};

use crate::cli::Remote;

/// `--url` (or MODELYARD_URL), if it is an http URL with a host. The router
/// serves plain HTTP and so does this client: an https URL is refused here,
/// not answered later with "cannot reach modelyard ... is the router running?".
fn checked_url(url: &str) -> Result<String, String> {
    match url.parse::<Uri>() {
        Ok(u) if u.scheme_str() == Some("https") => Err(format!(
            "--url `{url}`: the router and this CLI speak plain http, not https; give an http:// URL such as http://127.0.0.1:11434"
        )),
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some_and(|h| !h.is_empty()) => {
            Ok(url.to_string())
        }
        _ => Err(format!(
            "--url `{url}` is not a router URL such as http://127.0.0.1:11434"
        )),
    }
}

/// A model's name as one segment of an admin path: the router decodes it, so
/// a name with `/`, `?` or a space still names one model.
pub(crate) fn segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, UNRESERVED_KEPT).to_string()
}

/// All but RFC 3986's unreserved characters are encoded.
pub(crate) const UNRESERVED_KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The router's URL and admin key, from flags, environment or routes.yaml.
pub struct Target {
    pub url: String,
    key: Option<String>,
    /// modelyard-http's client, the one the supervisor asks its backends with.
    http: Http,
}

impl Target {
    /// A config that is named (`--config`, MODELYARD_CONFIG) or found
    /// (./routes.yaml, the user's config dir) must load: guessing the default
    /// address instead would send the command to whatever router is there.
    /// With `--url` and no named config, a found one is not read: it may
    /// describe another router, whose admin key must not go to this one.
    ///
    /// With neither `--url` nor a named config, a router that recorded where it
    /// listens (`serve`, `demo`) is the one meant: it is what runs, on whatever
    /// port it was given, and its own config holds its admin key.
    pub fn new(remote: &Remote) -> Result<Target, String> {
        let url = remote.url.as_deref().map(checked_url).transpose()?;
        if url.is_none() && remote.config.is_none() {
            if let Some(found) = crate::runtime::find() {
                let key = std::env::var("MODELYARD_ADMIN_KEY").ok().or_else(|| {
                    let path = found.config.as_deref()?;
                    modelyard_config::load_file(path).ok()?.config.admin_key
                });
                return Ok(Target {
                    url: found.url.trim_end_matches('/').to_string(),
                    key,
                    http: Http::default(),
                });
            }
        }
        let config = match modelyard_config::locate(remote.config.as_deref()) {
            Ok(_) if url.is_some() && remote.config.is_none() => None,
            Err(_) => None,
            Ok(path) => match modelyard_config::load_file(&path) {
                Ok(l) => Some(l.config),
                Err(e) => {
                    return Err(format!(
                        "{e}\n(the router's address and admin key are read from {}; fix it, or give --url)",
                        path.display()
                    ))
                }
            },
        };
        let url = url.unwrap_or_else(|| match &config {
            Some(c) if c.listen.ip().is_unspecified() => {
                format!("http://127.0.0.1:{}", c.listen.port())
            }
            Some(c) => format!("http://{}", c.listen),
            None => "http://127.0.0.1:11434".into(),
        });
        let key = std::env::var("MODELYARD_ADMIN_KEY")
            .ok()
            .or(config.and_then(|c| c.admin_key));
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            key,
            http: Http::default(),
        })
    }

    /// Sends `method path` with the admin key; the answer's body is read as it comes.
    async fn send(&self, method: Method, path: &str) -> Result<Streamed, String> {
        let url = format!("{}{path}", self.url);
        self.http
            .send(method, &url, None, self.key.as_deref())
            .await
            .map_err(|e| match e {
                modelyard_http::Error::Unreachable { .. } => self.unreachable(&e),
                e => e.to_string(),
            })
    }

    fn unreachable(&self, e: &dyn std::error::Error) -> String {
        format!(
            "cannot reach modelyard at {} ({}): is the router running? start it with `modelyard serve`, or name its URL with --url",
            self.url,
            root_cause(e)
        )
    }

    pub(crate) async fn call(&self, method: Method, path: &str) -> Result<Value, String> {
        let answer = self.send(method, path).await?;
        let status = answer.status;
        let v: Value = answer
            .bytes(usize::MAX)
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| format!("{} answered {status} without JSON: {e}", self.url))?;
        if status.is_success() {
            Ok(v)
        } else {
            // Named, since the router was perhaps found, not given: a refusal
            // from another router than the one meant says so at once.
            let why = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            Err(format!("{} says: {why}", self.url))
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub async fn status(t: &Target, json: bool) -> Result<(), String> {
    let v = t.call(Method::GET, "/admin/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print!("{}", render_status(&t.url, &v));
    Ok(())
}

/// The strings of a JSON array (none if it is not one).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn size(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |b| ByteSize(b).to_string())
}

fn ago(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        Some(s) if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        Some(s) => format!("{s}s"),
    }
}

/// The status table, with the budget drawn as a bar split by model.
pub fn render_status(url: &str, v: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let used = v["used"].as_u64().unwrap_or(0);
    let _ = match v["budget"].as_u64() {
        Some(budget) => writeln!(
            s,
            "modelyard at {url}: {} of {} used, {} free",
            ByteSize(used),
            ByteSize(budget),
            size(&v["free"])
        ),
        None => writeln!(s, "modelyard at {url}: {} used (no budget)", ByteSize(used)),
    };
    if let Some(why) = v["budget_why"].as_str() {
        let _ = writeln!(s, "budget {why}");
    }
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if let Some(budget) = v["budget"].as_u64().filter(|b| *b > 0) {
        const WIDTH: u64 = 50;
        let mut bar = String::new();
        let mut legend = Vec::new();
        for (i, m) in models
            .iter()
            .filter(|m| m["reserved"].as_u64().unwrap_or(0) > 0)
            .enumerate()
        {
            let mark = char::from(b'A' + (i % 26) as u8);
            let cells = (m["reserved"].as_u64().unwrap_or(0) * WIDTH)
                .div_ceil(budget)
                .max(1);
            bar.extend(std::iter::repeat_n(mark, cells as usize));
            legend.push(format!("{mark}={}", m["name"].as_str().unwrap_or("?")));
        }
        let shown = bar.chars().count() as u64;
        bar.extend(std::iter::repeat_n(
            '.',
            WIDTH.saturating_sub(shown) as usize,
        ));
        let _ = writeln!(s, "[{bar}] {}", legend.join(" "));
    }
    let _ = writeln!(
        s,
        "\n{:<18} {:<9} {:<8} {:>9} {:>10} {:>6} {:>6} {:>11}  {:>7}  LAST ERROR",
        "MODEL", "STATE", "GROUP", "DECLARED", "MEASURED", "BUSY", "QUEUED", "UNLOAD IN", "PID"
    );
    for m in &models {
        let _ = writeln!(
            s,
            "{:<18} {:<9} {:<8} {:>9} {:>10} {:>6} {:>6} {:>11}  {:>7}  {}",
            m["name"].as_str().unwrap_or("?"),
            format!(
                "{}{}",
                m["state"].as_str().unwrap_or("?"),
                if m["pinned"] == true { "*" } else { "" }
            ),
            m["group"].as_str().unwrap_or("-"),
            size(&m["declared"]),
            size(&m["measured"]),
            m["in_flight"].as_u64().unwrap_or(0),
            queued(m),
            ago(m["idle_unload_in_secs"].as_u64()),
            m["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            m["last_error"].as_str().unwrap_or("")
        );
    }
    if models.iter().any(|m| m["pinned"] == true) {
        let _ = writeln!(s, "* pinned: never unloaded to make room or for being idle");
    }
    // Why models came and went, from the router's memory of recent events.
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let said: Vec<&Value> = events
        .iter()
        .filter(|e| {
            matches!(
                e["kind"].as_str(),
                Some(
                    "ready"
                        | "unloaded"
                        | "crashed"
                        | "failed"
                        | "budget"
                        | "kept"
                        | "kv_saved"
                        | "kv_restored"
                        | "kv_failed"
                )
            )
        })
        .collect();
    if !said.is_empty() {
        let now = now_ms();
        let _ = writeln!(s, "\nrecent events (oldest first):");
        for e in said.iter().skip(said.len().saturating_sub(RECENT_SHOWN)) {
            let at = e["at_ms"].as_u64().unwrap_or(now);
            let _ = writeln!(
                s,
                "  {:>8} ago  {:<8} {:<18} {}",
                ago(Some(now.saturating_sub(at) / 1000)),
                e["kind"].as_str().unwrap_or("?"),
                e["model"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .unwrap_or("(router)"),
                e["detail"].as_str().unwrap_or("")
            );
        }
    }
    for w in strings(&v["warnings"]) {
        let _ = writeln!(s, "\nwarning: {w}");
    }
    s
}

/// How many of the recent events `status` prints; the page and `--json` have more.
const RECENT_SHOWN: usize = 12;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn load(t: &Target, model: &str) -> Result<(), String> {
    // What its previous loads took, to set expectations while this one runs.
    let usually = t
        .call(Method::GET, "/admin/status")
        .await
        .ok()
        .and_then(|v| {
            v["models"].as_array()?.iter().find(|m| {
                m["name"] == model
                    || m["aliases"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == model))
            })?["typical_load_secs"]
                .as_f64()
        })
        .map(|s| format!(" (usually ~{s:.0}s)"))
        .unwrap_or_default();
    let started = tokio::time::Instant::now();
    let path = format!("/admin/models/{}/load", segment(model));
    let call = t.call(Method::POST, &path);
    tokio::pin!(call);
    let tty = std::io::stderr().is_terminal();
    let spinner = ['|', '/', '-', '\\'];
    let mut i = 0;
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(Duration::from_millis(120)), if tty => {
                eprint!("\r{} loading {model}… {:.1}s{usually}", spinner[i % 4], started.elapsed().as_secs_f64());
                i += 1;
            }
        }
    };
    if tty {
        eprint!("\r\x1b[2K");
    }
    let v = result?;
    println!(
        "{} is loaded ({:.1}s)",
        v["model"].as_str().unwrap_or(model),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn unload(t: &Target, model: Option<&str>) -> Result<(), String> {
    let path = match model {
        Some(m) => format!("/admin/models/{}/unload", segment(m)),
        None => "/admin/unload".into(),
    };
    let v = t.call(Method::POST, &path).await?;
    let gone = strings(&v["unloading"]);
    if gone.is_empty() {
        println!("nothing to unload");
    } else {
        println!("unloading {}", gone.join(", "));
    }
    Ok(())
}

/// Prints each model event on a line as it arrives, until the router goes away.
pub async fn events(t: &Target) -> Result<(), String> {
    let mut stream = t.send(Method::GET, "/admin/events").await?;
    let status = stream.status;
    if !status.is_success() {
        let why = refusal(stream).await;
        return Err(format!(
            "{} refused the event stream ({status}): {why}",
            t.url
        ));
    }
    use std::io::Write;
    let mut out = std::io::stdout();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the event stream broke: {e}"))?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                match written(writeln!(out, "{}", event_line(data))) {
                    Written::On => {}
                    Written::NoReader => return Ok(()),
                    Written::Failed(e) => return Err(format!("cannot write the events: {e}")),
                }
            }
        }
    }
    Ok(())
}

/// What became of a write to our output.
enum Written {
    On,
    /// No one reads it any more (`| head` has what it wanted): a quiet end.
    NoReader,
    Failed(std::io::Error),
}

fn written(r: std::io::Result<()>) -> Written {
    match r {
        Ok(()) => Written::On,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Written::NoReader,
        Err(e) => Written::Failed(e),
    }
}

/// Why the router refused a stream: its error's message, read from the body.
async fn refusal(answer: Streamed) -> String {
    let body = match answer.bytes(usize::MAX).await {
        Ok(body) => body,
        Err(e) => return e.to_string(),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v["error"]["message"]
            .as_str()
            .unwrap_or("refused")
            .to_string(),
        Err(e) => e.to_string(),
    }
}

/// "14:03:07  evicting  qwen3-30b-a3b  to make room for qwen3-32b".
fn event_line(data: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return data.to_string();
    };
    let secs = v["at_ms"].as_u64().unwrap_or(0) / 1000;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!(
        "{h:02}:{m:02}:{s:02} UTC  {:<9} {:<18} {}",
        v["kind"].as_str().unwrap_or("?"),
        v["model"].as_str().unwrap_or(""),
        v["detail"].as_str().unwrap_or("")
    )
}

/// Prints a backend's output; with `follow`, keeps printing until interrupted.
pub async fn logs(t: &Target, model: &str, lines: usize, follow: bool) -> Result<(), String> {
    let path = format!(
        "/admin/models/{}/logs?lines={lines}&follow={follow}",
        segment(model)
    );
    let stream = t.send(Method::GET, &path).await?;
    if !stream.status.is_success() {
        return Err(refusal(stream).await);
    }
    copy_log(stream, &mut std::io::stdout()).await
}

/// Writes the log stream to `out` as it comes, until the router ends it or
/// no one reads `out` any more (`modelyard logs m --follow | head`).
async fn copy_log(mut stream: Streamed, out: &mut impl std::io::Write) -> Result<(), String> {
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the log stream broke: {e}"))?;
        match written(out.write_all(&chunk).and_then(|()| out.flush())) {
            Written::On => {}
            Written::NoReader => return Ok(()),
            Written::Failed(e) => return Err(format!("cannot write the log: {e}")),
        }
    }
    Ok(())
}

pub async fn reload(t: &Target) -> Result<(), String> {
    let v = t.call(Method::POST, "/admin/reload").await?;
    let changes = strings(&v["changes"]);
    if changes.is_empty() {
        println!("reloaded: nothing changed");
    } else {
        println!("reloaded: {}", changes.join(", "));
    }
    Ok(())
}

/// A model's queue by priority: `3`, or `2+1bg` when one of them is background work.
fn queued(m: &serde_json::Value) -> String {
    let all = m["queued"].as_u64().unwrap_or(0);
    match m["queued_background"].as_u64().unwrap_or(0) {
        0 => all.to_string(),
        bg => format!("{}+{bg}bg", all.saturating_sub(bg)),
    }
}

#[cfg(test)]
mod tests {
    /// A router on 127.0.0.1 that refuses its one request with `status` and
    /// an error in OpenAI's shape saying `message`.
    async fn refusing(status: &str, message: &str) -> super::Target {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let body = serde_json::json!({"error": {"message": message}}).to_string();
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0, "the client closed before its request was whole");
                head.extend_from_slice(&b[..n]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        super::Target {
            url,
            key: None,
            http: modelyard_http::Http::default(),
        }
    }

    #[tokio::test]
    async fn an_event_stream_the_router_refuses_is_an_error_not_silence() {
        // A Host the router does not allow (a LAN name, say) is refused with a 403.
        let t = refusing("403 Forbidden", "host `box.lan` is not allowed").await;
        let err = super::events(&t).await.unwrap_err();
        assert!(
            err.contains("refused the event stream (403 Forbidden)"),
            "{err}"
        );
        assert!(err.ends_with("host `box.lan` is not allowed"), "{err}");
    }

    /// Output whose reader has gone away, as `| head` leaves it.
    struct Closed;

    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn following_a_log_ends_when_no_one_reads_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A backend that prints a line every 10 ms, for as long as it runs.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            s.write_all(head.as_bytes()).await.unwrap();
            loop {
                if s.write_all(b"5\r\nline\n\r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        let stream = modelyard_http::Http::default()
            .send(super::Method::GET, &url, None, None)
            .await
            .unwrap();
        let copied = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            super::copy_log(stream, &mut Closed),
        )
        .await;
        assert_eq!(copied, Ok(Ok(())), "it ended at once, and quietly");
    }

    #[tokio::test]
    async fn a_log_stream_the_router_refuses_says_its_words() {
        let t = refusing("401 Unauthorized", "wrong admin key").await;
        let err = super::logs(&t, "daily", 10, false).await.unwrap_err();
        assert_eq!(err, "wrong admin key");
    }

    #[test]
    fn an_https_url_is_refused_at_once_and_says_why() {
        let err = super::checked_url("https://box.lan:11434").unwrap_err();
        assert!(err.starts_with("--url `https://box.lan:11434`: "), "{err}");
        assert!(err.contains("plain http"), "{err}");
        assert!(super::checked_url("http://box.lan:11434").is_ok());
    }

    #[test]
    fn a_model_name_is_one_path_segment() {
        // The router splits admin paths on '/' and percent-decodes each part.
        assert_eq!(super::segment("org/m a?b#c"), "org%2Fm%20a%3Fb%23c");
        assert_eq!(super::segment("qwen3-30b_a3b.q4~x"), "qwen3-30b_a3b.q4~x");
    }

    #[test]
    fn status_ends_with_the_routers_warnings() {
        // /admin/status of a router on a 64 GB Mac with a 56 GB model declared.
        let v = serde_json::json!({
            "budget": 60_000_000_000u64, "used": 0, "free": 60_000_000_000u64,
            "gpu_wired_limit": 51_539_607_552u64,
            "warnings": ["models.large.memory: 56 GB is more than the GPU may wire on this Mac (48 GiB); raise it"],
            "models": [{"name": "large", "state": "cold", "declared": 56_000_000_000u64, "reserved": 0}],
        });
        let s = super::render_status("http://127.0.0.1:11434", &v);
        assert!(
            s.ends_with("\nwarning: models.large.memory: 56 GB is more than the GPU may wire on this Mac (48 GiB); raise it\n"),
            "{s}"
        );
        let quiet = super::render_status("http://x", &serde_json::json!({"models": []}));
        assert!(!quiet.contains("warning"), "{quiet}");
    }

    #[test]
    fn a_queue_shows_its_background_part() {
        let m = serde_json::json!({"queued": 3, "queued_background": 1});
        assert_eq!(super::queued(&m), "2+1bg");
        assert_eq!(super::queued(&serde_json::json!({"queued": 2})), "2");
    }
}
