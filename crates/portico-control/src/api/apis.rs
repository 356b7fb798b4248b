//! `/apis`: the catalog, versions and plans.

use crate::api::{Json, PageParams, Path, Query, created};
use crate::auth::{Auth, MaybeAuth};
use crate::error::{Problem, Result};
use crate::services::catalog::{self, CreateApi, CreatePlan, CreateVersion, UpdateApi, UpdatePlan, UpdateVersion};
use crate::state::AppState;
use crate::views::{ApiDetail, ApiView, Paged, PlanView, VersionView};
use axum::extract::State;
use axum::response::Response;

/// The catalog: public APIs that serve traffic, plus your own organization's.
#[utoipa::path(get, path = "/apis", tag = "catalog", params(PageParams), responses((status = 200, body = Paged<ApiView>)))]
pub async fn list(
    State(state): State<AppState>,
    MaybeAuth(who): MaybeAuth,
    Query(p): Query<PageParams>,
) -> Result<axum::Json<Paged<ApiView>>> {
    Ok(axum::Json(Paged::new(catalog::list_apis(&state, who.as_ref(), p.page()).await?, p.page())))
}

/// Publish a new API (provider members).
#[utoipa::path(post, path = "/apis", tag = "catalog", request_body = CreateApi, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = ApiView), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create(State(state): State<AppState>, Auth(who): Auth, Json(req): Json<CreateApi>) -> Result<Response> {
    Ok(created(catalog::create_api(&state, &who, req).await?))
}

/// One API with its versions and plans.
#[utoipa::path(get, path = "/apis/{slug}", tag = "catalog", params(("slug" = String, Path)),
    responses((status = 200, body = ApiDetail), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    MaybeAuth(who): MaybeAuth,
    Path(slug): Path<String>,
) -> Result<axum::Json<ApiDetail>> {
    Ok(axum::Json(catalog::get_api(&state, who.as_ref(), &slug).await?))
}

/// Change an API's description, category, tags or visibility.
#[utoipa::path(patch, path = "/apis/{slug}", tag = "catalog", params(("slug" = String, Path)), request_body = UpdateApi, security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ApiView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(slug): Path<String>,
    Json(req): Json<UpdateApi>,
) -> Result<axum::Json<ApiView>> {
    Ok(axum::Json(catalog::update_api(&state, &who, &slug, req).await?))
}

/// An API's versions, newest first.
#[utoipa::path(get, path = "/apis/{slug}/versions", tag = "catalog", params(("slug" = String, Path)),
    responses((status = 200, body = Vec<VersionView>), (status = 404, body = Problem)))]
pub async fn list_versions(
    State(state): State<AppState>,
    MaybeAuth(who): MaybeAuth,
    Path(slug): Path<String>,
) -> Result<axum::Json<Vec<VersionView>>> {
    Ok(axum::Json(catalog::list_versions(&state, who.as_ref(), &slug).await?))
}

/// Add a version with its upstream and OpenAPI document (validated).
#[utoipa::path(post, path = "/apis/{slug}/versions", tag = "catalog", params(("slug" = String, Path)), request_body = CreateVersion, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = VersionView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn create_version(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(slug): Path<String>,
    Json(req): Json<CreateVersion>,
) -> Result<Response> {
    Ok(created(catalog::create_version(&state, &who, &slug, req).await?))
}

/// One version.
#[utoipa::path(get, path = "/apis/{slug}/versions/{version}", tag = "catalog", params(("slug" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = VersionView), (status = 404, body = Problem)))]
pub async fn get_version(
    State(state): State<AppState>,
    MaybeAuth(who): MaybeAuth,
    Path((slug, version)): Path<(String, String)>,
) -> Result<axum::Json<VersionView>> {
    Ok(axum::Json(catalog::get_version(&state, who.as_ref(), &slug, &version).await?))
}

