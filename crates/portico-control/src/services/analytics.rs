//! Analytics over the metered calls: time series and top-N of calls, errors, bytes and latency
//! percentiles, grouped and filtered, as JSON or CSV. Scoped like the request log: a consumer
//! sees its apps' calls, a provider the calls to its APIs (across consumers), a platform admin
//! everything.
//!
//! Computed from the per-call rows in the requested range; the metering issue adds minute and
//! day rollups with mergeable latency sketches so long ranges stay cheap.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::parse_id;
use crate::state::AppState;
use portico_store::Page;
use portico_store::usage::{CallFilter, LoggedCall};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    /// Start, RFC 3339 (default: 24 hours before `to`).
    pub from: Option<String>,
    /// End, RFC 3339 (default: now).
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<String>,
    /// `api`, `app`, `plan`, `operation`, `status_class` or `consumer`; none: one series.
    pub group_by: Option<String>,
    /// Only this API (slug).
    pub api: Option<String>,
    pub app_id: Option<String>,
    pub plan_id: Option<String>,
    /// `2xx`, `4xx` or `5xx`.
    pub status_class: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// For top-N: how many groups (default 10, at most 100).
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Stats {
    pub calls: u64,
    pub success: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub orphaned: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Point {
    /// Start of the bucket, RFC 3339.
    pub t: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    /// The group's value (`all` when not grouped).
    pub group: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimeSeries {
    pub from: String,
    pub to: String,
    pub granularity: String,
    pub group_by: Option<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopEntry {
    pub group: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Top {
    pub from: String,
    pub to: String,
    pub by: String,
    pub entries: Vec<TopEntry>,
}

struct Range {
    from: i64,
    to: i64,
}

fn rfc3339(ms: i64) -> String {
    portico_store::from_millis(ms).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn parse_time(s: &str, field: &str) -> Result<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| Error::Invalid(format!("{field}: `{s}` is not an RFC 3339 time like 2026-11-25T10:00:00Z")))
}

fn range(q: &AnalyticsQuery) -> Result<Range> {
    let to = match q.to.as_deref() {
        Some(s) => parse_time(s, "to")?,
        None => portico_store::now_millis(),
    };
    let from = match q.from.as_deref() {
        Some(s) => parse_time(s, "from")?,
        None => to - 24 * 3600 * 1000,
    };
    if from > to {
        return Err(Error::Invalid("from must not be after to".into()));
    }
    if to - from > 93 * 24 * 3600 * 1000 {
        return Err(Error::Invalid("the range may span at most 93 days".into()));
    }
    Ok(Range { from, to })
}

fn class(status: i64) -> &'static str {
    match status {
        500.. => "5xx",
        400..=499 => "4xx",
        _ => "2xx",
    }
}

fn group_of(by: Option<&str>, c: &LoggedCall) -> String {
    match by {
        Some("api") => c.api_slug.clone(),
        Some("app") => c.call.app_id.to_string(),
        Some("plan") => c.call.plan_id.to_string(),
        Some("operation") => c.call.operation.clone().unwrap_or_else(|| "(unmatched)".into()),
        Some("status_class") => if c.call.orphaned { "orphaned" } else { class(c.call.status) }.into(),
        Some("consumer") => c.call.consumer_org_id.to_string(),
        _ => "all".into(),
    }
}

fn check_group(by: Option<&str>) -> Result<()> {
    match by {
        None | Some("api" | "app" | "plan" | "operation" | "status_class" | "consumer") => Ok(()),
        Some(other) => Err(Error::Invalid(format!(
            "group_by: `{other}` is not one of api, app, plan, operation, status_class, consumer"
        ))),
    }
}

fn percentile(sorted: &[i64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx] as f64 / 1000.0)
}

fn stats(calls: &[&LoggedCall]) -> Stats {
    let mut s = Stats::default();
    let mut latencies: Vec<i64> = Vec::with_capacity(calls.len());
    for c in calls {
        let c = &c.call;
        if c.orphaned {
            s.orphaned += 1;
            continue;
        }
        s.calls += 1;
        match class(c.status) {
            "5xx" => s.server_errors += 1,
            "4xx" => s.client_errors += 1,
            _ => s.success += 1,
        }
        s.bytes_in += c.bytes_in.max(0) as u64;
        s.bytes_out += c.bytes_out.max(0) as u64;
        latencies.push(c.latency_micros);
    }
    latencies.sort_unstable();
    s.p50_ms = percentile(&latencies, 0.50);
    s.p95_ms = percentile(&latencies, 0.95);
    s.p99_ms = percentile(&latencies, 0.99);
    s
}

async fn calls(state: &AppState, who: &Principal, q: &AnalyticsQuery, r: &Range) -> Result<Vec<LoggedCall>> {
    let mut f = CallFilter { from_millis: Some(r.from), to_millis: Some(r.to), ..Default::default() };
    if let Some(app) = q.app_id.as_deref() {
        f.app_id = Some(parse_id(app, "app")?);
    }
    if let Some(slug) = q.api.as_deref() {
        let mut c = state.store.conn().await?;
        f.api_id = Some(portico_store::catalog::api_by_slug(&mut c, slug).await?.map(|a| a.id).unwrap_or_default());
    }
    let plan: Option<portico_core::ids::PlanId> = q.plan_id.as_deref().map(|p| parse_id(p, "plan")).transpose()?;
    if let Some(sc) = q.status_class.as_deref()
        && !matches!(sc, "2xx" | "4xx" | "5xx")
    {
        return Err(Error::Invalid(format!("status_class: `{sc}` is not one of 2xx, 4xx, 5xx")));
    }
    let orgs = who.org_ids();
    let visible = if who.is_admin() { None } else { Some(orgs.as_slice()) };
    let mut c = state.store.conn().await?;
    let rows = portico_store::usage::list_calls(&mut c, &f, visible, Page::all()).await?;
    Ok(rows
        .into_iter()
        .filter(|l| plan.is_none_or(|p| l.call.plan_id == p))
        .filter(|l| q.status_class.as_deref().is_none_or(|sc| !l.call.orphaned && class(l.call.status) == sc))
        .collect())
}

pub async fn time_series(state: &AppState, who: &Principal, q: &AnalyticsQuery) -> Result<TimeSeries> {
    let r = range(q)?;
    check_group(q.group_by.as_deref())?;
    let (granularity, step) = match q.granularity.as_deref().unwrap_or("hour") {
        "minute" => ("minute", 60_000i64),
        "hour" => ("hour", 3_600_000),
        "day" => ("day", 86_400_000),
        other => return Err(Error::Invalid(format!("granularity: `{other}` is not one of minute, hour, day"))),
    };
    if (r.to - r.from) / step > 10_000 {
        return Err(Error::Invalid(
            "that range has more than 10000 buckets at this granularity: choose a coarser one".into(),
        ));
    }
    let rows = calls(state, who, q, &r).await?;
    let mut groups: BTreeMap<String, BTreeMap<i64, Vec<&LoggedCall>>> = BTreeMap::new();
    for c in &rows {
        let bucket = c.call.at_millis.div_euclid(step) * step;
        groups.entry(group_of(q.group_by.as_deref(), c)).or_default().entry(bucket).or_default().push(c);
    }
    let series = groups
        .into_iter()
        .map(|(group, buckets)| Series {
            group,
            points: buckets.into_iter().map(|(t, cs)| Point { t: rfc3339(t), stats: stats(&cs) }).collect(),
        })
        .collect();
    Ok(TimeSeries {
        from: rfc3339(r.from),
        to: rfc3339(r.to),
        granularity: granularity.into(),
        group_by: q.group_by.clone(),
        series,
    })
}

pub async fn top(state: &AppState, who: &Principal, q: &AnalyticsQuery) -> Result<Top> {
    let r = range(q)?;
    let by = q.group_by.clone().unwrap_or_else(|| "operation".into());
    check_group(Some(&by))?;
    let rows = calls(state, who, q, &r).await?;
    let mut groups: BTreeMap<String, Vec<&LoggedCall>> = BTreeMap::new();
    for c in &rows {
        groups.entry(group_of(Some(&by), c)).or_default().push(c);
    }
    let mut entries: Vec<TopEntry> =
        groups.into_iter().map(|(group, cs)| TopEntry { group, stats: stats(&cs) }).collect();
    entries.sort_by(|a, b| b.stats.calls.cmp(&a.stats.calls).then_with(|| a.group.cmp(&b.group)));
    entries.truncate(q.limit.unwrap_or(10).clamp(1, 100));
    Ok(Top { from: rfc3339(r.from), to: rfc3339(r.to), by, entries })
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

/// CSV of a time series: one row per group and bucket.
pub fn to_csv(ts: &TimeSeries) -> String {
    let mut out = String::from(
        "group,t,calls,success,client_errors,server_errors,orphaned,bytes_in,bytes_out,p50_ms,p95_ms,p99_ms\n",
    );
    for s in &ts.series {
        let group = if s.group.contains([',', '"', '\n']) {
            format!("\"{}\"", s.group.replace('"', "\"\""))
        } else {
            s.group.clone()
        };
        for p in &s.points {
            let st = &p.stats;
            out.push_str(&format!(
                "{group},{},{},{},{},{},{},{},{},{},{},{}\n",
                p.t,
                st.calls,
                st.success,
                st.client_errors,
                st.server_errors,
                st.orphaned,
                st.bytes_in,
                st.bytes_out,
                opt(st.p50_ms),
                opt(st.p95_ms),
                opt(st.p99_ms)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7000], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
