//! Every error the router itself produces, in one place: its status, message and
//! code, rendered in the wire format of the API the client spoke — OpenAI's
//! `{"error":{"message","type","param","code"}}` or Ollama's `{"error":"…"}` — with
//! `x-modelyard-error` marking it as the router's own rather than a backend's.

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
    /// A key the router reads appears twice, as a backend may compare keys.
    #[error("the request has both `{first}` and `{second}`: a backend may read either (keys are compared ignoring case), so the router refuses to guess; send the key once, as `{}`", first.to_lowercase())]
    RepeatedKey { first: String, second: String },
    #[error("the model `{name}` does not exist{}", suggest(.close, Dialect::OpenAi))]
    UnknownModel { name: String, close: Vec<String> },
    /// A field of the request with a value the router cannot use.
    #[error("`{field}` {reason}")]
    InvalidField { field: String, reason: String },
    #[error("the multipart form cannot be read: {0}")]
    BadForm(String),
    #[error("x-modelyard-priority must be `interactive` or `background`, not `{0}`")]
    BadPriority(String),
    #[error("the multipart form has no `model` field; add one (curl: -F model=NAME), before the file so the upload streams")]
    FormWithoutModel,
    #[error("the form's `model` field is not within its first {limit} bytes (max_body in routes.yaml): put `model` before the file, so the router can route the upload as it streams")]
    ModelFieldTooLate { limit: u64 },
    #[error("request body is larger than the limit of {limit} bytes for this path (max_body, or max_body_by_path, in routes.yaml)")]
    BodyTooLarge { limit: u64 },
    #[error("request JSON nests deeper than {limit} levels (max_json_depth in routes.yaml)")]
    TooDeep { limit: usize },
    #[error("request has {count} headers; the limit is {limit} (max_headers in routes.yaml)")]
    TooManyHeaders { count: usize, limit: usize },
    #[error(
        "request headers take {size} bytes; the limit is {limit} (max_header_size in routes.yaml)"
    )]
    HeadersTooLarge { size: u64, limit: u64 },
    #[error(
        "request URI is {length} bytes long; the limit is {limit} (max_uri_length in routes.yaml)"
    )]
    UriTooLong { length: u64, limit: u64 },
    #[error("the request's headers did not arrive within {:.1}s (header_timeout in routes.yaml)", .after.as_secs_f64())]
    HeaderTimeout { after: Duration },
    #[error("the request's body did not arrive within {:.1}s (body_timeout in routes.yaml)", .after.as_secs_f64())]
    BodyTimeout { after: Duration },
    #[error("the router already has {limit} connections open (max_connections in routes.yaml); retry shortly")]
    TooManyConnections { limit: usize },
    #[error("the router failed while answering this request (a bug; it is logged); other requests are unaffected")]
    Internal,
    #[error("backend for model `{model}` sent a reply larger than {limit} bytes (max_response in routes.yaml)")]
    ResponseTooLarge { model: String, limit: u64 },
    #[error("backend for model `{model}` at {backend} did not accept a connection within {:.1}s (upstream_connect_timeout)", .after.as_secs_f64())]
    ConnectTimeout {
        model: String,
        backend: String,
        after: Duration,
    },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("backend for model `{model}` is unreachable: {reason}")]
    Unreachable { model: String, reason: String },
    #[error("backend for model `{model}` sent a reply the router could not read: {reason}")]
    BadReply { model: String, reason: String },
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
    #[error("the request has no Host header; HTTP/1.1 requires one")]
    MissingHost,
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
    #[error("this router keeps no request log (request_log: off in routes.yaml)")]
    RequestLogOff,
    #[error("{0}")]
    RequestLog(String),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// What an error response said, for the one log line `Router::traced` writes
/// with the request's id.
#[derive(Clone, Debug)]
pub(crate) struct Refusal(pub String);

/// Which API a request came in on, so its errors come back in that API's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
    /// Anthropic's Messages API (`/v1/messages`, and its `count_tokens`).
    Anthropic,
}

