//! The route table: every route of the REST API and the portal, declared once, with the
//! permission it needs ([`Access`]) and how the owner of its object is found ([`OwnerOf`]).
//!
//! Permission decisions stay in the services (`services/*.rs`, through [`crate::auth::Principal`]);
//! this table is what routes are checked against. The routers are built from it: the control
//! plane's plain routes and the portal's pages are mounted from their rows ([`mount`]), and the
//! routes utoipa-axum mounts must be exactly the rows of [`Surface::Api`] ([`api_mismatches`],
//! asserted when the router is built in debug builds and by a test). The authorization matrix
//! (`crates/portico/tests/authz.rs`) walks this same table, since axum cannot list its routes
//! and `openapi.json` misses the portal.

use axum::routing::{MethodFilter, MethodRouter};
use std::collections::BTreeSet;

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    pub fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Patch => MethodFilter::PATCH,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// Which router mounts a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/api/v1/*`, mounted by utoipa-axum's `routes!` and documented in `openapi.json`.
    Api,
    /// `/api/v1/*` outside the OpenAPI document (`/api/v1/openapi.json` itself).
    ApiPlain,
    /// The control plane's routes at the root: `/healthz`, `/readyz`, `/oauth/token`, `/.well-known/*`.
    Control,
    /// The API reference's pages and assets under `/api/v1/docs`, mounted by swagger-ui-dist.
    Reference,
    /// The portal's pages (`portico-portal`).
    Portal,
}

/// The permission a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Anyone, for an API that is public with a serving version; otherwise (drafts, private
    /// APIs) only its provider's members and platform admins: to anyone else it does not exist.
    Catalog,
    /// Any signed-in user: the route acts on the caller's own account or lists only what the
    /// caller may see.
    Authenticated,
    /// Owners of an organization (for their organizations) and platform admins.
    OrgOwner,
    /// Any member of the organization that owns the object, and platform admins.
    OrgMember,
    /// A member whose role may change the organization's objects (owner, admin, developer:
    /// [`portico_core::model::MemberRole::can_manage`]), and platform admins; other members are
    /// refused (403).
    OrgManager,
    /// A member whose role may manage the organization's people (owner, admin:
    /// [`portico_core::model::Permission::ManageMembers`]), and platform admins; other members
    /// are refused (403).
    OrgAdmin,
    /// Platform admins only.
    PlatformAdmin,
}

/// How the owner of a route's object is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerOf {
    /// The route has no object of its own.
    None,
    /// `{session_id}`: one of the caller's own sessions; another person's is not found.
    Session,
    /// The organization: `{org_id}` in the path, or `org_id` in the body.
    Org,
    /// The app's organization: `{app_id}` in the path, or `app_id` in the body.
    App,
    /// `{key_id}`, a key of the app `{app_id}`.
    Key,
    /// `{client_id}`, an OAuth client of the app `{app_id}`.
    Client,
    /// `{external_client_id}`, an identity of the app `{app_id}` at an external token issuer.
    ExternalClient,
    /// `{subscription_id}`: the organization of the subscribed app.
    Subscription,
    /// `{webhook_id}`, an endpoint of the organization `{org_id}`.
    Webhook,
    /// `{delivery_id}`, a delivery of the endpoint `{webhook_id}` of `{org_id}`.
    Delivery,
    /// `{slug}`: the API's provider organization.
    Api,
    /// `{version}` of the API `{slug}`.
    Version,
    /// `{plan}` of the API `{slug}`.
    Plan,
    /// `{rule_id}`, an alert rule of the API `{slug}`.
    AlertRule,
    /// `{user_id}`, a member of the organization `{org_id}`.
    Member,
    /// `{invitation_id}`, an invitation of the organization `{org_id}`.
    Invitation,
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    /// The path as served and as axum writes it, e.g. `/api/v1/apps/{app_id}/keys`.
    pub path: &'static str,
    pub surface: Surface,
    pub access: Access,
    pub owner: OwnerOf,
    /// Another tenant's object answers 404, never 403 (every route with an object).
    pub foreign_is_404: bool,
}

