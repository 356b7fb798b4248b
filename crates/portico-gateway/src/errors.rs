//! Every response the gateway makes itself: `application/problem+json` (RFC 9457), one named
//! constructor per failure, each with its status and headers. Bodies never carry a key, an
//! upstream address or an internal error.

use crate::GwBody;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response<GwBody> {
    problem_with(status, code, title, detail, None)
}

fn problem_with(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    errors: Option<serde_json::Value>,
) -> Response<GwBody> {
    let mut body = serde_json::json!({
        "type": format!("https://portico.dev/problems/{code}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    if let Some(errors) = errors {
        body["errors"] = errors;
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn bad_request(detail: &str) -> Response<GwBody> {
    problem(StatusCode::BAD_REQUEST, "bad_request", "Bad request", detail)
}

/// A call that breaks its operation's contract in the OpenAPI document: `detail` names the
/// first problems, `errors` lists each (`in`, `name` or JSON `pointer`, `detail`).
pub fn request_invalid(violations: &[portico_core::validation::Violation]) -> Response<GwBody> {
    let shown: Vec<String> = violations.iter().take(3).map(ToString::to_string).collect();
    let more = violations.len().saturating_sub(shown.len());
    let mut detail = format!("the request does not match the API's OpenAPI document: {}", shown.join("; "));
    if more > 0 {
        detail.push_str(&format!("; and {more} more (see `errors`)"));
    }
    let errors = violations
        .iter()
        .map(|v| match v.location {
            portico_core::validation::In::Body => {
                serde_json::json!({"in": "body", "pointer": v.name, "detail": v.detail})
            }
            loc => serde_json::json!({"in": loc.as_str(), "name": v.name, "detail": v.detail}),
        })
        .collect();
    problem_with(StatusCode::BAD_REQUEST, "request_invalid", "Invalid request", &detail, Some(errors))
}

pub fn unsupported_media_type(detail: &str) -> Response<GwBody> {
    problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type", detail)
}

pub fn not_found(detail: &str) -> Response<GwBody> {
    problem(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
}

pub fn unauthenticated(detail: &str) -> Response<GwBody> {
    let mut r = problem(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required", detail);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey header=\"X-Api-Key\""));
    r
}

pub fn method_not_allowed(allow: &str, detail: &str) -> Response<GwBody> {
    let mut r = problem(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed", detail);
    if let Ok(v) = http::HeaderValue::from_str(allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

pub fn forbidden(detail: &str) -> Response<GwBody> {
    problem(StatusCode::FORBIDDEN, "forbidden", "Not subscribed", detail)
}

pub fn rate_limited(retry_after_secs: u64, detail: &str) -> Response<GwBody> {
    let mut r = problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests", detail);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
    r
}

pub fn payload_too_large(max: u64) -> Response<GwBody> {
    let detail = format!("the request body is larger than the gateway accepts ({max} bytes)");
    problem(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large", &detail)
}

pub fn uri_too_long(max: usize) -> Response<GwBody> {
    let detail =
        format!("the path and query are longer than the gateway accepts ({max} bytes); send large inputs in the body");
    problem(StatusCode::URI_TOO_LONG, "uri_too_long", "URI too long", &detail)
}

pub fn too_many_headers(max: usize) -> Response<GwBody> {
    let detail = format!("the request has more headers than the gateway accepts ({max})");
    problem(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header_fields_too_large",
        "Request header fields too large",
        &detail,
    )
}

pub fn bad_gateway(detail: &str) -> Response<GwBody> {
    problem(StatusCode::BAD_GATEWAY, "bad_gateway", "Bad gateway", detail)
}

pub fn service_unavailable(detail: &str) -> Response<GwBody> {
    let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "Service unavailable", detail);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5u64));
    r
}

pub fn gateway_timeout(detail: &str) -> Response<GwBody> {
    problem(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", "Gateway timeout", detail)
}

/// A small JSON answer of the gateway's own (`/healthz`, `/readyz`).
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<GwBody> {
    let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    let mut resp = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
