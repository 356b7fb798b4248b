//! The catalog: APIs, their versions (with OpenAPI documents and upstreams) and their plans.

use crate::row::{get, parse, time, with};
use crate::{Conn, Error, Page, Result, now_millis};
use portico_core::ids::{ApiId, OrgId, PlanId, VersionId};
use portico_core::model::{LifecycleState, Pricing, Visibility};
use portico_core::policy::Policies;
use portico_core::upstream::UpstreamPolicy;
use portico_core::values::{Hostname, Name, Period, RateLimit, Slug, UpstreamUrl, VersionNumber};
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiFields {
    pub name: Name,
    pub description: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
    pub visibility: Visibility,
    /// Host names the API answers on at the gateway, unique across the marketplace.
    pub hosts: Vec<Hostname>,
}

#[derive(Debug, Clone)]
pub struct Api {
    pub id: ApiId,
    pub org_id: OrgId,
    pub slug: Slug,
    pub fields: ApiFields,
    pub created_at: time::OffsetDateTime,
    pub updated_at: time::OffsetDateTime,
}

const API_COLS: &str = "id, org_id, slug, name, description, category, tags, visibility, created_at, updated_at, hosts";

fn decode_api(r: &AnyRow) -> Result<Api> {
    let t = "apis";
    Ok(Api {
        id: parse(r, t, "id")?,
        org_id: parse(r, t, "org_id")?,
        slug: with(r, t, "slug", Slug::parse)?,
        fields: ApiFields {
            name: with(r, t, "name", Name::parse)?,
            description: get(r, t, "description")?,
            category: get(r, t, "category")?,
            tags: with(r, t, "tags", |s| serde_json::from_str(s))?,
            visibility: with(r, t, "visibility", Visibility::parse)?,
            hosts: with(r, t, "hosts", |s| serde_json::from_str(s))?,
        },
        created_at: time(r, t, "created_at")?,
        updated_at: time(r, t, "updated_at")?,
    })
}

pub async fn insert_api(c: &mut Conn, org: OrgId, slug: &Slug, f: &ApiFields) -> Result<Api> {
    let id = ApiId::new();
    let now = now_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO apis ({API_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)"
    )))
    .bind(id.to_string())
    .bind(org.to_string())
    .bind(slug.as_str())
    .bind(f.name.as_str())
    .bind(&f.description)
    .bind(f.category.clone())
    .bind(serde_json::to_string(&f.tags).unwrap_or_else(|_| "[]".into()))
    .bind(f.visibility.as_str())
    .bind(now)
    .bind(hosts_json(&f.hosts))
    .execute(&mut *c)
    .await
    .map_err(Error::unique(format!("an API with slug `{slug}` (API slugs are unique across the marketplace)")))?;
    claim_hosts(c, id, &f.hosts).await?;
    Ok(Api {
        id,
        org_id: org,
        slug: slug.clone(),
        fields: f.clone(),
        created_at: crate::from_millis(now),
        updated_at: crate::from_millis(now),
    })
}

pub async fn update_api(c: &mut Conn, id: ApiId, f: &ApiFields) -> Result<()> {
    sqlx::query(
        "UPDATE apis SET name = $1, description = $2, category = $3, tags = $4, visibility = $5, updated_at = $6, hosts = $7 WHERE id = $8",
    )
    .bind(f.name.as_str())
    .bind(&f.description)
    .bind(f.category.clone())
    .bind(serde_json::to_string(&f.tags).unwrap_or_else(|_| "[]".into()))
    .bind(f.visibility.as_str())
    .bind(now_millis())
    .bind(hosts_json(&f.hosts))
    .bind(id.to_string())
    .execute(&mut *c)
    .await?;
    claim_hosts(c, id, &f.hosts).await
}

/// Every claimed host name and the API that holds it (the unique table, so no name has two).
pub async fn all_hosts(c: &mut Conn) -> Result<Vec<(String, ApiId)>> {
    let rows = sqlx::query("SELECT host, api_id FROM api_hosts").fetch_all(c).await?;
    rows.iter().map(|r| Ok((get::<String>(r, "api_hosts", "host")?, parse(r, "api_hosts", "api_id")?))).collect()
}

fn hosts_json(hosts: &[Hostname]) -> String {
    serde_json::to_string(hosts).unwrap_or_else(|_| "[]".into())
}

