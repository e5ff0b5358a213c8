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
    #[error("gave up after {:.1}s waiting for model `{model}` to be ready ({why}); queue_timeout in routes.yaml sets how long requests wait", .waited.as_secs_f64())]
    Timeout {
        model: String,
        waited: Duration,
        why: String,
    },
    #[error("the router is shutting down")]
    ShuttingDown,
}
