//! Organizations: providers, consumers and the platform.

use crate::row::{get, parse, time, with};
use crate::{Conn, Error, Page, Result, now_millis};
use portico_core::ids::{OrgId, UserId};
use portico_core::model::{MemberRole, OrgKind};
use portico_core::values::{Name, Slug};
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct Org {
    pub id: OrgId,
    pub slug: Slug,
    pub name: Name,
    pub kind: OrgKind,
    pub created_at: time::OffsetDateTime,
}

const T: &str = "organizations";
const COLS: &str = "id, slug, name, kind, created_at";

fn decode(r: &AnyRow) -> Result<Org> {
    Ok(Org {
        id: parse(r, T, "id")?,
        slug: with(r, T, "slug", Slug::parse)?,
        name: with(r, T, "name", Name::parse)?,
        kind: with(r, T, "kind", OrgKind::parse)?,
        created_at: time(r, T, "created_at")?,
    })
}

pub async fn insert(c: &mut Conn, slug: &Slug, name: &Name, kind: OrgKind) -> Result<Org> {
    let org = Org {
        id: OrgId::new(),
        slug: slug.clone(),
        name: name.clone(),
        kind,
        created_at: crate::from_millis(now_millis()),
    };
    sqlx::query("INSERT INTO organizations (id, slug, name, kind, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(org.id.to_string())
        .bind(slug.as_str())
        .bind(name.as_str())
        .bind(kind.as_str())
        .bind(now_millis())
        .execute(c)
        .await
        .map_err(Error::unique(format!("an organization with slug `{slug}`")))?;
    Ok(org)
}

pub async fn rename(c: &mut Conn, id: OrgId, name: &Name) -> Result<()> {
    sqlx::query("UPDATE organizations SET name = $1 WHERE id = $2")
        .bind(name.as_str())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn by_id(c: &mut Conn, id: OrgId) -> Result<Option<Org>> {
    let q = format!("SELECT {COLS} FROM organizations WHERE id = $1");
    sqlx::query(sqlx::AssertSqlSafe(q)).bind(id.to_string()).fetch_optional(c).await?.as_ref().map(decode).transpose()
}

pub async fn by_slug(c: &mut Conn, slug: &str) -> Result<Option<Org>> {
    let q = format!("SELECT {COLS} FROM organizations WHERE slug = $1");
    sqlx::query(sqlx::AssertSqlSafe(q)).bind(slug).fetch_optional(c).await?.as_ref().map(decode).transpose()
}

pub async fn list(c: &mut Conn, kind: Option<OrgKind>, page: Page) -> Result<Vec<Org>> {
    let q = format!("SELECT {COLS} FROM organizations WHERE ($1 = '' OR kind = $1) ORDER BY slug LIMIT $2 OFFSET $3");
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(kind.map(|k| k.as_str()).unwrap_or(""))
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(c)
        .await?;
    rows.iter().map(decode).collect()
}

/// An organization together with the member's role in it.
#[derive(Debug, Clone)]
pub struct Membership {
    pub org: Org,
    pub role: MemberRole,
}

pub async fn add_member(c: &mut Conn, org: OrgId, user: UserId, role: MemberRole) -> Result<()> {
    sqlx::query("INSERT INTO memberships (user_id, org_id, role, created_at) VALUES ($1, $2, $3, $4)")
        .bind(user.to_string())
        .bind(org.to_string())
        .bind(role.as_str())
        .bind(now_millis())
        .execute(c)
        .await
        .map_err(Error::unique("that membership"))?;
    Ok(())
}

pub async fn memberships(c: &mut Conn, user: UserId) -> Result<Vec<Membership>> {
    let rows = sqlx::query(
        "SELECT o.id, o.slug, o.name, o.kind, o.created_at, m.role FROM memberships m \
         JOIN organizations o ON o.id = m.org_id WHERE m.user_id = $1 ORDER BY o.slug",
    )
    .bind(user.to_string())
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| Ok(Membership { org: decode(r)?, role: with(r, "memberships", "role", MemberRole::parse)? }))
        .collect()
}

/// How many users are members of `org`.
pub async fn member_count(c: &mut Conn, org: OrgId) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM memberships WHERE org_id = $1")
        .bind(org.to_string())
        .fetch_one(c)
        .await?;
    get(&r, "memberships", "n")
}

/// E-mail addresses of an organization's members with `role` (for notices).
pub async fn member_emails(c: &mut Conn, org: OrgId, role: MemberRole) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.role = $2 ORDER BY u.email",
    )
    .bind(org.to_string())
    .bind(role.as_str())
    .fetch_all(c)
    .await?;
    rows.iter().map(|r| crate::row::get(r, "users", "email")).collect()
}

/// A member of an organization, with the person's address and name.
#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: MemberRole,
    pub since: time::OffsetDateTime,
}

fn decode_member(r: &AnyRow) -> Result<Member> {
    Ok(Member {
        user_id: parse(r, "memberships", "user_id")?,
        email: get(r, "users", "email")?,
        name: get(r, "users", "name")?,
        role: with(r, "memberships", "role", MemberRole::parse)?,
        since: time(r, "memberships", "created_at")?,
    })
}

const MEMBER_SQL: &str = "SELECT m.user_id, u.email, u.name, m.role, m.created_at FROM memberships m \
     JOIN users u ON u.id = m.user_id";

/// The members of `org`, by address.
pub async fn members(c: &mut Conn, org: OrgId, page: Page) -> Result<Vec<Member>> {
    let q = format!("{MEMBER_SQL} WHERE m.org_id = $1 ORDER BY u.email LIMIT $2 OFFSET $3");
    let rows = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(org.to_string())
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(c)
        .await?;
    rows.iter().map(decode_member).collect()
}

/// One member of `org`.
pub async fn member(c: &mut Conn, org: OrgId, user: UserId) -> Result<Option<Member>> {
    let q = format!("{MEMBER_SQL} WHERE m.org_id = $1 AND m.user_id = $2");
    sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(org.to_string())
        .bind(user.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_member)
        .transpose()
}

pub async fn set_member_role(c: &mut Conn, org: OrgId, user: UserId, role: MemberRole) -> Result<()> {
    sqlx::query("UPDATE memberships SET role = $1 WHERE org_id = $2 AND user_id = $3")
        .bind(role.as_str())
        .bind(org.to_string())
        .bind(user.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn remove_member(c: &mut Conn, org: OrgId, user: UserId) -> Result<()> {
    sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
        .bind(org.to_string())
        .bind(user.to_string())
        .execute(c)
        .await?;
    Ok(())
}

/// How many owners `org` has. Callers that remove or demote an owner lock the organization's
/// row first ([`lock`]) so that two concurrent changes cannot both leave it without one.
pub async fn owner_count(c: &mut Conn, org: OrgId) -> Result<i64> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM memberships WHERE org_id = $1 AND role = 'owner'")
        .bind(org.to_string())
        .fetch_one(c)
        .await?;
    get(&r, "memberships", "n")
}

/// Takes the organization's row lock for the rest of the transaction (PostgreSQL: the row;
/// SQLite: the write lock, which the update takes for the whole database).
pub async fn lock(c: &mut Conn, org: OrgId) -> Result<()> {
    sqlx::query("UPDATE organizations SET name = name WHERE id = $1").bind(org.to_string()).execute(c).await?;
    Ok(())
}
