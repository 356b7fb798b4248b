//! Usage rollups per minute and per day, with latency sketches. The shipper adds each batch's
//! calls in the same transaction as the journal offset it moves, so they count exactly once.

use crate::row::{get, parse};
use crate::usage::CallRecord;
use crate::{Conn, Result};
use portico_core::ids::{ApiId, AppId, OrgId, PlanId, SubscriptionId, VersionId};
use portico_core::sketch::LatencySketch;
use sqlx::any::AnyRow;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    Minute,
    Day,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Day => "day",
        }
    }
    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Day => 86_400_000,
        }
    }
}

/// The status class a call is counted under: `2xx` (incl. 1xx/3xx), `4xx`, `5xx`, or
/// `orphaned` (the gateway died mid-call).
pub fn status_class(c: &CallRecord) -> &'static str {
    match (c.orphaned, c.status) {
        (true, _) => "orphaned",
        (_, 500..) => "5xx",
        (_, 400..=499) => "4xx",
        _ => "2xx",
    }
}

/// One rollup row (one instance's share, or several instances added up when read).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub bucket: i64,
    pub subscription_id: SubscriptionId,
    pub api_id: ApiId,
    pub version_id: VersionId,
    pub app_id: AppId,
    pub consumer_org_id: OrgId,
    pub plan_id: PlanId,
    /// `""` when the call matched no operation.
    pub operation: String,
    pub status_class: String,
    /// Calls answered (not orphaned), billable or not.
    pub calls: i64,
    /// Billable units.
    pub units: i64,
    /// Calls Portico answered itself (units 0): metered, never billed.
    pub refused: i64,
    pub orphaned: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub latency_micros_sum: i64,
    pub sketch: LatencySketch,
}

type Key = (i64, SubscriptionId, PlanId, VersionId, String, String);

impl Rollup {
    fn key(&self) -> Key {
        (
            self.bucket,
            self.subscription_id,
            self.plan_id,
            self.version_id,
            self.operation.clone(),
            self.status_class.clone(),
        )
    }

    fn empty(bucket: i64, c: &CallRecord) -> Self {
        Rollup {
            bucket,
            subscription_id: c.subscription_id,
            api_id: c.api_id,
            version_id: c.version_id,
            app_id: c.app_id,
            consumer_org_id: c.consumer_org_id,
            plan_id: c.plan_id,
            operation: c.operation.clone().unwrap_or_default(),
            status_class: status_class(c).to_owned(),
            calls: 0,
            units: 0,
            refused: 0,
            orphaned: 0,
            bytes_in: 0,
            bytes_out: 0,
            latency_micros_sum: 0,
            sketch: LatencySketch::new(),
        }
    }

    /// Adds another row with the same key (or any row, when merging a range).
    pub fn absorb(&mut self, o: &Rollup) {
        self.calls += o.calls;
        self.units += o.units;
        self.refused += o.refused;
        self.orphaned += o.orphaned;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.latency_micros_sum += o.latency_micros_sum;
        self.sketch.merge(&o.sketch);
    }
}

