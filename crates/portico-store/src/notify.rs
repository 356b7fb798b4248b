//! The outbound channel's tables: single-use e-mail tokens, webhook endpoints and their
//! deliveries, alert rules and the alerts already fired.

use crate::row::{get, opt_time, parse, time};
use crate::{Conn, Error, Result, now_millis};
use portico_core::ids::{ApiId, OrgId, UserId};
use sqlx::any::AnyRow;

// ---- e-mail tokens ----

/// Stores a token's hash for `purpose` (`verify_email`, `password_reset`).
pub async fn insert_email_token(c: &mut Conn, hash: &str, user: UserId, purpose: &str, ttl_ms: i64) -> Result<()> {
    let now = now_millis();
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(hash)
    .bind(user.to_string())
    .bind(purpose)
    .bind(now)
    .bind(now + ttl_ms)
    .execute(c)
    .await?;
    Ok(())
}

/// Uses a token once: the user it belongs to, if it exists, has this purpose, has not expired
/// and has not been used (it is marked used in the same statement).
pub async fn use_email_token(c: &mut Conn, hash: &str, purpose: &str) -> Result<Option<UserId>> {
    let now = now_millis();
    let r = sqlx::query(
        "UPDATE email_tokens SET used_at = $1 WHERE token_hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1 \
         RETURNING user_id",
    )
    .bind(now)
    .bind(hash)
    .bind(purpose)
    .fetch_optional(c)
    .await?;
    r.map(|r| parse(&r, "email_tokens", "user_id")).transpose()
}

/// Voids a user's unused tokens of a purpose (a new reset link voids the older ones).
pub async fn void_email_tokens(c: &mut Conn, user: UserId, purpose: &str) -> Result<()> {
    sqlx::query("UPDATE email_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL")
        .bind(now_millis())
        .bind(user.to_string())
        .bind(purpose)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn mark_email_verified(c: &mut Conn, user: UserId) -> Result<()> {
    sqlx::query("UPDATE users SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL")
        .bind(now_millis())
        .bind(user.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn email_verified_at(c: &mut Conn, user: UserId) -> Result<Option<time::OffsetDateTime>> {
    let r = sqlx::query("SELECT email_verified_at FROM users WHERE id = $1")
        .bind(user.to_string())
        .fetch_optional(c)
        .await?;
    match r {
        Some(r) => opt_time(&r, "users", "email_verified_at"),
        None => Err(Error::NotFound),
    }
}

// ---- webhooks ----

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: uuid::Uuid,
    pub org_id: OrgId,
    pub url: String,
    /// `whsec_` + base64 of the signing key.
    pub secret: String,
    /// Event types it wants (`*` for all).
    pub events: Vec<String>,
    pub created_at: time::OffsetDateTime,
    pub disabled_at: Option<time::OffsetDateTime>,
}

const ENDPOINT_COLS: &str = "id, org_id, url, secret, events, created_at, disabled_at";

fn decode_endpoint(r: &AnyRow) -> Result<Endpoint> {
    let t = "webhook_endpoints";
    Ok(Endpoint {
        id: parse(r, t, "id")?,
        org_id: parse(r, t, "org_id")?,
        url: get(r, t, "url")?,
        secret: get(r, t, "secret")?,
        events: serde_json::from_str(&get::<String>(r, t, "events")?).unwrap_or_default(),
        created_at: time(r, t, "created_at")?,
        disabled_at: opt_time(r, t, "disabled_at")?,
    })
}

pub async fn insert_endpoint(c: &mut Conn, org: OrgId, url: &str, secret: &str, events: &[String]) -> Result<Endpoint> {
    let id = uuid::Uuid::now_v7();
    let now = now_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints ({ENDPOINT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)"
    )))
    .bind(id.to_string())
    .bind(org.to_string())
    .bind(url)
    .bind(secret)
    .bind(serde_json::to_string(events).unwrap_or_else(|_| "[]".into()))
    .bind(now)
    .execute(c)
    .await?;
    Ok(Endpoint {
        id,
        org_id: org,
        url: url.into(),
        secret: secret.into(),
        events: events.to_vec(),
        created_at: crate::from_millis(now),
        disabled_at: None,
    })
}

pub async fn endpoints_of(c: &mut Conn, org: OrgId) -> Result<Vec<Endpoint>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE org_id = $1 AND disabled_at IS NULL ORDER BY created_at"
    )))
    .bind(org.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_endpoint).collect()
}

