//! The audit log: append-only. There is deliberately no function here that updates or deletes
//! a row.

use crate::row::{get, parse, time};
use crate::{Conn, Page, Result, now_millis};
use portico_core::ids::{OrgId, UserId};
use sqlx::any::AnyRow;

/// One state-changing action.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: uuid::Uuid,
    pub at: time::OffsetDateTime,
    pub actor_user_id: Option<UserId>,
    /// The actor's e-mail, or `system`.
    pub actor: String,
    /// The organization that owns the object, when there is one.
    pub org_id: Option<OrgId>,
    /// e.g. `key.create`, `version.update`, `session.revoke`.
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub ip: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What a new entry says; the id and time are given on insert.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub actor_user_id: Option<UserId>,
    pub actor: String,
    pub org_id: Option<OrgId>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub ip: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

pub async fn append(c: &mut Conn, e: &NewEntry) -> Result<()> {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor_user_id, actor, org_id, action, object_type, object_id, ip, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id.to_string())
    .bind(now_millis())
    .bind(e.actor_user_id.map(|u| u.to_string()))
    .bind(&e.actor)
    .bind(e.org_id.map(|o| o.to_string()))
    .bind(&e.action)
    .bind(&e.object_type)
    .bind(e.object_id.as_deref())
    .bind(e.ip.as_deref())
    .bind(e.before.as_ref().map(|v| v.to_string()))
    .bind(e.after.as_ref().map(|v| v.to_string()))
    .execute(c)
    .await?;
    Ok(())
}

fn decode(r: &AnyRow) -> Result<Entry> {
    let t = "audit_log";
    let json = |col: &str| -> Result<Option<serde_json::Value>> {
        Ok(get::<Option<String>>(r, t, col)?.and_then(|s| serde_json::from_str(&s).ok()))
    };
    let opt_id = |col: &str| -> Result<Option<String>> { get::<Option<String>>(r, t, col) };
    Ok(Entry {
        id: parse(r, t, "id")?,
        at: time(r, t, "at")?,
        actor_user_id: opt_id("actor_user_id")?.and_then(|s| s.parse().ok()),
        actor: get(r, t, "actor")?,
        org_id: opt_id("org_id")?.and_then(|s| s.parse().ok()),
        action: get(r, t, "action")?,
        object_type: get(r, t, "object_type")?,
        object_id: opt_id("object_id")?,
        ip: opt_id("ip")?,
        before: json("before_json")?,
        after: json("after_json")?,
    })
}

/// Entries newest first; `orgs`: only entries of these organizations (`None`: all).
pub async fn list(c: &mut Conn, orgs: Option<&[OrgId]>, action_prefix: Option<&str>, page: Page) -> Result<Vec<Entry>> {
    let mut sql = String::from(
        "SELECT id, at, actor_user_id, actor, org_id, action, object_type, object_id, ip, before_json, after_json FROM audit_log WHERE 1 = 1",
    );
    let mut n = 0;
    if let Some(orgs) = orgs {
        if orgs.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = orgs
            .iter()
            .map(|_| {
                n += 1;
                format!("${n}")
            })
            .collect();
        sql.push_str(&format!(" AND org_id IN ({})", marks.join(", ")));
    }
    if action_prefix.is_some() {
        n += 1;
        // LOWER on both sides: LIKE is case-insensitive on SQLite, case-sensitive on PostgreSQL.
        sql.push_str(&format!(" AND LOWER(action) LIKE ${n} ESCAPE '\\'"));
    }
    sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT {} OFFSET {}", page.limit, page.offset));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for o in orgs.unwrap_or_default() {
        q = q.bind(o.to_string());
    }
    if let Some(p) = action_prefix {
        // Letters, digits, dots and underscores; `_` escaped so it is not a wildcard.
        let escaped: String = p
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .map(|c| if c == '_' { "\\_".to_owned() } else { c.to_string() })
            .collect();
        q = q.bind(format!("{escaped}%"));
    }
    q.fetch_all(c).await?.iter().map(decode).collect()
}
