use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the request log {}: {reason}", .path.display())]
    Open { path: PathBuf, reason: String },
    #[error("the request log {} is not one this version can read: {reason}", .path.display())]
    Foreign { path: PathBuf, reason: String },
    #[error("reading the request log failed: {0}")]
    Read(String),
}

impl Error {
    pub(crate) fn read(e: rusqlite::Error) -> Error {
        Error::Read(e.to_string())
    }
}
