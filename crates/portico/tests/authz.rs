//! The authorization matrix, walked from the route table (`portico_control::routes::ROUTES`):
//! every route × {anonymous, consumer A's owner, admin, developer and billing members, consumer
//! B, provider A, provider B, a platform admin} × {A's object, B's object, and — for nested
//! objects — B's object under A's parent}, through the real server.
//!
//! What each cell must answer is derived from the row's `Access` and its object's owner
//! ([`expected`]), with the exceptions kept as data ([`EXCEPTIONS`]); how each route is called
//! is data too ([`PROBES`]). A row without a probe, a probe without a row, a documented route
//! without a row, an unexpected answer (a 2xx above all, or a 403 where another tenant's object
//! must be 404), an error that is not problem+json and a 2xx that shows another tenant's ids
//! all fail, reported together. Destructive calls (deletes, revokes, logout, a password change)
//! act on objects made for that one call, so no cell depends on the order of the walk.

mod common;

use common::{Backend, TestApp, echo_openapi, spawn_app, spawn_upstream};
use portico_control::routes::{self, Access, Method, OwnerOf, ROUTES, RouteSpec, Surface};
use portico_core::model::{MemberRole, Permission};
use portico_core::values::{Email, Name, Password};
use serde_json::{Value, json};
use std::collections::HashMap;

const PW: &str = "long enough password";
const ADMIN_PW: &str = "root password 123";
const BYSTANDER: &str = "bystander@matrix.example";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Actor {
    Anonymous,
    OwnerA,
    AdminA,
    DeveloperA,
    BillingA,
    ConsumerB,
    ProviderA,
    ProviderB,
    PlatformAdmin,
}

const ACTORS: [Actor; 9] = [
    Actor::Anonymous,
    Actor::OwnerA,
    Actor::AdminA,
    Actor::DeveloperA,
    Actor::BillingA,
    Actor::ConsumerB,
    Actor::ProviderA,
    Actor::ProviderB,
    Actor::PlatformAdmin,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Org {
    ConsumerA,
    ConsumerB,
    ProviderA,
    ProviderB,
}

impl Actor {
    fn email(self) -> &'static str {
        match self {
            Actor::Anonymous => "",
            Actor::OwnerA => "owner@consumer-a.example",
            Actor::AdminA => "admin@consumer-a.example",
            Actor::DeveloperA => "developer@consumer-a.example",
            Actor::BillingA => "billing@consumer-a.example",
            Actor::ConsumerB => "owner@consumer-b.example",
            Actor::ProviderA => "owner@provider-a.example",
            Actor::ProviderB => "owner@provider-b.example",
            Actor::PlatformAdmin => "root@example.com",
        }
    }

    fn password(self) -> &'static str {
        if self == Actor::PlatformAdmin { ADMIN_PW } else { PW }
    }

    /// The actor's role in `org` (members only; a platform admin is a member of none of them).
    fn role_in(self, org: Org) -> Option<MemberRole> {
        match (self, org) {
            (Actor::OwnerA, Org::ConsumerA)
            | (Actor::ConsumerB, Org::ConsumerB)
            | (Actor::ProviderA, Org::ProviderA)
            | (Actor::ProviderB, Org::ProviderB) => Some(MemberRole::Owner),
            (Actor::AdminA, Org::ConsumerA) => Some(MemberRole::Admin),
            (Actor::DeveloperA, Org::ConsumerA) => Some(MemberRole::Developer),
            (Actor::BillingA, Org::ConsumerA) => Some(MemberRole::Billing),
            _ => None,
        }
    }

    /// Owns some organization (the platform admin owns the platform's).
    fn owns_an_org(self) -> bool {
        matches!(self, Actor::OwnerA | Actor::ConsumerB | Actor::ProviderA | Actor::ProviderB | Actor::PlatformAdmin)
    }
}

/// Whose objects a cell uses: A's, B's, or B's object under A's parent (`/apps/{A}/keys/{B}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Own,
    Foreign,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Success,
    Status(u16),
}

/// Rows whose answer is not their permission's, and why.
const EXCEPTIONS: &[(Method, &str, Want, &str)] = &[
    (Method::Post, "/api/v1/auth/verify-email", Want::Status(400), "a made-up token, for everyone"),
    (Method::Post, "/api/v1/auth/password-reset/confirm", Want::Status(400), "a made-up token, for everyone"),
    (Method::Post, "/api/v1/invitations/accept", Want::Status(400), "a made-up token, for everyone signed in"),
    (Method::Get, "/auth/sso/{provider}", Want::Status(404), "the matrix app has no single sign-on provider"),
    (Method::Get, "/auth/sso/{provider}/callback", Want::Status(404), "the matrix app has no single sign-on provider"),
];

