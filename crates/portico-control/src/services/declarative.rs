//! `apply` and `export` of the declarative document (`portico_core::declarative`), like decK
//! for Kong. Apply is additive and idempotent: it creates what is missing and updates what
//! differs, in ONE transaction; it never deletes. A dry run is the same code, rolled back.

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::services::outbound::{Verdicts, version_urls};
use crate::services::publish;
use crate::state::AppState;
use portico_core::declarative::*;
use portico_core::model::{OrgKind, SubscriptionStatus};
use portico_core::values::UpstreamUrl;
use portico_store::catalog::{self, ApiFields, PlanFields};
use portico_store::{Conn, Page, apps, orgs};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One change that apply made (or, in a dry run, would make).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// `create` or `update`.
    pub action: String,
    /// provider, consumer, api, version, plan, app or subscription.
    pub kind: String,
    /// What it is, e.g. `weather@1.0.0`.
    pub name: String,
    /// For updates: the fields that change.
    pub fields: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApplyReport {
    pub dry_run: bool,
    /// Empty when the marketplace already matches the document.
    pub changes: Vec<Change>,
}

fn change(action: &str, kind: &str, name: impl Into<String>, fields: Vec<&str>) -> Change {
    Change {
        action: action.into(),
        kind: kind.into(),
        name: name.into(),
        fields: fields.into_iter().map(String::from).collect(),
    }
}

fn require_admin(who: &Principal) -> Result<()> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden("apply and export need a platform admin (see `portico admin create`)".into()))
    }
}

pub async fn apply(state: &AppState, who: &Principal, doc: Document, dry_run: bool) -> Result<ApplyReport> {
    require_admin(who)?;
    doc.validate().map_err(|e| Error::Invalid(e.to_string()))?;
    for a in doc.providers.iter().flat_map(|p| &p.apis) {
        crate::services::catalog::checked_hosts(state, a.hosts.clone())?;
    }
    // Names are resolved before the transaction, never while it holds the store.
    let versions = doc.providers.iter().flat_map(|p| &p.apis).flat_map(|a| &a.versions);
    let urls: Vec<&UpstreamUrl> =
        versions.flat_map(|v| version_urls(&v.upstream_url, Some(&v.upstream)).map(|(_, u)| u)).collect();
    let verdicts = Verdicts::resolve(&state.config.outbound, urls).await;
    let mut tx = state.store.begin().await?;
    let mut changes = Vec::new();
    for p in &doc.providers {
        apply_provider(&mut tx, p, &verdicts, &state.secrets, &mut changes).await?;
    }
    for c in &doc.consumers {
        apply_consumer(&mut tx, c, &mut changes).await?;
    }
    if dry_run || changes.is_empty() {
        tx.rollback().await?;
    } else {
        let summary: Vec<String> = changes.iter().map(|c| format!("{} {} {}", c.action, c.kind, c.name)).collect();
        let ch = crate::services::audit::Change { action: "config.apply", object_type: "config", ..Default::default() }
            .after(serde_json::json!({"changes": summary}));
        crate::services::audit::record(&mut tx, who, ch).await?;
        portico_store::bump_generation(&mut tx).await?;
        tx.commit().await?;
        publish(state).await;
    }
    Ok(ApplyReport { dry_run, changes })
}

async fn ensure_org(
    c: &mut Conn,
    slug: &portico_core::values::Slug,
    name: &portico_core::values::Name,
    kind: OrgKind,
    out: &mut Vec<Change>,
) -> Result<orgs::Org> {
    let kind_name = kind.as_str();
    match orgs::by_slug(c, slug.as_str()).await? {
        Some(o) if o.kind != kind => Err(Error::Conflict(format!(
            "organization `{slug}` exists and is a {} organization, not a {kind_name}",
            o.kind
        ))),
        Some(o) => {
            if &o.name != name {
                orgs::rename(c, o.id, name).await?;
                out.push(change("update", kind_name, slug.as_str(), vec!["name"]));
            }
            Ok(o)
        }
        None if slug.as_str() == super::accounts::PLATFORM_SLUG => {
            Err(Error::Conflict(format!("the slug `{slug}` is reserved for the platform admins; choose another")))
        }
        None => {
            out.push(change("create", kind_name, slug.as_str(), vec![]));
            Ok(orgs::insert(c, slug, name, kind).await?)
        }
    }
}

