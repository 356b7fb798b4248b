//! `/admin/apply` and `/admin/export`: the declarative document (used by `portico apply`).

use crate::api::{Json, Query};
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::declarative::{self, ApplyReport};
use crate::state::AppState;
use axum::extract::State;
use portico_core::declarative::Document;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApplyParams {
    /// Report the changes without making them.
    #[serde(default)]
    pub dry_run: bool,
}

/// Make the marketplace match a declarative document (creates and updates; never deletes).
#[utoipa::path(post, path = "/admin/apply", tag = "admin", params(ApplyParams), request_body(content = Object, description = "The document: `providers` (with `apis`, `versions`, `plans`) and `consumers` (with `apps`, `subscriptions`)"),
    security(("bearer" = [])),
    responses((status = 200, body = ApplyReport), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn apply(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(p): Query<ApplyParams>,
    Json(doc): Json<Document>,
) -> Result<axum::Json<ApplyReport>> {
    Ok(axum::Json(declarative::apply(&state, &who, doc, p.dry_run).await?))
}

/// The marketplace as a declarative document.
#[utoipa::path(get, path = "/admin/export", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Object), (status = 403, body = Problem)))]
pub async fn export(State(state): State<AppState>, Auth(who): Auth) -> Result<axum::Json<Document>> {
    Ok(axum::Json(declarative::export(&state, &who).await?))
}
