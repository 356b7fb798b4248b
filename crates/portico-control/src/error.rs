//! The one public error contract: every API error is `application/problem+json` (RFC 9457)
//! with a stable snake_case `code` from the table below, a human `detail` that says what to fix,
//! and never an internal cause (that goes to the log).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist, or exists but belongs to someone else (never tell which).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    /// Too many attempts: try again after this many seconds (`Retry-After`).
    #[error("{0}")]
    TooManyRequests(String, u64),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Error::NotFound(format!("{what} was not found (or you do not have access to it)"))
    }
    /// `(status, code, title)`: the table of codes.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request", "Invalid request"),
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Error::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large"),
            Error::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type")
            }
            Error::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            Error::TooManyRequests(..) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "Too many requests"),
        }
    }
}

impl From<portico_core::Error> for Error {
    fn from(e: portico_core::Error) -> Self {
        Error::Invalid(e.to_string())
    }
}

impl From<portico_store::Error> for Error {
    fn from(e: portico_store::Error) -> Self {
        match e {
            portico_store::Error::Conflict(what) => Error::Conflict(format!("{what} already exists: choose another")),
            portico_store::Error::NotFound => Error::not_found("the object"),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// Stable snake_case code, for programs.
    pub code: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let detail = match &self {
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "something went wrong on our side; it has been logged. Try again, and report it if it persists"
                    .to_string()
            }
            other => other.to_string(),
        };
        let body = Problem {
            kind: format!("https://portico.dev/problems/{code}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            code: code.into(),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Error::TooManyRequests(_, secs) = &self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<portico_store::DriverError> for Error {
    fn from(e: portico_store::DriverError) -> Self {
        Error::from(portico_store::Error::Database(e))
    }
}