/// Objects made for one call, so that a destructive call leaves the fixture as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    No,
    App,
    Key,
    Client,
    ExternalClient,
    Subscription,
    Webhook,
    Rule,
    /// A new developer in the consumer organization.
    Member,
    /// A new pending invitation of the consumer organization.
    Invitation,
    /// A new session: the actor's own (own side) or the bystander's (foreign side).
    Session,
    /// Call with a new token of the actor (the call ends it).
    ActorToken,
    /// The call ends every session of the actor: give the actor a new token afterwards.
    Reissue,
}

/// How a route is called: the body (a template: `{name}` is replaced, `{n}` is unique per
/// call; a body starting with `grant_type=` is sent as a form) and the query.
struct Probe {
    method: Method,
    path: &'static str,
    query: &'static str,
    body: Option<&'static str>,
    fresh: Fresh,
}

const fn p(method: Method, path: &'static str, body: Option<&'static str>, fresh: Fresh) -> Probe {
    Probe { method, path, query: "", body, fresh }
}

use Fresh as F;
use Method::{Delete as D, Get as G, Patch as PA, Post as PO};

const PROBES: &[Probe] = &[
    p(
        PO,
        "/api/v1/auth/signup",
        Some(
            r#"{"email":"walker{n}@matrix.example","password":"long enough password","name":"Walker","account_type":"consumer"}"#,
        ),
        F::No,
    ),
    p(
        PO,
        "/api/v1/auth/login",
        Some(r#"{"email":"bystander@matrix.example","password":"long enough password"}"#),
        F::No,
    ),
    p(PO, "/api/v1/auth/logout", None, F::ActorToken),
    p(PO, "/api/v1/auth/verify-email", Some(r#"{"token":"pte_madeup"}"#), F::No),
    p(PO, "/api/v1/auth/password-reset", Some(r#"{"email":"reset{n}@matrix.example"}"#), F::No),
    p(G, "/api/v1/auth/sso", None, F::No),
    p(
        PO,
        "/api/v1/auth/password-reset/confirm",
        Some(r#"{"token":"pte_madeup","new_password":"another fine passphrase"}"#),
        F::No,
    ),
    p(G, "/api/v1/me", None, F::No),
    p(G, "/api/v1/me/sessions", None, F::No),
    p(D, "/api/v1/me/sessions/{session_id}", None, F::Session),
    p(PO, "/api/v1/me/password", Some(r#"{"current_password":"{password}","new_password":"{password}"}"#), F::Reissue),
    p(PO, "/api/v1/me/verify-email", None, F::No),
    p(G, "/api/v1/audit", None, F::No),
    p(G, "/api/v1/orgs", None, F::No),
    p(PO, "/api/v1/orgs", Some(r#"{"name":"Matrix org {n}","kind":"consumer"}"#), F::No),
    p(G, "/api/v1/orgs/{org_id}", None, F::No),
    p(G, "/api/v1/orgs/{org_id}/members", None, F::No),
    p(PA, "/api/v1/orgs/{org_id}/members/{user_id}", Some(r#"{"role":"billing"}"#), F::Member),
    p(D, "/api/v1/orgs/{org_id}/members/{user_id}", None, F::Member),
    p(G, "/api/v1/orgs/{org_id}/invitations", None, F::No),
    p(
        PO,
        "/api/v1/orgs/{org_id}/invitations",
        Some(r#"{"email":"invitee{n}@matrix.example","role":"developer"}"#),
        F::No,
    ),
    p(D, "/api/v1/orgs/{org_id}/invitations/{invitation_id}", None, F::Invitation),
    p(PO, "/api/v1/invitations/accept", Some(r#"{"token":"pti_madeup"}"#), F::No),
    p(G, "/api/v1/orgs/{org_id}/webhooks", None, F::No),
    p(PO, "/api/v1/orgs/{org_id}/webhooks", Some(r#"{"url":"http://127.0.0.1:9/hook"}"#), F::No),
    p(D, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}", None, F::Webhook),
    p(G, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries", None, F::No),
    p(PO, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}/test", None, F::No),
    p(PO, "/api/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/resend", None, F::No),
    p(G, "/api/v1/apis", None, F::No),
    p(
        PO,
        "/api/v1/apis",
        Some(r#"{"org_id":"{provider_org_id}","slug":"matrix-{n}","name":"Matrix {n}","visibility":"private"}"#),
        F::No,
    ),
    p(G, "/api/v1/apis/{slug}", None, F::No),
    p(PA, "/api/v1/apis/{slug}", Some(r#"{"description":"patched"}"#), F::No),
    p(G, "/api/v1/apis/{slug}/versions", None, F::No),
    p(
        PO,
        "/api/v1/apis/{slug}/versions",
        Some(r#"{"version":"9.{n}.0","upstream_url":"{upstream}","openapi":{openapi}}"#),
        F::No,
    ),
    p(G, "/api/v1/apis/{slug}/versions/{version}", None, F::No),
    p(PA, "/api/v1/apis/{slug}/versions/{version}", Some("{}"), F::No),
    p(G, "/api/v1/apis/{slug}/versions/{version}/openapi.json", None, F::No),
    p(G, "/api/v1/apis/{slug}/plans", None, F::No),
    p(
        PO,
        "/api/v1/apis/{slug}/plans",
        Some(r#"{"slug":"plan-{n}","name":"Plan {n}","pricing":{"type":"free"},"visibility":"private"}"#),
        F::No,
    ),
    p(PA, "/api/v1/apis/{slug}/plans/{plan}", Some(r#"{"description":"patched"}"#), F::No),
    p(G, "/api/v1/apis/{slug}/alerts", None, F::No),
    p(PO, "/api/v1/apis/{slug}/alerts", Some(r#"{"kind":"error_rate","threshold":50}"#), F::No),
    p(D, "/api/v1/apis/{slug}/alerts/{rule_id}", None, F::Rule),
    p(G, "/api/v1/apps", None, F::No),
    p(PO, "/api/v1/apps", Some(r#"{"org_id":"{org_id}","name":"Matrix app {n}"}"#), F::No),
    p(G, "/api/v1/apps/{app_id}", None, F::No),
    p(PA, "/api/v1/apps/{app_id}", Some(r#"{"description":"patched"}"#), F::No),
    p(D, "/api/v1/apps/{app_id}", None, F::App),
    p(G, "/api/v1/apps/{app_id}/keys", None, F::No),
    p(PO, "/api/v1/apps/{app_id}/keys", Some(r#"{"name":"k{n}"}"#), F::No),
    p(D, "/api/v1/apps/{app_id}/keys/{key_id}", None, F::Key),
    p(PO, "/api/v1/apps/{app_id}/keys/{key_id}/rotate", Some(r#"{"overlap_hours":1}"#), F::Key),
    p(G, "/api/v1/apps/{app_id}/usage", None, F::No),
    p(G, "/api/v1/apps/{app_id}/clients", None, F::No),
    p(PO, "/api/v1/apps/{app_id}/clients", Some(r#"{"name":"c{n}"}"#), F::No),
    p(D, "/api/v1/apps/{app_id}/clients/{client_id}", None, F::Client),
    p(G, "/api/v1/apps/{app_id}/external-clients", None, F::No),
    p(PO, "/api/v1/apps/{app_id}/external-clients", Some(r#"{"api":"alpha-public","token":"{idp_token}"}"#), F::No),
    p(D, "/api/v1/apps/{app_id}/external-clients/{external_client_id}", None, F::ExternalClient),
    p(PO, "/api/v1/apps/{app_id}/token", None, F::No),
    p(G, "/api/v1/subscriptions", None, F::No),
    p(PO, "/api/v1/subscriptions", Some(r#"{"app_id":"{app_id}","api":"{api_a}","plan":"{plan_a}"}"#), F::App),
    p(G, "/api/v1/subscriptions/{subscription_id}", None, F::No),
    p(D, "/api/v1/subscriptions/{subscription_id}", None, F::Subscription),
    p(G, "/api/v1/subscriptions/{subscription_id}/usage", None, F::No),
    p(G, "/api/v1/requests", None, F::No),
    p(G, "/api/v1/analytics/usage", None, F::No),
    p(G, "/api/v1/analytics/top", None, F::No),
    Probe { method: PO, path: "/api/v1/admin/apply", query: "?dry_run=true", body: Some("{}"), fresh: F::No },
    p(G, "/api/v1/admin/export", None, F::No),
    p(PO, "/api/v1/admin/signing-keys/rotate", None, F::No),
    p(G, "/api/v1/openapi.json", None, F::No),
    p(G, "/healthz", None, F::No),
    p(G, "/readyz", None, F::No),
    p(
        PO,
        "/oauth/token",
        Some("grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}"),
        F::No,
    ),
    p(G, "/.well-known/jwks.json", None, F::No),
    p(G, "/auth/sso/{provider}", None, F::No),
    p(G, "/auth/sso/{provider}/callback", None, F::No),
    p(G, "/.well-known/oauth-authorization-server", None, F::No),
    p(G, "/api/v1/docs", None, F::No),
    p(G, "/api/v1/docs/", None, F::No),
    p(G, "/api/v1/docs/swagger-ui.css", None, F::No),
    p(G, "/api/v1/docs/swagger-ui.css.map", None, F::No),
    p(G, "/api/v1/docs/swagger-ui-bundle.js", None, F::No),
    p(G, "/api/v1/docs/swagger-ui-bundle.js.map", None, F::No),
    p(G, "/api/v1/docs/oauth2-redirect.html", None, F::No),
    p(G, "/api/v1/docs/oauth2-redirect.js", None, F::No),
    p(G, "/", None, F::No),
    p(G, "/apis/{slug}", None, F::No),
    p(G, "/apis/{slug}/reference/{version}", None, F::No),
    p(G, "/verify-email", None, F::No),
    p(G, "/reset-password", None, F::No),
    p(G, "/invitations", None, F::No),
    p(G, "/sign-in", None, F::No),
];

/// The organization that owns a cell's object (for `Mixed`, the parent's: it decides).
fn owner_org(row: &RouteSpec, probe: &Probe, side: Side) -> Option<Org> {
    let b = side == Side::Foreign;
    let consumer = if b { Org::ConsumerB } else { Org::ConsumerA };
    let provider = if b { Org::ProviderB } else { Org::ProviderA };
    match row.owner {
        OwnerOf::None | OwnerOf::Session => None,
        OwnerOf::Org if probe.body.is_some_and(|t| t.contains("{provider_org_id}")) => Some(provider),
        OwnerOf::Org
        | OwnerOf::App
        | OwnerOf::Key
        | OwnerOf::Client
        | OwnerOf::ExternalClient
        | OwnerOf::Subscription
        | OwnerOf::Webhook
        | OwnerOf::Delivery
        | OwnerOf::Member
        | OwnerOf::Invitation => Some(consumer),
        OwnerOf::Api | OwnerOf::Version | OwnerOf::Plan | OwnerOf::AlertRule => Some(provider),
    }
}

/// The path parameter that names a nested object (taken from B under A's parent in `Mixed`).
fn leaf_param(owner: OwnerOf) -> Option<&'static str> {
    Some(match owner {
        OwnerOf::Key => "key_id",
        OwnerOf::Client => "client_id",
        OwnerOf::ExternalClient => "external_client_id",
        OwnerOf::Webhook => "webhook_id",
        OwnerOf::Delivery => "delivery_id",
        OwnerOf::Version => "version",
        OwnerOf::Plan => "plan",
        OwnerOf::AlertRule => "rule_id",
        OwnerOf::Member => "user_id",
        OwnerOf::Invitation => "invitation_id",
        _ => return None,
    })
}

/// Members may read; managers (not billing) may change; platform admins may do both;
/// everyone else must not learn that the object exists.
fn member_access(actor: Actor, org: Org, change: bool) -> Want {
    permitted(actor, org, if change { Permission::Manage } else { Permission::Read })
}

/// Members whose role grants `p` may; other members are refused; non-members must not learn
/// that the object exists.
fn permitted(actor: Actor, org: Org, p: Permission) -> Want {
    if actor == Actor::PlatformAdmin {
        return Want::Success;
    }
    match actor.role_in(org) {
        None => Want::Status(404),
        Some(r) if !r.allows(p) => Want::Status(403),
        Some(_) => Want::Success,
    }
}

/// What a cell must answer. A's API is public; B's is private, so the catalog hides it from
/// everyone but its provider and platform admins.
fn expected(row: &RouteSpec, probe: &Probe, actor: Actor, side: Side) -> Want {
    if let Some((.., want, _)) = EXCEPTIONS.iter().find(|e| e.0 == row.method && e.1 == row.path)
        && (row.access == Access::Public || actor != Actor::Anonymous)
    {
        return *want;
    }
    if side == Side::Mixed {
        return match expected(row, probe, actor, Side::Own) {
            Want::Success => Want::Status(404),
            refused => refused,
        };
    }
    let org = owner_org(row, probe, side);
    let anonymous = actor == Actor::Anonymous;
    match row.access {
        Access::Public => Want::Success,
        Access::Catalog => match org {
            Some(o) if side == Side::Foreign => match member_access(actor, o, false) {
                Want::Success => Want::Success,
                _ => Want::Status(404),
            },
            _ => Want::Success,
        },
        _ if anonymous => Want::Status(401),
        Access::Authenticated if row.owner == OwnerOf::Session && side == Side::Foreign => Want::Status(404),
        Access::Authenticated => Want::Success,
        Access::OrgOwner if actor.owns_an_org() => Want::Success,
        Access::OrgOwner => Want::Status(403),
        Access::OrgMember => org.map_or(Want::Success, |o| member_access(actor, o, false)),
        Access::OrgManager => org.map_or(Want::Success, |o| member_access(actor, o, true)),
        Access::OrgAdmin => org.map_or(Want::Success, |o| permitted(actor, o, Permission::ManageMembers)),
        Access::PlatformAdmin if actor == Actor::PlatformAdmin => Want::Success,
        Access::PlatformAdmin => Want::Status(403),
    }
}

/// One tenant's objects: a consumer organization with an app, key, OAuth client, subscription,
/// webhook endpoint and delivery; a provider with an API, version, plan and alert rule.
#[derive(Debug, Clone)]
struct Tenant {
    values: HashMap<&'static str, String>,
    consumer: Org,
    provider: Org,
}

struct World {
    app: TestApp,
    tokens: HashMap<Actor, String>,
    users: HashMap<Actor, portico_store::users::User>,
    bystander: portico_store::users::User,
    a: Tenant,
    b: Tenant,
    globals: HashMap<&'static str, String>,
    /// Ids another tenant must never see in a 2xx, with the organization they belong to.
    secrets: Vec<(String, Org)>,
    n: u64,
    /// The issuer `alpha-public` trusts: each external-client probe proves a new client.
    idp: common::TestIdp,
}

fn fill(template: &str, values: &HashMap<&'static str, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A call that must succeed (fixture building); its JSON answer.
async fn must(app: &TestApp, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Value {
    let (s, v, _) = app.call(method.clone(), path, Some(token), body).await;
    assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
    v
}

/// Adds a new person to the organization `org_id` with `role`; their user id.
async fn add_member(app: &TestApp, org_id: &str, email: &str, role: MemberRole) -> String {
    let mut c = app.app_state.store.conn().await.unwrap();
    let email = Email::parse(email).unwrap();
    let u = portico_store::users::insert(&mut c, &email, &Name::parse("Member").unwrap(), "not-a-hash", false)
        .await
        .unwrap();
    portico_store::orgs::add_member(&mut c, org_id.parse().unwrap(), u.id, role).await.unwrap();
    u.id.to_string()
}

async fn user(app: &TestApp, email: &str) -> portico_store::users::User {
    let mut c = app.app_state.store.conn().await.unwrap();
    portico_store::users::by_email(&mut c, &Email::parse(email).unwrap()).await.unwrap().unwrap()
}

async fn token_for(app: &TestApp, u: &portico_store::users::User) -> String {
    portico_control::services::accounts::issue_token(&app.app_state.store, u).await.unwrap()
}

/// Signs up an owner; the token and the organization's id and slug.
async fn owner(app: &TestApp, email: &str, kind: &str) -> (String, String, String) {
    let body = json!({"email": email, "password": PW, "name": "Owner", "organization": email, "account_type": kind});
    let (s, v) = app.post("/auth/signup", None, body).await;
    assert_eq!(s, 201, "{v}");
    let org = &v["organizations"][0];
    (v["token"].as_str().unwrap().into(), org["id"].as_str().unwrap().into(), org["slug"].as_str().unwrap().into())
}

impl World {
    fn token(&self, actor: Actor) -> Option<String> {
        self.tokens.get(&actor).cloned()
    }

    fn owner_of(&self, org: Org) -> String {
        let actor = match org {
            Org::ConsumerA => Actor::OwnerA,
            Org::ConsumerB => Actor::ConsumerB,
            Org::ProviderA => Actor::ProviderA,
            Org::ProviderB => Actor::ProviderB,
        };
        self.tokens[&actor].clone()
    }

    fn tenant(&self, b: bool) -> &Tenant {
        if b { &self.b } else { &self.a }
    }

    async fn fresh_app(&self, t: &Tenant) -> String {
        let body = json!({"org_id": t.values["org_id"], "name": format!("Throwaway {}", self.n)});
        let v = must(&self.app, reqwest::Method::POST, "/apps", &self.owner_of(t.consumer), Some(body)).await;
        v["id"].as_str().unwrap().into()
    }

    /// Makes the objects a destructive call needs and returns the values that name them.
    async fn fresh(&mut self, fresh: Fresh, actor: Actor, leaf_b: bool) -> HashMap<&'static str, String> {
        let t = self.tenant(leaf_b).clone();
        let owner = self.owner_of(t.consumer);
        let post = reqwest::Method::POST;
        let mut out = HashMap::new();
        match fresh {
            F::No | F::Reissue => {}
            F::App => {
                out.insert("app_id", self.fresh_app(&t).await);
            }
            F::Key => {
                let v =
                    must(&self.app, post, &format!("/apps/{}/keys", t.values["app_id"]), &owner, Some(json!({}))).await;
                out.insert("key_id", v["id"].as_str().unwrap().into());
            }
            F::Client => {
                let v =
                    must(&self.app, post, &format!("/apps/{}/clients", t.values["app_id"]), &owner, Some(json!({})))
                        .await;
                out.insert("client_id", v["client_id"].as_str().unwrap().into());
            }
            F::ExternalClient => {
                let path = format!("/apps/{}/external-clients", t.values["app_id"]);
                let body = json!({"api": "alpha-public", "token": self.idp.token(MATRIX_AUDIENCE, &format!("fresh{}", self.n))});
                let v = must(&self.app, post, &path, &owner, Some(body)).await;
                out.insert("external_client_id", v["id"].as_str().unwrap().into());
            }
            F::Subscription => {
                let app_id = self.fresh_app(&t).await;
                let body = json!({"app_id": app_id, "api": self.globals["api_a"], "plan": self.globals["plan_a"]});
                let v = must(&self.app, post, "/subscriptions", &owner, Some(body)).await;
                out.insert("subscription_id", v["id"].as_str().unwrap().into());
            }
            F::Webhook => {
                let path = format!("/orgs/{}/webhooks", t.values["org_id"]);
                let v = must(&self.app, post, &path, &owner, Some(json!({"url": "http://127.0.0.1:9/hook"}))).await;
                out.insert("webhook_id", v["id"].as_str().unwrap().into());
            }
            F::Rule => {
                let path = format!("/apis/{}/alerts", t.values["slug"]);
                let body = json!({"kind": "p95_latency", "threshold": 900});
                let v = must(&self.app, post, &path, &self.owner_of(t.provider), Some(body)).await;
                out.insert("rule_id", v["id"].as_str().unwrap().into());
            }
            F::Member => {
                let email = format!("fresh{}@matrix.example", self.n);
                out.insert("user_id", add_member(&self.app, &t.values["org_id"], &email, MemberRole::Developer).await);
            }
            F::Invitation => {
                let path = format!("/orgs/{}/invitations", t.values["org_id"]);
                let body = json!({"email": format!("fresh{}@matrix.example", self.n), "role": "developer"});
                let v = must(&self.app, post, &path, &owner, Some(body)).await;
                out.insert("invitation_id", v["id"].as_str().unwrap().into());
            }
            F::Session => {
                let whose = match self.users.get(&actor) {
                    Some(u) if !leaf_b => u.clone(),
                    _ => self.bystander.clone(),
                };
                let token = token_for(&self.app, &whose).await;
                let (_, list) = self.app.get("/me/sessions", Some(&token)).await;
                let current = list.as_array().unwrap().iter().find(|s| s["current"] == true).unwrap();
                out.insert("session_id", current["id"].as_str().unwrap().into());
            }
            F::ActorToken => {
                if let Some(u) = self.users.get(&actor) {
                    out.insert("actor_token", token_for(&self.app, u).await);
                }
            }
        }
        out
    }

    /// One cell: the mismatches it found (none when it answered as expected).
    async fn cell(&mut self, row: &RouteSpec, probe: &Probe, actor: Actor, side: Side) -> Vec<String> {
        let want = expected(row, probe, actor, side);
        let (parent_b, leaf_b) = (side == Side::Foreign, side != Side::Own);
        let mut values = self.globals.clone();
        values.extend(self.tenant(parent_b).values.clone());
        if let Some(k) = leaf_param(row.owner) {
            values.insert(k, self.tenant(leaf_b).values[k].clone());
        }
        values.insert("password", actor.password().into());
        self.n += 1;
        values.insert("n", self.n.to_string());
        values.insert("idp_token", self.idp.token(MATRIX_AUDIENCE, &format!("m{}", self.n)));
        let made = self.fresh(probe.fresh, actor, leaf_b).await;
        let token = made.get("actor_token").cloned().or_else(|| self.token(actor));
        values.extend(made);

        let path = fill(row.path, &values);
        let method = reqwest::Method::from_bytes(row.method.as_str().as_bytes()).unwrap();
        let mut req = self.app.http.request(method, format!("{}{path}{}", self.app.api, probe.query));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = probe.body.map(|b| fill(b, &values)) {
            req = if body.starts_with("grant_type=") {
                req.header("content-type", "application/x-www-form-urlencoded").body(body)
            } else {
                req.json(&serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{body}: {e}")))
            };
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = resp.text().await.unwrap_or_default();

        if probe.fresh == F::Reissue
            && let Some(u) = self.users.get(&actor).cloned()
        {
            let t = token_for(&self.app, &u).await;
            self.tokens.insert(actor, t);
        }

        let cell = format!("{} {path} as {actor:?} ({side:?})", row.method.as_str());
        let mut out = Vec::new();
        let answered = match want {
            Want::Success => (200..300).contains(&status),
            Want::Status(s) => status == s,
        };
        if !answered {
            out.push(format!("{cell}: expected {want:?}, got {status}: {}", &text[..text.floor_char_boundary(200)]));
        }
        if status >= 400 && row.surface != Surface::Portal && ct != "application/problem+json" {
            out.push(format!("{cell}: a {status} answered as `{ct}`, not application/problem+json"));
        }
        if (200..300).contains(&status) && actor != Actor::PlatformAdmin {
            for (secret, org) in &self.secrets {
                if actor.role_in(*org).is_none() && text.contains(secret.as_str()) {
                    out.push(format!("{cell}: a {status} shows `{secret}` of {org:?}"));
                }
            }
        }
        out
    }
}

/// The audience of the matrix's external tokens (`alpha-public` trusts its test issuer).
const MATRIX_AUDIENCE: &str = "urn:alpha-public";

async fn tenant(
    app: &TestApp,
    idp: &common::TestIdp,
    upstream: &str,
    b: bool,
    consumer: (&str, &str),
    provider: (&str, &str),
) -> Tenant {
    let (provider, provider_org) = provider;
    let post = reqwest::Method::POST;
    let (slug, visibility, version, plan) = if b {
        ("zz-private-beta", "private", "2.0.0", "gold-b")
    } else {
        ("alpha-public", "public", "1.0.0", "gold-a")
    };
    let api = json!({"slug": slug, "name": slug, "visibility": visibility});
    must(app, post.clone(), "/apis", provider, Some(api)).await;
    let policies = json!({"token_issuers": [idp.trusted_by(MATRIX_AUDIENCE)]});
    let v = json!({"version": version, "upstream_url": upstream, "openapi": echo_openapi(), "state": "published",
        "policies": policies});
    must(app, post.clone(), &format!("/apis/{slug}/versions"), provider, Some(v)).await;
    let pl = json!({"slug": plan, "name": plan, "pricing": {"type": "free"}});
    must(app, post.clone(), &format!("/apis/{slug}/plans"), provider, Some(pl)).await;
    let rule = json!({"kind": "error_rate", "threshold": 50});
    let rule = must(app, post.clone(), &format!("/apis/{slug}/alerts"), provider, Some(rule)).await;

    let (token, org) = consumer;
    let id = |v: &Value, k: &str| v[k].as_str().unwrap().to_owned();
    let a = must(app, post.clone(), "/apps", token, Some(json!({"org_id": org, "name": "Fixture"}))).await;
    let app_id = id(&a, "id");
    let key = must(app, post.clone(), &format!("/apps/{app_id}/keys"), token, Some(json!({}))).await;
    let client = must(app, post.clone(), &format!("/apps/{app_id}/clients"), token, Some(json!({}))).await;
    let external = json!({"api": "alpha-public", "token": idp.token(MATRIX_AUDIENCE, &format!("fixture-{app_id}"))});
    let external = must(app, post.clone(), &format!("/apps/{app_id}/external-clients"), token, Some(external)).await;
    let sub = json!({"app_id": app_id, "api": "alpha-public", "plan": "gold-a"});
    let sub = must(app, post.clone(), "/subscriptions", token, Some(sub)).await;
    let hook = json!({"url": "http://127.0.0.1:9/hook"});
    let hook = must(app, post.clone(), &format!("/orgs/{org}/webhooks"), token, Some(hook)).await;
    let hook_id = id(&hook, "id");
    let delivery = must(app, post.clone(), &format!("/orgs/{org}/webhooks/{hook_id}/test"), token, None).await;
    let who = if b { "b" } else { "a" };
    let member = add_member(app, org, &format!("member-{who}@matrix.example"), MemberRole::Developer).await;
    let inv = json!({"email": format!("invitee-{who}@matrix.example"), "role": "billing"});
    let inv = must(app, post, &format!("/orgs/{org}/invitations"), token, Some(inv)).await;
    let values = HashMap::from([
        ("org_id", org.to_owned()),
        ("provider_org_id", provider_org.to_owned()),
        ("app_id", app_id),
        ("key_id", id(&key, "id")),
        ("client_id", id(&client, "client_id")),
        ("client_secret", id(&client, "client_secret")),
        ("external_client_id", id(&external, "id")),
        ("subscription_id", id(&sub, "id")),
        ("webhook_id", hook_id),
        ("delivery_id", id(&delivery, "id")),
        ("slug", slug.to_owned()),
        ("version", version.to_owned()),
        ("plan", plan.to_owned()),
        ("rule_id", id(&rule, "id")),
        ("user_id", member),
        ("invitation_id", id(&inv, "id")),
    ]);
    let (consumer, provider) = if b { (Org::ConsumerB, Org::ProviderB) } else { (Org::ConsumerA, Org::ProviderA) };
    Tenant { values, consumer, provider }
}

async fn world() -> World {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let mut tokens = HashMap::new();
    tokens.insert(Actor::PlatformAdmin, app.admin_token().await);
    let (owner_a, org_a, slug_a) = owner(&app, Actor::OwnerA.email(), "consumer").await;
    let (owner_b, org_b, _) = owner(&app, Actor::ConsumerB.email(), "consumer").await;
    let (prov_a, prov_org_a, _) = owner(&app, Actor::ProviderA.email(), "provider").await;
    let (prov_b, prov_org_b, _) = owner(&app, Actor::ProviderB.email(), "provider").await;
    owner(&app, BYSTANDER, "consumer").await;
    tokens.extend([
        (Actor::OwnerA, owner_a.clone()),
        (Actor::ConsumerB, owner_b.clone()),
        (Actor::ProviderA, prov_a.clone()),
        (Actor::ProviderB, prov_b.clone()),
    ]);
    // Consumer A's other members are added through the store (tests/members.rs covers invitations).
    let store = &app.app_state.store;
    let pw = Password::parse(PW).unwrap();
    for (actor, role) in [
        (Actor::AdminA, MemberRole::Admin),
        (Actor::DeveloperA, MemberRole::Developer),
        (Actor::BillingA, MemberRole::Billing),
    ] {
        let email = Email::parse(actor.email()).unwrap();
        let name = Name::parse("Member").unwrap();
        let u =
            portico_control::services::accounts::ensure_member(store, &email, &name, &pw, &slug_a, role).await.unwrap();
        tokens.insert(actor, token_for(&app, &u).await);
    }
    let mut users = HashMap::new();
    for actor in ACTORS.into_iter().filter(|a| *a != Actor::Anonymous) {
        users.insert(actor, user(&app, actor.email()).await);
    }
    let idp = common::test_idp().await;
    let a = tenant(&app, &idp, &upstream.url, false, (&owner_a, &org_a), (&prov_a, &prov_org_a)).await;
    let b = tenant(&app, &idp, &upstream.url, true, (&owner_b, &org_b), (&prov_b, &prov_org_b)).await;
    let globals = HashMap::from([
        ("upstream", upstream.url.clone()),
        ("openapi", echo_openapi().to_string()),
        ("api_a", "alpha-public".to_owned()),
        ("plan_a", "gold-a".to_owned()),
        ("provider", "idp".to_owned()),
    ]);
    let mut secrets = vec![("zz-private-beta".to_owned(), Org::ProviderB)];
    for t in [&a, &b] {
        for k in [
            "org_id",
            "app_id",
            "key_id",
            "client_id",
            "subscription_id",
            "webhook_id",
            "delivery_id",
            "user_id",
            "invitation_id",
        ] {
            secrets.push((t.values[k].clone(), t.consumer));
        }
        secrets.push((t.values["rule_id"].clone(), t.provider));
    }
    let bystander = user(&app, BYSTANDER).await;
    World { app, tokens, users, bystander, a, b, globals, secrets, n: 0, idp }
}

#[tokio::test]
async fn every_route_answers_every_actor_as_its_row_says() {
    let mut w = world().await;
    let mut problems = Vec::new();

    // The table covers what the API documents (and so what utoipa-axum mounts).
    let (s, doc) = w.app.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    problems.extend(routes::api_mismatches(&doc));
    // Every row has a probe, every probe a row.
    for p in PROBES {
        if routes::find(p.method, p.path).is_none() {
            problems.push(format!("the probe {} {} has no row in the route table", p.method.as_str(), p.path));
        }
    }
    let mut cells = 0;
    for row in ROUTES {
        let Some(probe) = PROBES.iter().find(|p| p.method == row.method && p.path == row.path) else {
            problems.push(format!("{} {} has no probe in tests/authz.rs", row.method.as_str(), row.path));
            continue;
        };
        let sides: &[Side] = match row.owner {
            OwnerOf::None => &[Side::Own],
            o if leaf_param(o).is_some() => &[Side::Own, Side::Foreign, Side::Mixed],
            _ => &[Side::Own, Side::Foreign],
        };
        for actor in ACTORS {
            for side in sides {
                problems.extend(w.cell(row, probe, actor, *side).await);
                cells += 1;
            }
        }
    }
    for p in &problems {
        eprintln!("{p}");
    }
    assert!(problems.is_empty(), "{} of {cells} cells (and checks) answered wrongly; see above", problems.len());
    assert!(cells > 1000, "{cells}");
    w.app.stop().await;
}
