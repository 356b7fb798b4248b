//! CORS for browsers calling APIs through the gateway (the portal's try-it, consumers' web
//! apps). Keys travel in headers, never cookies, so any origin may call and credentials are
//! never allowed. Preflights are answered by the gateway, before identification, from the
//! version's operations. Per-API CORS policies come with the gateway issue.

use crate::{GwBody, errors};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use portico_core::operations::OperationMatch;
use portico_core::snapshot::VersionRoute;

const EXPOSE: &str = "RateLimit, RateLimit-Policy, Retry-After, X-Request-Id, X-Portico-Request-Id";

/// Headers for a cross-origin answer.
pub fn allow(h: &mut HeaderMap) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The answer to a CORS preflight, if this is one.
pub fn preflight<B>(req: &Request<B>, version: &VersionRoute, rest: &str) -> Option<Response<GwBody>> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(header::ORIGIN) {
        return None;
    }
    let wanted = req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD)?.to_str().ok()?.to_ascii_uppercase();
    let methods = match version.operations.as_deref().map(|ops| ops.lookup(&wanted, rest)) {
        None | Some(OperationMatch::Found(_)) => wanted,
        Some(OperationMatch::MethodNotAllowed(allow)) => allow,
        Some(OperationMatch::NotFound) => return Some(errors::not_found("no operation at this path")),
    };
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if let Ok(v) = HeaderValue::from_str(&methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    Some(resp)
}
