//! Analytics over the metered calls: time series and top-N of calls, errors, bytes and latency
//! percentiles, grouped and filtered, as JSON or CSV. Scoped like the request log: a consumer
//! sees its apps' calls, a provider the calls to its APIs (across consumers), a platform admin
//! everything.
//!
//! Read from the rollups (per minute, kept `retention.minute_days`; per day, kept
//! `retention.day_days`), never from the request log: latency percentiles come from merging the
//! rows' sketches (within 1%), so any range costs the same whatever the traffic.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::parse_id;
use crate::state::AppState;
use portico_core::sketch::LatencySketch;
use portico_store::rollups::{self, Granularity, Rollup};
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
    /// `api`, `version`, `app`, `plan`, `operation`, `status_class` or `consumer`; none: one
    /// series.
    pub group_by: Option<String>,
    /// Only this API (slug).
    pub api: Option<String>,
    /// Only this API version (its id).
    pub version_id: Option<String>,
    pub app_id: Option<String>,
    pub plan_id: Option<String>,
    /// Only calls of this consumer organization (its id).
    pub consumer: Option<String>,
    /// Only this operation (`operationId` or `METHOD /template`).
    pub operation: Option<String>,
    /// `2xx`, `4xx`, `5xx` or `orphaned`.
    pub status_class: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// For top-N: how many groups (default 10, at most 100).
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Stats {
    /// Calls answered (orphans excluded), billable or not.
    pub calls: u64,
    /// Billable units (an operation's weight per call that the upstream answered).
    pub units: u64,
    /// Calls Portico answered itself (limits, refusals, upstream unreachable): never billed.
    pub refused: u64,
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

fn group_of(by: Option<&str>, r: &Rollup, slugs: &BTreeMap<String, String>) -> String {
    match by {
        Some("api") => slugs.get(&r.api_id.to_string()).cloned().unwrap_or_else(|| r.api_id.to_string()),
        Some("version") => r.version_id.to_string(),
        Some("app") => r.app_id.to_string(),
        Some("plan") => r.plan_id.to_string(),
        Some("operation") if r.operation.is_empty() => "(unmatched)".into(),
        Some("operation") => r.operation.clone(),
        Some("status_class") => r.status_class.clone(),
        Some("consumer") => r.consumer_org_id.to_string(),
        _ => "all".into(),
    }
}

fn check_group(by: Option<&str>) -> Result<()> {
    match by {
        None | Some("api" | "version" | "app" | "plan" | "operation" | "status_class" | "consumer") => Ok(()),
        Some(other) => Err(Error::Invalid(format!(
            "group_by: `{other}` is not one of api, version, app, plan, operation, status_class, consumer"
        ))),
    }
}

/// Adds rows up into the numbers the API shows.
fn stats(rows: &[&Rollup]) -> Stats {
    let mut s = Stats::default();
    let mut sketch = LatencySketch::new();
    for r in rows {
        let n = r.calls.max(0) as u64;
        s.calls += n;
        s.units += r.units.max(0) as u64;
        s.refused += r.refused.max(0) as u64;
        s.orphaned += r.orphaned.max(0) as u64;
        match r.status_class.as_str() {
            "5xx" => s.server_errors += n,
            "4xx" => s.client_errors += n,
            "2xx" => s.success += n,
            _ => {}
        }
        s.bytes_in += r.bytes_in.max(0) as u64;
        s.bytes_out += r.bytes_out.max(0) as u64;
        sketch.merge(&r.sketch);
    }
    let ms = |q: f64| sketch.quantile(q).map(|us| (us / 1000.0 * 1000.0).round() / 1000.0);
    s.p50_ms = ms(0.50);
    s.p95_ms = ms(0.95);
    s.p99_ms = ms(0.99);
    s
}

/// The rollup rows in range that `who` may see, at the granularity that serves `step`.
async fn rows(state: &AppState, who: &Principal, q: &AnalyticsQuery, r: &Range, step: i64) -> Result<Vec<Rollup>> {
    let g = if step >= Granularity::Day.millis() { Granularity::Day } else { Granularity::Minute };
    let kept = i64::from(state.config.minute_retention_days) * Granularity::Day.millis();
    if g == Granularity::Minute && r.from < portico_store::now_millis() - kept {
        return Err(Error::Invalid(format!(
            "minute and hour detail is kept {} days (retention.minute_days): ask for granularity=day for older ranges",
            state.config.minute_retention_days
        )));
    }
    let mut f = rollups::Filter {
        from_millis: r.from.div_euclid(g.millis()) * g.millis(),
        to_millis: r.to,
        operation: q.operation.clone(),
        ..Default::default()
    };
    if let Some(app) = q.app_id.as_deref() {
        f.app_id = Some(parse_id(app, "app")?);
    }
    if let Some(plan) = q.plan_id.as_deref() {
        f.plan_id = Some(parse_id(plan, "plan")?);
    }
    if let Some(v) = q.version_id.as_deref() {
        f.version_id = Some(parse_id(v, "version")?);
    }
    if let Some(org) = q.consumer.as_deref() {
        f.consumer_org_id = Some(parse_id(org, "organization")?);
    }
    if let Some(sc) = q.status_class.as_deref() {
        if !matches!(sc, "2xx" | "4xx" | "5xx" | "orphaned") {
            return Err(Error::Invalid(format!("status_class: `{sc}` is not one of 2xx, 4xx, 5xx, orphaned")));
        }
        f.status_class = Some(sc.to_owned());
    }
    let mut c = state.store.conn().await?;
    if let Some(slug) = q.api.as_deref() {
        // An unknown API matches nothing (and says nothing about whether it exists).
        f.api_id = Some(portico_store::catalog::api_by_slug(&mut c, slug).await?.map(|a| a.id).unwrap_or_default());
    }
    let orgs = who.org_ids();
    let visible = if who.is_admin() { None } else { Some(orgs.as_slice()) };
    Ok(rollups::read(&mut c, g, &f, visible).await?)
}

/// API id → slug, for grouping by API.
async fn api_slugs(state: &AppState, by: Option<&str>) -> Result<BTreeMap<String, String>> {
    if by != Some("api") {
        return Ok(BTreeMap::new());
    }
    let mut c = state.store.conn().await?;
    let apis =
        portico_store::catalog::list_apis(&mut c, portico_store::catalog::ApiScope::All, portico_store::Page::all())
            .await?;
    Ok(apis.into_iter().map(|a| (a.id.to_string(), a.slug.to_string())).collect())
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
    let rows = rows(state, who, q, &r, step).await?;
    let slugs = api_slugs(state, q.group_by.as_deref()).await?;
    let mut groups: BTreeMap<String, BTreeMap<i64, Vec<&Rollup>>> = BTreeMap::new();
    for row in &rows {
        let bucket = row.bucket.div_euclid(step) * step;
        groups.entry(group_of(q.group_by.as_deref(), row, &slugs)).or_default().entry(bucket).or_default().push(row);
    }
    let series = groups
        .into_iter()
        .map(|(group, buckets)| Series {
            group,
            points: buckets.into_iter().map(|(t, rs)| Point { t: rfc3339(t), stats: stats(&rs) }).collect(),
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
    // Minute rows cover the last days exactly; longer ranges read the day rows.
    let step = if r.to - r.from > 2 * 86_400_000 { 86_400_000 } else { 60_000 };
    let rows = rows(state, who, q, &r, step).await?;
    let slugs = api_slugs(state, Some(&by)).await?;
    let mut groups: BTreeMap<String, Vec<&Rollup>> = BTreeMap::new();
    for row in &rows {
        groups.entry(group_of(Some(&by), row, &slugs)).or_default().push(row);
    }
    let mut entries: Vec<TopEntry> =
        groups.into_iter().map(|(group, rs)| TopEntry { group, stats: stats(&rs) }).collect();
    entries.sort_by(|a, b| b.stats.calls.cmp(&a.stats.calls).then_with(|| a.group.cmp(&b.group)));
    entries.truncate(q.limit.unwrap_or(10).clamp(1, 100));
    Ok(Top { from: rfc3339(r.from), to: rfc3339(r.to), by, entries })
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

const CSV_STATS: &str =
    "calls,units,refused,success,client_errors,server_errors,orphaned,bytes_in,bytes_out,p50_ms,p95_ms,p99_ms\n";

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180); one that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) is prefixed with `'`.
fn csv_field(v: &str) -> std::borrow::Cow<'_, str> {
    let v: std::borrow::Cow<'_, str> =
        if v.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{v}").into() } else { v.into() };
    if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")).into() } else { v }
}

fn csv_stats(out: &mut String, st: &Stats) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{},{},{},{},{},{},{},{},{},{},{},{}",
        st.calls,
        st.units,
        st.refused,
        st.success,
        st.client_errors,
        st.server_errors,
        st.orphaned,
        st.bytes_in,
        st.bytes_out,
        opt(st.p50_ms),
        opt(st.p95_ms),
        opt(st.p99_ms)
    );
}

