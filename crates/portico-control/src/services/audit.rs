//! The audit log: who changed what, when, from where, with the object before and after. Entries
//! are appended in the same transaction as the change they describe, so a change that rolls
//! back leaves no entry and a committed change always has one.

use crate::auth::{ClientInfo, Principal};
use crate::error::{Error, Result};
use crate::state::AppState;
use portico_core::ids::OrgId;
use portico_store::audit::{self, NewEntry};
use portico_store::{Conn, Page, orgs};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What changed.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// e.g. `key.create`
    pub action: &'static str,
    pub object_type: &'static str,
    pub object_id: Option<String>,
    /// The organization the object belongs to.
    pub org: Option<OrgId>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl Change {
    pub fn new(action: &'static str, object_type: &'static str, object_id: impl ToString, org: Option<OrgId>) -> Self {
        Change { action, object_type, object_id: Some(object_id.to_string()), org, ..Default::default() }
    }
    pub fn before(mut self, v: impl Serialize) -> Self {
        self.before = serde_json::to_value(v).ok();
        self
    }
    pub fn after(mut self, v: impl Serialize) -> Self {
        self.after = serde_json::to_value(v).ok();
        self
    }
}

/// Records a change made by a signed-in person.
pub async fn record(c: &mut Conn, who: &Principal, ch: Change) -> Result<()> {
    record_as(c, Some(who), who.user.email.as_str(), &who.client, ch).await
}

/// Records a change by someone not (yet) signed in (sign-up, a failed sign-in) or the system.
pub async fn record_as(
    c: &mut Conn,
    who: Option<&Principal>,
    actor: &str,
    client: &ClientInfo,
    ch: Change,
) -> Result<()> {
    audit::append(
        c,
        &NewEntry {
            actor_user_id: who.map(|p| p.user.id),
            actor: actor.to_owned(),
            org_id: ch.org,
            action: ch.action.to_owned(),
            object_type: ch.object_type.to_owned(),
            object_id: ch.object_id,
            ip: client.ip.map(|i| i.to_string()),
            before: ch.before,
            after: ch.after,
        },
    )
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this organization's entries (its slug). Owners see their organizations' entries;
    /// platform admins see everything.
    pub org: Option<String>,
    /// Only actions starting with this, e.g. `key.` or `session.revoke`.
    pub action: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: String,
    pub at: String,
    /// The actor's e-mail (or the e-mail tried, for a failed sign-in).
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub org_id: Option<String>,
    pub ip: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

pub async fn list(state: &AppState, who: &Principal, q: AuditQuery) -> Result<Vec<AuditEntryView>> {
    let mut c = state.store.conn().await?;
    let owned: Vec<OrgId> = who.orgs_allowing(portico_core::model::Permission::ReadAudit);
    let scope: Option<Vec<OrgId>> = match &q.org {
        Some(slug) => {
            let org = orgs::by_slug(&mut c, slug)
                .await?
                .filter(|o| who.is_admin() || owned.contains(&o.id))
                .ok_or_else(|| Error::not_found(format_args!("organization `{slug}`")))?;
            Some(vec![org.id])
        }
        None if who.is_admin() => None,
        None if owned.is_empty() => {
            return Err(Error::Forbidden(
                "the audit log is for organization owners and platform admins; you own no organization".into(),
            ));
        }
        None => Some(owned),
    };
    let entries = audit::list(&mut c, scope.as_deref(), q.action.as_deref(), Page::new(q.limit, q.offset)).await?;
    let rfc3339 =
        |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    Ok(entries
        .into_iter()
        .map(|e| AuditEntryView {
            id: e.id.to_string(),
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            object_type: e.object_type,
            object_id: e.object_id,
            org_id: e.org_id.map(|o| o.to_string()),
            ip: e.ip,
            before: e.before,
            after: e.after,
        })
        .collect())
}
