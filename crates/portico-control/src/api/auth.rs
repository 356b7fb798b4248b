//! `/auth/*`, `/me`, the caller's sessions and password, and `/audit`.

use crate::api::{Json, Path, Query, created};
use crate::auth::{self, Auth, ClientInfo, SESSION_TTL_SECS};
use crate::error::{Problem, Result};
use crate::services::accounts::{
    self, ChangePassword, LoginRequest, ResetConfirm, ResetRequest, SessionInfo, SignupRequest, TokenRequest,
};
use crate::services::audit::{self, AuditEntryView, AuditQuery};
use crate::state::AppState;
use crate::views::{MeView, SessionView};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

fn with_cookie(mut resp: Response, state: &AppState, req: &HeaderMap, token: &str, max_age: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&auth::session_set_cookie(state, req, token, max_age)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Create an account and its first organization, and sign in.
#[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = SessionView), (status = 400, body = Problem), (status = 409, body = Problem, description = "the e-mail already has an account")))]
pub async fn signup(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Json(req): Json<SignupRequest>,
) -> Result<Response> {
    let s = accounts::signup(&state, req, &client).await?;
    let token = s.token.clone();
    Ok(with_cookie(created(s), &state, &headers, &token, SESSION_TTL_SECS))
}

/// Sign in: a session cookie for browsers and a bearer token for scripts. Five failures for an
/// account (or thirty from one address) in 15 minutes answer 429 until the window ends.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = SessionView), (status = 401, body = Problem), (status = 429, body = Problem, description = "too many failed sign-ins; see Retry-After")))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Response> {
    let old = auth::session_cookie(&headers, !auth::secure_context(&state, &headers));
    let s = accounts::login(&state, req, &client, old.as_deref()).await?;
    let token = s.token.clone();
    Ok(with_cookie(axum::Json(s).into_response(), &state, &headers, &token, SESSION_TTL_SECS))
}

/// End this session (or revoke this token).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
pub async fn logout(State(state): State<AppState>, headers: HeaderMap, Auth(who): Auth) -> Result<Response> {
    accounts::logout(&state, &who).await?;
    Ok(with_cookie(StatusCode::NO_CONTENT.into_response(), &state, &headers, "", 0))
}