/// Makes `hosts` the API's host names; a name another API holds is a conflict (call it in the
/// transaction that writes the API, so a refusal changes nothing).
async fn claim_hosts(c: &mut Conn, id: ApiId, hosts: &[Hostname]) -> Result<()> {
    sqlx::query("DELETE FROM api_hosts WHERE api_id = $1").bind(id.to_string()).execute(&mut *c).await?;
    for h in hosts {
        sqlx::query("INSERT INTO api_hosts (host, api_id) VALUES ($1, $2)")
            .bind(h.as_str())
            .bind(id.to_string())
            .execute(&mut *c)
            .await
            .map_err(Error::unique(format!("the host name `{h}` (another API answers on it)")))?;
    }
    Ok(())
}

pub async fn api_by_slug(c: &mut Conn, slug: &str) -> Result<Option<Api>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {API_COLS} FROM apis WHERE slug = $1")))
        .bind(slug)
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_api)
        .transpose()
}

pub async fn api_by_id(c: &mut Conn, id: ApiId) -> Result<Option<Api>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {API_COLS} FROM apis WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_api)
        .transpose()
}

/// Which APIs a list shows.
#[derive(Debug, Clone, Copy)]
pub enum ApiScope {
    /// Everything (platform admins, export).
    All,
    /// Public APIs with a version that serves traffic, plus everything of this org (if any).
    Catalog(Option<OrgId>),
    /// Only this organization's APIs.
    Org(OrgId),
}

pub async fn list_apis(c: &mut Conn, scope: ApiScope, page: Page) -> Result<Vec<Api>> {
    let (clause, org) = match scope {
        ApiScope::All => ("1 = 1 OR $1 = ''", String::new()),
        ApiScope::Org(o) => ("org_id = $1", o.to_string()),
        ApiScope::Catalog(o) => (
            "org_id = $1 OR (visibility = 'public' AND EXISTS (SELECT 1 FROM api_versions v \
             WHERE v.api_id = apis.id AND v.state IN ('published', 'deprecated')))",
            o.map(|o| o.to_string()).unwrap_or_default(),
        ),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {API_COLS} FROM apis WHERE {clause} ORDER BY slug LIMIT $2 OFFSET $3"
    )))
    .bind(org)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_api).collect()
}

#[derive(Debug, Clone)]
pub struct ApiVersion {
    pub id: VersionId,
    pub api_id: ApiId,
    pub version: VersionNumber,
    pub state: LifecycleState,
    pub upstream_url: UpstreamUrl,
    pub policy: UpstreamPolicy,
    pub policies: Policies,
    pub openapi: serde_json::Value,
    pub created_at: time::OffsetDateTime,
    pub updated_at: time::OffsetDateTime,
}

const VERSION_COLS: &str =
    "id, api_id, version, state, upstream_url, upstream_policy, policies, openapi, created_at, updated_at";

fn decode_version(r: &AnyRow) -> Result<ApiVersion> {
    let t = "api_versions";
    Ok(ApiVersion {
        id: parse(r, t, "id")?,
        api_id: parse(r, t, "api_id")?,
        version: with(r, t, "version", VersionNumber::parse)?,
        state: with(r, t, "state", LifecycleState::parse)?,
        upstream_url: with(r, t, "upstream_url", UpstreamUrl::parse)?,
        policy: match get::<Option<String>>(r, t, "upstream_policy")? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| Error::Corrupt { table: t, message: format!("upstream_policy: {e}") })?,
            None => UpstreamPolicy::default(),
        },
        policies: match get::<Option<String>>(r, t, "policies")? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| Error::Corrupt { table: t, message: format!("policies: {e}") })?,
            None => Policies::default(),
        },
        openapi: with(r, t, "openapi", |s| serde_json::from_str(s))?,
        created_at: time(r, t, "created_at")?,
        updated_at: time(r, t, "updated_at")?,
    })
}

/// NULL for no policies.
fn policies_json(p: &Policies) -> Option<String> {
    (!p.is_default()).then(|| serde_json::to_string(p).unwrap_or_default())
}

/// NULL for the default policy, so the common case stores nothing.
fn policy_json(p: &UpstreamPolicy) -> Option<String> {
    (!p.is_default()).then(|| serde_json::to_string(p).unwrap_or_default())
}

/// A version as written: everything but its id and times.
#[derive(Debug, Clone)]
pub struct VersionInput<'a> {
    pub version: VersionNumber,
    pub state: LifecycleState,
    pub upstream_url: &'a UpstreamUrl,
    pub policy: &'a UpstreamPolicy,
    pub policies: &'a Policies,
    pub openapi: &'a serde_json::Value,
}

