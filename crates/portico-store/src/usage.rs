//! Usage counted per subscription per UTC day. Batches are added in one transaction, so a
//! batch lands whole or not at all.

use crate::row::{get, parse};
use crate::{Conn, Result};
use portico_core::ids::SubscriptionId;

/// Counts for one subscription on one day (`YYYY-MM-DD`, UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyUsage {
    pub subscription_id: Option<SubscriptionId>,
    pub day: String,
    pub calls: i64,
    pub success: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub latency_micros_sum: i64,
    /// Calls cut off by a gateway's death: reported, never billed (not in `calls`).
    pub orphaned: i64,
}

/// Adds each row's counts to what is stored (an upsert per row), all in the caller's
/// transaction.
pub async fn add(c: &mut Conn, rows: &[(SubscriptionId, DailyUsage)]) -> Result<()> {
    for (sub, u) in rows {
        sqlx::query(
            "INSERT INTO usage_daily (subscription_id, day, calls, success, client_errors, server_errors, bytes_in, bytes_out, latency_micros_sum, orphaned) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (subscription_id, day) DO UPDATE SET \
             calls = usage_daily.calls + excluded.calls, success = usage_daily.success + excluded.success, \
             client_errors = usage_daily.client_errors + excluded.client_errors, \
             server_errors = usage_daily.server_errors + excluded.server_errors, \
             bytes_in = usage_daily.bytes_in + excluded.bytes_in, bytes_out = usage_daily.bytes_out + excluded.bytes_out, \
             latency_micros_sum = usage_daily.latency_micros_sum + excluded.latency_micros_sum, \
             orphaned = usage_daily.orphaned + excluded.orphaned",
        )
        .bind(sub.to_string())
        .bind(&u.day)
        .bind(u.calls)
        .bind(u.success)
        .bind(u.client_errors)
        .bind(u.server_errors)
        .bind(u.bytes_in)
        .bind(u.bytes_out)
        .bind(u.latency_micros_sum)
        .bind(u.orphaned)
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// Days of one subscription between `from` and `to` inclusive (`YYYY-MM-DD`), oldest first.
pub async fn daily(c: &mut Conn, sub: SubscriptionId, from: &str, to: &str) -> Result<Vec<DailyUsage>> {
    let rows = sqlx::query(
        "SELECT subscription_id, day, calls, success, client_errors, server_errors, bytes_in, bytes_out, latency_micros_sum, orphaned \
         FROM usage_daily WHERE subscription_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
    )
    .bind(sub.to_string())
    .bind(from)
    .bind(to)
    .fetch_all(c)
    .await?;
    let t = "usage_daily";
    rows.iter()
        .map(|r| {
            Ok(DailyUsage {
                subscription_id: Some(parse(r, t, "subscription_id")?),
                day: get(r, t, "day")?,
                calls: get(r, t, "calls")?,
                success: get(r, t, "success")?,
                client_errors: get(r, t, "client_errors")?,
                server_errors: get(r, t, "server_errors")?,
                bytes_in: get(r, t, "bytes_in")?,
                bytes_out: get(r, t, "bytes_out")?,
                latency_micros_sum: get(r, t, "latency_micros_sum")?,
                orphaned: get(r, t, "orphaned")?,
            })
        })
        .collect()
}

/// Calls of a subscription since `from_day` (inclusive): what its monthly quota has used.
pub async fn calls_since(c: &mut Conn, sub: SubscriptionId, from_day: &str) -> Result<i64> {
    let r = sqlx::query(
        "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS n FROM usage_daily WHERE subscription_id = $1 AND day >= $2",
    )
    .bind(sub.to_string())
    .bind(from_day)
    .fetch_one(c)
    .await?;
    // SUM is NUMERIC on PostgreSQL; the Any driver reads it through i64 only when cast.
    get(&r, t(), "n")
}

fn t() -> &'static str {
    "usage_daily"
}

/// One call as the gateway journaled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub request_id: uuid::Uuid,
    pub at_millis: i64,
    pub subscription_id: SubscriptionId,
    pub api_id: portico_core::ids::ApiId,
    pub version_id: portico_core::ids::VersionId,
    pub app_id: portico_core::ids::AppId,
    pub consumer_org_id: portico_core::ids::OrgId,
    pub plan_id: portico_core::ids::PlanId,
    pub operation: Option<String>,
    pub status: i64,
    pub latency_micros: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub orphaned: bool,
}

/// Inserts the call unless its request id is already stored; returns whether it was new.
/// Callers add a call to the aggregates only when it was new, in the same transaction: that is
/// what makes shipping idempotent.
pub async fn insert_call(c: &mut Conn, r: &CallRecord) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO usage_events (request_id, at, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id, operation, \
         status, latency_micros, bytes_in, bytes_out, orphaned) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(r.request_id.to_string())
    .bind(r.at_millis)
    .bind(r.subscription_id.to_string())
    .bind(r.api_id.to_string())
    .bind(r.version_id.to_string())
    .bind(r.app_id.to_string())
    .bind(r.consumer_org_id.to_string())
    .bind(r.plan_id.to_string())
    .bind(r.operation.clone())
    .bind(r.status)
    .bind(r.latency_micros)
    .bind(r.bytes_in)
    .bind(r.bytes_out)
    .bind(i64::from(r.orphaned))
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The stored calls of a subscription: (request id, orphaned), oldest first.
pub async fn calls_of_subscription(c: &mut Conn, sub: SubscriptionId) -> Result<Vec<(uuid::Uuid, bool)>> {
    let rows = sqlx::query("SELECT request_id, orphaned FROM usage_events WHERE subscription_id = $1 ORDER BY at")
        .bind(sub.to_string())
        .fetch_all(c)
        .await?;
    let t = "usage_events";
    rows.iter().map(|r| Ok((parse(r, t, "request_id")?, get::<i64>(r, t, "orphaned")? != 0))).collect()
}