/// The prefix of the REST API (nested by `crate::router`).
pub const API_PREFIX: &str = "/api/v1";

impl RouteSpec {
    const fn new(method: Method, path: &'static str, surface: Surface, access: Access, owner: OwnerOf) -> Self {
        RouteSpec { method, path, surface, access, owner, foreign_is_404: !matches!(owner, OwnerOf::None) }
    }

    /// The path inside the router that mounts it (the API's routes without `/api/v1`).
    pub fn mount_path(&self) -> &'static str {
        match self.surface {
            Surface::Api | Surface::ApiPlain => self.path.strip_prefix(API_PREFIX).unwrap_or(self.path),
            _ => self.path,
        }
    }
}

use Access::*;
use Method::{Delete, Get, Patch, Post};
use Surface::{Api, ApiPlain, Control, Portal, Reference};

const fn api(m: Method, path: &'static str, access: Access, owner: OwnerOf) -> RouteSpec {
    RouteSpec::new(m, path, Api, access, owner)
}

const fn public(m: Method, path: &'static str, surface: Surface) -> RouteSpec {
    RouteSpec::new(m, path, surface, Public, OwnerOf::None)
}

/// Every route of the API and the portal (not the gateway's, nor `/metrics`, which is served on
/// its own listener).
pub static ROUTES: &[RouteSpec] = &[
    // Accounts and sessions.
    api(Post, "/api/v1/auth/signup", Public, OwnerOf::None),
    api(Post, "/api/v1/auth/login", Public, OwnerOf::None),
    api(Get, "/api/v1/auth/sso", Public, OwnerOf::None),
    api(Post, "/api/v1/auth/logout", Authenticated, OwnerOf::None),
    api(Post, "/api/v1/auth/verify-email", Public, OwnerOf::None),
    api(Post, "/api/v1/auth/password-reset", Public, OwnerOf::None),
    api(Post, "/api/v1/auth/password-reset/confirm", Public, OwnerOf::None),
    api(Get, "/api/v1/me", Authenticated, OwnerOf::None),
    api(Get, "/api/v1/me/sessions", Authenticated, OwnerOf::None),
    api(Delete, "/api/v1/me/sessions/{session_id}", Authenticated, OwnerOf::Session),
    api(Post, "/api/v1/me/password", Authenticated, OwnerOf::None),
    api(Post, "/api/v1/me/verify-email", Authenticated, OwnerOf::None),
    api(Get, "/api/v1/audit", OrgOwner, OwnerOf::None),
    // Organizations and their webhooks.
    api(Get, "/api/v1/orgs", Authenticated, OwnerOf::None),
    api(Post, "/api/v1/orgs", Authenticated, OwnerOf::None),
    api(Get, "/api/v1/orgs/{org_id}", OrgMember, OwnerOf::Org),
    api(Get, "/api/v1/orgs/{org_id}/members", OrgMember, OwnerOf::Org),
    api(Patch, "/api/v1/orgs/{org_id}/members/{user_id}", OrgAdmin, OwnerOf::Member),
    api(Delete, "/api/v1/orgs/{org_id}/members/{user_id}", OrgAdmin, OwnerOf::Member),
    api(Get, "/api/v1/orgs/{org_id}/invitations", OrgAdmin, OwnerOf::Org),
    api(Post, "/api/v1/orgs/{org_id}/invitations", OrgAdmin, OwnerOf::Org),
    api(Delete, "/api/v1/orgs/{org_id}/invitations/{invitation_id}", OrgAdmin, OwnerOf::Invitation),
    // The invitation's token decides which organization; the caller must be its addressee.
    api(Post, "/api/v1/invitations/accept", Authenticated, OwnerOf::None),
    api(Get, "/api/v1/orgs/{org_id}/webhooks", OrgManager, OwnerOf::Org),
    api(Post, "/api/v1/orgs/{org_id}/webhooks", OrgManager, OwnerOf::Org),
    api(Delete, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}", OrgManager, OwnerOf::Webhook),
    api(Get, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries", OrgManager, OwnerOf::Webhook),
    api(Post, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}/test", OrgManager, OwnerOf::Webhook),
    api(
        Post,
        "/api/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/resend",
        OrgManager,
        OwnerOf::Delivery,
    ),
    // The catalog.
    api(Get, "/api/v1/apis", Public, OwnerOf::None),
    api(Post, "/api/v1/apis", OrgManager, OwnerOf::Org),
    api(Get, "/api/v1/apis/{slug}", Catalog, OwnerOf::Api),
    api(Patch, "/api/v1/apis/{slug}", OrgManager, OwnerOf::Api),
    api(Get, "/api/v1/apis/{slug}/versions", Catalog, OwnerOf::Api),
    api(Post, "/api/v1/apis/{slug}/versions", OrgManager, OwnerOf::Api),
    api(Get, "/api/v1/apis/{slug}/versions/{version}", Catalog, OwnerOf::Version),
    api(Patch, "/api/v1/apis/{slug}/versions/{version}", OrgManager, OwnerOf::Version),
    api(Get, "/api/v1/apis/{slug}/versions/{version}/openapi.json", Catalog, OwnerOf::Version),
    api(Get, "/api/v1/apis/{slug}/plans", Catalog, OwnerOf::Api),
    api(Post, "/api/v1/apis/{slug}/plans", OrgManager, OwnerOf::Api),
    api(Patch, "/api/v1/apis/{slug}/plans/{plan}", OrgManager, OwnerOf::Plan),
    api(Get, "/api/v1/apis/{slug}/alerts", OrgManager, OwnerOf::Api),
    api(Post, "/api/v1/apis/{slug}/alerts", OrgManager, OwnerOf::Api),
    api(Delete, "/api/v1/apis/{slug}/alerts/{rule_id}", OrgManager, OwnerOf::AlertRule),
    // Consumers' apps, keys, OAuth clients.
    api(Get, "/api/v1/apps", Authenticated, OwnerOf::None),
    api(Post, "/api/v1/apps", OrgManager, OwnerOf::Org),
    api(Get, "/api/v1/apps/{app_id}", OrgMember, OwnerOf::App),
    api(Patch, "/api/v1/apps/{app_id}", OrgManager, OwnerOf::App),
    api(Delete, "/api/v1/apps/{app_id}", OrgManager, OwnerOf::App),
    api(Get, "/api/v1/apps/{app_id}/keys", OrgMember, OwnerOf::App),
    api(Post, "/api/v1/apps/{app_id}/keys", OrgManager, OwnerOf::App),
    api(Delete, "/api/v1/apps/{app_id}/keys/{key_id}", OrgManager, OwnerOf::Key),
    api(Post, "/api/v1/apps/{app_id}/keys/{key_id}/rotate", OrgManager, OwnerOf::Key),
    api(Get, "/api/v1/apps/{app_id}/usage", OrgMember, OwnerOf::App),
    api(Get, "/api/v1/apps/{app_id}/clients", OrgMember, OwnerOf::App),
    api(Post, "/api/v1/apps/{app_id}/clients", OrgManager, OwnerOf::App),
    api(Delete, "/api/v1/apps/{app_id}/clients/{client_id}", OrgManager, OwnerOf::Client),
    api(Get, "/api/v1/apps/{app_id}/external-clients", OrgMember, OwnerOf::App),
    api(Post, "/api/v1/apps/{app_id}/external-clients", OrgManager, OwnerOf::App),
    api(Delete, "/api/v1/apps/{app_id}/external-clients/{external_client_id}", OrgManager, OwnerOf::ExternalClient),
    api(Post, "/api/v1/apps/{app_id}/token", OrgManager, OwnerOf::App),
    // Subscriptions and usage.
    api(Get, "/api/v1/subscriptions", Authenticated, OwnerOf::None),
    api(Post, "/api/v1/subscriptions", OrgManager, OwnerOf::App),
    api(Get, "/api/v1/subscriptions/{subscription_id}", OrgMember, OwnerOf::Subscription),
    api(Delete, "/api/v1/subscriptions/{subscription_id}", OrgManager, OwnerOf::Subscription),
    api(Get, "/api/v1/subscriptions/{subscription_id}/usage", OrgMember, OwnerOf::Subscription),
    api(Get, "/api/v1/requests", Authenticated, OwnerOf::None),
    api(Get, "/api/v1/analytics/usage", Authenticated, OwnerOf::None),
    api(Get, "/api/v1/analytics/top", Authenticated, OwnerOf::None),
    // Platform administration.
    api(Post, "/api/v1/admin/apply", PlatformAdmin, OwnerOf::None),
    api(Get, "/api/v1/admin/export", PlatformAdmin, OwnerOf::None),
    api(Post, "/api/v1/admin/signing-keys/rotate", PlatformAdmin, OwnerOf::None),
    // Outside the OpenAPI document.
    public(Get, "/api/v1/openapi.json", ApiPlain),
    public(Get, "/healthz", Control),
    public(Get, "/readyz", Control),
    // The client authenticates with its own credentials (HTTP Basic or the form).
    public(Post, "/oauth/token", Control),
    // Single sign-on: browser redirects to and from an OpenID provider.
    public(Get, "/auth/sso/{provider}", Control),
    public(Get, "/auth/sso/{provider}/callback", Control),
    public(Get, "/.well-known/jwks.json", Control),
    public(Get, "/.well-known/oauth-authorization-server", Control),
    public(Get, "/api/v1/docs", Reference),
    public(Get, "/api/v1/docs/", Reference),
    public(Get, "/api/v1/docs/swagger-ui.css", Reference),
    public(Get, "/api/v1/docs/swagger-ui.css.map", Reference),
    public(Get, "/api/v1/docs/swagger-ui-bundle.js", Reference),
    public(Get, "/api/v1/docs/swagger-ui-bundle.js.map", Reference),
    public(Get, "/api/v1/docs/oauth2-redirect.html", Reference),
    public(Get, "/api/v1/docs/oauth2-redirect.js", Reference),
    // The portal.
    public(Get, "/", Portal),
    RouteSpec::new(Get, "/apis/{slug}", Portal, Catalog, OwnerOf::Api),
    RouteSpec::new(Get, "/apis/{slug}/reference/{version}", Portal, Catalog, OwnerOf::Version),
    public(Get, "/verify-email", Portal),
    public(Get, "/reset-password", Portal),
    public(Get, "/invitations", Portal),
    public(Get, "/sign-in", Portal),
];

/// The rows one router mounts.
pub fn of(surface: Surface) -> impl Iterator<Item = &'static RouteSpec> {
    ROUTES.iter().filter(move |r| r.surface == surface)
}

