use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::{json, Value};

pub type ResponseBody = BoxBody<Bytes, Infallible>;

pub fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("static response parts are valid")
}

/// An error in the shape OpenAI clients parse, so the router and SDKs see the
/// same thing they would from a real backend.
pub fn openai_error(
    status: StatusCode,
    message: impl Into<String>,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<ResponseBody> {
    json_response(
        status,
        &json!({
            "error": {
                "message": message.into(),
                "type": kind,
                "param": param,
                "code": code,
            }
        }),
    )
}

pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Response<ResponseBody> {
    openai_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        None,
    )
}

pub fn not_found(message: impl Into<String>) -> Response<ResponseBody> {
    openai_error(
        StatusCode::NOT_FOUND,
        message,
        "invalid_request_error",
        None,
        Some("not_found"),
    )
}

pub fn loading() -> Response<ResponseBody> {
    openai_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the model is still loading",
        "server_error",
        None,
        Some("model_loading"),
    )
}

/// Seconds since the epoch for `created` fields; wall-clock time is what the
/// API reports, hence `SystemTime` rather than a monotonic clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
