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
    #[error("model `{model}` is not started: its backend failed {failures} times in a row (last: {last_error}); next try in {}s", .retry_in.as_secs_f64().ceil())]
    BackingOff {
        model: String,
        failures: u32,
        retry_in: Duration,
        last_error: String,
    },
    #[error("background request for model `{model}` yielded to interactive work after {:.0}s ({why}); background_queue_timeout in routes.yaml sets how long background requests wait", .waited.as_secs_f64())]
    Yielded {
        model: String,
        waited: Duration,
        why: String,
    },
    #[error("too many requests waiting ({max_queue}, max_queue in routes.yaml); model `{model}` was not queued")]
    QueueFull { model: String, max_queue: usize },
    #[error("model `{0}` is starting; unload it once it is ready")]
    Starting(String),
    #[error("backend `{backend}` of model `{model}` is unreachable: {reason}")]
    Unreachable {
        model: String,
        backend: String,
        reason: String,
    },
    #[error("the router is shutting down")]
    ShuttingDown,
}