pub async fn insert_version(c: &mut Conn, api: ApiId, v: VersionInput<'_>) -> Result<ApiVersion> {
    let id = VersionId::new();
    let now = now_millis();
    let version = v.version;
    sqlx::query(
        "INSERT INTO api_versions (id, api_id, version, major, minor, patch, state, upstream_url, openapi, created_at, updated_at, upstream_policy, policies) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12)",
    )
    .bind(id.to_string())
    .bind(api.to_string())
    .bind(version.to_string())
    .bind(i64::from(version.major))
    .bind(i64::from(version.minor))
    .bind(i64::from(version.patch))
    .bind(v.state.as_str())
    .bind(v.upstream_url.as_str())
    .bind(v.openapi.to_string())
    .bind(now)
    .bind(policy_json(v.policy))
    .bind(policies_json(v.policies))
    .execute(c)
    .await
    .map_err(Error::unique(format!("version {version} of this API")))?;
    Ok(ApiVersion {
        id,
        api_id: api,
        version,
        state: v.state,
        upstream_url: v.upstream_url.clone(),
        policy: v.policy.clone(),
        policies: v.policies.clone(),
        openapi: v.openapi.clone(),
        created_at: crate::from_millis(now),
        updated_at: crate::from_millis(now),
    })
}

/// Writes a version's state, upstream, policies and document.
pub async fn update_version(c: &mut Conn, v: &ApiVersion) -> Result<()> {
    sqlx::query(
        "UPDATE api_versions SET state = $1, upstream_url = $2, openapi = $3, updated_at = $4, upstream_policy = $5, policies = $6 WHERE id = $7",
    )
    .bind(v.state.as_str())
    .bind(v.upstream_url.as_str())
    .bind(v.openapi.to_string())
    .bind(now_millis())
    .bind(policy_json(&v.policy))
    .bind(policies_json(&v.policies))
    .bind(v.id.to_string())
    .execute(c)
    .await?;
    Ok(())
}

pub async fn versions(c: &mut Conn, api: ApiId) -> Result<Vec<ApiVersion>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLS} FROM api_versions WHERE api_id = $1 ORDER BY major DESC, minor DESC, patch DESC"
    )))
    .bind(api.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_version).collect()
}

/// Every version of every API (for the snapshot compiler).
pub async fn all_serving_versions(c: &mut Conn) -> Result<Vec<ApiVersion>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_COLS} FROM api_versions WHERE state IN ('published', 'deprecated')"
    )))
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_version).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanFields {
    pub name: Name,
    pub description: String,
    pub pricing: Pricing,
    pub rate_limit: Option<RateLimit>,
    /// More rate-limit windows, each with a period of its own (all are enforced).
    pub rate_limits: Vec<RateLimit>,
    pub monthly_quota: Option<u64>,
    /// Calls (units) per calendar day, UTC.
    pub daily_quota: Option<u64>,
    /// Windows for single operations (operationId → windows), on top of the plan's.
    pub operation_limits: std::collections::BTreeMap<String, Vec<RateLimit>>,
    pub visibility: Visibility,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub id: PlanId,
    pub api_id: ApiId,
    pub slug: Slug,
    pub fields: PlanFields,
    pub created_at: time::OffsetDateTime,
}

const PLAN_COLS: &str = "id, api_id, slug, name, description, pricing, rate_limit_requests, rate_limit_per, monthly_quota, visibility, created_at, extra_rate_limits, daily_quota, operation_limits";

fn decode_plan(r: &AnyRow) -> Result<Plan> {
    let t = "plans";
    let requests: Option<i64> = get(r, t, "rate_limit_requests")?;
    let per: Option<String> = get(r, t, "rate_limit_per")?;
    let rate_limit = match (requests, per) {
        (Some(n), Some(p)) => Some(
            Period::parse(&p)
                .and_then(|p| RateLimit::new(u32::try_from(n).unwrap_or(0), p))
                .map_err(|e| Error::Corrupt { table: t, message: e.to_string() })?,
        ),
        _ => None,
    };
    Ok(Plan {
        id: parse(r, t, "id")?,
        api_id: parse(r, t, "api_id")?,
        slug: with(r, t, "slug", Slug::parse)?,
        fields: PlanFields {
            name: with(r, t, "name", Name::parse)?,
            description: get(r, t, "description")?,
            pricing: with(r, t, "pricing", |s| serde_json::from_str(s))?,
            rate_limit,
            rate_limits: with(r, t, "extra_rate_limits", |s| serde_json::from_str(s))?,
            monthly_quota: get::<Option<i64>>(r, t, "monthly_quota")?.map(|q| q.max(0) as u64),
            daily_quota: get::<Option<i64>>(r, t, "daily_quota")?.map(|q| q.max(0) as u64),
            operation_limits: with(r, t, "operation_limits", |s| serde_json::from_str(s))?,
            visibility: with(r, t, "visibility", Visibility::parse)?,
        },
        created_at: time(r, t, "created_at")?,
    })
}

