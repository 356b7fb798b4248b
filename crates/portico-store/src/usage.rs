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
    /// Billable units (0: Portico answered itself; never billed).
    pub units: i64,
    /// The `X-Request-Id` the client sent, if any.
    pub client_request_id: Option<String>,
    pub orphaned: bool,
}

/// Rows per statement of [`insert_calls`]: a few fixed sizes, so that the statements' texts
/// repeat and stay prepared in the connection's statement cache. (Statements of any length
/// were parsed again each round: for a 500-row `INSERT`, SQLite's parser took more
/// instructions per call than the rest of metering.)
const BATCHES: [usize; 4] = [128, 32, 8, 1];
const COLS: usize = 16;

/// The `INSERT` of `BATCHES[size]` calls, with anonymous (`?`, SQLite) or numbered
/// placeholders; made once per size and backend.
fn insert_calls_sql(anonymous: bool, size: usize) -> &'static str {
    use std::fmt::Write as _;
    static TEXTS: [[std::sync::OnceLock<String>; BATCHES.len()]; 2] =
        [const { [const { std::sync::OnceLock::new() }; BATCHES.len()] }; 2];
    let rows = BATCHES[size];
    TEXTS[usize::from(anonymous)][size].get_or_init(|| {
        let mut q = String::with_capacity(300 + rows * COLS * 6);
        q.push_str(
            "INSERT INTO usage_events (request_id, at, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id, operation, \
             status, latency_micros, bytes_in, bytes_out, orphaned, units, client_request_id) VALUES ",
        );
        for r in 0..rows {
            q.push_str(if r == 0 { "(" } else { ", (" });
            for k in 1..=COLS {
                if k > 1 {
                    q.push_str(", ");
                }
                if anonymous {
                    q.push('?');
                } else {
                    let _ = write!(q, "${}", r * COLS + k);
                }
            }
            q.push(')');
        }
        q.push_str(" ON CONFLICT (request_id) DO NOTHING");
        q
    })
}

/// Writes calls to the request log, in statements of the sizes in [`BATCHES`]; a request id
/// already there is skipped. Exactly-once counting does not rest on this table but on
/// [`set_journal_offset`].
///
/// On SQLite the placeholders are anonymous `?`: for numbered or named ones (`$7`, `?7`) each
/// bind looks its parameter's name up in a list as long as the statement's (sqlx asks SQLite for
/// every parameter's name), which made a 500-row statement cost 150 µs per row instead of 12
/// (`cargo bench -p portico-metering --bench ship`).
pub async fn insert_calls(c: &mut Conn, calls: &[CallRecord]) -> Result<()> {
    use sqlx::Arguments as _;
    let anonymous = c.backend_name() == "SQLite";
    let bind_err = |e: sqlx::error::BoxDynError| crate::Error::Database(sqlx::Error::Encode(e));
    const ID: usize = uuid::fmt::Hyphenated::LENGTH;
    // The statement's ids as text, written into one buffer and bound as slices of it: this runs
    // for every call shipped, and seven `String`s a row were seven allocations.
    let mut text = vec![0u8; BATCHES[0] * 7 * ID];
    let mut rest = calls;
    while !rest.is_empty() {
        // The largest size that fits (the last, one row, always does).
        let size = BATCHES.iter().position(|&b| b <= rest.len()).unwrap_or(BATCHES.len() - 1);
        let (chunk, tail) = rest.split_at(BATCHES[size]);
        rest = tail;
        let mut ids: Vec<&str> = Vec::with_capacity(chunk.len() * 7);
        for (r, slots) in chunk.iter().zip(text.chunks_exact_mut(7 * ID)) {
            let row = [
                r.request_id,
                r.subscription_id.as_uuid(),
                r.api_id.as_uuid(),
                r.version_id.as_uuid(),
                r.app_id.as_uuid(),
                r.consumer_org_id.as_uuid(),
                r.plan_id.as_uuid(),
            ];
            for (id, slot) in row.into_iter().zip(slots.chunks_exact_mut(ID)) {
                ids.push(id.hyphenated().encode_lower(slot));
            }
        }
        let mut args = sqlx::any::AnyArguments::default();
        args.reserve(chunk.len() * COLS, 0);
        for (r, id) in chunk.iter().zip(ids.chunks_exact(7)) {
            args.add(id[0]).map_err(bind_err)?;
            args.add(r.at_millis).map_err(bind_err)?;
            for &other in &id[1..] {
                args.add(other).map_err(bind_err)?;
            }
            args.add(r.operation.as_deref()).map_err(bind_err)?;
            args.add(r.status).map_err(bind_err)?;
            args.add(r.latency_micros).map_err(bind_err)?;
            args.add(r.bytes_in).map_err(bind_err)?;
            args.add(r.bytes_out).map_err(bind_err)?;
            args.add(i64::from(r.orphaned)).map_err(bind_err)?;
            args.add(r.units).map_err(bind_err)?;
            args.add(r.client_request_id.as_deref()).map_err(bind_err)?;
        }
        sqlx::query_with(sqlx::AssertSqlSafe(insert_calls_sql(anonymous, size)), args).execute(&mut *c).await?;
    }
    Ok(())
}

