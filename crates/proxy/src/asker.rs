//! Who a model request comes from, for the scheduler: a client identity (its
//! API key, User-Agent and connection, hashed) and a priority. Worked out once per
//! request, before its handler, and carried in the request's extensions to
//! where it becomes a lease.

use http::{header, Extensions, HeaderMap};
use modelyard_config::{Config, Priority};
use modelyard_supervisor::Ask;

use crate::error::ApiError;
use crate::keys;

/// What the request's head says of its asker; its model may still set the priority.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Asker {
    client: u64,
    /// From the `x-modelyard-priority` header, else from its key (`background_keys`).
    priority: Option<Priority>,
}

impl Asker {
    /// The asker for a request for `model`: a priority the head did not set is the model's.
    pub(crate) fn for_model(self, config: &Config, model: &str) -> Ask {
        let of_model = config.models.get(model).and_then(|m| m.priority);
        Ask {
            client: self.client,
            priority: self.priority.or(of_model).unwrap_or_default(),
        }
    }
}

/// The asker of a request with these headers, from `peer`; a priority header
/// that says neither priority is refused, naming the header.
pub(crate) fn ask(
    config: &Config,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
) -> Result<Asker, ApiError> {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let key = keys::presented(headers);
    let header = match headers.get("x-modelyard-priority") {
        None => None,
        Some(v) => {
            let text = String::from_utf8_lossy(v.as_bytes());
            Some(Priority::parse(&text).ok_or_else(|| ApiError::BadPriority(text.into_owned()))?)
        }
    };
    let of_key = key
        .filter(|k| {
            config
                .background_keys
                .iter()
                .fold(false, |hit, b| keys::same(k.as_bytes(), b.as_bytes()) | hit)
        })
        .map(|_| Priority::Background);
    Ok(Asker {
        client: Ask::client_of(key, agent, Some(peer)),
        priority: header.or(of_key),
    })
}

/// The asker `ask` put in a request's extensions (unknown: the default).
pub(crate) fn of(extensions: &Extensions) -> Asker {
    extensions.get::<Asker>().copied().unwrap_or_default()
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
        let config = modelyard_config::load_str("test", "models: {}\n")
            .unwrap()
            .config;
        ask(&config, &h, peer.parse().unwrap()).unwrap().client
    }

    #[test]
    fn a_client_is_one_connection_key_and_agent() {
        let a = client(Some("k1"), Some("OpenWebUI"), "127.0.0.1:5000");
        assert_eq!(a, client(Some("k1"), Some("OpenWebUI"), "127.0.0.1:5000"));
        assert_ne!(a, client(Some("k1"), Some("OpenWebUI"), "127.0.0.1:5001"));
        assert_ne!(a, client(Some("k2"), Some("OpenWebUI"), "127.0.0.1:5000"));
        assert_ne!(a, client(Some("k1"), Some("curl/8"), "127.0.0.1:5000"));
        assert_ne!(a, client(Some("k1"), Some("OpenWebUI"), "10.0.0.2:5000"));
        assert_ne!(a, 0, "0 is kept for an unknown client");
    }

    fn priority(
        config: &str,
        key: Option<&str>,
        header: Option<&str>,
        model: &str,
    ) -> Result<Priority, ApiError> {
        let config = modelyard_config::load_str("test", config).unwrap().config;
        let mut h = HeaderMap::new();
        if let Some(k) = key {
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {k}").parse().unwrap(),
            );
        }
        if let Some(p) = header {
            h.insert("x-modelyard-priority", p.parse().unwrap());
        }
        Ok(ask(&config, &h, "127.0.0.1:1".parse().unwrap())?
            .for_model(&config, model)
            .priority)
    }

    #[test]
    fn the_header_beats_the_key_which_beats_the_model() {
        use Priority::{Background, Interactive};
        let yaml = r#"
background_keys: [indexer]
backends:
  o: {kind: ollama, url: "http://127.0.0.1:1"}
models:
  chat: {backend: o, memory: 1GB}
  embed: {backend: o, memory: 1GB, priority: background}
"#;
        assert_eq!(priority(yaml, None, None, "chat").unwrap(), Interactive);
        assert_eq!(priority(yaml, None, None, "embed").unwrap(), Background);
        assert_eq!(
            priority(yaml, Some("indexer"), None, "chat").unwrap(),
            Background
        );
        assert_eq!(
            priority(yaml, Some("other"), None, "chat").unwrap(),
            Interactive
        );
        assert_eq!(
            priority(yaml, Some("indexer"), Some("Interactive"), "embed").unwrap(),
            Interactive
        );
        assert_eq!(
            priority(yaml, None, Some("background"), "chat").unwrap(),
            Background
        );
        let bad = priority(yaml, None, Some("urgent"), "chat").unwrap_err();
        assert!(bad.to_string().contains("x-modelyard-priority"), "{bad}");
        assert!(bad.to_string().contains("urgent"), "{bad}");
    }
}
