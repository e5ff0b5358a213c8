//! Checks that need the whole config: cross references, shadowing, sizes against
//! the budget, and commands the supervisor could not run.

use std::collections::HashMap;

use crate::closest;
use crate::schema::{BackendKind, Config};

/// A problem found, with the key path it belongs to.
pub(crate) struct Problem {
    pub path: Vec<String>,
    pub message: String,
}

fn problem(path: &[&str], message: impl Into<String>) -> Problem {
    Problem {
        path: path.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

pub(crate) fn validate(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if !cfg.listen.ip().is_loopback() && !cfg.expose {
        out.push(problem(
            &["listen"],
            format!(
                "{} is reachable from other machines (every model, and the status page); set expose: true if that is meant",
                cfg.listen
            ),
        ));
    }
    out.extend(limits(cfg));
    for (i, o) in cfg.allowed_origins.iter().enumerate() {
        let idx = i.to_string();
        let ok = o
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme().is_some() && u.host().is_some() && u.path() == "/")
            && !o.ends_with('/');
        if !ok {
            out.push(problem(
                &["allowed_origins", &idx],
                format!(
                    "`{o}` is not an origin such as https://app.example or http://localhost:3000"
                ),
            ));
        }
    }
    for (i, name) in cfg.preload.iter().enumerate() {
        if cfg.resolve(name).is_none() {
            let idx = i.to_string();
            let hint = closest(name, cfg.models.keys().map(String::as_str))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            out.push(problem(
                &["preload", &idx],
                format!("`{name}` is not a model or an alias{hint}"),
            ));
        }
    }
    check_backends(cfg, &mut out);
    check_placeholder_case(cfg, &mut out);
    check_models(cfg, &mut out);
    check_aliases(cfg, &mut out);
    out
}

/// What is valid but most likely not meant: reported, never refused, so a file
/// being built up step by step still loads.
pub(crate) fn warnings(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if cfg.models.is_empty() {
        out.push(problem(
            &["models"],
            "no models are defined, so the router has nothing to serve; add one under models: (see docs/configuration.md)",
        ));
    }
    out
}

/// The first placeholder written in the wrong case (`${port}`), and what it means.
fn miscased(text: &str) -> Option<(&str, &'static str)> {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}')?;
        let name = &after[..end];
        for meant in ["PORT", "MODEL"] {
            if name != meant && name.eq_ignore_ascii_case(meant) {
                return Some((&rest[start..start + 3 + end], meant));
            }
        }
        rest = &after[end..];
    }
    None
}

/// `${port}` is left as it is (only `${PORT}` is filled in), so the server would
/// be told a port named `${port}`: said at the very element.
fn check_placeholder_case(cfg: &Config, out: &mut Vec<Problem>) {
    let mut texts: Vec<(Vec<String>, &str)> = Vec::new();
    let at = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (name, b) in &cfg.backends {
        for (i, a) in b.command.iter().flatten().enumerate() {
            texts.push((at(&["backends", name, "command", &i.to_string()]), a));
        }
        for (k, v) in &b.env {
            texts.push((at(&["backends", name, "env", k]), v));
        }
        if let Some(url) = &b.url {
            texts.push((at(&["backends", name, "url"]), url));
        }
    }
    for (name, m) in &cfg.models {
        for (i, a) in m.args.iter().enumerate() {
            texts.push((at(&["models", name, "args", &i.to_string()]), a));
        }
    }
    for (path, text) in texts {
        if let Some((written, meant)) = miscased(text) {
            out.push(Problem {
                path,
                message: format!(
                    "`{written}` is not filled in; did you mean ${{{meant}}}? (placeholders are written in capitals)"
                ),
            });
        }
    }
}