/// How far a journal segment has been shipped: `(offset, complete)`.
pub async fn journal_offset(c: &mut Conn, segment: &str) -> Result<Option<(u64, bool)>> {
    let row = sqlx::query("SELECT shipped_to, complete FROM journal_offsets WHERE segment = $1")
        .bind(segment)
        .fetch_optional(c)
        .await?;
    let t = "journal_offsets";
    row.map(|r| Ok((get::<i64>(&r, t, "shipped_to")?.max(0) as u64, get::<i64>(&r, t, "complete")? != 0))).transpose()
}

/// Records how far a segment has been shipped; call it in the transaction that added the
/// shipped calls to the rollups.
pub async fn set_journal_offset(c: &mut Conn, segment: &str, shipped_to: u64, complete: bool) -> Result<()> {
    sqlx::query(
        "INSERT INTO journal_offsets (segment, shipped_to, complete, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (segment) DO UPDATE SET shipped_to = excluded.shipped_to, complete = excluded.complete, updated_at = excluded.updated_at",
    )
    .bind(segment)
    .bind(i64::try_from(shipped_to).unwrap_or(i64::MAX))
    .bind(i64::from(complete))
    .bind(crate::now_millis())
    .execute(c)
    .await?;
    Ok(())
}

/// The stored calls of a subscription: (request id, orphaned), oldest first.
pub async fn calls_of_subscription(c: &mut Conn, sub: SubscriptionId) -> Result<Vec<(uuid::Uuid, bool)>> {
    let rows =
        sqlx::query("SELECT request_id, orphaned FROM usage_events WHERE subscription_id = $1 ORDER BY request_id")
            .bind(sub.to_string())
            .fetch_all(c)
            .await?;
    let t = "usage_events";
    rows.iter().map(|r| Ok((parse(r, t, "request_id")?, get::<i64>(r, t, "orphaned")? != 0))).collect()
}

/// Filters of the request log.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    /// Portico's id of the call.
    pub request_id: Option<uuid::Uuid>,
    /// The client's `X-Request-Id`; with `request_id` too, a call matching either.
    pub client_request_id: Option<String>,
    pub consumer_org_id: Option<portico_core::ids::OrgId>,
    pub operation: Option<String>,
    pub api_id: Option<portico_core::ids::ApiId>,
    pub app_id: Option<portico_core::ids::AppId>,
    pub status: Option<i64>,
    pub from_millis: Option<i64>,
    pub to_millis: Option<i64>,
}

/// A call in the request log, with its API's slug.
#[derive(Debug, Clone)]
pub struct LoggedCall {
    pub call: CallRecord,
    pub api_slug: String,
}

