//! OAuth2: the token endpoint (`/oauth/token`), the JWKS and server metadata under
//! `/.well-known/`, and `/api/v1` routes for an app's clients, try-it tokens and key rotation.

use crate::api::{Json, Path, created};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::oauth::{
    self as svc, ClientView, CreateClient, CreateExternalClient, CreatedClient, ExternalClientView, OAuthError,
    TokenResponse,
};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::collections::HashMap;

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::json!({
            "type": format!("https://portico.dev/problems/oauth_{}", self.error),
            "title": "OAuth token request refused",
            "status": status.as_u16(),
            "detail": self.description,
            "code": self.error,
            "error": self.error,
            "error_description": self.description,
        });
        let mut r = (status, axum::Json(body)).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"portico\""));
        }
        no_store(r)
    }
}

fn oauth_error(status: u16, error: &'static str, d: impl Into<String>) -> OAuthError {
    OAuthError { status, error, description: d.into() }
}

/// `client_secret_basic`: `Authorization: Basic base64(id:secret)`.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// `POST /oauth/token`: the client-credentials grant (RFC 6749 §4.4), form-encoded, client
/// authenticated by HTTP Basic or `client_id` + `client_secret` in the body.
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: std::result::Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return oauth_error(413, "invalid_request", "the token request is larger than this server accepts")
                .into_response();
        }
        Err(_) => return oauth_error(400, "invalid_request", "the request body could not be read").into_response(),
    };
    let form_ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !form_ct {
        return oauth_error(
            400,
            "invalid_request",
            "send the token request as application/x-www-form-urlencoded (grant_type=client_credentials)",
        )
        .into_response();
    }
    let form: HashMap<String, String> = match serde_urlencoded_form(&body) {
        Some(f) => f,
        None => return oauth_error(400, "invalid_request", "the body is not a valid form").into_response(),
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                format!("grant_type `{}` is not supported; use client_credentials", other.escape_default()),
            )
            .into_response();
        }
        None => return oauth_error(400, "invalid_request", "grant_type is missing").into_response(),
    }
    let creds = basic(&headers).or_else(|| Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone())));
    let Some((id, secret)) = creds else {
        return oauth_error(
            401,
            "invalid_client",
            "authenticate the client with HTTP Basic or client_id + client_secret",
        )
        .into_response();
    };
    match svc::client_credentials(&state, &id, &secret, form.get("scope").map(String::as_str)).await {
        Ok(t) => no_store(axum::Json(t).into_response()),
        Err(e) => e.into_response(),
    }
}

fn serde_urlencoded_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let pairs: Vec<(String, String)> = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{}", std::str::from_utf8(body).ok()?).parse().ok()?,
    )
    .ok()?
    .0;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        // RFC 6749 §3.2: parameters must not be repeated.
        if out.insert(k, v).is_some() {
            return None;
        }
    }
    Some(out)
}

/// `GET /.well-known/jwks.json`
pub async fn jwks(State(state): State<AppState>) -> Result<Response> {
    let mut r = axum::Json(svc::jwks(&state).await?).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    Ok(r)
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414)
pub async fn metadata(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(svc::metadata(&state))
}

/// The app's OAuth clients (secrets are never shown again).
#[utoipa::path(get, path = "/apps/{app_id}/clients", tag = "apps", params(("app_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<ClientView>), (status = 404, body = Problem)))]
pub async fn list_clients(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
) -> Result<axum::Json<Vec<ClientView>>> {
    Ok(axum::Json(svc::list_clients(&state, &who, &app_id).await?))
}

/// A new OAuth client of the app (client credentials for `POST /oauth/token`). The secret is
/// in this answer only.
#[utoipa::path(post, path = "/apps/{app_id}/clients", tag = "apps", params(("app_id" = String, Path)), request_body = CreateClient,
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = CreatedClient), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn create_client(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
    Json(req): Json<CreateClient>,
) -> Result<Response> {
    Ok(no_store(created(svc::create_client(&state, &who, &app_id, req).await?)))
}

/// Revoke a client: the gateway refuses its tokens within a second.
#[utoipa::path(delete, path = "/apps/{app_id}/clients/{client_id}", tag = "apps",
    params(("app_id" = String, Path), ("client_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn revoke_client(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((app_id, client_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    svc::revoke_client(&state, &who, &app_id, &client_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The app's identities at external token issuers.
#[utoipa::path(get, path = "/apps/{app_id}/external-clients", tag = "apps", params(("app_id" = String, Path)),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<ExternalClientView>), (status = 404, body = Problem)))]
pub async fn list_external_clients(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
) -> Result<axum::Json<Vec<ExternalClientView>>> {
    Ok(axum::Json(svc::list_external_clients(&state, &who, &app_id).await?))
}

/// Tokens that an external issuer gave this client call as the app, on APIs whose policies
/// trust the issuer (`token_issuers`) and that the app subscribes to. One app per client.
#[utoipa::path(post, path = "/apps/{app_id}/external-clients", tag = "apps", params(("app_id" = String, Path)),
    request_body = CreateExternalClient, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = ExternalClientView), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn create_external_client(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
    Json(req): Json<CreateExternalClient>,
) -> Result<Response> {
    Ok(created(svc::create_external_client(&state, &who, &app_id, req).await?))
}

/// Stop accepting the issuer's tokens for this client (within a second).
#[utoipa::path(delete, path = "/apps/{app_id}/external-clients/{external_client_id}", tag = "apps",
    params(("app_id" = String, Path), ("external_client_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_external_client(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((app_id, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    svc::delete_external_client(&state, &who, &app_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A 5-minute access token for one of your apps (the portal's try-it uses it instead of a key).
#[utoipa::path(post, path = "/apps/{app_id}/token", tag = "apps", params(("app_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = TokenResponse), (status = 404, body = Problem)))]
pub async fn app_token(State(state): State<AppState>, Auth(who): Auth, Path(app_id): Path<String>) -> Result<Response> {
    Ok(no_store(axum::Json(svc::app_token(&state, &who, &app_id).await?).into_response()))
}

/// Rotate the access-token signing key (platform admins).
#[utoipa::path(post, path = "/admin/signing-keys/rotate", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = Problem)))]
pub async fn rotate_key(State(state): State<AppState>, Auth(who): Auth) -> Result<axum::Json<serde_json::Value>> {
    Ok(axum::Json(svc::rotate(&state, &who).await?))
}
