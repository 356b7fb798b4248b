//! The request log: the calls the gateway metered, for support ("what happened to request
//! X?"). Platform admins see every call; others the calls of their organizations' apps and the
//! calls to their organizations' APIs. Never a credential or a body.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::parse_id;
use crate::state::AppState;
use portico_store::Page;
use portico_store::usage::{CallFilter, LoggedCall};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RequestQuery {
    /// Portico's id of the call (`X-Portico-Request-Id`), or the `X-Request-Id` the client sent.
    pub request_id: Option<String>,
    /// The calling consumer organization's id.
    pub consumer_org_id: Option<String>,
    /// The operation (`operationId` or `METHOD /template`).
    pub operation: Option<String>,
    /// The API's slug.
    pub api: Option<String>,
    pub app_id: Option<String>,
    /// An HTTP status, e.g. 429.
    pub status: Option<i64>,
    /// RFC 3339 time, inclusive.
    pub from: Option<String>,
    /// RFC 3339 time, inclusive.
    pub to: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestLogEntry {
    pub request_id: String,
    pub at: String,
    pub api: String,
    pub api_id: String,
    pub version_id: String,
    pub app_id: String,
    pub subscription_id: String,
    pub consumer_org_id: String,
    pub plan_id: String,
    pub operation: Option<String>,
    /// The `X-Request-Id` the client sent, if any.
    pub client_request_id: Option<String>,
    /// 0 for an orphaned call.
    pub status: i64,
    pub latency_ms: f64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// The gateway died before the call ended: reported, never billed.
    pub orphaned: bool,
}

impl From<LoggedCall> for RequestLogEntry {
    fn from(l: LoggedCall) -> Self {
        let c = l.call;
        RequestLogEntry {
            request_id: c.request_id.to_string(),
            at: portico_store::from_millis(c.at_millis)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            api: l.api_slug,
            api_id: c.api_id.to_string(),
            version_id: c.version_id.to_string(),
            app_id: c.app_id.to_string(),
            subscription_id: c.subscription_id.to_string(),
            consumer_org_id: c.consumer_org_id.to_string(),
            plan_id: c.plan_id.to_string(),
            operation: c.operation,
            client_request_id: c.client_request_id,
            status: c.status,
            latency_ms: c.latency_micros as f64 / 1000.0,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            orphaned: c.orphaned,
        }
    }
}

fn millis(s: &str, field: &str) -> Result<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| Error::Invalid(format!("{field}: `{s}` is not an RFC 3339 time like 2026-11-25T10:00:00Z")))
}

pub async fn list(state: &AppState, who: &Principal, q: RequestQuery) -> Result<(Vec<RequestLogEntry>, Page)> {
    let page = Page::new(q.limit, q.offset);
    let mut f = CallFilter { status: q.status, ..Default::default() };
    if let Some(id) = q.request_id.as_deref() {
        // Portico's id (a UUID) or the client's own X-Request-Id: either finds the call.
        let sane =
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if !sane {
            return Err(Error::Invalid(format!(
                "request_id: `{}` is neither a Portico request id (X-Portico-Request-Id) nor an X-Request-Id (1 to 128 letters, digits, `.`, `_` or `-`)",
                id.escape_default()
            )));
        }
        f.request_id = uuid::Uuid::parse_str(id).ok();
        f.client_request_id = Some(id.to_owned());
    }
    if let Some(org) = q.consumer_org_id.as_deref() {
        f.consumer_org_id = Some(parse_id(org, "consumer organization")?);
    }
    f.operation = q.operation.clone();
    if let Some(app) = q.app_id.as_deref() {
        f.app_id = Some(parse_id(app, "app")?);
    }
    if let Some(slug) = q.api.as_deref() {
        let mut c = state.store.conn().await?;
        // An unknown API simply matches nothing.
        f.api_id = Some(portico_store::catalog::api_by_slug(&mut c, slug).await?.map(|a| a.id).unwrap_or_default());
    }
    f.from_millis = q.from.as_deref().map(|s| millis(s, "from")).transpose()?;
    f.to_millis = q.to.as_deref().map(|s| millis(s, "to")).transpose()?;
    let orgs = who.org_ids();
    let visible = if who.is_admin() { None } else { Some(orgs.as_slice()) };
    let mut c = state.store.conn().await?;
    let rows = portico_store::usage::list_calls(&mut c, &f, visible, page).await?;
    Ok((rows.into_iter().map(RequestLogEntry::from).collect(), page))
}