/// Rolls calls up at one granularity. Keyed by borrowed text while rolling: a call that adds
/// to an existing row (nearly all of them) costs no allocation.
pub fn roll(calls: &[CallRecord], g: Granularity) -> Vec<Rollup> {
    type Borrowed<'a> = (i64, SubscriptionId, PlanId, VersionId, &'a str, &'static str);
    let mut index: HashMap<Borrowed<'_>, usize> = HashMap::new();
    let mut rows: Vec<Rollup> = Vec::new();
    // Consecutive calls mostly add to the same row: the last one is found without hashing.
    let mut last: Option<(Borrowed<'_>, usize)> = None;
    for c in calls {
        let bucket = c.at_millis.div_euclid(g.millis()) * g.millis();
        let key =
            (bucket, c.subscription_id, c.plan_id, c.version_id, c.operation.as_deref().unwrap_or(""), status_class(c));
        let i = match last {
            Some((k, i)) if k == key => i,
            _ => *index.entry(key).or_insert_with(|| {
                rows.push(Rollup::empty(bucket, c));
                rows.len() - 1
            }),
        };
        last = Some((key, i));
        let r = &mut rows[i];
        if c.orphaned {
            r.orphaned += 1;
            continue;
        }
        r.calls += 1;
        r.units += c.units.max(0);
        if c.units == 0 {
            r.refused += 1;
        }
        r.bytes_in += c.bytes_in.max(0);
        r.bytes_out += c.bytes_out.max(0);
        r.latency_micros_sum += c.latency_micros.max(0);
        r.sketch.add(c.latency_micros.max(0) as u64);
    }
    rows
}

const COLS: &str = "bucket, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id, operation, status_class, \
                    calls, units, refused, orphaned, bytes_in, bytes_out, latency_micros_sum, latency_sketch";

fn decode(r: &AnyRow) -> Result<Rollup> {
    let t = "usage_rollups";
    Ok(Rollup {
        bucket: get(r, t, "bucket")?,
        subscription_id: parse(r, t, "subscription_id")?,
        api_id: parse(r, t, "api_id")?,
        version_id: parse(r, t, "version_id")?,
        app_id: parse(r, t, "app_id")?,
        consumer_org_id: parse(r, t, "consumer_org_id")?,
        plan_id: parse(r, t, "plan_id")?,
        operation: get(r, t, "operation")?,
        status_class: get(r, t, "status_class")?,
        calls: get(r, t, "calls")?,
        units: get(r, t, "units")?,
        refused: get(r, t, "refused")?,
        orphaned: get(r, t, "orphaned")?,
        bytes_in: get(r, t, "bytes_in")?,
        bytes_out: get(r, t, "bytes_out")?,
        latency_micros_sum: get(r, t, "latency_micros_sum")?,
        sketch: LatencySketch::from_json(&get::<String>(r, t, "latency_sketch")?),
    })
}

/// Adds calls to this instance's minute and day rows: the rows they touch are read, merged in
/// memory (sketches cannot be merged in SQL) and written back. Only this instance's shipper
/// writes its rows, so the read-merge-write cannot race.
pub async fn add(c: &mut Conn, instance: &str, calls: &[CallRecord]) -> Result<()> {
    for g in [Granularity::Minute, Granularity::Day] {
        let mut fresh = roll(calls, g);
        if fresh.is_empty() {
            continue;
        }
        let mut buckets: Vec<i64> = fresh.iter().map(|r| r.bucket).collect();
        buckets.sort_unstable();
        buckets.dedup();
        let marks: Vec<String> = (0..buckets.len()).map(|i| format!("${}", i + 3)).collect();
        let q = format!(
            "SELECT {COLS} FROM usage_rollups WHERE granularity = $1 AND instance = $2 AND bucket IN ({})",
            marks.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(g.as_str()).bind(instance);
        for b in &buckets {
            query = query.bind(*b);
        }
        let existing: HashMap<Key, Rollup> = query
            .fetch_all(&mut *c)
            .await?
            .iter()
            .map(decode)
            .map(|r| r.map(|r| (r.key(), r)))
            .collect::<Result<_>>()?;
        for r in &mut fresh {
            if let Some(old) = existing.get(&r.key()) {
                r.absorb(old);
            }
        }
        for r in &fresh {
            sqlx::query(
                "INSERT INTO usage_rollups (granularity, instance, bucket, subscription_id, api_id, version_id, app_id, consumer_org_id, plan_id, \
                 operation, status_class, calls, units, refused, orphaned, bytes_in, bytes_out, latency_micros_sum, latency_sketch) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
                 ON CONFLICT (granularity, bucket, instance, subscription_id, plan_id, version_id, operation, status_class) DO UPDATE SET \
                 calls = excluded.calls, units = excluded.units, refused = excluded.refused, orphaned = excluded.orphaned, \
                 bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out, latency_micros_sum = excluded.latency_micros_sum, \
                 latency_sketch = excluded.latency_sketch",
            )
            .bind(g.as_str())
            .bind(instance)
            .bind(r.bucket)
            .bind(r.subscription_id.to_string())
            .bind(r.api_id.to_string())
            .bind(r.version_id.to_string())
            .bind(r.app_id.to_string())
            .bind(r.consumer_org_id.to_string())
            .bind(r.plan_id.to_string())
            .bind(&r.operation)
            .bind(&r.status_class)
            .bind(r.calls)
            .bind(r.units)
            .bind(r.refused)
            .bind(r.orphaned)
            .bind(r.bytes_in)
            .bind(r.bytes_out)
            .bind(r.latency_micros_sum)
            .bind(r.sketch.to_json())
            .execute(&mut *c)
            .await?;
        }
    }
    Ok(())
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_millis: i64,
    pub to_millis: i64,
    pub api_id: Option<ApiId>,
    pub app_id: Option<AppId>,
    pub plan_id: Option<PlanId>,
    pub version_id: Option<VersionId>,
    pub consumer_org_id: Option<OrgId>,
    pub operation: Option<String>,
    pub status_class: Option<String>,
}

/// Rows of one granularity whose bucket starts in `[from, to]`, instances not yet added up.
/// `visible_to`: only calls of apps of these organizations or to APIs of these organizations
/// (`None`: all).
pub async fn read(c: &mut Conn, g: Granularity, f: &Filter, visible_to: Option<&[OrgId]>) -> Result<Vec<Rollup>> {
    let mut clauses = vec!["r.granularity = $1".to_owned(), "r.bucket >= $2".to_owned(), "r.bucket <= $3".to_owned()];
    let mut texts: Vec<String> = Vec::new();
    let mark = |texts: &mut Vec<String>, v: String| {
        texts.push(v);
        format!("${}", texts.len() + 3)
    };
    for (col, v) in [
        ("r.api_id", f.api_id.map(|x| x.to_string())),
        ("r.app_id", f.app_id.map(|x| x.to_string())),
        ("r.plan_id", f.plan_id.map(|x| x.to_string())),
        ("r.version_id", f.version_id.map(|x| x.to_string())),
        ("r.consumer_org_id", f.consumer_org_id.map(|x| x.to_string())),
        ("r.operation", f.operation.clone()),
        ("r.status_class", f.status_class.clone()),
    ] {
        if let Some(v) = v {
            let m = mark(&mut texts, v);
            clauses.push(format!("{col} = {m}"));
        }
    }
    if let Some(orgs) = visible_to {
        if orgs.is_empty() {
            return Ok(Vec::new());
        }
        let ms: Vec<String> = orgs.iter().map(|o| mark(&mut texts, o.to_string())).collect();
        let list = ms.join(", ");
        clauses.push(format!("(r.consumer_org_id IN ({list}) OR a.org_id IN ({list}))"));
    }
    let q = format!(
        "SELECT {} FROM usage_rollups r LEFT JOIN apis a ON a.id = r.api_id WHERE {} ORDER BY r.bucket",
        COLS.split(", ").map(|c| format!("r.{}", c.trim())).collect::<Vec<_>>().join(", "),
        clauses.join(" AND ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(q)).bind(g.as_str()).bind(f.from_millis).bind(f.to_millis);
    for t in texts {
        query = query.bind(t);
    }
    query.fetch_all(c).await?.iter().map(decode).collect()
}

/// Billable units per subscription since `from_millis` (from the day rows): where a gateway's
/// quota counters start.
pub async fn units_by_subscription_since(c: &mut Conn, from_millis: i64) -> Result<HashMap<SubscriptionId, u64>> {
    let rows = sqlx::query(
        "SELECT subscription_id, CAST(COALESCE(SUM(units), 0) AS BIGINT) AS n FROM usage_rollups \
         WHERE granularity = 'day' AND bucket >= $1 GROUP BY subscription_id",
    )
    .bind(from_millis)
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            let sub: SubscriptionId = parse(r, "usage_rollups", "subscription_id")?;
            let n: i64 = get(r, "usage_rollups", "n")?;
            Ok((sub, n.max(0) as u64))
        })
        .collect()
}

/// Deletes rows of a granularity older than `before_millis`; returns how many.
pub async fn prune(c: &mut Conn, g: Granularity, before_millis: i64) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM usage_rollups WHERE granularity = $1 AND bucket < $2")
        .bind(g.as_str())
        .bind(before_millis)
        .execute(c)
        .await?
        .rows_affected())
}