/// The request log, newest first. `visible_to`: only calls of apps of these organizations or
/// to APIs of these organizations (`None`: all, for platform admins).
pub async fn list_calls(
    c: &mut Conn,
    f: &CallFilter,
    visible_to: Option<&[portico_core::ids::OrgId]>,
    page: crate::Page,
) -> Result<Vec<LoggedCall>> {
    let mut clauses: Vec<String> = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    let mut ints: Vec<i64> = Vec::new();
    let next = |v: String, binds: &mut Vec<String>| {
        binds.push(v);
        format!("${}", binds.len() + 2)
    };
    match (f.request_id, &f.client_request_id) {
        (Some(id), Some(client)) => {
            let (a, b) = (next(id.to_string(), &mut binds), next(client.clone(), &mut binds));
            clauses.push(format!("(e.request_id = {a} OR e.client_request_id = {b})"));
        }
        (Some(id), None) => clauses.push(format!("e.request_id = {}", next(id.to_string(), &mut binds))),
        (None, Some(client)) => clauses.push(format!("e.client_request_id = {}", next(client.clone(), &mut binds))),
        (None, None) => {}
    }
    if let Some(o) = f.consumer_org_id {
        clauses.push(format!("e.consumer_org_id = {}", next(o.to_string(), &mut binds)));
    }
    if let Some(op) = &f.operation {
        clauses.push(format!("e.operation = {}", next(op.clone(), &mut binds)));
    }
    if let Some(a) = f.api_id {
        clauses.push(format!("e.api_id = {}", next(a.to_string(), &mut binds)));
    }
    if let Some(a) = f.app_id {
        clauses.push(format!("e.app_id = {}", next(a.to_string(), &mut binds)));
    }
    if let Some(orgs) = visible_to {
        if orgs.is_empty() {
            return Ok(vec![]);
        }
        let marks: Vec<String> = orgs.iter().map(|o| next(o.to_string(), &mut binds)).collect();
        let list = marks.join(", ");
        clauses.push(format!("(e.consumer_org_id IN ({list}) OR a.org_id IN ({list}))"));
    }
    // Integer filters are bound after the text ones.
    for (col, op, v) in [("e.status", "=", f.status), ("e.at", ">=", f.from_millis), ("e.at", "<=", f.to_millis)] {
        if let Some(v) = v {
            ints.push(v);
            clauses.push(format!("{col} {op} ${}", binds.len() + ints.len() + 2));
        }
    }
    let filter = if clauses.is_empty() { "1 = 1".to_owned() } else { clauses.join(" AND ") };
    let q = format!(
        "SELECT e.request_id, e.at, e.subscription_id, e.api_id, e.version_id, e.app_id, e.consumer_org_id, e.plan_id, e.operation, \
         e.status, e.latency_micros, e.bytes_in, e.bytes_out, e.orphaned, e.units, e.client_request_id, a.slug AS api_slug \
         FROM usage_events e LEFT JOIN apis a ON a.id = e.api_id WHERE {filter} ORDER BY e.request_id DESC LIMIT $1 OFFSET $2"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(page.limit).bind(page.offset);
    for b in &binds {
        query = query.bind(b.clone());
    }
    for v in &ints {
        query = query.bind(*v);
    }
    let rows = query.fetch_all(c).await?;
    let t = "usage_events";
    rows.iter()
        .map(|r| {
            Ok(LoggedCall {
                call: CallRecord {
                    request_id: parse(r, t, "request_id")?,
                    at_millis: get(r, t, "at")?,
                    subscription_id: parse(r, t, "subscription_id")?,
                    api_id: parse(r, t, "api_id")?,
                    version_id: parse(r, t, "version_id")?,
                    app_id: parse(r, t, "app_id")?,
                    consumer_org_id: parse(r, t, "consumer_org_id")?,
                    plan_id: parse(r, t, "plan_id")?,
                    operation: get(r, t, "operation")?,
                    status: get(r, t, "status")?,
                    latency_micros: get(r, t, "latency_micros")?,
                    bytes_in: get(r, t, "bytes_in")?,
                    bytes_out: get(r, t, "bytes_out")?,
                    units: get(r, t, "units")?,
                    client_request_id: get(r, t, "client_request_id")?,
                    orphaned: get::<i64>(r, t, "orphaned")? != 0,
                },
                api_slug: get::<Option<String>>(r, t, "api_slug")?.unwrap_or_default(),
            })
        })
        .collect()
}
