//! `listen`: an IP address and a port, as `SocketAddr` parses them, or
//! `localhost:PORT`, which means 127.0.0.1 (what the default listens on). Other
//! host names are not resolved: what a name means differs between machines, and
//! the router must know which address it binds before it starts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};

const EXAMPLE: &str = "127.0.0.1:11434";

/// For `#[serde(with = "listen")]` on the `SocketAddr` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_any(ListenVisitor)
}

/// What to write instead of `s`, which is not an `IP:PORT`.
fn instead(s: &str) -> String {
    if let Ok(ip) = s.trim().parse::<IpAddr>() {
        return format!(
            "`{s}` has no port: write an IP address and a port, e.g. {}",
            SocketAddr::new(ip, 11434)
        );
    }
    format!(
        "`{s}` is not an IP address and a port: write e.g. {EXAMPLE}, localhost:11434 or [::1]:11434; other host names are not resolved"
    )
}

/// An address to listen on, as `listen` and `--listen` take it.
pub fn parse(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Some(port) = t
        .strip_prefix("localhost:")
        .or_else(|| t.strip_prefix("LOCALHOST:"))
    {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .map_err(|_| format!("`{s}`: `{port}` is not a port (0 to 65535)"));
    }
    t.parse().map_err(|_| instead(s))
}

struct ListenVisitor;

impl Visitor<'_> for ListenVisitor {
    type Value = SocketAddr;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an IP address and a port such as {EXAMPLE}")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        parse(v).map_err(E::custom)
    }
    /// A bare number is most likely a port the user meant on loopback.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SocketAddr, E> {
        Err(E::custom(format!(
            "`{v}` is only a port: write an IP address and a port, e.g. 127.0.0.1:{v}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde::de::value::Error;
    use serde::de::IntoDeserializer;

    fn listen<T: IntoDeserializer<'static, Error>>(v: T) -> Result<String, String> {
        super::deserialize(v.into_deserializer())
            .map(|a| a.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn takes_ip_and_port_and_says_what_is_missing_otherwise() {
        assert_eq!(listen("127.0.0.1:8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(listen("[::1]:8080").as_deref(), Ok("[::1]:8080"));
        let no_port = listen("127.0.0.1").unwrap_err();
        assert!(no_port.contains("has no port"), "{no_port}");
        assert!(no_port.contains("127.0.0.1:11434"), "{no_port}");
        assert!(listen("::1").unwrap_err().contains("[::1]:11434"));
        assert_eq!(listen("localhost:8080").as_deref(), Ok("127.0.0.1:8080"));
        let name = listen("router.lan:8080").unwrap_err();
        assert!(name.contains("not resolved"), "{name}");
        assert!(name.contains("127.0.0.1:11434"), "{name}");
        assert!(listen("localhost:99999")
            .unwrap_err()
            .contains("not a port"));
        assert!(listen(8080_u64).unwrap_err().contains("127.0.0.1:8080"));
    }
}