pub async fn endpoint(c: &mut Conn, id: uuid::Uuid) -> Result<Option<Endpoint>> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?;
    r.as_ref().map(decode_endpoint).transpose()
}

pub async fn disable_endpoint(c: &mut Conn, id: uuid::Uuid) -> Result<()> {
    sqlx::query("UPDATE webhook_endpoints SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL")
        .bind(now_millis())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Delivery {
    /// Also the `webhook-id` header: the same for every attempt, so receivers can dedupe.
    pub id: uuid::Uuid,
    pub endpoint_id: uuid::Uuid,
    pub event_type: String,
    pub payload: String,
    /// `pending`, `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: time::OffsetDateTime,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: time::OffsetDateTime,
    pub delivered_at: Option<time::OffsetDateTime>,
}

const DELIVERY_COLS: &str = "id, endpoint_id, event_type, payload, state, attempts, next_attempt_at, last_status, last_error, created_at, delivered_at";

fn decode_delivery(r: &AnyRow) -> Result<Delivery> {
    let t = "webhook_deliveries";
    Ok(Delivery {
        id: parse(r, t, "id")?,
        endpoint_id: parse(r, t, "endpoint_id")?,
        event_type: get(r, t, "event_type")?,
        payload: get(r, t, "payload")?,
        state: get(r, t, "state")?,
        attempts: get(r, t, "attempts")?,
        next_attempt_at: time(r, t, "next_attempt_at")?,
        last_status: get(r, t, "last_status")?,
        last_error: get(r, t, "last_error")?,
        created_at: time(r, t, "created_at")?,
        delivered_at: opt_time(r, t, "delivered_at")?,
    })
}

/// Queues one delivery (due now).
pub async fn enqueue(c: &mut Conn, endpoint: uuid::Uuid, event_type: &str, payload: &str) -> Result<uuid::Uuid> {
    let id = uuid::Uuid::now_v7();
    let now = now_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_deliveries ({DELIVERY_COLS}) VALUES ($1, $2, $3, $4, 'pending', 0, $5, NULL, NULL, $5, NULL)"
    )))
    .bind(id.to_string())
    .bind(endpoint.to_string())
    .bind(event_type)
    .bind(payload)
    .bind(now)
    .execute(c)
    .await?;
    Ok(id)
}

/// Pending deliveries that are due, oldest first.
pub async fn due(c: &mut Conn, limit: i64) -> Result<Vec<Delivery>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT {limit}"
    )))
    .bind(now_millis())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_delivery).collect()
}

/// Takes a due delivery for `lease_ms` (so that another process dispatching at the same time
/// skips it); false when someone else took it first.
pub async fn claim(c: &mut Conn, id: uuid::Uuid, seen_next: time::OffsetDateTime, lease_ms: i64) -> Result<bool> {
    let seen = (seen_next.unix_timestamp_nanos() / 1_000_000) as i64;
    let n = sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2 AND state = 'pending' AND next_attempt_at = $3",
    )
    .bind(now_millis() + lease_ms)
    .bind(id.to_string())
    .bind(seen)
    .execute(c)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records an attempt: delivered, retried at `next` (millis), or given up (`next` = None and not ok).
pub async fn record_attempt(
    c: &mut Conn,
    id: uuid::Uuid,
    ok: bool,
    status: Option<u16>,
    error: Option<&str>,
    next: Option<i64>,
) -> Result<()> {
    let now = now_millis();
    let state = if ok {
        "delivered"
    } else if next.is_some() {
        "pending"
    } else {
        "failed"
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, last_status = $3, last_error = $4, \
         delivered_at = $5 WHERE id = $6",
    )
    .bind(state)
    .bind(next.unwrap_or(now))
    .bind(status.map(i64::from))
    .bind(error)
    .bind(ok.then_some(now))
    .bind(id.to_string())
    .execute(c)
    .await?;
    Ok(())
}

/// Puts a delivery back in the queue, due now (a manual re-send).
pub async fn resend(c: &mut Conn, id: uuid::Uuid) -> Result<()> {
    sqlx::query("UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1 WHERE id = $2")
        .bind(now_millis())
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn deliveries_of(c: &mut Conn, endpoint: uuid::Uuid, limit: i64) -> Result<Vec<Delivery>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY created_at DESC LIMIT {limit}"
    )))
    .bind(endpoint.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_delivery).collect()
}

pub async fn delivery(c: &mut Conn, id: uuid::Uuid) -> Result<Option<Delivery>> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?;
    r.as_ref().map(decode_delivery).transpose()
}

