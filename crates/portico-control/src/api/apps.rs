//! `/apps`: consumers' apps and their API keys.

use crate::api::{Json, PageParams, Path, Query, created};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::apps::{self as svc, CreateApp, CreateKey, UpdateApp};
use crate::state::AppState;
use crate::views::{AppView, CreatedKey, KeyView, Paged, UsageReport};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

/// Your organizations' apps.
#[utoipa::path(get, path = "/apps", tag = "apps", params(PageParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Paged<AppView>), (status = 401, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(p): Query<PageParams>,
) -> Result<axum::Json<Paged<AppView>>> {
    Ok(axum::Json(Paged::new(svc::list(&state, &who, p.page()).await?, p.page())))
}

/// Create an app in a consumer organization.
#[utoipa::path(post, path = "/apps", tag = "apps", request_body = CreateApp, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = AppView), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create(State(state): State<AppState>, Auth(who): Auth, Json(req): Json<CreateApp>) -> Result<Response> {
    Ok(created(svc::create(&state, &who, req).await?))
}

/// One app.
#[utoipa::path(get, path = "/apps/{app_id}", tag = "apps", params(("app_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = AppView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
) -> Result<axum::Json<AppView>> {
    Ok(axum::Json(svc::get(&state, &who, &app_id).await?))
}

/// Rename an app or change its description.
#[utoipa::path(patch, path = "/apps/{app_id}", tag = "apps", params(("app_id" = String, Path)), request_body = UpdateApp, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = AppView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
    Json(req): Json<UpdateApp>,
) -> Result<axum::Json<AppView>> {
    Ok(axum::Json(svc::update(&state, &who, &app_id, req).await?))
}

/// Delete an app with its keys and subscriptions.
#[utoipa::path(delete, path = "/apps/{app_id}", tag = "apps", params(("app_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(State(state): State<AppState>, Auth(who): Auth, Path(app_id): Path<String>) -> Result<StatusCode> {
    svc::delete(&state, &who, &app_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An app's keys (prefix and last 4 characters only).
#[utoipa::path(get, path = "/apps/{app_id}/keys", tag = "apps", params(("app_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<KeyView>), (status = 404, body = Problem)))]
pub async fn list_keys(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
) -> Result<axum::Json<Vec<KeyView>>> {
    Ok(axum::Json(svc::list_keys(&state, &who, &app_id).await?))
}

/// Issue an API key. The secret is in this answer only: store it now.
#[utoipa::path(post, path = "/apps/{app_id}/keys", tag = "apps", params(("app_id" = String, Path)), request_body = CreateKey, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = CreatedKey), (status = 404, body = Problem)))]
pub async fn create_key(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    // The body is optional: an empty one means a key named `default`.
    let req: CreateKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| crate::Error::Invalid(format!("the JSON body does not fit: {e}")))?
    };
    Ok(created(svc::create_key(&state, &who, &app_id, req).await?))
}

/// Revoke a key: the gateway refuses it within a second.
#[utoipa::path(delete, path = "/apps/{app_id}/keys/{key_id}", tag = "apps", params(("app_id" = String, Path), ("key_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((app_id, key_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    svc::revoke_key(&state, &who, &app_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days; default: the last 30).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RangeParams {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Calls per day of each of the app's subscriptions.
#[utoipa::path(get, path = "/apps/{app_id}/usage", tag = "apps", params(("app_id" = String, Path), RangeParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = UsageReport), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn usage(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(app_id): Path<String>,
    Query(r): Query<RangeParams>,
) -> Result<axum::Json<UsageReport>> {
    Ok(axum::Json(svc::app_usage(&state, &who, &app_id, r.from.as_deref(), r.to.as_deref()).await?))
}

/// Rotate a key: the answer holds a new key (shown once) with the same name and scopes; the old
/// one keeps working for `overlap_hours` (default 24), then stops.
#[utoipa::path(post, path = "/apps/{app_id}/keys/{key_id}/rotate", tag = "apps",
    params(("app_id" = String, Path), ("key_id" = String, Path)), request_body = svc::RotateKey,
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = CreatedKey), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((app_id, key_id)): Path<(String, String)>,
    Json(req): Json<svc::RotateKey>,
) -> Result<Response> {
    Ok(created(svc::rotate_key(&state, &who, &app_id, &key_id, req).await?))
}
