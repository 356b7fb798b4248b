//! `portico-control` is Portico's control plane: the services (use cases) over the store, the
//! REST API `/api/v1` with its generated OpenAPI 3.1 document, and the snapshot compiler that
//! feeds the gateway. It is not the gateway (it never proxies a call) and not the portal's
//! templates (`portico-portal` renders pages over these same services).

pub mod api;
pub mod auth;
pub mod error;
pub mod routes;
pub mod services;
pub mod snapshot;
pub mod state;
pub mod throttle;
pub mod views;

pub use error::{Error, Result};
pub use state::{AppState, ControlConfig};

use axum::routing::on;
use serde_json::json;

/// The control plane's HTTP surface: `/api/v1/*`, the API reference at `/api/v1/docs`,
/// `/healthz`, `/readyz`, `/oauth/token` and `/.well-known/*` (mounted from the route table,
/// [`routes::ROUTES`]). The portal merges its pages beside it.
pub fn router(state: AppState) -> axum::Router {
    let swagger = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/api/v1/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/api/v1/openapi.json"),
        title: Some("Portico API reference"),
    });
    let limit = state.config.max_body_bytes;
    let root = routes::mount(axum::Router::new(), routes::Surface::Control, |row| {
        let m = row.method.filter();
        Some(match row.path {
            "/healthz" => on(m, || async { axum::Json(json!({"status": "ok"})) }),
            "/readyz" => on(m, readyz),
            "/oauth/token" => on(m, api::oauth::token),
            "/auth/sso/{provider}" => on(m, api::auth::sso_start),
            "/auth/sso/{provider}/callback" => on(m, api::auth::sso_callback),
            "/.well-known/jwks.json" => on(m, api::oauth::jwks),
            "/.well-known/oauth-authorization-server" => on(m, api::oauth::metadata),
            _ => return None,
        })
    });
    root.nest("/api/v1", api::router())
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
        .merge(swagger)
}

/// Security headers on every answer of the API and the portal (OWASP secure headers):
/// `nosniff`, no framing, a strict referrer policy, HSTS, and a Content-Security-Policy —
/// `default-src 'none'` for data, a same-origin policy for pages that did not set their own.
pub async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    let h = resp.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "same-origin");
    set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains");
    set(header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    set(
        header::CONTENT_SECURITY_POLICY,
        if html {
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
        } else {
            "default-src 'none'; frame-ancestors 'none'"
        },
    );
    resp
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.store.ping().await {
        axum::Json(json!({"status": "ready", "generation": state.snapshot.generation()})).into_response()
    } else {
        Error::Unavailable("the database does not answer".into()).into_response()
    }
}