/// A version's URLs against the outbound policy's verdicts, the error naming the version.
fn check_upstreams(verdicts: &Verdicts, name: &str, v: &VersionSpec) -> Result<()> {
    for (field, url) in version_urls(&v.upstream_url, Some(&v.upstream)) {
        verdicts.check(&format!("{name}: {field}"), url)?;
    }
    Ok(())
}

async fn apply_provider(
    c: &mut Conn,
    p: &ProviderSpec,
    verdicts: &Verdicts,
    secrets: &portico_core::secret::Keyring,
    out: &mut Vec<Change>,
) -> Result<()> {
    let org = ensure_org(c, &p.slug, &p.name, OrgKind::Provider, out).await?;
    for a in &p.apis {
        let fields = ApiFields {
            name: a.name.clone(),
            description: a.description.clone(),
            category: a.category.clone(),
            tags: a.tags.clone(),
            visibility: a.visibility,
            hosts: crate::services::catalog::dedup_hosts(a.hosts.clone())?,
        };
        let api = match catalog::api_by_slug(c, a.slug.as_str()).await? {
            Some(api) if api.org_id != org.id => {
                return Err(Error::Conflict(format!("API `{}` exists and belongs to another provider", a.slug)));
            }
            Some(api) => {
                let f = &api.fields;
                let mut diff = vec![];
                if f.name != fields.name {
                    diff.push("name")
                }
                if f.description != fields.description {
                    diff.push("description")
                }
                if f.category != fields.category {
                    diff.push("category")
                }
                if f.tags != fields.tags {
                    diff.push("tags")
                }
                if f.visibility != fields.visibility {
                    diff.push("visibility")
                }
                if f.hosts != fields.hosts {
                    diff.push("hosts")
                }
                if !diff.is_empty() {
                    catalog::update_api(c, api.id, &fields).await?;
                    out.push(change("update", "api", a.slug.as_str(), diff));
                }
                api
            }
            None => {
                out.push(change("create", "api", a.slug.as_str(), vec![]));
                catalog::insert_api(c, org.id, &a.slug, &fields).await?
            }
        };
        let existing = catalog::versions(c, api.id).await?;
        for v in &a.versions {
            let name = format!("{}@{}", a.slug, v.version);
            match existing.iter().find(|e| e.version == v.version) {
                Some(e) => {
                    let mut diff = vec![];
                    if e.state != v.state {
                        if !e.state.can_move_to(v.state) {
                            return Err(Error::Invalid(format!(
                                "{name}: a {} version cannot move back to {}",
                                e.state, v.state
                            )));
                        }
                        diff.push("state");
                    }
                    if e.upstream_url != v.upstream_url {
                        diff.push("upstream_url")
                    }
                    if e.policy != v.upstream {
                        diff.push("upstream")
                    }
                    if e.upstream_url != v.upstream_url || e.policy != v.upstream {
                        check_upstreams(verdicts, &name, v)?;
                    }
                    let stored = e.policies.map_secrets(|x| secrets.open(x))?;
                    let policies = v.policies.keeping_secrets_of(&stored);
                    policies.validate().map_err(|err| Error::Invalid(format!("{name}: {err}")))?;
                    if policies.validate_requests {
                        portico_core::validation::check_document(&v.openapi)
                            .map_err(|err| Error::Invalid(format!("{name}: {err}")))?;
                    }
                    if stored != policies {
                        diff.push("policies")
                    }
                    let policies = policies.map_secrets(|x| Ok(secrets.seal(x)))?;
                    if e.openapi != v.openapi {
                        diff.push("openapi")
                    }
                    if !diff.is_empty() {
                        let updated = catalog::ApiVersion {
                            state: v.state,
                            upstream_url: v.upstream_url.clone(),
                            policy: v.upstream.clone(),
                            policies,
                            openapi: v.openapi.clone(),
                            ..e.clone()
                        };
                        catalog::update_version(c, &updated).await?;
                        out.push(change("update", "version", name, diff));
                    }
                }
                None => {
                    v.policies.validate().map_err(|err| Error::Invalid(format!("{name}: {err}")))?;
                    if v.policies.validate_requests {
                        portico_core::validation::check_document(&v.openapi)
                            .map_err(|err| Error::Invalid(format!("{name}: {err}")))?;
                    }
                    check_upstreams(verdicts, &name, v)?;
                    let sealed = v.policies.map_secrets(|x| Ok(secrets.seal(x)))?;
                    let input = catalog::VersionInput {
                        version: v.version,
                        state: v.state,
                        upstream_url: &v.upstream_url,
                        policy: &v.upstream,
                        policies: &sealed,
                        openapi: &v.openapi,
                    };
                    catalog::insert_version(c, api.id, input).await?;
                    out.push(change("create", "version", name, vec![]));
                }
            }
        }
        let plans = catalog::plans(c, api.id).await?;
        for l in &a.plans {
            let name = format!("{}/{}", a.slug, l.slug);
            let fields = PlanFields {
                name: l.name.clone(),
                description: l.description.clone(),
                pricing: l.pricing.clone(),
                rate_limit: l.rate_limit,
                rate_limits: l.rate_limits.clone(),
                monthly_quota: l.monthly_quota,
                daily_quota: l.daily_quota,
                operation_limits: l.operation_limits.clone(),
                visibility: l.visibility,
            };
            match plans.iter().find(|e| e.slug == l.slug) {
                Some(e) if e.fields == fields => {}
                Some(e) => {
                    let f = &e.fields;
                    let mut diff = vec![];
                    if f.name != fields.name {
                        diff.push("name")
                    }
                    if f.description != fields.description {
                        diff.push("description")
                    }
                    if f.pricing != fields.pricing {
                        diff.push("pricing")
                    }
                    if f.rate_limit != fields.rate_limit {
                        diff.push("rate_limit")
                    }
                    if f.rate_limits != fields.rate_limits {
                        diff.push("rate_limits")
                    }
                    if f.monthly_quota != fields.monthly_quota {
                        diff.push("monthly_quota")
                    }
                    if f.daily_quota != fields.daily_quota {
                        diff.push("daily_quota")
                    }
                    if f.operation_limits != fields.operation_limits {
                        diff.push("operation_limits")
                    }
                    if f.visibility != fields.visibility {
                        diff.push("visibility")
                    }
                    catalog::update_plan(c, e.id, &fields).await?;
                    out.push(change("update", "plan", name, diff));
                }
                None => {
                    catalog::insert_plan(c, api.id, &l.slug, &fields).await?;
                    out.push(change("create", "plan", name, vec![]));
                }
            }
        }
    }
    Ok(())
}