/// The row of a route, if it has one.
pub fn find(method: Method, path: &str) -> Option<&'static RouteSpec> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

/// Mounts the rows of `surface` on `router`, each with the handler `pick` gives it (a
/// `MethodRouter` for the row's method, e.g. `on(row.method.filter(), handler)`). A row that
/// `pick` has no handler for is a bug: it fails debug builds and is logged otherwise. Since
/// nothing else mounts routes of these surfaces, a handler without a row cannot be reached.
pub fn mount<S: Clone + Send + Sync + 'static>(
    mut router: axum::Router<S>,
    surface: Surface,
    pick: impl Fn(&RouteSpec) -> Option<MethodRouter<S>>,
) -> axum::Router<S> {
    for row in of(surface) {
        match pick(row) {
            Some(h) => router = router.route(row.mount_path(), h),
            None => {
                debug_assert!(false, "the route table's {} {} has no handler", row.method.as_str(), row.path);
                tracing::error!(method = row.method.as_str(), path = row.path, "a route of the table has no handler");
            }
        }
    }
    router
}

/// The (method, path) pairs an OpenAPI document (as JSON) describes, with the API's prefix.
pub fn documented(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc.get("paths").and_then(|p| p.as_object()).into_iter().flatten() {
        for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if matches!(method.as_str(), "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace") {
                out.insert((method.to_ascii_uppercase(), format!("{API_PREFIX}{path}")));
            }
        }
    }
    out
}

