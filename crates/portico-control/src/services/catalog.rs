//! The catalog: providers' APIs, their versions and plans.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::audit::{self, Change};
use crate::services::{managed_api, outbound, publish, visible_api};
use crate::state::AppState;
use crate::views::{ApiDetail, ApiView, PlanView, VersionView};
use portico_core::ids::OrgId;
use portico_core::model::{LifecycleState, OrgKind, Pricing, Visibility};
use portico_core::openapi::OpenApiDoc;
use portico_core::policy::Policies;
use portico_core::upstream::UpstreamPolicy;
use portico_core::values::{Hostname, Name, RateLimit, Slug, UpstreamUrl, VersionNumber};
use portico_store::catalog::{self, Api, ApiFields, ApiScope, PlanFields};
use portico_store::{Page, orgs};
use serde::Deserialize;
use std::collections::HashMap;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApi {
    /// The provider organization that owns the API; may be left out when you belong to one.
    pub org_id: Option<String>,
    #[schema(value_type = String, example = "weather")]
    pub slug: Slug,
    #[schema(value_type = String, example = "Weather")]
    pub name: Name,
    #[serde(default)]
    pub description: String,
    pub category: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(value_type = String, example = "public")]
    pub visibility: Visibility,
    /// Host names the API also answers on at the gateway (`https://weather.example.com/v1/…`
    /// besides `/{slug}/v1/…`); each host belongs to one API. Point the name's DNS at the
    /// gateway.
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["weather.example.com"]))]
    pub hosts: Vec<Hostname>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApi {
    #[schema(value_type = Option<String>)]
    pub name: Option<Name>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<String>)]
    pub visibility: Option<Visibility>,
    /// Replaces the API's host names (`[]` removes them).
    #[schema(value_type = Option<Vec<String>>)]
    pub hosts: Option<Vec<Hostname>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVersion {
    #[schema(value_type = String, example = "1.0.0")]
    pub version: VersionNumber,
    #[schema(value_type = String, example = "https://api.example.com/v1")]
    pub upstream_url: UpstreamUrl,
    /// More targets, balancing, timeouts, retries, health checks (defaults when absent).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub upstream: Option<UpstreamPolicy>,
    /// IP lists, JSON depth, operation weights, header and path rewriting, the upstream
    /// credential, request signing, CORS (none when absent).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub policies: Option<Policies>,
    /// The OpenAPI 3.0 or 3.1 document (JSON); or `openapi_url`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub openapi: Option<serde_json::Value>,
    /// Where Portico fetches the document from instead (JSON or YAML, http(s), through the
    /// outbound policy, redirects followed and checked, at most 5).
    #[serde(default)]
    pub openapi_url: Option<String>,
    /// `draft` (default) or `published`.
    #[schema(value_type = Option<String>)]
    pub state: Option<LifecycleState>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVersion {
    /// Moves forward only: draft → published → deprecated → retired.
    #[schema(value_type = Option<String>)]
    pub state: Option<LifecycleState>,
    #[schema(value_type = Option<String>)]
    pub upstream_url: Option<UpstreamUrl>,
    #[schema(value_type = Option<Object>)]
    pub upstream: Option<UpstreamPolicy>,
    /// Replaces the version's policies. A secret given as `"<secret>"` keeps the stored one.
    #[schema(value_type = Option<Object>)]
    pub policies: Option<Policies>,
    #[schema(value_type = Option<Object>)]
    pub openapi: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    #[schema(value_type = String, example = "free")]
    pub slug: Slug,
    #[schema(value_type = String, example = "Free")]
    pub name: Name,
    #[serde(default)]
    pub description: String,
    /// `{"type":"free"}` or `{"type":"flat_monthly","amount_minor":2900,"currency":"USD"}`
    #[schema(value_type = Object)]
    pub pricing: Pricing,
    /// `{"requests": 60, "per": "minute"}`
    #[schema(value_type = Option<Object>)]
    pub rate_limit: Option<RateLimit>,
    /// More windows, all enforced with `rate_limit`: `[{"requests": 1000, "per": "hour"}]`
    /// (one per period).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rate_limits: Vec<RateLimit>,
    pub monthly_quota: Option<u64>,
    /// Units per calendar day (UTC); resets at midnight.
    pub daily_quota: Option<u64>,
    /// Windows for single operations, by operationId, on top of the plan's:
    /// `{"search": [{"requests": 10, "per": "minute"}]}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub operation_limits: std::collections::BTreeMap<String, Vec<RateLimit>>,
    #[serde(default)]
    #[schema(value_type = String)]
    pub visibility: Visibility,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    #[schema(value_type = Option<String>)]
    pub name: Option<Name>,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub pricing: Option<Pricing>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub rate_limit: Option<Option<RateLimit>>,
    /// Replaces the extra windows (`[]` removes them).
    #[schema(value_type = Option<Vec<Object>>)]
    pub rate_limits: Option<Vec<RateLimit>>,
    #[serde(default, deserialize_with = "double_option")]
    pub monthly_quota: Option<Option<u64>>,
    /// `null` removes the daily quota.
    #[serde(default, deserialize_with = "double_option")]
    pub daily_quota: Option<Option<u64>>,
    /// Replaces the per-operation windows (`{}` removes them).
    #[schema(value_type = Option<Object>)]
    pub operation_limits: Option<std::collections::BTreeMap<String, Vec<RateLimit>>>,
    #[schema(value_type = Option<String>)]
    pub visibility: Option<Visibility>,
}

fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// At most 10 host names, each once.
pub(crate) fn dedup_hosts(mut hosts: Vec<Hostname>) -> Result<Vec<Hostname>> {
    if hosts.len() > 10 {
        return Err(Error::Invalid("hosts: an API answers on at most 10 host names".into()));
    }
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// [`dedup_hosts`], and none of Portico's own host names (the gateway's and the API's public
/// hosts): an API that claimed one would take the slug routes of every other API on it.
pub(crate) fn checked_hosts(state: &AppState, hosts: Vec<Hostname>) -> Result<Vec<Hostname>> {
    let hosts = dedup_hosts(hosts)?;
    for url in [&state.config.gateway_url, &state.config.token_issuer] {
        let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or_default();
        if let Some(h) = hosts.iter().find(|h| h.as_str().eq_ignore_ascii_case(host)) {
            return Err(Error::Invalid(format!(
                "hosts: `{h}` is Portico's own host name; APIs are reached on it as /{{slug}}/v{{major}}"
            )));
        }
    }
    Ok(hosts)
}

fn validate_tags(tags: &[String]) -> Result<()> {
    if tags.len() > 20 || tags.iter().any(|t| t.trim().is_empty() || t.len() > 40) {
        return Err(Error::Invalid("tags: at most 20 tags of 1-40 characters each".into()));
    }
    Ok(())
}

pub(crate) fn gateway_base(state: &AppState, slug: &Slug, major: Option<u32>) -> Option<String> {
    major.map(|m| format!("{}/{slug}/v{m}", state.config.gateway_url.trim_end_matches('/')))
}

async fn views(state: &AppState, apis: &[Api]) -> Result<Vec<ApiView>> {
    let mut c = state.store.conn().await?;
    let mut names: HashMap<OrgId, String> = HashMap::new();
    let mut out = Vec::with_capacity(apis.len());
    for a in apis {
        if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(a.org_id) {
            slot.insert(orgs::by_id(&mut c, a.org_id).await?.map(|o| o.name.to_string()).unwrap_or_default());
        }
        let major = catalog::versions(&mut c, a.id)
            .await?
            .iter()
            .filter(|v| v.state.serves_traffic())
            .map(|v| v.version.major)
            .max();
        out.push(ApiView::from(a, &names[&a.org_id], gateway_base(state, &a.slug, major)));
    }
    Ok(out)
}

pub async fn list_apis(state: &AppState, who: Option<&Principal>, page: Page) -> Result<Vec<ApiView>> {
    let scope = match who {
        Some(p) if p.is_admin() => ApiScope::All,
        Some(p) => {
            // Members see their own providers' drafts and private APIs beside the public catalog.
            let own = p.orgs_of_kind(OrgKind::Provider);
            if own.len() == 1 { ApiScope::Catalog(Some(own[0])) } else { ApiScope::Catalog(None) }
        }
        None => ApiScope::Catalog(None),
    };
    let mut c = state.store.conn().await?;
    let apis = catalog::list_apis(&mut c, scope, page).await?;
    drop(c);
    views(state, &apis).await
}

pub async fn create_api(state: &AppState, who: &Principal, req: CreateApi) -> Result<ApiView> {
    validate_tags(&req.tags)?;
    let org = match req.org_id.as_deref() {
        Some(id) => super::parse_id(id, "organization")?,
        None => match who.orgs_of_kind(OrgKind::Provider).as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::Forbidden(
                    "only members of a provider organization can publish APIs; create one with POST /api/v1/orgs"
                        .into(),
                ));
            }
            _ => return Err(Error::Invalid("you belong to several provider organizations: set org_id".into())),
        },
    };
    let mut tx = state.store.begin().await?;
    let o = orgs::by_id(&mut tx, org)
        .await?
        .filter(|_| who.can_read(org))
        .ok_or_else(|| Error::not_found(format_args!("organization `{org}`")))?;
    if !who.can_manage(org) {
        return Err(Error::Forbidden("your role in this organization cannot publish APIs".into()));
    }
    if o.kind != OrgKind::Provider && !who.is_admin() {
        return Err(Error::Invalid(format!(
            "`{}` is a {} organization; APIs belong to provider organizations",
            o.slug, o.kind
        )));
    }
    let fields = ApiFields {
        name: req.name,
        description: req.description,
        category: req.category,
        tags: req.tags,
        visibility: req.visibility,
        hosts: checked_hosts(state, req.hosts)?,
    };
    let api = catalog::insert_api(&mut tx, org, &req.slug, &fields).await?;
    let view = ApiView::from(&api, o.name.as_str(), None);
    audit::record(&mut tx, who, Change::new("api.create", "api", api.id, Some(org)).after(&view)).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