// ---- alerts ----

#[derive(Debug, Clone)]
pub struct AlertRule {
    pub id: uuid::Uuid,
    pub api_id: ApiId,
    /// `error_rate` (threshold in percent) or `p95_latency` (threshold in ms).
    pub kind: String,
    pub threshold: i64,
    pub window_minutes: i64,
    pub created_at: time::OffsetDateTime,
}

fn decode_rule(r: &AnyRow) -> Result<AlertRule> {
    let t = "alert_rules";
    Ok(AlertRule {
        id: parse(r, t, "id")?,
        api_id: parse(r, t, "api_id")?,
        kind: get(r, t, "kind")?,
        threshold: get(r, t, "threshold")?,
        window_minutes: get(r, t, "window_minutes")?,
        created_at: time(r, t, "created_at")?,
    })
}

pub async fn insert_rule(
    c: &mut Conn,
    api: ApiId,
    kind: &str,
    threshold: i64,
    window_minutes: i64,
) -> Result<AlertRule> {
    let id = uuid::Uuid::now_v7();
    let now = now_millis();
    sqlx::query(
        "INSERT INTO alert_rules (id, api_id, kind, threshold, window_minutes, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.to_string())
    .bind(api.to_string())
    .bind(kind)
    .bind(threshold)
    .bind(window_minutes)
    .bind(now)
    .execute(c)
    .await?;
    Ok(AlertRule { id, api_id: api, kind: kind.into(), threshold, window_minutes, created_at: crate::from_millis(now) })
}

pub async fn rules(c: &mut Conn, api: Option<ApiId>) -> Result<Vec<AlertRule>> {
    let rows = match api {
        Some(a) => {
            sqlx::query("SELECT id, api_id, kind, threshold, window_minutes, created_at FROM alert_rules WHERE api_id = $1 ORDER BY created_at")
                .bind(a.to_string())
                .fetch_all(c)
                .await?
        }
        None => {
            sqlx::query("SELECT id, api_id, kind, threshold, window_minutes, created_at FROM alert_rules ORDER BY created_at")
                .fetch_all(c)
                .await?
        }
    };
    rows.iter().map(decode_rule).collect()
}

pub async fn delete_rule(c: &mut Conn, api: ApiId, id: uuid::Uuid) -> Result<bool> {
    Ok(sqlx::query("DELETE FROM alert_rules WHERE id = $1 AND api_id = $2")
        .bind(id.to_string())
        .bind(api.to_string())
        .execute(c)
        .await?
        .rows_affected()
        > 0)
}

/// Marks an alert as fired; false when it had fired already (so it is not sent twice).
pub async fn fire_once(c: &mut Conn, key: &str) -> Result<bool> {
    let n = sqlx::query(
        "INSERT INTO alerts_fired (alert_key, fired_at) VALUES ($1, $2) ON CONFLICT (alert_key) DO NOTHING",
    )
    .bind(key)
    .bind(now_millis())
    .execute(c)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Marks alert `key` fired at `now_ms` unless it last fired less than `quiet_ms` before; true
/// when it fired now. A rule that stays breached so fires at most once per `quiet_ms`, however
/// the evaluation rounds fall.
pub async fn fire_unless_fired_within(c: &mut Conn, key: &str, now_ms: i64, quiet_ms: i64) -> Result<bool> {
    let n = sqlx::query(
        "INSERT INTO alerts_fired (alert_key, fired_at) VALUES ($1, $2) \
         ON CONFLICT (alert_key) DO UPDATE SET fired_at = excluded.fired_at WHERE alerts_fired.fired_at <= $3",
    )
    .bind(key)
    .bind(now_ms)
    .bind(now_ms - quiet_ms)
    .execute(c)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Every endpoint's (id, stored secret), disabled ones too: what re-sealing walks.
pub async fn all_endpoint_secrets(c: &mut Conn) -> Result<Vec<(uuid::Uuid, String)>> {
    let rows = sqlx::query("SELECT id, secret FROM webhook_endpoints").fetch_all(c).await?;
    rows.iter().map(|r| Ok((parse(r, "webhook_endpoints", "id")?, get(r, "webhook_endpoints", "secret")?))).collect()
}

pub async fn set_endpoint_secret(c: &mut Conn, id: uuid::Uuid, secret: &str) -> Result<()> {
    sqlx::query("UPDATE webhook_endpoints SET secret = $1 WHERE id = $2")
        .bind(secret)
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}