/// CSV of a time series: one row per group and bucket.
pub fn to_csv(ts: &TimeSeries) -> String {
    let mut out = format!("group,t,{CSV_STATS}");
    for s in &ts.series {
        let group = csv_field(&s.group);
        for p in &s.points {
            out.push_str(&format!("{group},{},", p.t));
            csv_stats(&mut out, &p.stats);
        }
    }
    out
}

/// CSV of a top-N: one row per group, busiest first.
pub fn top_csv(top: &Top) -> String {
    let mut out = format!("group,{CSV_STATS}");
    for e in &top.entries {
        out.push_str(&csv_field(&e.group));
        out.push(',');
        csv_stats(&mut out, &e.stats);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("getThing"), "getThing");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
    }

    #[test]
    fn stats_add_rows_and_merge_their_sketches() {
        let row = |class: &str, calls: i64, units: i64, refused: i64, lat: &[u64]| {
            let mut sketch = LatencySketch::new();
            for l in lat {
                sketch.add(*l);
            }
            Rollup {
                bucket: 0,
                subscription_id: Default::default(),
                api_id: Default::default(),
                version_id: Default::default(),
                app_id: Default::default(),
                consumer_org_id: Default::default(),
                plan_id: Default::default(),
                operation: String::new(),
                status_class: class.into(),
                calls,
                units,
                refused,
                orphaned: 0,
                bytes_in: 1,
                bytes_out: 2,
                latency_micros_sum: lat.iter().sum::<u64>() as i64,
                sketch,
            }
        };
        let a = row("2xx", 3, 6, 0, &[1000, 2000, 3000]);
        let b = row("4xx", 1, 0, 1, &[100_000]);
        let s = stats(&[&a, &b]);
        assert_eq!((s.calls, s.units, s.refused, s.success, s.client_errors), (4, 6, 1, 3, 1));
        assert!((s.p50_ms.unwrap() - 2.0).abs() < 0.03, "{:?}", s.p50_ms);
        assert!((s.p99_ms.unwrap() - 100.0).abs() < 1.1, "{:?}", s.p99_ms);
        assert_eq!(stats(&[]).p50_ms, None);
    }
}