pub async fn get_api(state: &AppState, who: Option<&Principal>, slug: &str) -> Result<ApiDetail> {
    let api = visible_api(state, who, slug).await?;
    let insider = who.is_some_and(|p| p.can_read(api.org_id));
    let mut c = state.store.conn().await?;
    let versions: Vec<VersionView> = catalog::versions(&mut c, api.id)
        .await?
        .iter()
        .filter(|v| insider || v.state != LifecycleState::Draft)
        .map(|v| VersionView::from(v, insider))
        .collect();
    let plans = catalog::plans(&mut c, api.id)
        .await?
        .iter()
        .filter(|p| insider || p.fields.visibility == Visibility::Public)
        .map(PlanView::from)
        .collect();
    drop(c);
    let view = views(state, std::slice::from_ref(&api)).await?.remove(0);
    Ok(ApiDetail { api: view, versions, plans })
}

pub async fn update_api(state: &AppState, who: &Principal, slug: &str, req: UpdateApi) -> Result<ApiView> {
    let api = managed_api(state, who, slug).await?;
    let mut f = api.fields.clone();
    if let Some(n) = req.name {
        f.name = n;
    }
    if let Some(d) = req.description {
        f.description = d;
    }
    if let Some(c) = req.category {
        f.category = Some(c).filter(|c| !c.is_empty());
    }
    if let Some(t) = req.tags {
        validate_tags(&t)?;
        f.tags = t;
    }
    if let Some(v) = req.visibility {
        f.visibility = v;
    }
    if let Some(h) = req.hosts {
        f.hosts = checked_hosts(state, h)?;
    }
    let mut tx = state.store.begin().await?;
    catalog::update_api(&mut tx, api.id, &f).await?;
    let ch = Change::new("api.update", "api", api.id, Some(api.org_id))
        .before(fields_json(&api.fields))
        .after(fields_json(&f));
    audit::record(&mut tx, who, ch).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    let updated = Api { fields: f, ..api };
    Ok(views(state, std::slice::from_ref(&updated)).await?.remove(0))
}

