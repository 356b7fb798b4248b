//! Organizations: a user sees the ones they belong to; platform admins see all.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::parse_id;
use crate::state::AppState;
use crate::views::OrgView;
use portico_core::ids::OrgId;
use portico_core::model::{MemberRole, OrgKind};
use portico_core::values::{Name, Slug};
use portico_store::{Page, orgs};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    #[schema(value_type = String, example = "Acme Weather")]
    pub name: Name,
    /// Defaults to one made from the name.
    #[schema(value_type = Option<String>, example = "acme-weather")]
    pub slug: Option<Slug>,
    /// `provider` or `consumer`.
    #[schema(value_type = String, example = "provider")]
    pub kind: OrgKind,
}

pub async fn list(state: &AppState, who: &Principal, page: Page) -> Result<Vec<OrgView>> {
    if who.is_admin() {
        let mut c = state.store.conn().await?;
        let all = orgs::list(&mut c, None, page).await?;
        return Ok(all.iter().map(|o| OrgView::from(o, who.role_in(o.id).map(|r| r.to_string()))).collect());
    }
    Ok(who
        .memberships
        .iter()
        .skip(page.offset as usize)
        .take(page.limit as usize)
        .map(|m| OrgView::from(&m.org, Some(m.role.to_string())))
        .collect())
}

pub async fn create(state: &AppState, who: &Principal, req: CreateOrg) -> Result<OrgView> {
    if req.kind == OrgKind::Platform {
        return Err(Error::Invalid("kind must be `provider` or `consumer`".into()));
    }
    let mut tx = state.store.begin().await?;
    let slug = match req.slug {
        Some(s) if s.as_str() == super::accounts::PLATFORM_SLUG => {
            return Err(Error::Conflict(format!("the slug `{s}` is reserved; choose another")));
        }
        Some(s) => s,
        None => super::accounts::free_org_slug(&mut tx, &req.name).await?,
    };
    let org = orgs::insert(&mut tx, &slug, &req.name, req.kind).await?;
    orgs::add_member(&mut tx, org.id, who.user.id, MemberRole::Owner).await?;
    let view = OrgView::from(&org, Some(MemberRole::Owner.to_string()));
    let ch = crate::services::audit::Change::new("org.create", "organization", org.id, Some(org.id)).after(&view);
    crate::services::audit::record(&mut tx, who, ch).await?;
    tx.commit().await?;
    Ok(view)
}

pub async fn get(state: &AppState, who: &Principal, id: &str) -> Result<OrgView> {
    let id: OrgId = parse_id(id, "organization")?;
    if !who.can_read(id) {
        return Err(Error::not_found(format_args!("organization `{id}`")));
    }
    let mut c = state.store.conn().await?;
    let org = orgs::by_id(&mut c, id).await?.ok_or_else(|| Error::not_found(format_args!("organization `{id}`")))?;
    Ok(OrgView::from(&org, who.role_in(id).map(|r| r.to_string())))
}