fn quota(q: Option<u64>) -> Option<i64> {
    q.map(|q| i64::try_from(q).unwrap_or(i64::MAX))
}

pub async fn insert_plan(c: &mut Conn, api: ApiId, slug: &Slug, f: &PlanFields) -> Result<Plan> {
    let id = PlanId::new();
    let now = now_millis();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO plans ({PLAN_COLS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $11)"
    )))
    .bind(id.to_string())
    .bind(api.to_string())
    .bind(slug.as_str())
    .bind(f.name.as_str())
    .bind(&f.description)
    .bind(serde_json::to_string(&f.pricing).unwrap_or_default())
    .bind(f.rate_limit.map(|r| i64::from(r.requests())))
    .bind(f.rate_limit.map(|r| r.per().as_str()))
    .bind(quota(f.monthly_quota))
    .bind(f.visibility.as_str())
    .bind(now)
    .bind(serde_json::to_string(&f.rate_limits).unwrap_or_else(|_| "[]".into()))
    .bind(quota(f.daily_quota))
    .bind(serde_json::to_string(&f.operation_limits).unwrap_or_else(|_| "{}".into()))
    .execute(c)
    .await
    .map_err(Error::unique(format!("a plan with slug `{slug}` in this API")))?;
    Ok(Plan { id, api_id: api, slug: slug.clone(), fields: f.clone(), created_at: crate::from_millis(now) })
}

pub async fn update_plan(c: &mut Conn, id: PlanId, f: &PlanFields) -> Result<()> {
    sqlx::query(
        "UPDATE plans SET name = $1, description = $2, pricing = $3, rate_limit_requests = $4, rate_limit_per = $5, \
         monthly_quota = $6, visibility = $7, updated_at = $8, extra_rate_limits = $9, daily_quota = $10, operation_limits = $11 WHERE id = $12",
    )
    .bind(f.name.as_str())
    .bind(&f.description)
    .bind(serde_json::to_string(&f.pricing).unwrap_or_default())
    .bind(f.rate_limit.map(|r| i64::from(r.requests())))
    .bind(f.rate_limit.map(|r| r.per().as_str()))
    .bind(quota(f.monthly_quota))
    .bind(f.visibility.as_str())
    .bind(now_millis())
    .bind(serde_json::to_string(&f.rate_limits).unwrap_or_else(|_| "[]".into()))
    .bind(quota(f.daily_quota))
    .bind(serde_json::to_string(&f.operation_limits).unwrap_or_else(|_| "{}".into()))
    .bind(id.to_string())
    .execute(c)
    .await?;
    Ok(())
}

pub async fn plans(c: &mut Conn, api: ApiId) -> Result<Vec<Plan>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PLAN_COLS} FROM plans WHERE api_id = $1 ORDER BY created_at, slug"
    )))
    .bind(api.to_string())
    .fetch_all(c)
    .await?;
    rows.iter().map(decode_plan).collect()
}

pub async fn plan_by_id(c: &mut Conn, id: PlanId) -> Result<Option<Plan>> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {PLAN_COLS} FROM plans WHERE id = $1")))
        .bind(id.to_string())
        .fetch_optional(c)
        .await?
        .as_ref()
        .map(decode_plan)
        .transpose()
}

pub async fn all_plans(c: &mut Conn) -> Result<Vec<Plan>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {PLAN_COLS} FROM plans"))).fetch_all(c).await?;
    rows.iter().map(decode_plan).collect()
}

/// Every version's policies (drafts and retired ones too): what re-sealing secrets walks.
pub async fn all_version_policies(c: &mut Conn) -> Result<Vec<(VersionId, Policies)>> {
    let rows = sqlx::query("SELECT id, policies FROM api_versions WHERE policies IS NOT NULL").fetch_all(c).await?;
    let t = "api_versions";
    rows.iter()
        .map(|r| {
            let json: String = get(r, t, "policies")?;
            let p = serde_json::from_str(&json)
                .map_err(|e| Error::Corrupt { table: t, message: format!("policies: {e}") })?;
            Ok((parse(r, t, "id")?, p))
        })
        .collect()
}

pub async fn set_version_policies(c: &mut Conn, id: VersionId, p: &Policies) -> Result<()> {
    sqlx::query("UPDATE api_versions SET policies = $1 WHERE id = $2")
        .bind(policies_json(p))
        .bind(id.to_string())
        .execute(c)
        .await?;
    Ok(())
}
