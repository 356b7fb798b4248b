//! `/subscriptions`: apps subscribed to plans, and their usage.

use crate::api::apps::RangeParams;
use crate::api::{Json, Path, Query, created};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::apps::{self as svc, CreateSubscription};
use crate::state::AppState;
use crate::views::{Paged, SubscriptionView, UsageReport};
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this app's subscriptions.
    pub app_id: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Your apps' subscriptions.
#[utoipa::path(get, path = "/subscriptions", tag = "subscriptions", params(ListParams), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Paged<SubscriptionView>), (status = 404, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(p): Query<ListParams>,
) -> Result<axum::Json<Paged<SubscriptionView>>> {
    let page = portico_store::Page::new(p.limit, p.offset);
    Ok(axum::Json(Paged::new(svc::list_subscriptions(&state, &who, p.app_id.as_deref(), page).await?, page)))
}

/// Subscribe an app to a plan of an API.
#[utoipa::path(post, path = "/subscriptions", tag = "subscriptions", request_body = CreateSubscription, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = SubscriptionView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(who): Auth,
    Json(req): Json<CreateSubscription>,
) -> Result<Response> {
    Ok(created(svc::subscribe(&state, &who, req).await?))
}

/// One subscription.
#[utoipa::path(get, path = "/subscriptions/{subscription_id}", tag = "subscriptions", params(("subscription_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = SubscriptionView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>> {
    Ok(axum::Json(svc::get_subscription(&state, &who, &id).await?))
}

/// Cancel a subscription: the gateway refuses its calls within a second.
#[utoipa::path(delete, path = "/subscriptions/{subscription_id}", tag = "subscriptions", params(("subscription_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = SubscriptionView), (status = 404, body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<SubscriptionView>> {
    Ok(axum::Json(svc::cancel_subscription(&state, &who, &id).await?))
}

/// Calls per day of one subscription.
#[utoipa::path(get, path = "/subscriptions/{subscription_id}/usage", tag = "subscriptions", params(("subscription_id" = String, Path), RangeParams),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = UsageReport), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn usage(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
    Query(r): Query<RangeParams>,
) -> Result<axum::Json<UsageReport>> {
    Ok(axum::Json(svc::subscription_usage(&state, &who, &id, r.from.as_deref(), r.to.as_deref()).await?))
}
