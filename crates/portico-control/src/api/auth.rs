//! `/auth/*` and `/me`.

use crate::api::{Json, created};
use crate::auth::{Auth, SESSION_COOKIE, SESSION_TTL_SECS};
use crate::error::{Problem, Result};
use crate::services::accounts::{self, LoginRequest, SignupRequest};
use crate::state::AppState;
use crate::views::{MeView, SessionView};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

fn with_cookie(mut resp: Response, state: &AppState, token: &str, max_age: i64) -> Response {
    let secure = if state.config.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Create an account and its first organization, and sign in.
#[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = SessionView), (status = 400, body = Problem), (status = 409, body = Problem, description = "the e-mail already has an account")))]
pub async fn signup(State(state): State<AppState>, Json(req): Json<SignupRequest>) -> Result<Response> {
    let s = accounts::signup(&state, req).await?;
    let token = s.token.clone();
    Ok(with_cookie(created(s), &state, &token, SESSION_TTL_SECS))
}

/// Sign in: a session cookie for browsers and a bearer token for scripts.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = SessionView), (status = 401, body = Problem)))]
pub async fn login(State(state): State<AppState>, Json(req): Json<LoginRequest>) -> Result<Response> {
    let s = accounts::login(&state, req).await?;
    let token = s.token.clone();
    Ok(with_cookie(axum::Json(s).into_response(), &state, &token, SESSION_TTL_SECS))
}

/// End this session (or revoke this token).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 401, body = Problem)))]
pub async fn logout(State(state): State<AppState>, Auth(who): Auth) -> Result<Response> {
    accounts::logout(&state, &who).await?;
    Ok(with_cookie(StatusCode::NO_CONTENT.into_response(), &state, "", 0))
}

/// The signed-in user and their organizations.
#[utoipa::path(get, path = "/me", tag = "auth", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MeView), (status = 401, body = Problem)))]
pub async fn me(Auth(who): Auth) -> axum::Json<MeView> {
    axum::Json(accounts::me(&who))
}