fn check_backends(cfg: &Config, out: &mut Vec<Problem>) {
    for (name, b) in &cfg.backends {
        let at = |key: &str| ["backends", name.as_str(), key].map(str::to_string);
        let p = |key: &str, msg: String| Problem {
            path: at(key).into_iter().filter(|s| !s.is_empty()).collect(),
            message: msg,
        };
        if let Some(argv) = &b.command {
            let has_port = b.kind.port_from_env()
                || argv
                    .iter()
                    .chain(b.env.values())
                    .any(|a| a.contains("${PORT}"));
            if argv.is_empty() {
                out.push(p(
                    "command",
                    "empty argv: give the program and its arguments, e.g. [llama-server, --port, \"${PORT}\"]".into(),
                ));
            } else if argv[0].trim().is_empty() {
                out.push(Problem {
                    path: vec![
                        "backends".into(),
                        name.clone(),
                        "command".into(),
                        "0".into(),
                    ],
                    message: "the program name is empty".into(),
                });
            } else if !has_port && b.url.is_none() && !argv.iter().any(|a| miscased(a).is_some()) {
                out.push(p(
                    "command",
                    "has no ${PORT} and the backend has no url, so the router cannot know where it listens: put \"${PORT}\" in the argv or set url".into(),
                ));
            }
            if b.kind == BackendKind::Remote {
                out.push(p(
                    "command",
                    "a remote backend is never started: remove command".into(),
                ));
            }
            if !b.kind.process_per_model() && argv.iter().any(|a| a.contains("${MODEL}")) {
                out.push(p(
                    "command",
                    format!(
                        "${{MODEL}} needs one process per model, which kind {} does not run",
                        b.kind.as_str()
                    ),
                ));
            }
            if b.kind.process_per_model() && !has_port && b.url.is_some() {
                let users: Vec<&str> = cfg
                    .models
                    .iter()
                    .filter(|(_, m)| &m.backend == name)
                    .map(|(n, _)| n.as_str())
                    .collect();
                if users.len() > 1 {
                    out.push(p(
                        "command",
                        format!(
                            "runs one process per model on a fixed url, so {} would collide: put \"${{PORT}}\" in the argv",
                            users.join(" and ")
                        ),
                    ));
                }
            }
        } else if b.url.is_none() {
            out.push(p(
                "",
                "needs command (to start it) or url (where it already runs)".into(),
            ));
        }
        if let Some(url) = &b.url {
            // ${PORT} is filled in at start; any port stands for it here.
            match url.replace("${PORT}", "1").parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
                Ok(u) if u.scheme_str() == Some("https") => out.push(p(
                    "url",
                    format!(
                        "`{url}`: the router speaks only http:// to backends; reach a remote one over a private network (Tailscale, WireGuard) or through a TLS-terminating proxy on this machine"
                    ),
                )),
                _ => out.push(p(
                    "url",
                    format!("`{url}` is not an http URL such as http://127.0.0.1:8000"),
                )),
            }
        }
        if b.one_shot && b.kind == BackendKind::Remote {
            out.push(p(
                "one_shot",
                "a remote backend's models are never unloaded by this router: remove one_shot"
                    .into(),
            ));
        }
        if !b.health.starts_with('/') {
            out.push(p(
                "health",
                format!("`{}` must be a path starting with /", b.health),
            ));
        }
        if b.start_timeout.is_zero() {
            out.push(p("start_timeout", "must be more than 0s".into()));
        }
        if let Some(kv) = &b.kv_cache {
            check_kv_cache(name, b, kv, out);
        }
    }
}

/// `kv_cache` needs a server the router starts and whose cache it knows how to
/// keep: llama.cpp's (kind openai with a command) or oMLX.
fn check_kv_cache(
    name: &str,
    b: &crate::schema::Backend,
    kv: &crate::schema::KvCache,
    out: &mut Vec<Problem>,
) {
    let p = |key: &str, message: String| {
        let mut path = vec!["backends".to_string(), name.to_string(), "kv_cache".into()];
        if !key.is_empty() {
            path.push(key.into());
        }
        Problem { path, message }
    };
    let kept = matches!(b.kind, BackendKind::Openai | BackendKind::Omlx) && b.command.is_some();
    if !kept {
        out.push(p(
            "",
            format!(
                "only a server the router starts can keep its KV cache: kind openai with a command (llama.cpp's server) or kind omlx with a command; this backend is kind {}{}",
                b.kind.as_str(),
                if b.command.is_none() { " without a command" } else { "" }
            ),
        ));
    }
    let own = match b.kind {
        BackendKind::Omlx => ["--paged-ssd-cache-dir"].as_slice(),
        _ => ["--slot-save-path"].as_slice(),
    };
    if let Some(flag) = b
        .command
        .iter()
        .flatten()
        .find(|a| own.iter().any(|f| a.starts_with(f)))
    {
        out.push(p(
            "",
            format!("the command sets {flag} itself; remove it, kv_cache.dir sets it"),
        ));
    }
    if let Some(dir) = &kv.dir {
        if !dir.is_absolute() {
            out.push(p(
                "dir",
                format!(
                    "`{}` must be an absolute path (the server runs in another directory)",
                    dir.display()
                ),
            ));
        }
    } else if kv.root().is_none() {
        out.push(p(
            "dir",
            "this system names no cache directory for the user: set kv_cache.dir".into(),
        ));
    }
    if kv.max.bytes() == 0 {
        out.push(p(
            "max",
            "must be more than 0: write a size such as 20GB, or remove kv_cache".into(),
        ));
    }
    for (key, d) in [
        ("save_timeout", kv.save_timeout),
        ("restore_timeout", kv.restore_timeout),
    ] {
        if d.is_zero() {
            out.push(p(key, "must be more than 0s".into()));
        }
    }
}

