//! CORS for browsers calling APIs through the gateway (the portal's try-it, consumers' web
//! apps). Keys travel in headers, never cookies, so by default any origin may call and
//! credentials are never allowed; a version's `cors` policy narrows that to its origins.
//! Preflights are answered by the gateway, before identification, from the version's
//! operations.

use crate::{GwBody, errors};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use portico_core::operations::OperationMatch;
use portico_core::policy::Cors;
use portico_core::snapshot::VersionRoute;

const EXPOSE: &str = "RateLimit, RateLimit-Policy, Retry-After, X-Request-Id, X-Portico-Request-Id";

/// The `Access-Control-Allow-Origin` value for `origin`, or `None` when it may not call.
fn allowed_origin(origin: &HeaderValue, policy: Option<&Cors>) -> Option<HeaderValue> {
    match policy {
        None => Some(HeaderValue::from_static("*")),
        Some(c) if c.allow_origins.iter().any(|o| o == "*") => Some(HeaderValue::from_static("*")),
        Some(c) => {
            let o = origin.to_str().ok()?;
            c.allow_origins.iter().any(|a| a.eq_ignore_ascii_case(o)).then(|| origin.clone())
        }
    }
}

/// Headers for a cross-origin answer; none when the version's policy does not allow `origin`,
/// so the browser withholds the answer from the page.
pub fn allow(h: &mut HeaderMap, origin: &HeaderValue, policy: Option<&Cors>) {
    if let Some(v) = allowed_origin(origin, policy) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The answer to a CORS preflight, if this is one.
pub fn preflight<B>(req: &Request<B>, version: &VersionRoute, rest: &str) -> Option<Response<GwBody>> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(header::ORIGIN) {
        return None;
    }
    let wanted = req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD)?.to_str().ok()?.to_ascii_uppercase();
    let policy = version.policies.cors.as_ref();
    let origin = req.headers().get(header::ORIGIN)?;
    let Some(allow_origin) = allowed_origin(origin, policy) else {
        return Some(errors::forbidden("this origin may not call the API from a browser"));
    };
    let methods = match version.operations.as_deref().map(|ops| ops.lookup(&wanted, rest)) {
        None | Some(OperationMatch::Found(_)) => wanted,
        Some(OperationMatch::MethodNotAllowed(allow)) => allow,
        Some(OperationMatch::NotFound) => return Some(errors::not_found("no operation at this path")),
    };
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    if let Ok(v) = HeaderValue::from_str(&methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    match policy.filter(|c| !c.allow_headers.is_empty()) {
        Some(c) => {
            if let Ok(v) = HeaderValue::from_str(&c.allow_headers.join(", ")) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        }
        None => {
            if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
        }
    }
    let max_age = policy.map_or(600, |c| c.max_age_secs);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    Some(resp)
}
