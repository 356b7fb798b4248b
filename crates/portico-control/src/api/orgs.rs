//! `/orgs`.

use crate::api::{Json, PageParams, Path, Query, created};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::orgs::{self, CreateOrg};
use crate::state::AppState;
use crate::views::{OrgView, Paged};
use axum::extract::State;
use axum::response::Response;

/// Organizations you belong to (all of them, for platform admins).
#[utoipa::path(get, path = "/orgs", tag = "orgs", params(PageParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Paged<OrgView>), (status = 401, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(p): Query<PageParams>,
) -> Result<axum::Json<Paged<OrgView>>> {
    Ok(axum::Json(Paged::new(orgs::list(&state, &who, p.page()).await?, p.page())))
}

/// Create a provider or consumer organization; you become its owner.
#[utoipa::path(post, path = "/orgs", tag = "orgs", request_body = CreateOrg, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = OrgView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create(State(state): State<AppState>, Auth(who): Auth, Json(req): Json<CreateOrg>) -> Result<Response> {
    Ok(created(orgs::create(&state, &who, req).await?))
}

/// One organization you belong to.
#[utoipa::path(get, path = "/orgs/{org_id}", tag = "orgs", params(("org_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = OrgView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(org_id): Path<String>,
) -> Result<axum::Json<OrgView>> {
    Ok(axum::Json(orgs::get(&state, &who, &org_id).await?))
}
