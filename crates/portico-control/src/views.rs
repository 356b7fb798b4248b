//! What the API returns: JSON views of the store's records, with their OpenAPI schemas.
//! Secrets never appear here, except a new key's secret in [`CreatedKey`], shown once.

use portico_core::model::Pricing;
use portico_store::{apps, catalog, orgs, users};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

pub(crate) fn ts(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A page of results. Ask for the next one with `offset = next_offset`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paged<T: ToSchema> {
    pub items: Vec<T>,
    pub limit: i64,
    pub offset: i64,
    /// Present when there may be more.
    pub next_offset: Option<i64>,
}

impl<T: ToSchema> Paged<T> {
    pub fn new(items: Vec<T>, page: portico_store::Page) -> Self {
        let next_offset = (items.len() as i64 == page.limit).then_some(page.offset.saturating_add(page.limit));
        Paged { items, limit: page.limit, offset: page.offset, next_offset }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrgView {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// provider, consumer or platform
    pub kind: String,
    /// The caller's role in it, if a member.
    pub role: Option<String>,
    pub created_at: String,
}

impl OrgView {
    pub fn from(o: &orgs::Org, role: Option<String>) -> Self {
        OrgView {
            id: o.id.to_string(),
            slug: o.slug.to_string(),
            name: o.name.to_string(),
            kind: o.kind.to_string(),
            role,
            created_at: ts(o.created_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub is_platform_admin: bool,
    pub created_at: String,
    /// Whether the e-mail address has been verified (the link in the verification e-mail).
    pub email_verified: bool,
}

impl From<&users::User> for UserView {
    fn from(u: &users::User) -> Self {
        UserView {
            id: u.id.to_string(),
            email: u.email.to_string(),
            name: u.name.to_string(),
            is_platform_admin: u.is_platform_admin,
            email_verified: u.email_verified_at.is_some(),
            created_at: ts(u.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    pub user: UserView,
    pub organizations: Vec<OrgView>,
    /// Send as `X-CSRF-Token` with changes made with the session cookie.
    pub csrf_token: String,
}

/// A new session: the bearer token for scripts (also set as a cookie for browsers).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub token: String,
    /// Send as `X-CSRF-Token` with changes made with the session cookie (not needed with the
    /// bearer token).
    pub csrf_token: String,
    pub expires_at: Option<String>,
    pub user: UserView,
    pub organizations: Vec<OrgView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiView {
    pub id: String,
    pub slug: String,
    pub org_id: String,
    pub provider: String,
    pub name: String,
    pub description: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
    pub visibility: String,
    /// Host names the API also answers on at the gateway (as `https://{host}/v{major}/…`).
    pub hosts: Vec<String>,
    /// Base URL of the newest serving major version through the gateway, if any.
    pub gateway_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl ApiView {
    pub fn from(a: &catalog::Api, provider: &str, gateway_url: Option<String>) -> Self {
        ApiView {
            id: a.id.to_string(),
            slug: a.slug.to_string(),
            org_id: a.org_id.to_string(),
            provider: provider.to_owned(),
            name: a.fields.name.to_string(),
            description: a.fields.description.clone(),
            category: a.fields.category.clone(),
            tags: a.fields.tags.clone(),
            visibility: a.fields.visibility.to_string(),
            hosts: a.fields.hosts.iter().map(ToString::to_string).collect(),
            gateway_url,
            created_at: ts(a.created_at),
            updated_at: ts(a.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiDetail {
    #[serde(flatten)]
    pub api: ApiView,
    pub versions: Vec<VersionView>,
    pub plans: Vec<PlanView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OperationView {
    pub method: String,
    pub path: String,
    pub operation_id: Option<String>,
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    pub id: String,
    pub version: String,
    pub major: u32,
    /// draft, published, deprecated or retired
    pub state: String,
    /// Shown to the API's provider and admins only.
    pub upstream_url: Option<String>,
    /// Shown to the API's provider and admins only.
    #[schema(value_type = Option<Object>)]
    pub upstream: Option<portico_core::upstream::UpstreamPolicy>,
    /// Shown to the API's provider and admins only, secrets as `"<secret>"`.
    #[schema(value_type = Option<Object>)]
    pub policies: Option<portico_core::policy::Policies>,
    pub title: String,
    pub operations: Vec<OperationView>,
    pub created_at: String,
    pub updated_at: String,
}

impl VersionView {
    pub fn from(v: &catalog::ApiVersion, show_upstream: bool) -> Self {
        let doc = portico_core::openapi::OpenApiDoc::parse(v.openapi.clone()).ok();
        VersionView {
            id: v.id.to_string(),
            version: v.version.to_string(),
            major: v.version.major,
            state: v.state.to_string(),
            upstream_url: show_upstream.then(|| v.upstream_url.to_string()),
            upstream: show_upstream.then(|| v.policy.clone()),
            policies: show_upstream.then(|| v.policies.redacted()),
            title: doc.as_ref().map(|d| d.title.clone()).unwrap_or_default(),
            operations: doc
                .map(|d| {
                    d.operations
                        .into_iter()
                        .map(|o| OperationView {
                            method: o.method,
                            path: o.path,
                            operation_id: o.operation_id,
                            summary: o.summary,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            created_at: ts(v.created_at),
            updated_at: ts(v.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RateLimitView {
    pub requests: u32,
    /// second, minute, hour or day
    pub per: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanView {
    pub id: String,
    pub api_id: String,
    pub slug: String,
    pub name: String,
    pub description: String,
    /// `{"type":"free"}` or `{"type":"flat_monthly","amount_minor":2900,"currency":"USD"}`
    #[schema(value_type = Object)]
    pub pricing: Pricing,
    pub rate_limit: Option<RateLimitView>,
    /// More windows, all enforced with `rate_limit`.
    pub rate_limits: Vec<RateLimitView>,
    pub monthly_quota: Option<u64>,
    /// Units per calendar day (UTC).
    pub daily_quota: Option<u64>,
    /// Windows for single operations (operationId → windows), on top of the plan's.
    pub operation_limits: std::collections::BTreeMap<String, Vec<RateLimitView>>,
    pub visibility: String,
}

impl From<&catalog::Plan> for PlanView {
    fn from(p: &catalog::Plan) -> Self {
        PlanView {
            id: p.id.to_string(),
            api_id: p.api_id.to_string(),
            slug: p.slug.to_string(),
            name: p.fields.name.to_string(),
            description: p.fields.description.clone(),
            pricing: p.fields.pricing.clone(),
            rate_limit: p
                .fields
                .rate_limit
                .map(|r| RateLimitView { requests: r.requests(), per: r.per().as_str().into() }),
            rate_limits: p
                .fields
                .rate_limits
                .iter()
                .map(|r| RateLimitView { requests: r.requests(), per: r.per().as_str().into() })
                .collect(),
            monthly_quota: p.fields.monthly_quota,
            daily_quota: p.fields.daily_quota,
            operation_limits: p
                .fields
                .operation_limits
                .iter()
                .map(|(op, ws)| {
                    let ws = ws.iter().map(|r| RateLimitView { requests: r.requests(), per: r.per().as_str().into() });
                    (op.clone(), ws.collect())
                })
                .collect(),
            visibility: p.fields.visibility.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AppView {
    pub id: String,
    pub org_id: String,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub created_at: String,
}

impl From<&apps::App> for AppView {
    fn from(a: &apps::App) -> Self {
        AppView {
            id: a.id.to_string(),
            org_id: a.org_id.to_string(),
            slug: a.slug.to_string(),
            name: a.name.to_string(),
            description: a.description.clone(),
            created_at: ts(a.created_at),
        }
    }
}

/// An API key as lists show it: never the secret, only its first 8 and last 4 characters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub app_id: String,
    pub name: String,
    pub prefix: String,
    pub last4: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// When the key stops working (its expiry, or the end of a rotation's overlap).
    pub expires_at: Option<String>,
    /// API slugs the key may call; empty: every API its app subscribes to.
    pub scopes: Vec<String>,
    /// The last call made with it (to within a minute).
    pub last_used_at: Option<String>,
}

impl From<&apps::KeyRecord> for KeyView {
    fn from(k: &apps::KeyRecord) -> Self {
        KeyView {
            id: k.id.to_string(),
            app_id: k.app_id.to_string(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            last4: k.last4.clone(),
            created_at: ts(k.created_at),
            revoked_at: k.revoked_at.map(ts),
            expires_at: k.expires_at.map(ts),
            scopes: k.scopes.clone(),
            last_used_at: k.last_used_at.map(ts),
        }
    }
}

/// A new key. `key` is the secret: shown this once, never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub app_id: String,
    pub api_id: String,
    pub api: String,
    pub plan_id: String,
    pub plan: String,
    /// active or cancelled
    pub status: String,
    pub created_at: String,
    pub cancelled_at: Option<String>,
}

impl SubscriptionView {
    pub fn from(s: &apps::Subscription, api: &str, plan: &str) -> Self {
        SubscriptionView {
            id: s.id.to_string(),
            app_id: s.app_id.to_string(),
            api_id: s.api_id.to_string(),
            api: api.to_owned(),
            plan_id: s.plan_id.to_string(),
            plan: plan.to_owned(),
            status: s.status.to_string(),
            created_at: ts(s.created_at),
            cancelled_at: s.cancelled_at.map(ts),
        }
    }
}

/// Calls of one subscription on one UTC day.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageDayView {
    pub subscription_id: String,
    pub day: String,
    pub calls: i64,
    pub success: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub avg_latency_ms: f64,
}

impl From<&portico_store::usage::DailyUsage> for UsageDayView {
    fn from(u: &portico_store::usage::DailyUsage) -> Self {
        UsageDayView {
            subscription_id: u.subscription_id.map(|s| s.to_string()).unwrap_or_default(),
            day: u.day.clone(),
            calls: u.calls,
            success: u.success,
            client_errors: u.client_errors,
            server_errors: u.server_errors,
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            avg_latency_ms: if u.calls > 0 { u.latency_micros_sum as f64 / u.calls as f64 / 1000.0 } else { 0.0 },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub total_calls: i64,
    pub days: Vec<UsageDayView>,
}