fn check_models(cfg: &Config, out: &mut Vec<Problem>) {
    for (name, m) in &cfg.models {
        if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            out.push(problem(
                &["models", name],
                "a model name must be non-empty, without spaces",
            ));
        }
        let Some(backend) = cfg.backends.get(&m.backend) else {
            let hint = closest(&m.backend, cfg.backends.keys().map(String::as_str))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            let known = cfg.backends.keys().cloned().collect::<Vec<_>>().join(", ");
            out.push(problem(
                &["models", name, "backend"],
                format!(
                    "backend `{}` is not defined (backends: {known}){hint}",
                    m.backend
                ),
            ));
            continue;
        };
        let own_process = backend.kind.process_per_model() && backend.command.is_some();
        if !m.args.is_empty() && !own_process {
            out.push(problem(
                &["models", name, "args"],
                format!(
                    "args only apply when each model runs its own process (kind openai with a command); backend `{}` is not one",
                    m.backend
                ),
            ));
        }
        if let Some(fb) = &m.fallback {
            match cfg.resolve(fb) {
                None => {
                    let hint = closest(fb, cfg.models.keys().map(String::as_str))
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    out.push(problem(
                        &["models", name, "fallback"],
                        format!("`{fb}` is not a configured model or alias{hint}"),
                    ));
                }
                Some(target) if target == name.as_str() => out.push(problem(
                    &["models", name, "fallback"],
                    "a model cannot be its own fallback",
                )),
                Some(_) => {}
            }
        }
        let Some(mem) = m.memory else {
            if backend.counts_memory() {
                out.push(problem(
                    &["models", name, "memory"],
                    "missing: the memory ledger needs each model's size, e.g. memory: 32GB",
                ));
            }
            continue;
        };
        if let Some(budget) = cfg.budget {
            let base = backend.memory.map(|b| b.0).unwrap_or(0);
            let needed = mem.0.saturating_add(base);
            if needed > budget.0 {
                let with_base = if base > 0 {
                    format!(
                        " (with {} for backend {})",
                        crate::ByteSize(base),
                        m.backend
                    )
                } else {
                    String::new()
                };
                out.push(problem(
                    &["models", name, "memory"],
                    format!(
                        "{}{with_base} is more than the whole budget ({budget}): it could never be loaded",
                        crate::ByteSize(needed)
                    ),
                ));
            }
        }
    }
}

fn check_aliases(cfg: &Config, out: &mut Vec<Problem>) {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, m) in &cfg.models {
        for (i, alias) in m.aliases.iter().enumerate() {
            let idx = i.to_string();
            let path = ["models", name.as_str(), "aliases", idx.as_str()];
            if alias.trim().is_empty() {
                out.push(problem(&path, "an alias cannot be empty"));
            } else if cfg.models.contains_key(alias) {
                out.push(problem(
                    &path,
                    format!("alias `{alias}` shadows the model `{alias}`"),
                ));
            } else if let Some(owner) = seen.insert(alias, name) {
                let whose = if owner == name {
                    "this model".to_string()
                } else {
                    format!("model `{owner}`")
                };
                out.push(problem(
                    &path,
                    format!("alias `{alias}` is already an alias of {whose}"),
                ));
            }
        }
    }
}

