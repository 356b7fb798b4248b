//! Consumers' apps, their API keys (hashes only) and their subscriptions.

use crate::row::{get, opt_time, parse, time, with};
use crate::{Conn, Error, Page, Result, now_millis};
use portico_core::api_key::KeyHash;
use portico_core::ids::{ApiId, AppId, KeyId, OrgId, PlanId, SubscriptionId};
use portico_core::model::SubscriptionStatus;
use portico_core::values::{Name, Slug};
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct App {
    pub id: AppId,
    pub org_id: OrgId,
    pub slug: Slug,
    pub name: Name,
    pub description: String,
    pub created_at: time::OffsetDateTime,
}

const APP_COLS: &str = "id, org_id, slug, name, description, created_at";

fn decode_app(r: &AnyRow) -> Result<App> {
    let t = "apps";
    Ok(App {
        id: parse(r, t, "id")?,
        org_id: parse(r, t, "org_id")?,
        slug: with(r, t, "slug", Slug::parse)?,
        name: with(r, t, "name", Name::parse)?,
        description: get(r, t, "description")?,
        created_at: time(r, t, "created_at")?,
    })
}

pub async fn insert_app(c: &mut Conn, org: OrgId, slug: &Slug, name: &Name, description: &str) -> Result<App> {
    let id = AppId::new();
    let now = now_millis();
    sqlx::query("INSERT INTO apps (id, org_id, slug, name, description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)")
        .bind(id.to_string())
        .bind(org.to_string())
        .bind(slug.as_str())
        .bind(name.as_str())
        .bind(description)
        .bind(now)
        .execute(c)
        .await
        .map_err(Error::unique(format!("an app with slug `{slug}` in this organization")))?;
    Ok(App {
        id,
        org_id: org,
        slug: slug.clone(),
        name: name.clone(),
        description: description.into(),
        created_at: crate::from_millis(now),
    })
}

pub async fn update_app(c: &mut Conn, id: AppId, name: &Name, description: &str) -> Result<()> {
    sqlx::query("UPDATE apps SET name = $1, description = $2, updated_at = $3 WHERE id = $4")
        .bind(name.as_str())
        .bind(description)
        .bind(now_millis())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn app_by_id(c: &mut Conn, id: AppId) -> Result<Option<App>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {APP_COLS} FROM apps WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_app)
        .transpose()
}

pub async fn app_by_slug(c: &mut Conn, org: OrgId, slug: &str) -> Result<Option<App>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {APP_COLS} FROM apps WHERE org_id = $1 AND slug = $2")))
        .bind(org.to_string())
        .bind(slug)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_app)
        .transpose()
}

/// Apps of the given organizations (`None`: of all).
pub async fn list_apps(c: &mut Conn, orgs: Option<&[OrgId]>, page: Page) -> Result<Vec<App>> {
    let rows = match orgs {
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {APP_COLS} FROM apps ORDER BY created_at LIMIT $1 OFFSET $2"
            )))
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(c)
            .await?
        }
        Some(orgs) => {
            // The set is small (a user's memberships): one JSON-free IN list of placeholders.
            if orgs.is_empty() {
                return Ok(vec![]);
            }
            let marks: Vec<String> = (0..orgs.len()).map(|i| format!("${}", i + 3)).collect();
            let q = format!(
                "SELECT {APP_COLS} FROM apps WHERE org_id IN ({}) ORDER BY created_at LIMIT $1 OFFSET $2",
                marks.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(page.limit).bind(page.offset);
            for o in orgs {
                query = query.bind(o.to_string());
            }
            query.fetch_all(c).await?
        }
    };
    rows.iter().map(decode_app).collect()
}

pub async fn delete_app(c: &mut Conn, id: AppId) -> Result<()> {
    sqlx::query("DELETE FROM apps WHERE id = $1").bind(id.to_string()).execute(c).await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: KeyId,
    pub app_id: AppId,
    pub name: String,
    pub prefix: String,
    pub last4: String,
    pub hash: KeyHash,
    pub created_at: time::OffsetDateTime,
    pub revoked_at: Option<time::OffsetDateTime>,
    pub expires_at: Option<time::OffsetDateTime>,
    /// API slugs the key may call; empty: every API its app subscribes to.
    pub scopes: Vec<String>,
    pub last_used_at: Option<time::OffsetDateTime>,
}

const KEY_COLS: &str =
    "id, app_id, name, prefix, last4, key_hash, created_at, revoked_at, expires_at, scopes, last_used_at";

fn scopes_of(r: &AnyRow, t: &'static str) -> Result<Vec<String>> {
    Ok(get::<Option<String>>(r, t, "scopes")?.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default())
}

/// A key as it is created.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub app: AppId,
    pub name: &'a str,
    pub prefix: &'a str,
    pub last4: &'a str,
    pub hash: &'a KeyHash,
    pub expires_at: Option<i64>,
    pub scopes: &'a [String],
    /// The id of the pepper `hash` was made under.
    pub pepper_id: &'a str,
}

