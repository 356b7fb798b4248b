//! `/orgs/{org_id}/webhooks`: an organization's webhook endpoints and their delivery log.

use crate::api::{Json, Path, created};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::webhooks::{self as svc, CreateEndpoint, CreatedEndpoint, DeliveryView, EndpointView};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

/// The organization's webhook endpoints (owners and admins).
#[utoipa::path(get, path = "/orgs/{org_id}/webhooks", tag = "orgs", params(("org_id" = String, Path)),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<EndpointView>), (status = 404, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(org): Path<String>,
) -> Result<axum::Json<Vec<EndpointView>>> {
    Ok(axum::Json(svc::list_endpoints(&state, &who, &org).await?))
}

/// Add an endpoint; its signing secret (`whsec_…`) is in this answer only.
#[utoipa::path(post, path = "/orgs/{org_id}/webhooks", tag = "orgs", params(("org_id" = String, Path)), request_body = CreateEndpoint,
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = CreatedEndpoint), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(org): Path<String>,
    Json(req): Json<CreateEndpoint>,
) -> Result<Response> {
    Ok(created(svc::create_endpoint(&state, &who, &org, req).await?))
}

/// Remove an endpoint (its pending deliveries are dropped).
#[utoipa::path(delete, path = "/orgs/{org_id}/webhooks/{webhook_id}", tag = "orgs",
    params(("org_id" = String, Path), ("webhook_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    svc::delete_endpoint(&state, &who, &org, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The endpoint's last 100 deliveries, newest first.
#[utoipa::path(get, path = "/orgs/{org_id}/webhooks/{webhook_id}/deliveries", tag = "orgs",
    params(("org_id" = String, Path), ("webhook_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<DeliveryView>), (status = 404, body = Problem)))]
pub async fn deliveries(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org, id)): Path<(String, String)>,
) -> Result<axum::Json<Vec<DeliveryView>>> {
    Ok(axum::Json(svc::deliveries(&state, &who, &org, &id).await?))
}

/// Send a `webhook.test` event to the endpoint.
#[utoipa::path(post, path = "/orgs/{org_id}/webhooks/{webhook_id}/test", tag = "orgs",
    params(("org_id" = String, Path), ("webhook_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 202, body = DeliveryView), (status = 404, body = Problem)))]
pub async fn test(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org, id)): Path<(String, String)>,
) -> Result<(StatusCode, axum::Json<DeliveryView>)> {
    Ok((StatusCode::ACCEPTED, axum::Json(svc::test(&state, &who, &org, &id).await?)))
}

/// Send a delivery again, now.
#[utoipa::path(post, path = "/orgs/{org_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/resend", tag = "orgs",
    params(("org_id" = String, Path), ("webhook_id" = String, Path), ("delivery_id" = String, Path)),
    security(("bearer" = []), ("session" = [])),
    responses((status = 202), (status = 404, body = Problem)))]
pub async fn resend(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((org, id, delivery)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    svc::resend(&state, &who, &org, &id, &delivery).await?;
    Ok(StatusCode::ACCEPTED)
}
