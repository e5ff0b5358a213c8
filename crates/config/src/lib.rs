//! routes.yaml: the one file users edit. Its schema, how it is found and loaded
//! (file, then `MODELYARD_*` environment overrides), and the validation that runs
//! before anything starts, naming the key, the line and the reason for each error.

mod error;
mod keys;
mod load;
mod locate;
#[cfg(test)]
mod proptests;
mod schema;
mod size;
mod timeout;
mod validate;

pub use error::{ConfigError, Issue, Origin};
pub use load::{load_file, load_str, locate, Loaded};
pub use schema::{Backend, BackendKind, Config, LoadingProgress, Model};
pub use size::ByteSize;
pub use timeout::Timeout;
pub use validate::closest;

impl Config {
    /// The model a client's name refers to: the name itself, or an alias of it.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        if let Some((k, _)) = self.models.get_key_value(name) {
            return Some(k.as_str());
        }
        self.models
            .iter()
            .find(|(_, m)| m.aliases.iter().any(|a| a == name))
            .map(|(k, _)| k.as_str())
    }

    /// The largest body a request to `path` may send.
    pub fn max_body_for(&self, path: &str) -> u64 {
        self.max_body_by_path
            .get(path)
            .unwrap_or(&self.max_body)
            .bytes()
    }
}
