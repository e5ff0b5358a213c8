//! Who a model request comes from, for the scheduler: a client identity (its
//! API key, User-Agent and address, hashed) and a priority. Worked out once per
//! request, before its handler, and carried in the request's extensions to
//! where it becomes a lease.

use http::{header, Extensions, HeaderMap};
use modelyard_supervisor::Ask;

use crate::keys;

/// The asker of a request with these headers, from `peer`.
pub(crate) fn ask(headers: &HeaderMap, peer: std::net::SocketAddr) -> Ask {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    Ask {
        client: Ask::client_of(keys::presented(headers), agent, Some(peer.ip())),
        ..Ask::default()
    }
}

/// The asker `ask` put in a request's extensions (unknown: the default).
pub(crate) fn of(extensions: &Extensions) -> Ask {
    extensions.get::<Ask>().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(key: Option<&str>, agent: Option<&str>, peer: &str) -> u64 {
        let mut h = HeaderMap::new();
        if let Some(k) = key {
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {k}").parse().unwrap(),
            );
        }
        if let Some(a) = agent {
            h.insert(header::USER_AGENT, a.parse().unwrap());
        }
        ask(&h, peer.parse().unwrap()).client
    }

    #[test]
    fn one_app_is_one_client_whichever_connection_it_uses() {
        let a = client(Some("k1"), Some("OpenWebUI"), "127.0.0.1:5000");
        assert_eq!(a, client(Some("k1"), Some("OpenWebUI"), "127.0.0.1:5001"));
        assert_ne!(a, client(Some("k2"), Some("OpenWebUI"), "127.0.0.1:5000"));
        assert_ne!(a, client(Some("k1"), Some("curl/8"), "127.0.0.1:5000"));
        assert_ne!(a, client(Some("k1"), Some("OpenWebUI"), "10.0.0.2:5000"));
        assert_ne!(a, 0, "0 is kept for an unknown client");
    }
}