/// Publish, deprecate or retire a version, or change its upstream or document.
#[utoipa::path(patch, path = "/apis/{slug}/versions/{version}", tag = "catalog", params(("slug" = String, Path), ("version" = String, Path)), request_body = UpdateVersion,
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = VersionView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update_version(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((slug, version)): Path<(String, String)>,
    Json(req): Json<UpdateVersion>,
) -> Result<axum::Json<VersionView>> {
    Ok(axum::Json(catalog::update_version(&state, &who, &slug, &version, req).await?))
}

/// A version's OpenAPI document, as uploaded.
#[utoipa::path(get, path = "/apis/{slug}/versions/{version}/openapi.json", tag = "catalog", params(("slug" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem)))]
pub async fn openapi_document(
    State(state): State<AppState>,
    MaybeAuth(who): MaybeAuth,
    Path((slug, version)): Path<(String, String)>,
) -> Result<axum::Json<serde_json::Value>> {
    Ok(axum::Json(catalog::openapi_document(&state, who.as_ref(), &slug, &version).await?))
}

/// An API's plans.
#[utoipa::path(get, path = "/apis/{slug}/plans", tag = "catalog", params(("slug" = String, Path)),
    responses((status = 200, body = Vec<PlanView>), (status = 404, body = Problem)))]
pub async fn list_plans(
    State(state): State<AppState>,
    MaybeAuth(who): MaybeAuth,
    Path(slug): Path<String>,
) -> Result<axum::Json<Vec<PlanView>>> {
    Ok(axum::Json(catalog::list_plans(&state, who.as_ref(), &slug).await?))
}

/// Add a plan: its price, rate limit and monthly quota.
#[utoipa::path(post, path = "/apis/{slug}/plans", tag = "catalog", params(("slug" = String, Path)), request_body = CreatePlan, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = PlanView), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn create_plan(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(slug): Path<String>,
    Json(req): Json<CreatePlan>,
) -> Result<Response> {
    Ok(created(catalog::create_plan(&state, &who, &slug, req).await?))
}

/// Change a plan.
#[utoipa::path(patch, path = "/apis/{slug}/plans/{plan}", tag = "catalog", params(("slug" = String, Path), ("plan" = String, Path)), request_body = UpdatePlan,
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = PlanView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update_plan(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((slug, plan)): Path<(String, String)>,
    Json(req): Json<UpdatePlan>,
) -> Result<axum::Json<PlanView>> {
    Ok(axum::Json(catalog::update_plan(&state, &who, &slug, &plan, req).await?))
}

/// The API's alert rules (its provider's).
#[utoipa::path(get, path = "/apis/{slug}/alerts", tag = "catalog", params(("slug" = String, Path)),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Vec<crate::services::alerts::RuleView>), (status = 404, body = Problem)))]
pub async fn list_alerts(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(slug): Path<String>,
) -> Result<axum::Json<Vec<crate::services::alerts::RuleView>>> {
    Ok(axum::Json(crate::services::alerts::list_rules(&state, &who, &slug).await?))
}

/// Add an alert rule: `error_rate` (percent of 5xx) or `p95_latency` (ms) over a window; it
/// fires at most once per window, as an `alert.triggered` webhook and an e-mail to the owners.
#[utoipa::path(post, path = "/apis/{slug}/alerts", tag = "catalog", params(("slug" = String, Path)),
    request_body = crate::services::alerts::CreateRule, security(("bearer" = []), ("session" = [])),
    responses((status = 201, body = crate::services::alerts::RuleView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn create_alert(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(slug): Path<String>,
    Json(req): Json<crate::services::alerts::CreateRule>,
) -> Result<axum::response::Response> {
    Ok(crate::api::created(crate::services::alerts::create_rule(&state, &who, &slug, req).await?))
}

/// Remove an alert rule.
#[utoipa::path(delete, path = "/apis/{slug}/alerts/{rule_id}", tag = "catalog",
    params(("slug" = String, Path), ("rule_id" = String, Path)), security(("bearer" = []), ("session" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_alert(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((slug, id)): Path<(String, String)>,
) -> Result<axum::http::StatusCode> {
    crate::services::alerts::delete_rule(&state, &who, &slug, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
