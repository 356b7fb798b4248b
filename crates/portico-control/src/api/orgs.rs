//! `/orgs`.

use crate::api::{Json, PageParams, Path, Query, created};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::members::{self, AcceptInvitation, ChangeRole, InvitationView, Invite, MemberView};
use crate::services::orgs::{self, CreateOrg};
use crate::state::AppState;
use crate::views::{OrgView, Paged};
use axum::extract::State;
use axum::http::StatusCode;
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

/// The organization's members and their roles (any member).
#[utoipa::path(get, path = "/orgs/{org_id}/members", tag = "orgs", params(("org_id" = String, Path), PageParams),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Paged<MemberView>), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn members(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(org_id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<axum::Json<Paged<MemberView>>> {
    Ok(axum::Json(Paged::new(members::list(&state, &who, &org_id, p.page()).await?, p.page())))
}

/// Change a member's role (owners and admins; only owners make or unmake owners; the last
/// owner stays an owner).
#[utoipa::path(patch, path = "/orgs/{org_id}/members/{user_id}", tag = "orgs",
    params(("org_id" = String, Path), ("user_id" = String, Path)), request_body = ChangeRole,
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MemberView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn change_role(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org_id, user_id)): Path<(String, String)>,
    Json(req): Json<ChangeRole>,
) -> Result<axum::Json<MemberView>> {
    Ok(axum::Json(members::change_role(&state, &who, &org_id, &user_id, req).await?))
}

/// Remove a member (owners and admins; only owners remove owners), or leave (yourself, any
/// member). The last owner cannot leave.
#[utoipa::path(delete, path = "/orgs/{org_id}/members/{user_id}", tag = "orgs",
    params(("org_id" = String, Path), ("user_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn remove_member(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org_id, user_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    members::remove(&state, &who, &org_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The organization's invitations, newest first, with their status (owners and admins).
#[utoipa::path(get, path = "/orgs/{org_id}/invitations", tag = "orgs", params(("org_id" = String, Path), PageParams),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Paged<InvitationView>), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn invitations(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(org_id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<axum::Json<Paged<InvitationView>>> {
    Ok(axum::Json(Paged::new(members::invitations(&state, &who, &org_id, p.page()).await?, p.page())))
}

/// Invite someone by e-mail with a role (owners and admins; only owners invite owners). The
/// link goes to the address only and works once, for 7 days; a new invitation to the same
/// address replaces the pending one.
#[utoipa::path(post, path = "/orgs/{org_id}/invitations", tag = "orgs", params(("org_id" = String, Path)),
    request_body = Invite, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = InvitationView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn invite(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(org_id): Path<String>,
    Json(req): Json<Invite>,
) -> Result<Response> {
    Ok(created(members::invite(&state, &who, &org_id, req).await?))
}

/// Revoke a pending invitation (owners and admins).
#[utoipa::path(delete, path = "/orgs/{org_id}/invitations/{invitation_id}", tag = "orgs",
    params(("org_id" = String, Path), ("invitation_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org_id, invitation_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    members::revoke(&state, &who, &org_id, &invitation_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation with the token from its e-mail: you join the organization with the
/// invitation's role. Sign in with the invited address first.
#[utoipa::path(post, path = "/invitations/accept", tag = "orgs", request_body = AcceptInvitation,
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = OrgView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    Auth(who): Auth,
    Json(req): Json<AcceptInvitation>,
) -> Result<axum::Json<OrgView>> {
    Ok(axum::Json(members::accept(&state, &who, req).await?))
}