async fn apply_consumer(c: &mut Conn, spec: &ConsumerSpec, out: &mut Vec<Change>) -> Result<()> {
    let org = ensure_org(c, &spec.slug, &spec.name, OrgKind::Consumer, out).await?;
    for a in &spec.apps {
        let app = match apps::app_by_slug(c, org.id, a.slug.as_str()).await? {
            Some(app) => {
                if app.name != a.name || app.description != a.description {
                    apps::update_app(c, app.id, &a.name, &a.description).await?;
                    out.push(change("update", "app", format!("{}/{}", spec.slug, a.slug), vec!["name", "description"]));
                }
                app
            }
            None => {
                out.push(change("create", "app", format!("{}/{}", spec.slug, a.slug), vec![]));
                apps::insert_app(c, org.id, &a.slug, &a.name, &a.description).await?
            }
        };
        let subs = apps::subscriptions_of_app(c, app.id).await?;
        for s in &a.subscriptions {
            let name = format!("{}/{} → {}/{}", spec.slug, a.slug, s.api, s.plan);
            let api = catalog::api_by_slug(c, s.api.as_str())
                .await?
                .ok_or_else(|| Error::Invalid(format!("{name}: there is no API `{}`", s.api)))?;
            let plan = catalog::plans(c, api.id)
                .await?
                .into_iter()
                .find(|p| p.slug == s.plan)
                .ok_or_else(|| Error::Invalid(format!("{name}: API `{}` has no plan `{}`", s.api, s.plan)))?;
            match subs.iter().find(|x| x.api_id == api.id && x.status == SubscriptionStatus::Active) {
                Some(x) if x.plan_id == plan.id => {}
                Some(x) => {
                    apps::set_subscription_plan(c, x.id, plan.id).await?;
                    out.push(change("update", "subscription", name, vec!["plan"]));
                }
                None => {
                    apps::insert_subscription(c, app.id, api.id, plan.id).await?;
                    out.push(change("create", "subscription", name, vec![]));
                }
            }
        }
    }
    Ok(())
}