fn decode_key(r: &AnyRow) -> Result<KeyRecord> {
    let t = "api_keys";
    Ok(KeyRecord {
        id: parse(r, t, "id")?,
        app_id: parse(r, t, "app_id")?,
        name: get(r, t, "name")?,
        prefix: get(r, t, "prefix")?,
        last4: get(r, t, "last4")?,
        hash: with(r, t, "key_hash", KeyHash::from_hex)?,
        created_at: time(r, t, "created_at")?,
        revoked_at: opt_time(r, t, "revoked_at")?,
        expires_at: opt_time(r, t, "expires_at")?,
        scopes: scopes_of(r, t)?,
        last_used_at: opt_time(r, t, "last_used_at")?,
    })
}

pub async fn insert_key(c: &mut Conn, k: NewKey<'_>) -> Result<KeyRecord> {
    let id = KeyId::new();
    let now = now_millis();
    let scopes = (!k.scopes.is_empty()).then(|| serde_json::to_string(k.scopes).unwrap_or_else(|_| "[]".into()));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys ({KEY_COLS}, pepper_id) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9, NULL, $10)"
    )))
    .bind(id.to_string())
    .bind(k.app.to_string())
    .bind(k.name)
    .bind(k.prefix)
    .bind(k.last4)
    .bind(k.hash.to_hex())
    .bind(now)
    .bind(k.expires_at)
    .bind(scopes)
    .bind(k.pepper_id)
    .execute(c)
    .await
    .map_err(Error::unique("that key"))?;
    Ok(KeyRecord {
        id,
        app_id: k.app,
        name: k.name.into(),
        prefix: k.prefix.into(),
        last4: k.last4.into(),
        hash: *k.hash,
        created_at: crate::from_millis(now),
        revoked_at: None,
        expires_at: k.expires_at.map(crate::from_millis),
        scopes: k.scopes.to_vec(),
        last_used_at: None,
    })
}

/// Makes a key expire at `at` (millis) unless it expires sooner; `NotFound` when the app has
/// no such live key.
pub async fn expire_key(c: &mut Conn, app: AppId, key: KeyId, at: i64) -> Result<()> {
    let n = sqlx::query(
        "UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND app_id = $3 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)",
    )
    .bind(at)
    .bind(key.to_string())
    .bind(app.to_string())
    .execute(&mut *c)
    .await?
    .rows_affected();
    if n == 0 {
        let live = sqlx::query("SELECT id FROM api_keys WHERE id = $1 AND app_id = $2 AND revoked_at IS NULL")
            .bind(key.to_string())
            .bind(app.to_string())
            .fetch_optional(c)
            .await?;
        if live.is_none() {
            return Err(Error::NotFound);
        }
    }
    Ok(())
}

/// Writes keys' last-used times (millis), in one statement per key, in the caller's transaction.
pub async fn set_last_used(c: &mut Conn, used: &[(KeyId, i64)]) -> Result<()> {
    for (id, at) in used {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(*at)
        .bind(id.to_string())
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// Replaces keys' hashes made under a previous pepper by their hashes under the current one
/// (`(key, old hash, new hash)`), in the caller's transaction. A key whose hash changed
/// meanwhile (revoked and reissued, or re-hashed by another process) is left alone.
pub async fn rehash_keys(c: &mut Conn, rehashed: &[(KeyId, KeyHash, KeyHash)], pepper_id: &str) -> Result<u64> {
    let mut n = 0;
    for (id, old, new) in rehashed {
        n += sqlx::query("UPDATE api_keys SET key_hash = $1, pepper_id = $2 WHERE id = $3 AND key_hash = $4")
            .bind(new.to_hex())
            .bind(pepper_id)
            .bind(id.to_string())
            .bind(old.to_hex())
            .execute(&mut *c)
            .await?
            .rows_affected();
    }
    Ok(n)
}

/// Notes `pepper_id` on the keys and OAuth clients that predate pepper ids. Only right when
/// that pepper is the only one configured: then every usable hash was made under it.
pub async fn adopt_untracked_hashes(c: &mut Conn, pepper_id: &str) -> Result<()> {
    for table in ["api_keys", "oauth_clients"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE {table} SET pepper_id = $1 WHERE pepper_id IS NULL")))
            .bind(pepper_id)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// How many usable keys (not revoked, not expired) and OAuth clients have hashes made under a
/// pepper other than `pepper_id` (or under one not noted): they stop working if the previous
/// peppers are dropped.
pub async fn hashes_under_other_peppers(c: &mut Conn, pepper_id: &str) -> Result<i64> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
         AND (pepper_id IS NULL OR pepper_id <> $1)) \
         + (SELECT COUNT(*) FROM oauth_clients WHERE revoked_at IS NULL AND (pepper_id IS NULL OR pepper_id <> $1)) AS n",
    )
    .bind(pepper_id)
    .bind(now_millis())
    .fetch_one(c)
    .await?;
    get(&row, "oauth_clients", "n")
}

pub async fn keys(c: &mut Conn, app: AppId) -> Result<Vec<KeyRecord>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLS} FROM api_keys WHERE app_id = $1 ORDER BY created_at"
    )))
    .bind(app.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_key).collect()
}