/// Deletes the request log's calls that started in seconds wholly before `before_millis`;
/// returns how many.
pub async fn prune_request_log(c: &mut Conn, before_millis: i64) -> Result<u64> {
    let cut = crate::request_log::second_of(before_millis);
    let r = sqlx::query("SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS n FROM request_log_pages WHERE second < $1")
        .bind(cut)
        .fetch_one(&mut *c)
        .await?;
    let n: i64 = get(&r, "request_log_pages", "n")?;
    sqlx::query("DELETE FROM request_log_pages WHERE second < $1").bind(cut).execute(&mut *c).await?;
    sqlx::query("DELETE FROM request_log_client_ids WHERE second < $1").bind(cut).execute(&mut *c).await?;
    Ok(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calls(spec: &[(u8, u16, u32, u8, bool)]) -> Vec<CallRecord> {
        let subs = [SubscriptionId::new(), SubscriptionId::new()];
        let base = 1_764_000_000_000i64 - 1_764_000_000_000i64 % 86_400_000;
        spec.iter()
            .enumerate()
            .map(|(i, &(sub, status, latency, minute, orphaned))| CallRecord {
                request_id: uuid::Uuid::from_u128(i as u128 + 1),
                at_millis: base + i64::from(minute % 120) * 60_000 + (i as i64 % 60_000),
                subscription_id: subs[usize::from(sub % 2)],
                api_id: ApiId::from_uuid(uuid::Uuid::nil()),
                version_id: VersionId::from_uuid(uuid::Uuid::nil()),
                app_id: AppId::from_uuid(uuid::Uuid::nil()),
                consumer_org_id: OrgId::from_uuid(uuid::Uuid::nil()),
                plan_id: PlanId::from_uuid(uuid::Uuid::nil()),
                operation: (status % 3 == 0).then(|| "search".to_owned()),
                status: i64::from(100 + status % 500),
                latency_micros: i64::from(latency),
                bytes_in: i64::from(latency % 977),
                bytes_out: i64::from(latency % 4099),
                units: i64::from(status % 4),
                client_request_id: None,
                orphaned,
            })
            .collect()
    }

    /// Rows keyed for comparison; several rows with one key are absorbed into one.
    fn merged(rows: impl IntoIterator<Item = Rollup>) -> HashMap<Key, Rollup> {
        let mut out: HashMap<Key, Rollup> = HashMap::new();
        for r in rows {
            match out.get_mut(&r.key()) {
                Some(m) => m.absorb(&r),
                None => {
                    out.insert(r.key(), r);
                }
            }
        }
        out
    }

    proptest! {
        /// However the calls are cut into shipping rounds (or shared between instances), the
        /// merged rows equal the rows of all calls at once: counts, sums and sketches.
        #[test]
        fn rolling_in_parts_then_merging_equals_rolling_everything(
            spec in prop::collection::vec((any::<u8>(), any::<u16>(), 0u32..5_000_000, any::<u8>(), prop::bool::weighted(0.1)), 1..300),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let all = calls(&spec);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(all.len())).collect();
            points.extend([0, all.len()]);
            points.sort_unstable();
            for g in [Granularity::Minute, Granularity::Day] {
                let whole = merged(roll(&all, g));
                let parts = merged(points.windows(2).flat_map(|w| roll(&all[w[0]..w[1]], g)));
                prop_assert_eq!(&parts, &whole);
            }
            // Minute rows merged into their day equal the day rows.
            let days: HashMap<Key, Rollup> = merged(roll(&all, Granularity::Minute).into_iter().map(|mut r| {
                r.bucket = r.bucket.div_euclid(Granularity::Day.millis()) * Granularity::Day.millis();
                r
            }));
            prop_assert_eq!(days, merged(roll(&all, Granularity::Day)));
            // Nothing is lost: every answered call is counted once, every orphan once.
            let whole = merged(roll(&all, Granularity::Day));
            let answered = all.iter().filter(|c| !c.orphaned).count() as i64;
            prop_assert_eq!(whole.values().map(|r| r.calls).sum::<i64>(), answered);
            prop_assert_eq!(whole.values().map(|r| r.orphaned).sum::<i64>(), all.len() as i64 - answered);
        }
    }
}
