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

/// Writes calls to the request log as pages ([`crate::request_log`]): one row per second ×
/// consumer organization × API, plus a row per distinct client `X-Request-Id` and second for the
/// calls that carried one. Exactly-once counting does not rest on this table but on
/// [`set_journal_offset`], written in the same transaction.
pub async fn insert_calls(c: &mut Conn, calls: &[&CallRecord]) -> Result<()> {
    for p in crate::request_log::pack(calls) {
        sqlx::query(
            "INSERT INTO request_log_pages (id, second, consumer_org_id, api_id, calls, body) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(p.second)
        .bind(p.consumer_org_id.to_string())
        .bind(p.api_id.to_string())
        .bind(p.calls as i64)
        .bind(p.body)
        .execute(&mut *c)
        .await?;
    }
    // The seconds each client id was seen in, once each, in statements of a few fixed sizes.
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<(&str, i64)> = calls
        .iter()
        .filter_map(|call| {
            let client = call.client_request_id.as_deref().filter(|s| !s.is_empty())?;
            Some((client, crate::request_log::second_of(call.at_millis)))
        })
        .filter(|k| seen.insert(*k))
        .collect();
    let anonymous = c.backend_name() == "SQLite";
    let mut rest = ids.as_slice();
    while !rest.is_empty() {
        let size = CLIENT_ID_ROWS.iter().position(|&n| n <= rest.len()).unwrap_or(CLIENT_ID_ROWS.len() - 1);
        let (chunk, tail) = rest.split_at(CLIENT_ID_ROWS[size]);
        rest = tail;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(client_ids_sql(anonymous, size)));
        for (client, second) in chunk {
            q = q.bind(*client).bind(*second);
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

/// Rows per statement of the client ids' `INSERT`: a few fixed sizes, so that each statement's
/// text is made once and stays prepared in the connection's cache.
const CLIENT_ID_ROWS: [usize; 3] = [64, 8, 1];

/// The client ids' `INSERT` of `CLIENT_ID_ROWS[size]` rows, with anonymous (`?`, SQLite: sqlx
/// looks numbered ones up by name, in time quadratic in their number) or numbered placeholders.
fn client_ids_sql(anonymous: bool, size: usize) -> &'static str {
    use std::fmt::Write as _;
    static TEXTS: [[std::sync::OnceLock<String>; CLIENT_ID_ROWS.len()]; 2] =
        [const { [const { std::sync::OnceLock::new() }; CLIENT_ID_ROWS.len()] }; 2];
    TEXTS[usize::from(anonymous)][size].get_or_init(|| {
        let mut q = String::from("INSERT INTO request_log_client_ids (client_request_id, second) VALUES ");
        for r in 0..CLIENT_ID_ROWS[size] {
            if r > 0 {
                q.push_str(", ");
            }
            if anonymous {
                q.push_str("(?, ?)");
            } else {
                let _ = write!(q, "(${}, ${})", 2 * r + 1, 2 * r + 2);
            }
        }
        q.push_str(" ON CONFLICT (client_request_id, second) DO NOTHING");
        q
    })
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

/// The stored calls of a subscription in the request log: (request id, orphaned), in id order.
pub async fn calls_of_subscription(c: &mut Conn, sub: SubscriptionId) -> Result<Vec<(uuid::Uuid, bool)>> {
    let rows =
        sqlx::query("SELECT consumer_org_id, api_id, body FROM request_log_pages ORDER BY second").fetch_all(c).await?;
    let mut out = Vec::new();
    for r in &rows {
        for call in unpack_row(r)? {
            if call.subscription_id == sub {
                out.push((call.request_id, call.orphaned));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// How many calls the request log holds.
pub async fn logged_calls(c: &mut Conn) -> Result<i64> {
    let r =
        sqlx::query("SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS n FROM request_log_pages").fetch_one(c).await?;
    get(&r, PAGES, "n")
}

const PAGES: &str = "request_log_pages";

fn unpack_row(r: &sqlx::any::AnyRow) -> Result<Vec<CallRecord>> {
    let (org, api) = (parse(r, PAGES, "consumer_org_id")?, parse(r, PAGES, "api_id")?);
    crate::request_log::unpack(&get::<String>(r, PAGES, "body")?, org, api)
        .ok_or_else(|| crate::Error::Corrupt { table: PAGES, message: "a page's body does not decode".into() })
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

/// Pages read per query while searching the request log (a page holds up to
/// [`crate::request_log::MAX_CALLS`] calls).
const PAGES_PER_READ: i64 = 32;
/// Searches by a client's `X-Request-Id` seen in more seconds than this read every page.
const MAX_SECONDS: usize = 512;

/// The request log, newest first. `visible_to`: only calls of apps of these organizations or
/// to APIs of these organizations (`None`: all, for platform admins).
///
/// Reads the pages of the seconds the filter allows, newest first, a few at a time, until the
/// page of results is full; consumer, API and visibility filters are applied to the pages in
/// SQL, the others to their calls.
pub async fn list_calls(
    c: &mut Conn,
    f: &CallFilter,
    visible_to: Option<&[portico_core::ids::OrgId]>,
    page: crate::Page,
) -> Result<Vec<LoggedCall>> {
    use crate::request_log::{SECOND, second_of, second_of_id};
    if visible_to.is_some_and(|orgs| orgs.is_empty()) {
        return Ok(vec![]);
    }
    let lowest = f.from_millis.map_or(i64::MIN, |t| second_of(t).saturating_sub(SECOND));
    let mut highest = f.to_millis.map_or(i64::MAX, |t| second_of(t).saturating_add(SECOND));
    // The seconds an id search can be in: a Portico id's own (the call started then, give or
    // take the clock's millisecond; Portico's ids are UUIDv7, so an id of another kind can only
    // be a client's) and those the client's id was seen in.
    let mut seconds: Option<std::collections::BTreeSet<i64>> = None;
    if f.request_id.is_some() || f.client_request_id.is_some() {
        let mut s = std::collections::BTreeSet::new();
        if let Some(at) = f.request_id.as_ref().and_then(second_of_id) {
            s.extend([at - SECOND, at, at + SECOND]);
        }
        let mut everywhere = false;
        if let Some(client) = &f.client_request_id {
            let rows = sqlx::query(
                "SELECT second FROM request_log_client_ids WHERE client_request_id = $1 AND second <= $2 AND second >= $3 \
                 ORDER BY second DESC LIMIT $4",
            )
            .bind(client)
            .bind(highest)
            .bind(lowest)
            .bind(MAX_SECONDS as i64 + 1)
            .fetch_all(&mut *c)
            .await?;
            // A client that sends the same id all the time: every page is read instead.
            everywhere = rows.len() > MAX_SECONDS;
            for r in &rows {
                s.insert(get::<i64>(r, "request_log_client_ids", "second")?);
            }
        }
        if s.is_empty() {
            return Ok(vec![]);
        }
        if !everywhere {
            seconds = Some(s);
        }
    }
    let mut texts: Vec<String> = Vec::new();
    let mut clauses: Vec<String> = vec!["p.second <= $1".into(), "p.second >= $2".into()];
    // $1 highest, $2 lowest, $3 the limit; texts from $4.
    let mark = |v: String, texts: &mut Vec<String>| {
        texts.push(v);
        format!("${}", texts.len() + 3)
    };
    if let Some(o) = f.consumer_org_id {
        clauses.push(format!("p.consumer_org_id = {}", mark(o.to_string(), &mut texts)));
    }
    if let Some(a) = f.api_id {
        clauses.push(format!("p.api_id = {}", mark(a.to_string(), &mut texts)));
    }
    if let Some(orgs) = visible_to {
        let marks: Vec<String> = orgs.iter().map(|o| mark(o.to_string(), &mut texts)).collect();
        let list = marks.join(", ");
        clauses.push(format!("(p.consumer_org_id IN ({list}) OR a.org_id IN ({list}))"));
    }
    if let Some(s) = &seconds {
        // Integers written into the text: they are ours, not the caller's.
        let list: Vec<String> = s.iter().map(i64::to_string).collect();
        clauses.push(format!("p.second IN ({})", list.join(", ")));
    }
    let q = format!(
        "SELECT p.second, p.consumer_org_id, p.api_id, p.body, a.slug AS api_slug \
         FROM request_log_pages p LEFT JOIN apis a ON a.id = p.api_id WHERE {} ORDER BY p.second DESC LIMIT $3",
        clauses.join(" AND ")
    );
    let keeps = |call: &CallRecord| {
        let by_id = match (&f.request_id, &f.client_request_id) {
            (None, None) => true,
            (id, client) => {
                id.is_some_and(|id| call.request_id == id)
                    || client.as_deref().is_some_and(|cl| call.client_request_id.as_deref() == Some(cl))
            }
        };
        by_id
            && f.app_id.is_none_or(|a| call.app_id == a)
            && f.operation.as_deref().is_none_or(|o| call.operation.as_deref() == Some(o))
            && f.status.is_none_or(|s| call.status == s)
            && f.from_millis.is_none_or(|t| call.at_millis >= t)
            && f.to_millis.is_none_or(|t| call.at_millis <= t)
    };
    // Calls before the page are counted off as they are found, never kept.
    let mut skip = usize::try_from(page.offset).unwrap_or(usize::MAX);
    let want = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut found: Vec<LoggedCall> = Vec::new();
    let mut more = true;
    while more && highest >= lowest && found.len() < want {
        let read = |hi: i64, lo: i64, limit: i64| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(q.clone())).bind(hi).bind(lo).bind(limit);
            for t in &texts {
                query = query.bind(t.clone());
            }
            query
        };
        let mut rows = read(highest, lowest, PAGES_PER_READ).fetch_all(&mut *c).await?;
        let full = rows.len() as i64 == PAGES_PER_READ;
        // Only whole seconds are searched per read, so that ordering within one holds.
        let last = rows.last().map(|r| get::<i64>(r, PAGES, "second")).transpose()?;
        let first = rows.first().map(|r| get::<i64>(r, PAGES, "second")).transpose()?;
        match (full, first, last) {
            (true, Some(first), Some(last)) if first == last => {
                // One second has more pages than a read: take all of it.
                rows = read(last, last, i64::MAX).fetch_all(&mut *c).await?;
                match last.checked_sub(1) {
                    Some(h) => highest = h,
                    None => more = false,
                }
            }
            (true, _, Some(last)) => {
                let mut kept = Vec::with_capacity(rows.len());
                for r in rows {
                    if get::<i64>(&r, PAGES, "second")? != last {
                        kept.push(r);
                    }
                }
                rows = kept;
                highest = last;
            }
            _ => more = false,
        }
        let mut batch = Vec::new();
        for r in &rows {
            let slug = get::<Option<String>>(r, PAGES, "api_slug")?.unwrap_or_default();
            for call in unpack_row(r)? {
                if keeps(&call) {
                    batch.push(LoggedCall { call, api_slug: slug.clone() });
                }
            }
        }
        batch.sort_by(|a, b| {
            (second_of(b.call.at_millis), b.call.request_id).cmp(&(second_of(a.call.at_millis), a.call.request_id))
        });
        let skipped = skip.min(batch.len());
        skip -= skipped;
        found.extend(batch.into_iter().skip(skipped).take(want - found.len()));
    }
    Ok(found)
}

/// Moves the request log's rows from before pages (`usage_events`, one row per call) into
/// pages, 4,096 calls per transaction; returns how many. Run by [`crate::Store::migrate`];
/// nothing to do once that table is empty.
pub(crate) async fn adopt_legacy_request_log(store: &crate::Store) -> Result<u64> {
    let t = "usage_events";
    let mut moved = 0;
    loop {
        let mut tx = store.begin().await?;
        let rows = sqlx::query(
            "SELECT request_id, at, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id, operation, \
             status, latency_micros, bytes_in, bytes_out, orphaned, units, client_request_id \
             FROM usage_events ORDER BY request_id LIMIT 4096",
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last().map(|r| get::<String>(r, t, "request_id")).transpose()? else {
            return Ok(moved);
        };
        let calls = rows
            .iter()
            .map(|r| {
                Ok(CallRecord {
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
                })
            })
            .collect::<Result<Vec<_>>>()?;
        insert_calls(&mut tx, &calls.iter().collect::<Vec<_>>()).await?;
        let deleted = sqlx::query("DELETE FROM usage_events WHERE request_id <= $1")
            .bind(&last)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted != calls.len() as u64 {
            // Another process moved (some of) these rows meanwhile: its pages stand, ours go.
            tx.rollback().await?;
            continue;
        }
        tx.commit().await?;
        moved += calls.len() as u64;
    }
}
