//! The declarative marketplace document that `portico apply` sends and `portico export`
//! returns (like decK's file for Kong): providers with their APIs, versions and plans, and
//! consumers with their apps and subscriptions. Secrets (keys, passwords) are never in it.
//!
//! Every field deserializes through a validated type, so a bad value in a YAML file is refused
//! with its line; `Document::validate` adds the checks that span fields.

use crate::model::{LifecycleState, Pricing, Visibility};
use crate::openapi::OpenApiDoc;
use crate::policy::Policies;
use crate::upstream::UpstreamPolicy;

/// Why `monthly_quota: 0` is refused: a plan that admits nothing is a mistake, not a plan.
pub const ZERO_QUOTA: &str = "monthly_quota must be at least 1; leave it out for no quota";
use crate::values::{Name, RateLimit, Slug, UpstreamUrl, VersionNumber};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub slug: Slug,
    pub name: Name,
    #[serde(default)]
    pub apis: Vec<ApiSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    pub slug: Slug,
    pub name: Name,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub visibility: Visibility,
    /// Host names the API also answers on at the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<crate::values::Hostname>,
    #[serde(default)]
    pub versions: Vec<VersionSpec>,
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSpec {
    pub version: VersionNumber,
    #[serde(default = "default_state")]
    pub state: LifecycleState,
    pub upstream_url: UpstreamUrl,
    /// More targets, balancing, timeouts, retries and health checks; defaults when absent.
    #[serde(default, skip_serializing_if = "UpstreamPolicy::is_default")]
    pub upstream: UpstreamPolicy,
    /// IP lists, JSON depth, operation weights, header and path rewriting, the upstream
    /// credential, request signing, CORS; none when absent.
    #[serde(default, skip_serializing_if = "Policies::is_default")]
    pub policies: Policies,
    /// The OpenAPI 3.0 or 3.1 document, inline.
    pub openapi: serde_json::Value,
}

fn default_state() -> LifecycleState {
    LifecycleState::Draft
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub slug: Slug,
    pub name: Name,
    #[serde(default)]
    pub description: String,
    pub pricing: Pricing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// More windows, all enforced with `rate_limit` (one per period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<u64>,
    /// Windows for single operations (operationId → windows), on top of the plan's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub operation_limits: std::collections::BTreeMap<String, Vec<RateLimit>>,
    #[serde(default)]
    pub visibility: Visibility,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    pub slug: Slug,
    pub name: Name,
    #[serde(default)]
    pub apps: Vec<AppSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub slug: Slug,
    pub name: Name,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub api: Slug,
    pub plan: Slug,
}

/// A rule that spans fields was broken; `path` points into the document
/// (`providers[0].apis[1].plans[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DocumentError {
    pub path: String,
    pub message: String,
}

