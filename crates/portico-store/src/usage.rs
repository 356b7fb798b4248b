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
}

/// Adds each row's counts to what is stored (an upsert per row), all in the caller's
/// transaction.
pub async fn add(c: &mut Conn, rows: &[(SubscriptionId, DailyUsage)]) -> Result<()> {
    for (sub, u) in rows {
        sqlx::query(
            "INSERT INTO usage_daily (subscription_id, day, calls, success, client_errors, server_errors, bytes_in, bytes_out, latency_micros_sum) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (subscription_id, day) DO UPDATE SET \
             calls = usage_daily.calls + excluded.calls, success = usage_daily.success + excluded.success, \
             client_errors = usage_daily.client_errors + excluded.client_errors, \
             server_errors = usage_daily.server_errors + excluded.server_errors, \
             bytes_in = usage_daily.bytes_in + excluded.bytes_in, bytes_out = usage_daily.bytes_out + excluded.bytes_out, \
             latency_micros_sum = usage_daily.latency_micros_sum + excluded.latency_micros_sum",
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
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

/// Days of one subscription between `from` and `to` inclusive (`YYYY-MM-DD`), oldest first.
pub async fn daily(c: &mut Conn, sub: SubscriptionId, from: &str, to: &str) -> Result<Vec<DailyUsage>> {
    let rows = sqlx::query(
        "SELECT subscription_id, day, calls, success, client_errors, server_errors, bytes_in, bytes_out, latency_micros_sum \
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
