//! Who may talk to the router. Every browser tab can reach 127.0.0.1, so:
//! a `Host` naming anything but loopback, an IP address or an allowed host is a
//! DNS-rebinding attempt (refused), and a browser `Origin` other than the router's
//! own pages or an allowed origin is refused too. Allowed origins get CORS.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use modelyard_config::Config;

use crate::body::{self, Body};
use crate::error::ApiError;

/// Checks a request's Host and Origin. Ok(Some(origin)) when CORS headers are due.
pub(crate) fn check(
    config: &Config,
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, ApiError> {
    let host = uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    match &host {
        Some(host) if !host_allowed(config, host) => {
            return Err(ApiError::HostNotAllowed(crate::echo::shown(host)));
        }
        Some(_) => {}
        // HTTP/1.1 requires a Host (RFC 9112 §3.2) and h2 an :authority; only
        // HTTP/1.0, which predates it, may go without.
        None if version != http::Version::HTTP_10 => {
            return Err(ApiError::MissingHost);
        }
        None => {}
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let o = origin.to_str().unwrap_or("");
    // The router's own pages (same scheme-less host:port) may always call it.
    let same_origin = host.as_deref().is_some_and(|h| {
        o.strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(h))
    });
    if same_origin {
        return Ok(None);
    }
    if config
        .allowed_origins
        .iter()
        .any(|a| a.eq_ignore_ascii_case(o))
        || local_origin(o)
    {
        return Ok(Some(origin.clone()));
    }
    Err(ApiError::OriginNotAllowed(o.to_string()))
}

/// The origins Ollama allows without configuration, so the same local apps work
/// against the router: pages served from this machine (localhost, 127.0.0.1 or
/// [::1], any port, http or https) and desktop apps' own schemes. A page on
/// another host never passes, and the Host check still stops DNS rebinding.
fn local_origin(origin: &str) -> bool {
    let lower = origin.to_ascii_lowercase();
    if ["app://", "file://", "tauri://", "vscode-webview://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        return true;
    }
    let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    else {
        return false;
    };
    // strip_port leaves anything that is not `host[:digits]` whole, so it
    // cannot match below.
    !rest.contains('/') && matches!(strip_port(rest), "localhost" | "127.0.0.1" | "::1")
}

fn host_allowed(config: &Config, host_port: &str) -> bool {
    let host = strip_port(host_port);
    let lower = host.to_ascii_lowercase();
    // An IP address is no rebinding vector: rebinding needs a name the attacker controls.
    lower
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
        || lower == "localhost"
        || lower.ends_with(".localhost")
        || config
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(host_port))
}

fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        // [::1]:8080; anything else after the bracket (`[::1]evil.example`) is
        // not a port, and the whole is then no address.
        return match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, port))
                if port.len() > 1
                    && port.starts_with(':')
                    && port[1..].chars().all(|c| c.is_ascii_digit()) =>
            {
                ip
            }
            _ => host_port,
        };
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host_port,
    }
}

/// The answer to a CORS preflight from an allowed origin.
pub(crate) fn preflight(origin: HeaderValue, headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(body::full(""));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    allow(h, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}

pub(crate) fn allow(h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-request-id, retry-after"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        modelyard_config::load_str(
            "t",
            &format!("backends: {{b: {{url: \"http://127.0.0.1:1\"}}}}\n{extra}"),
        )
        .unwrap()
        .config
    }

    fn run(c: &Config, host: &str, origin: Option<&str>) -> Result<Option<HeaderValue>, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        check(
            c,
            http::Version::HTTP_11,
            &"/v1/chat/completions".parse().unwrap(),
            &h,
        )
    }

    #[test]
    fn a_request_without_a_host_is_refused_but_from_http_1_0() {
        let c = cfg("");
        let uri = "/v1/models".parse().unwrap();
        let none = HeaderMap::new();
        assert!(matches!(
            check(&c, http::Version::HTTP_11, &uri, &none),
            Err(ApiError::MissingHost)
        ));
        assert!(check(&c, http::Version::HTTP_10, &uri, &none).is_ok());
    }

    #[test]
    fn hosts_loopback_names_addresses_and_allowed_ones_pass() {
        let c = cfg("allowed_hosts: [studio.lan]");
        for ok in [
            "127.0.0.1:11434",
            "localhost:11434",
            "LOCALHOST",
            "api.localhost:1",
            "[::1]:11434",
            "192.168.1.5:11434",
            "studio.lan:11434",
        ] {
            assert!(run(&c, ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:11434",
            "attacker.test",
            "studio.lan.evil.example",
            "[::1]evil.example",
            "[::1]:evil.example",
            "[::1]:",
        ] {
            assert!(
                matches!(run(&c, bad, None), Err(ApiError::HostNotAllowed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn origins_same_origin_and_allowed_pass_others_are_refused() {
        let c = cfg("allowed_origins: [\"http://localhost:3000\"]");
        assert!(matches!(
            run(&c, "127.0.0.1:11434", Some("http://127.0.0.1:11434")),
            Ok(None)
        ));
        assert!(matches!(
            run(&c, "127.0.0.1:11434", Some("http://localhost:3000")),
            Ok(Some(_))
        ));
        assert!(matches!(
            run(&c, "127.0.0.1:11434", Some("https://evil.example")),
            Err(ApiError::OriginNotAllowed(_))
        ));
        assert!(matches!(
            run(&c, "127.0.0.1:11434", Some("null")),
            Err(ApiError::OriginNotAllowed(_))
        ));
    }

    #[test]
    fn local_pages_and_app_schemes_get_cors_as_ollama_gives_them() {
        let c = cfg("");
        for ok in [
            "http://localhost:3000",
            "https://localhost:8443",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
            "http://localhost",
            "app://obsidian.md",
            "tauri://localhost",
            "vscode-webview://abc",
            "file://",
        ] {
            assert!(
                matches!(run(&c, "127.0.0.1:11434", Some(ok)), Ok(Some(_))),
                "{ok}"
            );
        }
        for bad in [
            "http://localhost.evil.example",
            "http://localhost:3000.evil.example",
            "http://127.0.0.1.nip.io",
            "http://[::1]evil",
            "https://evil.example",
            "http://192.168.1.5:3000",
        ] {
            assert!(
                matches!(
                    run(&c, "127.0.0.1:11434", Some(bad)),
                    Err(ApiError::OriginNotAllowed(_))
                ),
                "{bad}"
            );
        }
    }
}
