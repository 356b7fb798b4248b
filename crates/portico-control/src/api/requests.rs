//! `/requests`: the request log.

use crate::api::Query;
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::requests::{self, RequestLogEntry, RequestQuery};
use crate::state::AppState;
use crate::views::Paged;
use axum::extract::State;

/// Metered calls, newest first: yours as a consumer (your apps' calls), as a provider (calls
/// to your APIs), or all of them as a platform admin.
#[utoipa::path(get, path = "/requests", tag = "subscriptions", params(RequestQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Paged<RequestLogEntry>), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(q): Query<RequestQuery>,
) -> Result<axum::Json<Paged<RequestLogEntry>>> {
    let (rows, page) = requests::list(&state, &who, q).await?;
    Ok(axum::Json(Paged::new(rows, page)))
}