impl Document {
    /// Checks what single fields cannot: unique slugs, valid OpenAPI documents and prices,
    /// and subscriptions that name a plan of the named API (when that API is in the document).
    pub fn validate(&self) -> Result<(), DocumentError> {
        let err = |path: String, message: String| Err(DocumentError { path, message });
        let mut org_slugs = HashSet::new();
        let mut api_slugs = HashSet::new();
        for (pi, p) in self.providers.iter().enumerate() {
            let at = format!("providers[{pi}]");
            if !org_slugs.insert(&p.slug) {
                return err(at, format!("organization slug `{}` appears twice", p.slug));
            }
            for (ai, a) in p.apis.iter().enumerate() {
                let at = format!("{at}.apis[{ai}]");
                if !api_slugs.insert(&a.slug) {
                    return err(
                        at,
                        format!("API slug `{}` appears twice; API slugs are unique across the marketplace", a.slug),
                    );
                }
                let mut versions = HashSet::new();
                for (vi, v) in a.versions.iter().enumerate() {
                    let at = format!("{at}.versions[{vi}]");
                    if !versions.insert(v.version) {
                        return err(at, format!("version {} appears twice", v.version));
                    }
                    if let Err(e) = OpenApiDoc::parse(v.openapi.clone()) {
                        return err(format!("{at}.openapi"), e.to_string());
                    }
                    if let Err(e) = v.upstream.validate() {
                        return err(format!("{at}.upstream"), e.to_string());
                    }
                    if let Err(e) = v.policies.validate_shape() {
                        return err(format!("{at}.policies"), e.to_string());
                    }
                }
                let mut plans = HashSet::new();
                for (li, l) in a.plans.iter().enumerate() {
                    let at = format!("{at}.plans[{li}]");
                    if !plans.insert(&l.slug) {
                        return err(at, format!("plan slug `{}` appears twice in API `{}`", l.slug, a.slug));
                    }
                    if let Err(e) = l.pricing.validate() {
                        return err(format!("{at}.pricing"), e.to_string());
                    }
                    if l.monthly_quota == Some(0) {
                        return err(format!("{at}.monthly_quota"), ZERO_QUOTA.to_owned());
                    }
                    if l.daily_quota == Some(0) {
                        return err(
                            format!("{at}.daily_quota"),
                            "daily_quota must be at least 1; leave it out for no daily quota".to_owned(),
                        );
                    }
                    let windows: Vec<RateLimit> =
                        l.rate_limit.into_iter().chain(l.rate_limits.iter().copied()).collect();
                    if let Err(e) = crate::values::check_rate_windows(&windows) {
                        return err(format!("{at}.rate_limits"), e.to_string());
                    }
                    if let Err(e) = crate::values::check_operation_limits(&l.operation_limits) {
                        return err(format!("{at}.operation_limits"), e.to_string());
                    }
                }
            }
        }
        for (ci, c) in self.consumers.iter().enumerate() {
            let at = format!("consumers[{ci}]");
            if !org_slugs.insert(&c.slug) {
                return err(at, format!("organization slug `{}` appears twice", c.slug));
            }
            let mut apps = HashSet::new();
            for (ai, app) in c.apps.iter().enumerate() {
                let at = format!("{at}.apps[{ai}]");
                if !apps.insert(&app.slug) {
                    return err(at, format!("app slug `{}` appears twice in `{}`", app.slug, c.slug));
                }
                let mut subscribed = HashSet::new();
                for (si, s) in app.subscriptions.iter().enumerate() {
                    let at = format!("{at}.subscriptions[{si}]");
                    if !subscribed.insert(&s.api) {
                        return err(at, format!("the app subscribes to `{}` twice; one subscription per API", s.api));
                    }
                    let api = self.providers.iter().flat_map(|p| &p.apis).find(|a| a.slug == s.api);
                    if let Some(api) = api
                        && !api.plans.iter().any(|l| l.slug == s.plan)
                    {
                        let known: Vec<&str> = api.plans.iter().map(|l| l.slug.as_str()).collect();
                        return err(
                            at,
                            format!("API `{}` has no plan `{}` (its plans: {})", s.api, s.plan, known.join(", ")),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
providers:
  - slug: acme
    name: Acme
    apis:
      - slug: weather
        name: Weather
        versions:
          - version: 1.0.0
            state: published
            upstream_url: http://127.0.0.1:9000
            openapi:
              openapi: 3.1.0
              info: {title: Weather, version: 1.0.0}
              paths:
                /now: {get: {responses: {"200": {description: ok}}}}
        plans:
          - slug: free
            name: Free
            pricing: {type: free}
            rate_limit: {requests: 10, per: minute}
consumers:
  - slug: globex
    name: Globex
    apps:
      - slug: dashboard
        name: Dashboard
        subscriptions: [{api: weather, plan: free}]
"#;

    #[test]
    fn parses_and_validates() {
        let d: Document = serde_norway::from_str(DOC).unwrap();
        d.validate().unwrap();
        assert_eq!(d.providers[0].apis[0].versions[0].state, LifecycleState::Published);
    }

    #[test]
    fn a_bad_value_is_refused_with_its_line() {
        let bad = DOC.replace("slug: weather", "slug: Weather!");
        let e = serde_norway::from_str::<Document>(&bad).unwrap_err();
        assert_eq!(e.location().unwrap().line(), 6, "{e}");
        assert!(e.to_string().contains("not a valid slug"), "{e}");
        let unknown = DOC.replace("name: Dashboard", "name: Dashboard\n        colour: red");
        assert!(serde_norway::from_str::<Document>(&unknown).unwrap_err().to_string().contains("colour"));
    }

    #[test]
    fn cross_field_rules() {
        let unknown_plan = DOC.replace("plan: free}", "plan: gold}");
        let d: Document = serde_norway::from_str(&unknown_plan).unwrap();
        let e = d.validate().unwrap_err();
        assert_eq!(e.path, "consumers[0].apps[0].subscriptions[0]");
        assert!(e.message.contains("no plan `gold`"), "{e}");

        let bad_doc = DOC.replace("openapi: 3.1.0", "openapi: 2.0.0");
        let d: Document = serde_norway::from_str(&bad_doc).unwrap();
        assert!(d.validate().unwrap_err().path.ends_with("versions[0].openapi"));
    }
}