/// How the OpenAPI document and the table's [`Surface::Api`] rows differ; empty when they
/// describe the same routes.
pub fn api_mismatches(doc: &serde_json::Value) -> Vec<String> {
    let docs = documented(doc);
    let table: BTreeSet<(String, String)> =
        of(Surface::Api).map(|r| (r.method.as_str().to_owned(), r.path.to_owned())).collect();
    let mut out: Vec<String> =
        docs.difference(&table).map(|(m, p)| format!("{m} {p} is served but has no row in the route table")).collect();
    out.extend(table.difference(&docs).map(|(m, p)| format!("{m} {p} is in the route table but not served")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_declared_once() {
        let mut seen = BTreeSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {} is declared twice", r.method.as_str(), r.path);
        }
    }

    #[test]
    fn owners_fit_the_paths_and_permissions() {
        for r in ROUTES {
            let needs = match r.owner {
                OwnerOf::None | OwnerOf::Org | OwnerOf::App => None,
                OwnerOf::Session => Some("{session_id}"),
                OwnerOf::Key => Some("{key_id}"),
                OwnerOf::Client => Some("{client_id}"),
                OwnerOf::ExternalClient => Some("{external_client_id}"),
                OwnerOf::Subscription => Some("{subscription_id}"),
                OwnerOf::Webhook => Some("{webhook_id}"),
                OwnerOf::Delivery => Some("{delivery_id}"),
                OwnerOf::Api => Some("{slug}"),
                OwnerOf::Version => Some("{version}"),
                OwnerOf::Plan => Some("{plan}"),
                OwnerOf::AlertRule => Some("{rule_id}"),
                OwnerOf::Member => Some("{user_id}"),
                OwnerOf::Invitation => Some("{invitation_id}"),
            };
            if let Some(p) = needs {
                assert!(r.path.contains(p), "{} {}: {:?} needs {p} in the path", r.method.as_str(), r.path, r.owner);
            }
            if matches!(r.access, OrgMember | OrgManager | OrgAdmin) {
                assert_ne!(r.owner, OwnerOf::None, "{}: an organization's permission needs an object", r.path);
            }
            assert_eq!(r.foreign_is_404, r.owner != OwnerOf::None);
            if r.surface == Api || r.surface == ApiPlain {
                assert!(r.path.starts_with("/api/v1/"), "{}", r.path);
            }
        }
    }

    #[test]
    fn the_table_matches_the_openapi_document() {
        let doc = serde_json::to_value(crate::api::openapi()).unwrap();
        let diff = api_mismatches(&doc);
        assert!(diff.is_empty(), "{}", diff.join("\n"));
        // The check notices a route without a row, and a row without a route.
        let mut more = doc.clone();
        more["paths"]["/secret"] = serde_json::json!({"get": {}});
        assert_eq!(api_mismatches(&more), vec!["GET /api/v1/secret is served but has no row in the route table"]);
        let mut less = doc;
        less["paths"].as_object_mut().unwrap().remove("/me");
        assert_eq!(api_mismatches(&less), vec!["GET /api/v1/me is in the route table but not served"]);
    }
}
