//! Every error the router itself produces, rendered once in OpenAI's shape:
//! `{"error":{"message","type","param","code"}}`, with `x-modelyard-error` marking
//! it as the router's own rather than a backend's.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use modelyard_supervisor::SupervisorError;

use crate::body::{self, Body};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("the request body has no `model`; name one of the models listed at GET /v1/models")]
    MissingModel,
    #[error("`model` must be a string")]
    ModelNotString,
    #[error("the model `{name}` does not exist{}", suggest(.close))]
    UnknownModel { name: String, close: Vec<String> },
    #[error("request body is larger than the limit of {limit} bytes (max_body in routes.yaml)")]
    BodyTooLarge { limit: u64 },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("backend for model `{model}` is unreachable: {reason}")]
    Unreachable { model: String, reason: String },
    #[error("backend for model `{model}` sent no response headers within {}s (upstream_timeout)", .after.as_secs())]
    UpstreamTimeout { model: String, after: Duration },
    #[error("{}", if *.given { "the API key is not valid for this router" } else { "this router needs an API key: send `Authorization: Bearer <key>`" })]
    ClientKey { given: bool },
    #[error("this admin call needs the admin key: send `Authorization: Bearer <admin_key>`")]
    AdminKey,
    #[error("admin calls that change state are only accepted from this machine (set admin_remote: true to allow others)")]
    AdminRemote,
    #[error("Host `{0}` is not this router (DNS rebinding?); add it to allowed_hosts in routes.yaml if it is")]
    HostNotAllowed(String),
    #[error("browser origin `{0}` may not call this router; add it to allowed_origins in routes.yaml to allow it")]
    OriginNotAllowed(String),
    #[error("model `{model}` cannot take this request: {reason}; give it a `fallback:` in routes.yaml to send such requests to another model")]
    CannotServe {
        model: String,
        reason: String,
        code: &'static str,
    },
    #[error("config not reloaded, the running one stays: {0}")]
    Reload(String),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

fn suggest(close: &[String]) -> String {
    match close {
        [] => "; GET /v1/models lists the models".into(),
        [one] => format!("; did you mean `{one}`?"),
        many => format!("; did you mean one of: {}?", many.join(", ")),
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>, &'static str) {
        use ApiError::*;
        match self {
            BadJson(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_json",
            ),
            MissingModel => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model"),
                "missing_model",
            ),
            ModelNotString => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model"),
                "invalid_model",
            ),
            UnknownModel { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                "model_not_found",
            ),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                "request_too_large",
            ),
            BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "body_read_failed",
            ),
            NoRoute { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "unknown_route",
            ),
            Unreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                None,
                "backend_unreachable",
            ),
            UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                None,
                "backend_timeout",
            ),
            HostNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                None,
                "host_not_allowed",
            ),
            OriginNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                None,
                "origin_not_allowed",
            ),
            CannotServe { code, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", None, code)
            }
            Reload(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                None,
                "config_invalid",
            ),
            ClientKey { .. } => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                None,
                "invalid_api_key",
            ),
            AdminKey => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                None,
                "admin_key_required",
            ),
            AdminRemote => (
                StatusCode::FORBIDDEN,
                "permission_error",
                None,
                "admin_not_local",
            ),
            Supervisor(e) => match e {
                SupervisorError::UnknownModel(_) => (
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("model"),
                    "model_not_found",
                ),
                SupervisorError::StartFailed { .. } => (
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    None,
                    "backend_start_failed",
                ),
                SupervisorError::Timeout { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "model_not_ready",
                ),
                SupervisorError::BackingOff { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "backend_backing_off",
                ),
                SupervisorError::QueueFull { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "queue_full",
                ),
                SupervisorError::Unreachable { .. } => (
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    None,
                    "backend_unreachable",
                ),
                SupervisorError::Starting(_) => (
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    None,
                    "model_starting",
                ),
                SupervisorError::ShuttingDown => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "shutting_down",
                ),
            },
        }
    }

    fn retry_after_secs(&self) -> u64 {
        match self {
            ApiError::Supervisor(SupervisorError::BackingOff { retry_in, .. }) => {
                retry_in.as_secs().max(1)
            }
            ApiError::Supervisor(SupervisorError::QueueFull { .. }) => 1,
            _ => 5,
        }
    }

    /// The JSON error body, also used for an SSE `error` event.
    pub fn json(message: &str, kind: &str, param: Option<&str>, code: &str) -> serde_json::Value {
        serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// This error as the JSON of an SSE `error` event, for a stream already begun.
    pub fn event(&self) -> serde_json::Value {
        let (_, kind, param, code) = self.parts();
        Self::json(&self.to_string(), kind, param, code)
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, kind, param, code) = self.parts();
        let payload = Self::json(&self.to_string(), kind, param, code);
        let mut resp = body::json_response(status, &payload);
        let h = resp.headers_mut();
        h.insert("x-modelyard-error", HeaderValue::from_static(code));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs()),
            );
        }
        resp
    }
}
