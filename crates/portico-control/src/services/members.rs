//! An organization's people: members and their roles, and invitations to join.
//!
//! Who may do what is [`MemberRole::allows`]'s decision (asked through [`Principal::can`]):
//! owners and admins manage members and invitations; only owners make, demote or remove owners;
//! any member may leave; an organization always keeps at least one owner.

use crate::auth::{self, Principal};
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::services::{accounts, parse_id};
use crate::state::AppState;
use crate::views::{OrgView, ts};
use portico_core::ids::{InvitationId, OrgId, UserId};
use portico_core::model::{MemberRole, Permission};
use portico_core::values::Email;
use portico_store::invitations::{self, Invitation};
use portico_store::{Page, now_millis, orgs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An invitation link works for seven days.
const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: String,
    pub email: String,
    pub name: String,
    /// owner, admin, developer or billing
    pub role: String,
    /// When the person joined.
    pub since: String,
}

impl From<&orgs::Member> for MemberView {
    fn from(m: &orgs::Member) -> Self {
        MemberView {
            user_id: m.user_id.to_string(),
            email: m.email.clone(),
            name: m.name.clone(),
            role: m.role.to_string(),
            since: ts(m.since),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvitationView {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub role: String,
    /// pending, accepted, revoked or expired
    pub status: String,
    pub invited_by: Option<String>,
    pub created_at: String,
    pub expires_at: String,
}

impl From<&Invitation> for InvitationView {
    fn from(i: &Invitation) -> Self {
        InvitationView {
            id: i.id.to_string(),
            org_id: i.org_id.to_string(),
            email: i.email.clone(),
            role: i.role.to_string(),
            status: i.status(time::OffsetDateTime::now_utc()).to_owned(),
            invited_by: i.invited_by.map(|u| u.to_string()),
            created_at: ts(i.created_at),
            expires_at: ts(i.expires_at),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    /// owner, admin, developer or billing
    #[schema(value_type = String, example = "developer")]
    pub role: MemberRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    #[schema(value_type = String, example = "grace@example.com")]
    pub email: String,
    /// owner, admin, developer or billing
    #[schema(value_type = String, example = "developer")]
    pub role: MemberRole,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The token from the invitation e-mail's link.
    pub token: String,
}

/// The organization, when `who` may see it (anyone else: not found).
fn org_of(who: &Principal, id: &str) -> Result<OrgId> {
    let org: OrgId = parse_id(id, "organization")?;
    if !who.can_read(org) {
        return Err(Error::not_found(format_args!("organization `{org}`")));
    }
    Ok(org)
}

fn require(who: &Principal, org: OrgId, p: Permission, what: &str) -> Result<()> {
    if who.can(org, p) { Ok(()) } else { Err(Error::Forbidden(format!("only the organization's {what}"))) }
}

pub async fn list(state: &AppState, who: &Principal, org: &str, page: Page) -> Result<Vec<MemberView>> {
    let org = org_of(who, org)?;
    let mut c = state.store.conn().await?;
    Ok(orgs::members(&mut c, org, page).await?.iter().map(MemberView::from).collect())
}

/// The member `user` of `org` (a person who is not one is not found).
async fn member(c: &mut portico_store::Conn, org: OrgId, user: &str) -> Result<orgs::Member> {
    let id: UserId = parse_id(user, "member")?;
    orgs::member(c, org, id).await?.ok_or_else(|| Error::not_found(format_args!("member `{id}`")))
}

/// Refuses a change that would leave `org` without an owner (the caller holds its lock).
async fn keep_an_owner(c: &mut portico_store::Conn, org: OrgId, target: &orgs::Member) -> Result<()> {
    if target.role == MemberRole::Owner && orgs::owner_count(c, org).await? <= 1 {
        return Err(Error::Conflict(
            "this is the organization's only owner; make another member an owner first".into(),
        ));
    }
    Ok(())
}

pub async fn change_role(
    state: &AppState,
    who: &Principal,
    org: &str,
    user: &str,
    req: ChangeRole,
) -> Result<MemberView> {
    let org = org_of(who, org)?;
    require(who, org, Permission::ManageMembers, "owners and admins change roles")?;
    let mut tx = state.store.begin().await?;
    orgs::lock(&mut tx, org).await?;
    let before = member(&mut tx, org, user).await?;
    if (before.role == MemberRole::Owner || req.role == MemberRole::Owner) && !who.can(org, Permission::ManageOwners) {
        return Err(Error::Forbidden("only owners make someone an owner or change an owner's role".into()));
    }
    if before.role == req.role {
        return Ok(MemberView::from(&before));
    }
    if req.role != MemberRole::Owner {
        keep_an_owner(&mut tx, org, &before).await?;
    }
    orgs::set_member_role(&mut tx, org, before.user_id, req.role).await?;
    let after = orgs::Member { role: req.role, ..before.clone() };
    let ch = Change::new("org.member.role", "membership", before.user_id, Some(org))
        .before(MemberView::from(&before))
        .after(MemberView::from(&after));
    audit::record(&mut tx, who, ch).await?;
    tx.commit().await?;
    Ok(MemberView::from(&after))
}

/// Removes a member; any member may remove themselves (leave).
pub async fn remove(state: &AppState, who: &Principal, org: &str, user: &str) -> Result<()> {
    let org = org_of(who, org)?;
    let leaving = user.trim() == who.user.id.to_string();
    if !leaving {
        require(who, org, Permission::ManageMembers, "owners and admins remove members")?;
    }
    let mut tx = state.store.begin().await?;
    orgs::lock(&mut tx, org).await?;
    let target = member(&mut tx, org, user).await?;
    if !leaving && target.role == MemberRole::Owner && !who.can(org, Permission::ManageOwners) {
        return Err(Error::Forbidden("only owners remove an owner".into()));
    }
    keep_an_owner(&mut tx, org, &target).await?;
    orgs::remove_member(&mut tx, org, target.user_id).await?;
    let action = if leaving { "org.member.leave" } else { "org.member.remove" };
    let ch = Change::new(action, "membership", target.user_id, Some(org)).before(MemberView::from(&target));
    audit::record(&mut tx, who, ch).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn invite(state: &AppState, who: &Principal, org: &str, req: Invite) -> Result<InvitationView> {
    let org = org_of(who, org)?;
    require(who, org, Permission::ManageMembers, "owners and admins invite people")?;
    if req.role == MemberRole::Owner && !who.can(org, Permission::ManageOwners) {
        return Err(Error::Forbidden("only owners invite an owner".into()));
    }
    let email = Email::parse(&req.email).map_err(|e| Error::Invalid(e.to_string()))?;
    let token = format!("pti_{}", &auth::new_token()[4..]);
    let mut tx = state.store.begin().await?;
    let o = orgs::by_id(&mut tx, org).await?.ok_or_else(|| Error::not_found(format_args!("organization `{org}`")))?;
    if let Some(u) = portico_store::users::by_email(&mut tx, &email).await?
        && orgs::member(&mut tx, org, u.id).await?.is_some()
    {
        return Err(Error::Conflict(format!("{email} is already a member of {}", o.name.as_str())));
    }
    let inv = invitations::insert(
        &mut tx,
        org,
        email.as_str(),
        req.role,
        &auth::token_hash(&token),
        who.user.id,
        INVITATION_TTL_MS,
    )
    .await?;
    let view = InvitationView::from(&inv);
    audit::record(&mut tx, who, Change::new("org.invitation.create", "invitation", inv.id, Some(org)).after(&view))
        .await?;
    tx.commit().await?;
    let body = format!(
        "Hello,\n\n{} ({}) invites you to join {} on Portico as {}.\n\nAccept within 7 days here (sign in or sign up with this address, {}):\n\n{}\n\nIf you do not know them, ignore this message: nothing happens.\n",
        who.user.name.as_str(),
        who.user.email.as_str(),
        o.name.as_str(),
        with_article(req.role),
        email.as_str(),
        accounts::link(state, "invitations", &token),
    );
    state.mailer.send(email.as_str(), &format!("Join {} on Portico", o.name.as_str()), body);
    Ok(view)
}

fn with_article(role: MemberRole) -> String {
    let r = role.as_str();
    if r.starts_with(['a', 'e', 'i', 'o', 'u']) { format!("an {r}") } else { format!("a {r}") }
}

pub async fn invitations(state: &AppState, who: &Principal, org: &str, page: Page) -> Result<Vec<InvitationView>> {
    let org = org_of(who, org)?;
    require(who, org, Permission::ManageMembers, "owners and admins see invitations")?;
    let mut c = state.store.conn().await?;
    Ok(invitations::list(&mut c, org, false, page).await?.iter().map(InvitationView::from).collect())
}

pub async fn revoke(state: &AppState, who: &Principal, org: &str, id: &str) -> Result<()> {
    let org = org_of(who, org)?;
    let id: InvitationId = parse_id(id, "invitation")?;
    require(who, org, Permission::ManageMembers, "owners and admins revoke invitations")?;
    let mut tx = state.store.begin().await?;
    let inv = invitations::by_id(&mut tx, org, id)
        .await?
        .ok_or_else(|| Error::not_found(format_args!("invitation `{id}`")))?;
    if !invitations::revoke(&mut tx, org, id).await? {
        return Err(Error::Conflict(format!(
            "the invitation is already {}",
            inv.status(time::OffsetDateTime::now_utc())
        )));
    }
    audit::record(
        &mut tx,
        who,
        Change::new("org.invitation.revoke", "invitation", id, Some(org)).before(InvitationView::from(&inv)),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Joins the invitation's organization with its role. The signed-in person's address must be
/// the one invited; the link also proves that address, so it counts as verified.
pub async fn accept(state: &AppState, who: &Principal, req: AcceptInvitation) -> Result<OrgView> {
    let invalid =
        || Error::Invalid("the invitation link is invalid, already used, revoked or expired; ask for a new one".into());
    let mut tx = state.store.begin().await?;
    let inv = invitations::by_token_hash(&mut tx, &auth::token_hash(req.token.trim())).await?.ok_or_else(invalid)?;
    if inv.status(time::OffsetDateTime::now_utc()) != "pending" {
        return Err(invalid());
    }
    if inv.email != who.user.email.as_str() {
        return Err(Error::Forbidden(format!(
            "this invitation was sent to {}; sign in with that address to accept it",
            inv.email
        )));
    }
    orgs::lock(&mut tx, inv.org_id).await?;
    if orgs::member(&mut tx, inv.org_id, who.user.id).await?.is_some() {
        return Err(Error::Conflict("you are already a member of this organization".into()));
    }
    if !invitations::accept(&mut tx, inv.id, who.user.id).await? {
        return Err(invalid());
    }
    orgs::add_member(&mut tx, inv.org_id, who.user.id, inv.role).await?;
    portico_store::notify::mark_email_verified(&mut tx, who.user.id).await?;
    let org = orgs::by_id(&mut tx, inv.org_id)
        .await?
        .ok_or_else(|| Error::not_found(format_args!("organization `{}`", inv.org_id)))?;
    let ch = Change::new("org.invitation.accept", "invitation", inv.id, Some(inv.org_id))
        .after(serde_json::json!({"user_id": who.user.id.to_string(), "role": inv.role.as_str(), "at": now_millis()}));
    audit::record(&mut tx, who, ch).await?;
    tx.commit().await?;
    Ok(OrgView::from(&org, Some(inv.role.to_string())))
}
