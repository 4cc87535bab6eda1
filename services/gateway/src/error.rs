//! The gateway's one error type, and the one place errors become OpenAI-shaped HTTP answers.
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ratelimit::RateHeaders;

/// The code and message of an error answer, left on the response by [`Error`]'s conversion so
/// that the one middleware that logs refusals and lists errors (`status/mod.rs`
/// `record_errors`) can name them without reading the body, whatever API shaped it. The message
/// is the one the client gets; it names fields and describes values by kind, never quoting
/// prompt text (`validate.rs` `describe`).
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub code: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] provider_shared::config::ConfigError),
    #[error("{0}")]
    Io(#[from] std::io::Error),

    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive whole within {}s of the gateway starting to read it; send it at once", after.as_secs())]
    BodyTimeout { after: Duration },
    /// The budget for request bodies being read and handled at once is taken.
    #[error("the gateway holds {limit} bytes of request bodies already (LOCAL_PROVIDER_MAX_BODY_BYTES_IN_FLIGHT); try again shortly")]
    BodiesInFlight { limit: u64 },
    #[error("this request is {size} bytes once encoded for the MCP bridge, more than the {limit} bytes the bridge accepts in one frame (LOCAL_PROVIDER_MAX_FRAME_BYTES); shorten the conversation or its attachments")]
    RequestTooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    /// A model name this gateway does not answer to (`LOCAL_PROVIDER_MODEL_ALIASES`).
    #[error("model: the model `{requested}` is not served here; use `{served}`")]
    ModelNotFound { requested: String, served: String },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    RateLimited {
        /// `requests`, `tokens` or `auth`.
        kind: &'static str,
        message: String,
        retry_after: Duration,
        headers: Option<RateHeaders>,
    },
    #[error("{message}")]
    SessionLimit {
        message: String,
        retry_after: Duration,
    },
    #[error("the gateway is at its limit of {limit} concurrent requests")]
    Overloaded { limit: usize },
    #[error("{0}")]
    BridgeAgentUnavailable(String),
    /// An error result from bridge-agent or the agent behind it.
    #[error("{message}")]
    Agent {
        status: StatusCode,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the session and rate-limit store is unavailable ({message}); try again shortly")]
    StoreUnavailable {
        /// `timeout`, `connection`, `pool` or `response`: the metrics label.
        kind: &'static str,
        message: String,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            param: param.into(),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Config(_) | Error::Io(_) | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } | Error::RequestTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound { .. } | Error::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::RateLimited { .. } | Error::SessionLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Overloaded { .. }
            | Error::BodiesInFlight { .. }
            | Error::BridgeAgentUnavailable(_)
            | Error::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Agent { status, .. } => *status,
        }
    }

    /// The OpenAI error `type` and `code`.
    fn kind_and_code(&self) -> (&str, Option<&str>) {
        match self {
            Error::InvalidRequest { code, .. } => ("invalid_request_error", *code),
            Error::BodyTooLarge { .. } | Error::RequestTooLarge { .. } => {
                ("invalid_request_error", Some("request_too_large"))
            }
            Error::BodyTimeout { .. } => ("invalid_request_error", Some("body_timeout")),
            Error::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            Error::Forbidden(_) => ("permission_error", Some("forbidden")),
            Error::NotFound { code, .. } => ("invalid_request_error", Some(code)),
            Error::ModelNotFound { .. } => ("invalid_request_error", Some("model_not_found")),
            Error::MethodNotAllowed(_) => ("invalid_request_error", Some("method_not_allowed")),
            Error::RateLimited { kind, .. } => (kind, Some("rate_limit_exceeded")),
            Error::SessionLimit { .. } => ("sessions", Some("session_limit_reached")),
            Error::Overloaded { .. } | Error::BodiesInFlight { .. } => {
                ("server_error", Some("server_overloaded"))
            }
            Error::BridgeAgentUnavailable(_) => ("server_error", Some("bridge_agent_unavailable")),
            Error::StoreUnavailable { .. } => ("server_error", Some("store_unavailable")),
            Error::Agent { code, status, .. } if status.is_client_error() => {
                ("invalid_request_error", Some(code.as_str()))
            }
            Error::Agent { code, .. } => ("server_error", Some(code.as_str())),
            Error::Config(_) | Error::Io(_) | Error::Internal(_) => {
                ("server_error", Some("internal_error"))
            }
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Error::InvalidRequest { param, .. } => param.as_deref(),
            Error::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::SessionLimit { retry_after, .. } => {
                Some(*retry_after)
            }
            Error::Overloaded { .. }
            | Error::BodiesInFlight { .. }
            | Error::StoreUnavailable { .. } => Some(Duration::from_secs(1)),
            Error::BridgeAgentUnavailable(_) => Some(Duration::from_secs(5)),
            Error::Agent { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether a client retrying the same request could succeed.
    fn retryable(&self) -> bool {
        !matches!(
            self.status().as_u16(),
            400 | 401 | 403 | 404 | 405 | 413 | 422
        )
    }

    /// The `{"error": {...}}` object, also used for in-stream errors.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code) = self.kind_and_code();
        json!({"error": {
            "message": self.to_string(),
            "type": kind,
            "param": self.param(),
            "code": code,
        }})
    }

    /// The status and `{"type": "error", "error": {"type", "message"}}` body of Anthropic's
    /// Messages API. The gateway's own overload is Anthropic's `529 overloaded_error`, which its
    /// clients know to retry; other statuses stay as they are.
    pub fn anthropic(&self) -> (StatusCode, serde_json::Value) {
        let status = match self {
            Error::Overloaded { .. } | Error::BodiesInFlight { .. } => {
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            _ => self.status(),
        };
        let kind = match status.as_u16() {
            400 | 405 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        let body = json!({"type": "error", "error": {"type": kind, "message": self.to_string()}});
        (status, body)
    }

    /// The code recorded in logs, metrics and the audit log.
    pub fn code(&self) -> String {
        self.kind_and_code()
            .1
            .unwrap_or("invalid_request")
            .to_owned()
    }
}

/// Whole seconds for `retry-after`, rounded up so a client never comes back too early.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        headers.insert(
            "x-should-retry",
            HeaderValue::from_static(if self.retryable() { "true" } else { "false" }),
        );
        if let Error::RateLimited {
            headers: Some(rate),
            ..
        } = &self
        {
            rate.apply(&mut headers);
        }
        if let Error::Unauthorized(_) = &self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let mut response = (status, headers, self.body().to_string()).into_response();
        response.extensions_mut().insert(ErrorReport {
            code: self.code(),
            message: self.to_string(),
        });
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn non_retryable_errors_say_so() {
        let resp = Error::invalid("bad", Some("temperature".into())).into_response();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()["x-should-retry"], "false");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let resp = Error::Overloaded { limit: 1 }.into_response();
        assert_eq!(resp.headers()["x-should-retry"], "true");
        assert_eq!(resp.headers()["retry-after"], "1");
    }

    #[test]
    fn body_has_all_four_fields() {
        let body = Error::Unauthorized("no".into()).body();
        let err = body["error"].as_object().unwrap();
        for field in ["message", "type", "param", "code"] {
            assert!(err.contains_key(field), "{field}");
        }
        assert_eq!(err["code"], "invalid_api_key");
    }

    #[test]
    fn anthropic_shape_and_overload_status() {
        let (status, body) = Error::Overloaded { limit: 1 }.anthropic();
        assert_eq!(status.as_u16(), 529);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "overloaded_error");
        let (status, body) = Error::Unauthorized("no".into()).anthropic();
        assert_eq!(status.as_u16(), 401);
        assert_eq!(body["error"]["type"], "authentication_error");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1200)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
