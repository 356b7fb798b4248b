//! Invitations to join an organization (see the `invitations` migration).

use crate::row::{get, opt_time, parse, time, with};
use crate::{Conn, Result, now_millis};
use portico_core::ids::{InvitationId, OrgId, UserId};
use portico_core::model::MemberRole;
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct Invitation {
    pub id: InvitationId,
    pub org_id: OrgId,
    pub email: String,
    pub role: MemberRole,
    pub invited_by: Option<UserId>,
    pub created_at: time::OffsetDateTime,
    pub expires_at: time::OffsetDateTime,
    pub accepted_at: Option<time::OffsetDateTime>,
    pub revoked_at: Option<time::OffsetDateTime>,
}

impl Invitation {
    /// `pending`, `accepted`, `revoked` or `expired`.
    pub fn status(&self, now: time::OffsetDateTime) -> &'static str {
        if self.accepted_at.is_some() {
            "accepted"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "pending"
        }
    }
}

const T: &str = "invitations";
const COLS: &str = "id, org_id, email, role, invited_by, created_at, expires_at, accepted_at, revoked_at";

fn decode(r: &AnyRow) -> Result<Invitation> {
    Ok(Invitation {
        id: parse(r, T, "id")?,
        org_id: parse(r, T, "org_id")?,
        email: get(r, T, "email")?,
        role: with(r, T, "role", MemberRole::parse)?,
        invited_by: get::<Option<String>>(r, T, "invited_by")?.and_then(|s| s.parse().ok()),
        created_at: time(r, T, "created_at")?,
        expires_at: time(r, T, "expires_at")?,
        accepted_at: opt_time(r, T, "accepted_at")?,
        revoked_at: opt_time(r, T, "revoked_at")?,
    })
}

/// A new pending invitation; any pending one for the same address and organization is revoked.
pub async fn insert(
    c: &mut Conn,
    org: OrgId,
    email: &str,
    role: MemberRole,
    token_hash: &str,
    invited_by: UserId,
    ttl_ms: i64,
) -> Result<Invitation> {
    let now = now_millis();
    sqlx::query(
        "UPDATE invitations SET revoked_at = $1 WHERE org_id = $2 AND email = $3 \
         AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(org.to_string())
    .bind(email)
    .execute(&mut *c)
    .await?;
    let id = InvitationId::new();
    sqlx::query(
        "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(org.to_string())
    .bind(email)
    .bind(role.as_str())
    .bind(token_hash)
    .bind(invited_by.to_string())
    .bind(now)
    .bind(now + ttl_ms)
    .execute(&mut *c)
    .await?;
    by_id(c, org, id).await?.ok_or_else(|| crate::Error::Corrupt {
        table: T,
        message: format!("invitation {id} vanished after its insert"),
    })
}

pub async fn by_id(c: &mut Conn, org: OrgId, id: InvitationId) -> Result<Option<Invitation>> {
    let q = format!("SELECT {COLS} FROM invitations WHERE id = $1 AND org_id = $2");
    sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(id.to_string())
        .bind(org.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// The invitation a token belongs to, whatever its state.
pub async fn by_token_hash(c: &mut Conn, hash: &str) -> Result<Option<Invitation>> {
    let q = format!("SELECT {COLS} FROM invitations WHERE token_hash = $1");
    sqlx::query(sqlx::AssertSqlSafe(q)).bind(hash).fetch_optional(c).await?.as_ref().map(decode).transpose()
}

/// The organization's invitations, newest first; `pending_only` hides accepted, revoked and
/// expired ones.
pub async fn list(c: &mut Conn, org: OrgId, pending_only: bool, page: crate::Page) -> Result<Vec<Invitation>> {
    let q = format!(
        "SELECT {COLS} FROM invitations WHERE org_id = $1 AND ($2 = 0 OR (accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(org.to_string())
        .bind(i64::from(pending_only))
        .bind(now_millis())
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(c)
        .await?;
    rows.iter().map(decode).collect()
}

/// Revokes a pending invitation; false when it was not pending.
pub async fn revoke(c: &mut Conn, org: OrgId, id: InvitationId) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE invitations SET revoked_at = $1 WHERE id = $2 AND org_id = $3 AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(now_millis())
    .bind(id.to_string())
    .bind(org.to_string())
    .execute(c)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks a pending, unexpired invitation accepted by `user` (once: the update is the check).
pub async fn accept(c: &mut Conn, id: InvitationId, user: UserId) -> Result<bool> {
    let now = now_millis();
    let r = sqlx::query(
        "UPDATE invitations SET accepted_at = $1, accepted_by = $2 WHERE id = $3 \
         AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(user.to_string())
    .bind(id.to_string())
    .execute(c)
    .await?;
    Ok(r.rows_affected() == 1)
}
