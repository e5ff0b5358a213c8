use http::uri::Authority;
use tokio::sync::mpsc::UnboundedSender;

use crate::owner::{ModelKey, Msg};

/// The right to send one request to a ready model. The response body owns it,
/// so a finished stream and an abandoned one both give it back.
#[derive(Debug)]
pub struct Lease {
    /// The model's configured name.
    pub model: String,
    /// The name its backend knows it by.
    pub upstream_model: String,
    pub scheme: http::uri::Scheme,
    pub authority: Authority,
    /// Path prefix of the backend's url (no trailing slash), usually empty.
    pub base_path: String,
    pub api_key: Option<String>,
    /// What the backend speaks besides OpenAI's API (Ollama's native one, say).
    pub kind: modelyard_config::BackendKind,
    /// The most tokens one request may carry, where the server reports it.
    pub context_window: Option<u32>,
    #[allow(dead_code)] // held for its Drop, which gives the lease back
    pub(crate) release: Release,
}

#[derive(Debug)]
pub(crate) struct Release {
    pub model: ModelKey,
    pub generation: u64,
    /// Whether it served an interactive request (a person's): its end marks
    /// the model as used by one, for `interactive_grace`.
    pub interactive: bool,
    /// The client it served, as the proxy tells clients apart.
    pub client: u64,
    pub tx: UnboundedSender<Msg>,
}

impl Drop for Release {
    fn drop(&mut self) {
        // The owner outlives every lease it hands out unless the router is exiting,
        // in which case there is nothing left to count.
        let _ = self.tx.send(Msg::Released {
            model: self.model.clone(),
            generation: self.generation,
            interactive: self.interactive,
            client: self.client,
        });
    }
}
