use std::time::Duration;

#[derive(Clone, Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("model `{0}` is not configured")]
    UnknownModel(String),
    #[error("backend `{backend}` for model `{model}` failed to start: {reason}")]
    StartFailed {
        model: String,
        backend: String,
        reason: String,
    },
    #[error("timed out after {}s waiting for model `{model}` to be ready ({why})", .waited.as_secs())]
    Timeout {
        model: String,
        waited: Duration,
        why: String,
    },
    #[error("the router is shutting down")]
    ShuttingDown,
}