/// A limit of zero would refuse every request; say so instead of starting a
/// router that answers nothing.
fn limits(cfg: &Config) -> Vec<Problem> {
    let mut out: Vec<Problem> = zero_limits(cfg)
        .into_iter()
        .filter(|(_, value, _)| *value == 0)
        .map(|(key, _, refused)| zero_limit(key, refused))
        .collect();
    for (key, value, ceiling, why) in ceilings(cfg) {
        if value > ceiling {
            out.push(problem(
                &[key],
                format!("{value} is past the most this router accepts ({ceiling}): {why}; remove {key} for its default"),
            ));
        }
    }
    let zero_time = [
        ("header_timeout", cfg.header_timeout.is_zero()),
        ("body_timeout", cfg.body_timeout.is_zero()),
        (
            "upstream_connect_timeout",
            cfg.upstream_connect_timeout.is_zero(),
        ),
        ("upstream_pool_idle", cfg.upstream_pool_idle.is_zero()),
        (
            "idle_connection_timeout",
            cfg.idle_connection_timeout.is_zero(),
        ),
    ];
    let zero_time = zero_time.into_iter().chain([(
        "background_queue_timeout",
        cfg.background_queue_timeout.is_zero(),
    )]);
    for (i, k) in cfg.background_keys.iter().enumerate() {
        if k.trim().is_empty() || k.trim() != k {
            out.push(problem(
                &["background_keys", &i.to_string()],
                "a key may not be empty or start or end with spaces",
            ));
        }
    }
    for (key, is_zero) in zero_time {
        if is_zero {
            out.push(problem(&[key], "must be more than 0s"));
        }
    }
    for (path, size) in &cfg.max_body_by_path {
        if !path.starts_with('/') {
            out.push(problem(
                &["max_body_by_path", path],
                format!("`{path}` is not a request path such as /v1/embeddings"),
            ));
        }
        if size.bytes() == 0 {
            out.push(problem(
                &["max_body_by_path", path],
                format!("must be more than 0: 0 would refuse every request to {path} that has a body; write a size such as 64MiB, or remove the path to use max_body"),
            ));
        }
    }
    out
}

/// Every `max_*` key of the top level, its value, and what 0 would refuse.
fn zero_limits(cfg: &Config) -> [(&'static str, u64, &'static str); 8] {
    let n = |v: usize| v as u64;
    [
        (
            "max_queue",
            n(cfg.max_queue),
            "every request that has to wait for its model, so no model would ever load on demand",
        ),
        (
            "max_body",
            cfg.max_body.bytes(),
            "every request that has a body (every completion)",
        ),
        (
            "max_json_depth",
            n(cfg.max_json_depth),
            "every JSON request body (an object is one deep)",
        ),
        (
            "max_headers",
            n(cfg.max_headers),
            "every request (each has headers)",
        ),
        (
            "max_header_size",
            cfg.max_header_size.bytes(),
            "every request (each has headers)",
        ),
        (
            "max_uri_length",
            cfg.max_uri_length.bytes(),
            "every request (each has a path)",
        ),
        (
            "max_connections",
            n(cfg.max_connections),
            "every connection, and so every request",
        ),
        (
            "max_response",
            cfg.max_response.bytes(),
            "every non-streamed JSON reply from a backend",
        ),
    ]
}

/// Limits with a most, and why: a limit meant as "no limit" must not turn
/// into memory set aside for every request or connection.
fn ceilings(cfg: &Config) -> [(&'static str, u64, u64, &'static str); 6] {
    let n = |v: usize| v as u64;
    [
        (
            "max_headers",
            n(cfg.max_headers),
            10_000,
            "the HTTP parser sets aside room for this many headers (four times over) for every request",
        ),
        (
            "max_header_size",
            cfg.max_header_size.bytes(),
            1 << 20,
            "a connection's read buffer may grow to twice it",
        ),
        (
            "max_uri_length",
            cfg.max_uri_length.bytes(),
            1 << 20,
            "a connection's read buffer may grow to twice it",
        ),
        (
            "max_json_depth",
            n(cfg.max_json_depth),
            1_000,
            "the JSON reader recurses once per level",
        ),
        (
            "max_queue",
            n(cfg.max_queue),
            1_000_000,
            "a queue that long holds requests, not a limit",
        ),
        (
            "max_connections",
            n(cfg.max_connections),
            1_000_000,
            "past any descriptor limit a system allows",
        ),
    ]
}

fn zero_limit(key: &str, refused: &str) -> Problem {
    problem(
        &[key],
        format!("must be more than 0: 0 would refuse {refused}; write a limit of at least 1, or remove {key} for its default"),
    )
}