/// Revokes a key of `app`; `NotFound` if the app has no such key.
pub async fn revoke_key(c: &mut Conn, app: AppId, key: KeyId) -> Result<()> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND app_id = $3")
        .bind(now_millis())
        .bind(key.to_string())
        .bind(app.to_string())
        .execute(c)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// A live key, joined with what the gateway needs to know about its app.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    pub id: KeyId,
    pub hash: KeyHash,
    pub app_id: AppId,
    pub org_id: OrgId,
    pub org_slug: Slug,
    /// Millis; the gateway refuses the key from then on.
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
}

pub async fn active_keys(c: &mut Conn) -> Result<Vec<ActiveKey>> {
    let rows = sqlx::query(
        "SELECT k.id, k.key_hash, k.app_id, a.org_id, o.slug, k.expires_at, k.scopes FROM api_keys k \
         JOIN apps a ON a.id = k.app_id JOIN organizations o ON o.id = a.org_id \
         WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $1)",
    )
    .bind(now_millis())
    .fetch_all(c)
    .await?;
    let t = "api_keys";
    rows.iter()
        .map(|r| {
            Ok(ActiveKey {
                id: parse(r, t, "id")?,
                hash: with(r, t, "key_hash", KeyHash::from_hex)?,
                app_id: parse(r, t, "app_id")?,
                org_id: parse(r, t, "org_id")?,
                org_slug: with(r, t, "slug", Slug::parse)?,
                expires_at: get(r, t, "expires_at")?,
                scopes: scopes_of(r, t)?,
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub app_id: AppId,
    pub api_id: ApiId,
    pub plan_id: PlanId,
    pub status: SubscriptionStatus,
    pub created_at: time::OffsetDateTime,
    pub cancelled_at: Option<time::OffsetDateTime>,
}

const SUB_COLS: &str = "id, app_id, api_id, plan_id, status, created_at, cancelled_at";

fn decode_sub(r: &AnyRow) -> Result<Subscription> {
    let t = "subscriptions";
    Ok(Subscription {
        id: parse(r, t, "id")?,
        app_id: parse(r, t, "app_id")?,
        api_id: parse(r, t, "api_id")?,
        plan_id: parse(r, t, "plan_id")?,
        status: with(r, t, "status", SubscriptionStatus::parse)?,
        created_at: time(r, t, "created_at")?,
        cancelled_at: opt_time(r, t, "cancelled_at")?,
    })
}

pub async fn insert_subscription(c: &mut Conn, app: AppId, api: ApiId, plan: PlanId) -> Result<Subscription> {
    let id = SubscriptionId::new();
    let now = now_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO subscriptions ({SUB_COLS}) VALUES ($1, $2, $3, $4, 'active', $5, NULL)"
    )))
    .bind(id.to_string())
    .bind(app.to_string())
    .bind(api.to_string())
    .bind(plan.to_string())
    .bind(now)
    .execute(c)
    .await
    .map_err(Error::unique("an active subscription of this app to this API (cancel it or change its plan)"))?;
    Ok(Subscription {
        id,
        app_id: app,
        api_id: api,
        plan_id: plan,
        status: SubscriptionStatus::Active,
        created_at: crate::from_millis(now),
        cancelled_at: None,
    })
}

pub async fn set_subscription_plan(c: &mut Conn, id: SubscriptionId, plan: PlanId) -> Result<()> {
    sqlx::query("UPDATE subscriptions SET plan_id = $1 WHERE id = $2")
        .bind(plan.to_string())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn cancel_subscription(c: &mut Conn, id: SubscriptionId) -> Result<()> {
    sqlx::query("UPDATE subscriptions SET status = 'cancelled', cancelled_at = $1 WHERE id = $2 AND status = 'active'")
        .bind(now_millis())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn subscription_by_id(c: &mut Conn, id: SubscriptionId) -> Result<Option<Subscription>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SUB_COLS} FROM subscriptions WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_sub)
        .transpose()
}

pub async fn subscriptions_of_app(c: &mut Conn, app: AppId) -> Result<Vec<Subscription>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUB_COLS} FROM subscriptions WHERE app_id = $1 ORDER BY created_at"
    )))
    .bind(app.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_sub).collect()
}

pub async fn subscriptions_of_api(c: &mut Conn, api: ApiId) -> Result<Vec<Subscription>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SUB_COLS} FROM subscriptions WHERE api_id = $1 ORDER BY created_at"
    )))
    .bind(api.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_sub).collect()
}

pub async fn active_subscriptions(c: &mut Conn) -> Result<Vec<Subscription>> {
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SUB_COLS} FROM subscriptions WHERE status = 'active'")))
            .fetch_all(c)
            .await?;
    rows.iter().map(decode_sub).collect()
}
