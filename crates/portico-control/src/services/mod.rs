//! The use cases. The REST API and the portal call these; business rules live here and in
//! `portico-core`, never in handlers or templates. Every function that changes several rows
//! does it in one transaction, bumps the config generation in it, and republishes the
//! gateway's snapshot after the commit.

pub mod accounts;
pub mod alerts;
pub mod analytics;
pub mod apps;
pub mod audit;
pub mod catalog;
pub mod declarative;
pub mod mail;
pub mod members;
pub mod oauth;
pub mod orgs;
pub(crate) mod outbound;
pub mod requests;
pub mod secrets;
pub mod sso;
pub mod webhooks;

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::state::AppState;
use portico_store::catalog::Api;

/// Republishes the gateway's snapshot after a committed change. A failure leaves the previous
/// snapshot serving and is retried by the watcher, so it is logged, not returned.
pub(crate) async fn publish(state: &AppState) {
    if let Err(e) = state.snapshot.refresh(&state.store).await {
        tracing::error!(error = %e, "could not republish the config snapshot");
    }
}

/// Whether `who` may see `api` in the catalog: public APIs with a serving version are seen by
/// everyone; the rest only by the provider's members and platform admins.
pub(crate) async fn api_visible(state: &AppState, who: Option<&Principal>, api: &Api) -> Result<bool> {
    if who.is_some_and(|p| p.can_read(api.org_id)) {
        return Ok(true);
    }
    if api.fields.visibility != portico_core::model::Visibility::Public {
        return Ok(false);
    }
    let mut c = state.store.conn().await?;
    let versions = portico_store::catalog::versions(&mut c, api.id).await?;
    Ok(versions.iter().any(|v| v.state.serves_traffic()))
}

/// Loads an API by slug that `who` may see, or 404.
pub(crate) async fn visible_api(state: &AppState, who: Option<&Principal>, slug: &str) -> Result<Api> {
    let mut c = state.store.conn().await?;
    let api = portico_store::catalog::api_by_slug(&mut c, slug).await?;
    drop(c);
    match api {
        Some(a) if api_visible(state, who, &a).await? => Ok(a),
        _ => Err(Error::not_found(format_args!("API `{slug}`"))),
    }
}

/// Loads an API by slug that `who` may change, or 404 (never 403: do not reveal it exists).
pub(crate) async fn managed_api(state: &AppState, who: &Principal, slug: &str) -> Result<Api> {
    let mut c = state.store.conn().await?;
    match portico_store::catalog::api_by_slug(&mut c, slug).await? {
        Some(a) if who.can_manage(a.org_id) => Ok(a),
        Some(a) if who.can_read(a.org_id) => {
            Err(Error::Forbidden(format!("your role in the organization that owns `{}` cannot change it", a.slug)))
        }
        _ => Err(Error::not_found(format_args!("API `{slug}`"))),
    }
}

pub(crate) fn parse_id<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|_| Error::not_found(format_args!("{what} `{s}`")))
}