impl Dialect {
    /// Ollama's native API lives under `/api/`, Anthropic's under
    /// `/v1/messages`; everything else speaks OpenAI's.
    pub fn of(path: &str) -> Dialect {
        if path.starts_with("/api/") {
            Dialect::Ollama
        } else if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// Anthropic's error `type` for a status, as its SDKs map them to exceptions.
pub(crate) fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 408 | 414 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

fn suggest(close: &[String], dialect: Dialect) -> String {
    let list = match dialect {
        Dialect::OpenAi | Dialect::Anthropic => "GET /v1/models",
        Dialect::Ollama => "GET /api/tags",
    };
    match close {
        [] => format!("; {list} lists the models"),
        [one] => format!("; did you mean `{one}`?"),
        many => format!("; did you mean one of: {}?", many.join(", ")),
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, Option<&str>, &'static str) {
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
            RepeatedKey { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "repeated_key",
            ),
            UnknownModel { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model"),
                "model_not_found",
            ),
            BadForm(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "invalid_multipart",
            ),
            BadPriority(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("x-modelyard-priority"),
                "invalid_priority",
            ),
            FormWithoutModel => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model"),
                "missing_model",
            ),
            ModelFieldTooLate { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("model"),
                "model_field_too_late",
            ),
            InvalidField { field, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(field.as_str()),
                "invalid_field",
            ),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                "request_too_large",
            ),
            TooDeep { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "json_too_deep",
            ),
            TooManyHeaders { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                None,
                "too_many_headers",
            ),
            HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                None,
                "headers_too_large",
            ),
            UriTooLong { .. } => (
                StatusCode::URI_TOO_LONG,
                "invalid_request_error",
                None,
                "uri_too_long",
            ),
            HeaderTimeout { .. } | BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                None,
                "request_timeout",
            ),
            TooManyConnections { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "too_many_connections",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "internal_error",
            ),
            ResponseTooLarge { .. } => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                None,
                "backend_response_too_large",
            ),
            ConnectTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                None,
                "backend_connect_timeout",
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
            BadReply { .. } => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                None,
                "backend_bad_reply",
            ),
            UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                None,
                "backend_timeout",
            ),
            MissingHost => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "missing_host",
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
            RequestLogOff => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                "request_log_off",
            ),
            RequestLog(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "request_log_failed",
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
                SupervisorError::Yielded { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "yielded_to_interactive",
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
            ApiError::TooManyConnections { .. } => 1,
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

    /// The code sent as `x-modelyard-error`.
    pub fn code(&self) -> &'static str {
        self.parts().3
    }

    /// This error as the JSON of an SSE `error` event, for a stream already begun.
    pub fn event(&self) -> serde_json::Value {
        let (_, kind, param, code) = self.parts();
        Self::json(&self.to_string(), kind, param, code)
    }

    pub fn into_response(self) -> Response<Body> {
        self.render(Dialect::OpenAi)
    }

    /// The message in a dialect's words: the same text everywhere, except that an
    /// unknown model is said the way Ollama says it ("model 'x' not found"), which
    /// Ollama clients look for, and points at that API's list of models.
    pub fn message(&self, dialect: Dialect) -> String {
        match (self, dialect) {
            (ApiError::UnknownModel { name, close }, Dialect::Ollama) => {
                format!("model '{name}' not found{}", suggest(close, dialect))
            }
            (ApiError::MissingModel, Dialect::Ollama) => {
                "the request body has no `model`; name one of the models listed at GET /api/tags"
                    .into()
            }
            _ => self.to_string(),
        }
    }

    /// The whole error response in the client's API's shape; status, headers and
    /// message are the same in both.
    pub fn render(self, dialect: Dialect) -> Response<Body> {
        let (status, kind, param, code) = self.parts();
        let message = self.message(dialect);
        let payload = match dialect {
            Dialect::OpenAi => Self::json(&message, kind, param, code),
            Dialect::Ollama => serde_json::json!({ "error": message }),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": anthropic_type(status), "message": message},
            }),
        };
        let mut resp = body::json_response(status, &payload);
        resp.extensions_mut().insert(Refusal(message));
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

impl ApiError {
    /// The whole response as HTTP/1.1 bytes, closing the connection, for a
    /// client answered before or instead of hyper: one past `max_connections`,
    /// or one whose headers never finished.
    pub(crate) fn http1_bytes(&self) -> Vec<u8> {
        let (status, kind, param, code) = self.parts();
        let body = Self::json(&self.to_string(), kind, param, code).to_string();
        let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
            format!("retry-after: {}\r\n", self.retry_after_secs())
        } else {
            String::new()
        };
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-modelyard-error: {code}\r\n{retry}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}