/// The signed-in user, their organizations and the session's CSRF token.
#[utoipa::path(get, path = "/me", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MeView), (status = 401, body = Problem)))]
pub async fn me(Auth(who): Auth) -> Response {
    let mut r = axum::Json(accounts::me(&who)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The caller's sessions and personal tokens that have not expired.
#[utoipa::path(get, path = "/me/sessions", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<SessionInfo>), (status = 401, body = Problem)))]
pub async fn sessions(State(state): State<AppState>, Auth(who): Auth) -> Result<axum::Json<Vec<SessionInfo>>> {
    Ok(axum::Json(accounts::sessions(&state, &who).await?))
}

/// End one of the caller's sessions (sign out another browser).
#[utoipa::path(delete, path = "/me/sessions/{session_id}", tag = "auth", security(("bearer" = []), ("session" = [])),
    params(("session_id" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_session(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    accounts::revoke_session(&state, &who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change the password: every session and token of the account ends; a new session is
/// returned (and set as the cookie).
#[utoipa::path(post, path = "/me/password", tag = "auth", security(("bearer" = []), ("session" = [])),
    request_body = ChangePassword,
    responses((status = 200, body = SessionView), (status = 400, body = Problem), (status = 403, body = Problem, description = "the current password is wrong")))]
pub async fn change_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    Auth(who): Auth,
    Json(req): Json<ChangePassword>,
) -> Result<Response> {
    let s = accounts::change_password(&state, &who, req).await?;
    let token = s.token.clone();
    Ok(with_cookie(axum::Json(s).into_response(), &state, &headers, &token, SESSION_TTL_SECS))
}

/// The audit log, newest first: platform admins see everything, organization owners their
/// organizations' entries.
#[utoipa::path(get, path = "/audit", tag = "auth", security(("bearer" = []), ("session" = [])),
    params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntryView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn audit_log(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Vec<AuditEntryView>>> {
    Ok(axum::Json(audit::list(&state, &who, q).await?))
}

/// Confirm an e-mail address with the token from the verification e-mail (single use).
#[utoipa::path(post, path = "/auth/verify-email", tag = "auth", request_body = TokenRequest,
    responses((status = 204), (status = 400, body = Problem, description = "invalid, used or expired token")))]
pub async fn verify_email(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(req): Json<TokenRequest>,
) -> Result<StatusCode> {
    accounts::verify_email(&state, req, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send the verification e-mail again.
#[utoipa::path(post, path = "/me/verify-email", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses((status = 202), (status = 409, body = Problem, description = "already verified")))]
pub async fn resend_verification(State(state): State<AppState>, Auth(who): Auth) -> Result<StatusCode> {
    accounts::resend_verification(&state, &who).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Ask for a password-reset link by e-mail. The answer is 202 whether or not the address has
/// an account.
#[utoipa::path(post, path = "/auth/password-reset", tag = "auth", request_body = ResetRequest,
    responses((status = 202), (status = 429, body = Problem)))]
pub async fn request_reset(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(req): Json<ResetRequest>,
) -> Result<StatusCode> {
    accounts::request_reset(&state, req, &client).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Set a new password with the token from the reset e-mail (single use); every session of the
/// account ends.
#[utoipa::path(post, path = "/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirm,
    responses((status = 204), (status = 400, body = Problem)))]
pub async fn confirm_reset(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(req): Json<ResetConfirm>,
) -> Result<StatusCode> {
    accounts::confirm_reset(&state, req, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The portal's single sign-on providers: a sign-in page shows a button per provider that
/// sends the browser to its `start_url`.
#[utoipa::path(get, path = "/auth/sso", tag = "auth",
    responses((status = 200, body = Vec<crate::services::sso::SsoProviderView>)))]
pub async fn sso_providers(State(state): State<AppState>) -> axum::Json<Vec<crate::services::sso::SsoProviderView>> {
    axum::Json(crate::services::sso::providers(&state))
}

/// `GET /auth/sso/{provider}`: off to the provider, with the sign-in's state in a cookie.
pub async fn sso_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(provider): Path<String>,
) -> Result<Response> {
    use crate::services::sso;
    let started = sso::start(&state, &provider).await?;
    let secure = auth::secure_context(&state, &headers);
    let location = HeaderValue::from_str(&started.authorize_url)
        .map_err(|_| crate::error::Error::Internal("the provider's authorization URL is not a header value".into()))?;
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, location);
    if let Ok(v) =
        HeaderValue::from_str(&sso::state_set_cookie(secure, &started.state, std::time::Duration::from_secs(600)))
    {
        h.append(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `GET /auth/sso/{provider}/callback`: the provider's answer. Signs in and hands the browser
/// to the portal with a page of its own (a same-site navigation, so that the `SameSite=Strict`
/// session cookie goes with it).
pub async fn sso_callback(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Path(provider): Path<String>,
    Query(cb): Query<crate::services::sso::Callback>,
) -> Result<Response> {
    use crate::services::sso;
    let secure = auth::secure_context(&state, &headers);
    let bound = cookie(&headers, sso::state_cookie_name(secure));
    let old = auth::session_cookie(&headers, !secure);
    let s = sso::finish(&state, &provider, cb, bound.as_deref(), &client, old.as_deref()).await?;
    let page = "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=/\">\
                <title>Signed in</title><p>Signed in. <a href=\"/\">Continue to the portal</a>.</p>";
    let mut r = with_cookie(axum::response::Html(page).into_response(), &state, &headers, &s.token, SESSION_TTL_SECS);
    if let Ok(v) = HeaderValue::from_str(&sso::state_set_cookie(secure, "", std::time::Duration::ZERO)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    // The URL carries the code and the state: never in a Referer.
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(r)
}

/// A cookie's value by name.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}
