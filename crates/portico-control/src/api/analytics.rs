//! `/analytics/*`: time series and top-N of the caller's traffic.

use crate::api::Query;
use crate::auth::Auth;
use crate::error::{Problem, Result};
use crate::services::analytics::{self, AnalyticsQuery, TimeSeries, Top};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Calls, errors, bytes and latency percentiles over time, grouped and filtered; `format=csv`
/// for a spreadsheet.
#[utoipa::path(get, path = "/analytics/usage", tag = "analytics", params(AnalyticsQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = TimeSeries), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn usage(
    State(state): State<AppState>,
    Auth(who): Auth,
    Query(q): Query<AnalyticsQuery>,
) -> Result<Response> {
    let ts = analytics::time_series(&state, &who, &q).await?;
    Ok(match q.format.as_deref() {
        Some("csv") => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], analytics::to_csv(&ts)).into_response(),
        None | Some("json") => axum::Json(ts).into_response(),
        Some(other) => return Err(crate::Error::Invalid(format!("format: `{other}` is not json or csv"))),
    })
}

/// The busiest groups (operations by default) in a range; `format=csv` for a spreadsheet.
#[utoipa::path(get, path = "/analytics/top", tag = "analytics", params(AnalyticsQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = Top), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn top(State(state): State<AppState>, Auth(who): Auth, Query(q): Query<AnalyticsQuery>) -> Result<Response> {
    let top = analytics::top(&state, &who, &q).await?;
    Ok(match q.format.as_deref() {
        Some("csv") => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], analytics::top_csv(&top)).into_response(),
        None | Some("json") => axum::Json(top).into_response(),
        Some(other) => return Err(crate::Error::Invalid(format!("format: `{other}` is not json or csv"))),
    })
}