pub async fn list_versions(state: &AppState, who: Option<&Principal>, slug: &str) -> Result<Vec<VersionView>> {
    Ok(get_api(state, who, slug).await?.versions)
}

pub async fn create_version(state: &AppState, who: &Principal, slug: &str, req: CreateVersion) -> Result<VersionView> {
    let api = managed_api(state, who, slug).await?;
    let openapi = match (req.openapi, req.openapi_url.as_deref()) {
        (Some(doc), None) => doc,
        (None, Some(url)) => {
            outbound::fetch_document(&state.config.outbound, "openapi_url", url, state.config.max_body_bytes).await?
        }
        (Some(_), Some(_)) => return Err(Error::Invalid("send `openapi` or `openapi_url`, not both".into())),
        (None, None) => {
            return Err(Error::Invalid(
                "openapi: the version's OpenAPI document is required (or `openapi_url` to fetch it from)".into(),
            ));
        }
    };
    OpenApiDoc::parse(openapi.clone())?;
    if let Some(p) = &req.upstream {
        p.validate()?;
    }
    let policies = req.policies.unwrap_or_default();
    policies.validate()?;
    if policies.validate_requests {
        portico_core::validation::check_document(&openapi)?;
    }
    let stateval = req.state.unwrap_or(LifecycleState::Draft);
    if !matches!(stateval, LifecycleState::Draft | LifecycleState::Published) {
        return Err(Error::Invalid("a new version starts as `draft` or `published`".into()));
    }
    outbound::check_version(&state.config.outbound, &req.upstream_url, req.upstream.as_ref()).await?;
    let policies = policies.map_secrets(|x| Ok(state.secrets.seal(x)))?;
    let mut tx = state.store.begin().await?;
    let policy = req.upstream.unwrap_or_default();
    let input = catalog::VersionInput {
        version: req.version,
        state: stateval,
        upstream_url: &req.upstream_url,
        policy: &policy,
        policies: &policies,
        openapi: &openapi,
    };
    let v = catalog::insert_version(&mut tx, api.id, input).await?;
    let view = VersionView::from(&v, true);
    audit::record(&mut tx, who, Change::new("version.create", "version", v.id, Some(api.org_id)).after(&view)).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

async fn find_version(state: &AppState, api: &Api, version: &str) -> Result<catalog::ApiVersion> {
    let wanted = VersionNumber::parse(version).map_err(|_| Error::not_found(format_args!("version `{version}`")))?;
    let mut c = state.store.conn().await?;
    catalog::versions(&mut c, api.id)
        .await?
        .into_iter()
        .find(|v| v.version == wanted)
        .ok_or_else(|| Error::not_found(format_args!("version `{version}` of API `{}`", api.slug)))
}

pub async fn get_version(state: &AppState, who: Option<&Principal>, slug: &str, version: &str) -> Result<VersionView> {
    let api = visible_api(state, who, slug).await?;
    let insider = who.is_some_and(|p| p.can_read(api.org_id));
    let v = find_version(state, &api, version).await?;
    if !insider && v.state == LifecycleState::Draft {
        return Err(Error::not_found(format_args!("version `{version}` of API `{slug}`")));
    }
    Ok(VersionView::from(&v, insider))
}

/// The version's OpenAPI document as uploaded.
pub async fn openapi_document(
    state: &AppState,
    who: Option<&Principal>,
    slug: &str,
    version: &str,
) -> Result<serde_json::Value> {
    let api = visible_api(state, who, slug).await?;
    let insider = who.is_some_and(|p| p.can_read(api.org_id));
    let v = find_version(state, &api, version).await?;
    if !insider && v.state == LifecycleState::Draft {
        return Err(Error::not_found(format_args!("version `{version}` of API `{slug}`")));
    }
    Ok(v.openapi)
}

pub async fn update_version(
    state: &AppState,
    who: &Principal,
    slug: &str,
    version: &str,
    req: UpdateVersion,
) -> Result<VersionView> {
    let api = managed_api(state, who, slug).await?;
    let mut v = find_version(state, &api, version).await?;
    let before = VersionView::from(&v, true);
    if let Some(s) = req.state {
        if !v.state.can_move_to(s) {
            return Err(Error::Invalid(format!(
                "a {} version cannot move to {s}: versions move forward only (draft → published → deprecated → retired)",
                v.state
            )));
        }
        v.state = s;
    }
    let upstream_changed = req.upstream_url.is_some() || req.upstream.is_some();
    if let Some(u) = req.upstream_url {
        v.upstream_url = u;
    }
    if let Some(p) = req.upstream {
        p.validate()?;
        v.policy = p;
    }
    let checks_changed = req.policies.is_some() || req.openapi.is_some();
    if let Some(p) = req.policies {
        let stored = v.policies.map_secrets(|x| state.secrets.open(x))?;
        let p = p.keeping_secrets_of(&stored);
        p.validate()?;
        v.policies = p.map_secrets(|x| Ok(state.secrets.seal(x)))?;
    }
    if let Some(doc) = req.openapi {
        OpenApiDoc::parse(doc.clone())?;
        v.openapi = doc;
    }
    if checks_changed && v.policies.validate_requests {
        portico_core::validation::check_document(&v.openapi)?;
    }
    if upstream_changed {
        outbound::check_version(&state.config.outbound, &v.upstream_url, Some(&v.policy)).await?;
    }
    let mut tx = state.store.begin().await?;
    catalog::update_version(&mut tx, &v).await?;
    let view = VersionView::from(&v, true);
    let ch = Change::new("version.update", "version", v.id, Some(api.org_id)).before(before).after(&view);
    audit::record(&mut tx, who, ch).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

/// Quotas of at least 1, and rate-limit windows of distinct periods.
pub(crate) fn check_limits(f: &PlanFields) -> Result<()> {
    if f.monthly_quota == Some(0) {
        return Err(Error::Invalid(portico_core::declarative::ZERO_QUOTA.into()));
    }
    if f.daily_quota == Some(0) {
        return Err(Error::Invalid("daily_quota must be at least 1; leave it out for no daily quota".into()));
    }
    let windows: Vec<RateLimit> = f.rate_limit.into_iter().chain(f.rate_limits.iter().copied()).collect();
    portico_core::values::check_rate_windows(&windows)?;
    portico_core::values::check_operation_limits(&f.operation_limits)?;
    Ok(())
}

pub async fn list_plans(state: &AppState, who: Option<&Principal>, slug: &str) -> Result<Vec<PlanView>> {
    Ok(get_api(state, who, slug).await?.plans)
}

pub async fn create_plan(state: &AppState, who: &Principal, slug: &str, req: CreatePlan) -> Result<PlanView> {
    let api = managed_api(state, who, slug).await?;
    req.pricing.validate()?;
    let f = PlanFields {
        name: req.name,
        description: req.description,
        pricing: req.pricing,
        rate_limit: req.rate_limit,
        rate_limits: req.rate_limits,
        monthly_quota: req.monthly_quota,
        daily_quota: req.daily_quota,
        operation_limits: req.operation_limits,
        visibility: req.visibility,
    };
    check_limits(&f)?;
    let mut tx = state.store.begin().await?;
    let plan = catalog::insert_plan(&mut tx, api.id, &req.slug, &f).await?;
    let view = PlanView::from(&plan);
    audit::record(&mut tx, who, Change::new("plan.create", "plan", plan.id, Some(api.org_id)).after(&view)).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

pub async fn update_plan(
    state: &AppState,
    who: &Principal,
    slug: &str,
    plan: &str,
    req: UpdatePlan,
) -> Result<PlanView> {
    let api = managed_api(state, who, slug).await?;
    let mut c = state.store.conn().await?;
    let mut p = catalog::plans(&mut c, api.id)
        .await?
        .into_iter()
        .find(|p| p.slug.as_str() == plan)
        .ok_or_else(|| Error::not_found(format_args!("plan `{plan}` of API `{slug}`")))?;
    drop(c);
    let before = PlanView::from(&p);
    if let Some(n) = req.name {
        p.fields.name = n;
    }
    if let Some(d) = req.description {
        p.fields.description = d;
    }
    if let Some(pr) = req.pricing {
        pr.validate()?;
        p.fields.pricing = pr;
    }
    if let Some(r) = req.rate_limit {
        p.fields.rate_limit = r;
    }
    if let Some(r) = req.rate_limits {
        p.fields.rate_limits = r;
    }
    if let Some(q) = req.monthly_quota {
        p.fields.monthly_quota = q;
    }
    if let Some(q) = req.daily_quota {
        p.fields.daily_quota = q;
    }
    if let Some(o) = req.operation_limits {
        p.fields.operation_limits = o;
    }
    if let Some(v) = req.visibility {
        p.fields.visibility = v;
    }
    check_limits(&p.fields)?;
    let mut tx = state.store.begin().await?;
    catalog::update_plan(&mut tx, p.id, &p.fields).await?;
    let view = PlanView::from(&p);
    let ch = Change::new("plan.update", "plan", p.id, Some(api.org_id)).before(before).after(&view);
    audit::record(&mut tx, who, ch).await?;
    portico_store::bump_generation(&mut tx).await?;
    tx.commit().await?;
    publish(state).await;
    Ok(view)
}

/// An API's editable fields as the audit log shows them.
fn fields_json(f: &ApiFields) -> serde_json::Value {
    serde_json::json!({
        "name": f.name.as_str(),
        "description": f.description,
        "category": f.category,
        "tags": f.tags,
        "visibility": f.visibility.to_string(),
        "hosts": f.hosts,
    })
}
