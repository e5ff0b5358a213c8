//! Who asks for a model, as far as scheduling cares: which client (so a swap
//! can tell a person who moved on from others still using the model) and at
//! what priority.

use std::hash::{DefaultHasher, Hash, Hasher};

pub use modelyard_config::Priority;

/// The asker of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    /// A hash of what tells clients apart (see [`Ask::client_of`]); 0 when unknown.
    pub client: u64,
    pub priority: Priority,
}

impl Ask {
    /// The client identity of a request: its API key, its User-Agent and the
    /// address it came from, hashed (std's SipHash) so no key is kept. The same
    /// app on the same machine is one client whichever connection it uses: a
    /// chat app's title request after the chat is the same person.
    pub fn client_of(
        key: Option<&str>,
        user_agent: Option<&str>,
        peer: Option<std::net::IpAddr>,
    ) -> u64 {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        user_agent.hash(&mut h);
        peer.hash(&mut h);
        // 0 stays "unknown".
        h.finish().max(1)
    }
}