/// The whole marketplace as a document: providers (with APIs, versions, plans) and consumers
/// (with apps and active subscriptions), in a stable order, so `apply(export())` is a no-op.
pub async fn export(state: &AppState, who: &Principal) -> Result<Document> {
    require_admin(who)?;
    let mut tx = state.store.begin().await?;
    let c: &mut Conn = &mut tx;
    let mut doc = Document::default();
    for o in orgs::list(c, Some(OrgKind::Provider), Page::all()).await? {
        let mut apis = vec![];
        for a in catalog::list_apis(c, catalog::ApiScope::Org(o.id), Page::all()).await? {
            let mut versions: Vec<VersionSpec> = catalog::versions(c, a.id)
                .await?
                .into_iter()
                .map(|v| {
                    Ok(VersionSpec {
                        version: v.version,
                        state: v.state,
                        upstream_url: v.upstream_url,
                        upstream: v.policy,
                        policies: v.policies.map_secrets(|x| state.secrets.open(x))?,
                        openapi: v.openapi,
                    })
                })
                .collect::<Result<_>>()?;
            versions.sort_by_key(|v| v.version);
            let plans = catalog::plans(c, a.id)
                .await?
                .into_iter()
                .map(|p| PlanSpec {
                    slug: p.slug,
                    name: p.fields.name,
                    description: p.fields.description,
                    pricing: p.fields.pricing,
                    rate_limit: p.fields.rate_limit,
                    rate_limits: p.fields.rate_limits,
                    monthly_quota: p.fields.monthly_quota,
                    daily_quota: p.fields.daily_quota,
                    operation_limits: p.fields.operation_limits,
                    visibility: p.fields.visibility,
                })
                .collect();
            let f = a.fields;
            apis.push(ApiSpec {
                slug: a.slug,
                name: f.name,
                description: f.description,
                category: f.category,
                tags: f.tags,
                visibility: f.visibility,
                hosts: f.hosts,
                versions,
                plans,
            });
        }
        doc.providers.push(ProviderSpec { slug: o.slug, name: o.name, apis });
    }
    for o in orgs::list(c, Some(OrgKind::Consumer), Page::all()).await? {
        let mut out_apps = vec![];
        for app in apps::list_apps(c, Some(&[o.id]), Page::all()).await? {
            let mut subscriptions = vec![];
            for s in apps::subscriptions_of_app(c, app.id)
                .await?
                .into_iter()
                .filter(|s| s.status == SubscriptionStatus::Active)
            {
                let api = catalog::api_by_id(c, s.api_id).await?;
                let plan = catalog::plan_by_id(c, s.plan_id).await?;
                if let (Some(api), Some(plan)) = (api, plan) {
                    subscriptions.push(SubscriptionSpec { api: api.slug, plan: plan.slug });
                }
            }
            subscriptions.sort_by(|a, b| a.api.cmp(&b.api));
            out_apps.push(AppSpec { slug: app.slug, name: app.name, description: app.description, subscriptions });
        }
        out_apps.sort_by(|a, b| a.slug.cmp(&b.slug));
        doc.consumers.push(ConsumerSpec { slug: o.slug, name: o.name, apps: out_apps });
    }
    tx.rollback().await?;
    Ok(doc)
}
