//! The same repository tests on SQLite and on PostgreSQL (a real server; the PostgreSQL tests
//! fail, never skip, when it is not reachable).

use portico_core::api_key::{ApiKey, Pepper};
use portico_core::ids::SubscriptionId;
use portico_core::model::{LifecycleState, MemberRole, OrgKind, Pricing, Visibility};
use portico_core::upstream::{Balance, UpstreamPolicy};
use portico_core::values::{Email, Name, Period, RateLimit, Slug, UpstreamUrl, VersionNumber};
use portico_store::catalog::{ApiFields, PlanFields};
use portico_store::usage::DailyUsage;
use portico_store::{Error, Page, Store, apps, catalog, orgs, usage, users};

mod common;
use common::{postgres, sqlite};

fn slug(s: &str) -> Slug {
    Slug::parse(s).unwrap()
}
fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

async fn exercise(store: &Store) {
    let mut c = store.conn().await.unwrap();
    // Migrations are idempotent.
    store.migrate().await.unwrap();

    let acme = orgs::insert(&mut c, &slug("acme"), &name("Acme"), OrgKind::Provider).await.unwrap();
    assert!(matches!(
        orgs::insert(&mut c, &slug("acme"), &name("Again"), OrgKind::Consumer).await,
        Err(Error::Conflict(_))
    ));
    let user = users::insert(&mut c, &Email::parse("a@acme.io").unwrap(), &name("A"), "hash", false).await.unwrap();
    orgs::add_member(&mut c, acme.id, user.id, MemberRole::Owner).await.unwrap();
    let ms = orgs::memberships(&mut c, user.id).await.unwrap();
    assert_eq!((ms.len(), ms[0].role, ms[0].org.slug.as_str()), (1, MemberRole::Owner, "acme"));
    assert_eq!(users::by_email(&mut c, &Email::parse("A@ACME.io").unwrap()).await.unwrap().unwrap().id, user.id);

    let fields = ApiFields {
        name: name("Weather"),
        description: "d".into(),
        category: Some("Geo".into()),
        tags: vec!["a".into(), "b".into()],
        visibility: Visibility::Public,
        hosts: vec![portico_core::values::Hostname::parse("weather.example.com").unwrap()],
    };
    let api = catalog::insert_api(&mut c, acme.id, &slug("weather"), &fields).await.unwrap();
    assert_eq!(catalog::api_by_slug(&mut c, "weather").await.unwrap().unwrap().fields, fields);
    // A host name belongs to one API (on both engines, in a transaction that then rolls back).
    {
        let mut tx = store.begin().await.unwrap();
        let rival = ApiFields { hosts: fields.hosts.clone(), ..fields.clone() };
        let e = catalog::insert_api(&mut tx, acme.id, &slug("rival"), &rival).await.unwrap_err();
        assert!(matches!(&e, Error::Conflict(w) if w.contains("weather.example.com")), "{e:?}");
    }
    assert!(catalog::api_by_slug(&mut c, "rival").await.unwrap().is_none());
    let moved = ApiFields { hosts: vec![], ..fields.clone() };
    catalog::update_api(&mut c, api.id, &moved).await.unwrap();
    let taker = ApiFields { hosts: fields.hosts.clone(), ..fields.clone() };
    let taker = catalog::insert_api(&mut c, acme.id, &slug("taker"), &taker).await.unwrap();
    assert_eq!(catalog::api_by_id(&mut c, taker.id).await.unwrap().unwrap().fields.hosts, fields.hosts);
    {
        let mut tx = store.begin().await.unwrap();
        assert!(matches!(catalog::update_api(&mut tx, api.id, &fields).await, Err(Error::Conflict(_))));
    }
    sqlx::query("DELETE FROM apis WHERE id = $1").bind(taker.id.to_string()).execute(&mut *c).await.unwrap();
    catalog::update_api(&mut c, api.id, &fields).await.unwrap();
    let doc = serde_json::json!({"openapi": "3.1.0"});
    let up = UpstreamUrl::parse("http://127.0.0.1:9000").unwrap();
    let policy = UpstreamPolicy {
        targets: vec![UpstreamUrl::parse("http://127.0.0.1:9001").unwrap()],
        balance: Balance::LeastRequests,
        retries: 2,
        ..Default::default()
    };
    let policies: portico_core::policy::Policies =
        serde_json::from_value(serde_json::json!({"ip_allow": ["10.0.0.0/8"], "operation_weights": {"search": 3}}))
            .unwrap();
    let none = portico_core::policy::Policies::default();
    for (v, st) in
        [("1.0.0", LifecycleState::Published), ("1.1.0", LifecycleState::Draft), ("2.0.0", LifecycleState::Published)]
    {
        let (p, ps) =
            if v == "2.0.0" { (policy.clone(), policies.clone()) } else { (UpstreamPolicy::default(), none.clone()) };
        let input = catalog::VersionInput {
            version: VersionNumber::parse(v).unwrap(),
            state: st,
            upstream_url: &up,
            policy: &p,
            policies: &ps,
            openapi: &doc,
        };
        catalog::insert_version(&mut c, api.id, input).await.unwrap();
    }
    let again = catalog::VersionInput {
        version: VersionNumber::parse("1.0.0").unwrap(),
        state: LifecycleState::Draft,
        upstream_url: &up,
        policy: &UpstreamPolicy::default(),
        policies: &none,
        openapi: &doc,
    };
    assert!(matches!(catalog::insert_version(&mut c, api.id, again).await, Err(Error::Conflict(_))));
    let vs = catalog::versions(&mut c, api.id).await.unwrap();
    assert_eq!(vs.iter().map(|v| v.version.to_string()).collect::<Vec<_>>(), ["2.0.0", "1.1.0", "1.0.0"]);
    assert_eq!((&vs[0].policy, vs[1].policy.is_default()), (&policy, true), "the upstream policy round-trips");
    assert_eq!((&vs[0].policies, vs[1].policies.is_default()), (&policies, true), "the policies round-trip");
    assert_eq!(catalog::all_serving_versions(&mut c).await.unwrap().len(), 2);
    // The public catalog shows APIs with a serving version.
    assert_eq!(
        catalog::list_apis(&mut c, catalog::ApiScope::Catalog(None), Page::new(None, None)).await.unwrap().len(),
        1
    );

    let pf = PlanFields {
        name: name("Free"),
        description: String::new(),
        pricing: Pricing::Free,
        rate_limit: Some(RateLimit::new(10, Period::Minute).unwrap()),
        rate_limits: vec![RateLimit::new(100, Period::Hour).unwrap(), RateLimit::new(500, Period::Day).unwrap()],
        monthly_quota: Some(1000),
        daily_quota: Some(50),
        operation_limits: [("search".to_owned(), vec![RateLimit::new(5, Period::Minute).unwrap()])].into(),
        visibility: Visibility::Public,
    };
    let plan = catalog::insert_plan(&mut c, api.id, &slug("free"), &pf).await.unwrap();
    assert_eq!(catalog::plan_by_id(&mut c, plan.id).await.unwrap().unwrap().fields, pf);
    let fewer =
        PlanFields { rate_limits: vec![], daily_quota: None, operation_limits: Default::default(), ..pf.clone() };
    catalog::update_plan(&mut c, plan.id, &fewer).await.unwrap();
    assert_eq!(catalog::plan_by_id(&mut c, plan.id).await.unwrap().unwrap().fields, fewer);
    catalog::update_plan(&mut c, plan.id, &pf).await.unwrap();

    let globex = orgs::insert(&mut c, &slug("globex"), &name("Globex"), OrgKind::Consumer).await.unwrap();
    let app = apps::insert_app(&mut c, globex.id, &slug("dash"), &name("Dash"), "").await.unwrap();
    let key = ApiKey::generate();
    let pepper = Pepper::generate();
    let rec = apps::insert_key(
        &mut c,
        apps::NewKey {
            app: app.id,
            name: "k",
            prefix: &key.display_prefix(),
            last4: &key.last4(),
            hash: &key.hash(&pepper),
            expires_at: None,
            scopes: &[],
            pepper_id: &pepper.id(),
        },
    )
    .await
    .unwrap();
    assert_eq!(apps::active_keys(&mut c).await.unwrap()[0].hash, key.hash(&pepper));
    // A pepper rotation: the key counts as left under another pepper until it is re-hashed,
    // and a re-hash from a hash the key no longer has changes nothing.
    let rotated = Pepper::generate();
    assert_eq!(apps::hashes_under_other_peppers(&mut c, &pepper.id()).await.unwrap(), 0);
    assert_eq!(apps::hashes_under_other_peppers(&mut c, &rotated.id()).await.unwrap(), 1);
    let stale = [(rec.id, key.hash(&rotated), key.hash(&rotated))];
    assert_eq!(apps::rehash_keys(&mut c, &stale, &rotated.id()).await.unwrap(), 0);
    let moved = [(rec.id, key.hash(&pepper), key.hash(&rotated))];
    assert_eq!(apps::rehash_keys(&mut c, &moved, &rotated.id()).await.unwrap(), 1);
    assert_eq!(apps::active_keys(&mut c).await.unwrap()[0].hash, key.hash(&rotated));
    assert_eq!(apps::hashes_under_other_peppers(&mut c, &rotated.id()).await.unwrap(), 0);
    apps::revoke_key(&mut c, app.id, rec.id).await.unwrap();
    assert!(apps::active_keys(&mut c).await.unwrap().is_empty());
    assert!(apps::keys(&mut c, app.id).await.unwrap()[0].revoked_at.is_some());
    // An expired key can never be re-hashed (the gateway refuses it): it is not counted as left.
    let expired = ApiKey::generate();
    let (hash, prefix, last4) = (expired.hash(&pepper), expired.display_prefix(), expired.last4());
    let new = apps::NewKey {
        app: app.id,
        name: "expired",
        prefix: &prefix,
        last4: &last4,
        hash: &hash,
        expires_at: Some(1),
        scopes: &[],
        pepper_id: &pepper.id(),
    };
    apps::insert_key(&mut c, new).await.unwrap();
    assert_eq!(apps::hashes_under_other_peppers(&mut c, &rotated.id()).await.unwrap(), 0);

    // External clients: one app per (issuer, client); the snapshot sees each with its org.
    use portico_store::oauth;
    let id = |issuer, jwks_url| oauth::ExternalIdentity { issuer, jwks_url, client_id: "robot" };
    let idp = id("https://idp.example", "https://idp.example/jwks");
    let x = oauth::insert_external_client(&mut c, app.id, idp, "Robot").await.unwrap();
    oauth::insert_external_client(&mut c, app.id, id("https://other.example", "https://idp.example/jwks"), "Robot")
        .await
        .unwrap();
    // The same `iss` with other keys is another issuer.
    oauth::insert_external_client(&mut c, app.id, id("https://idp.example", "https://evil.example/jwks"), "Robot")
        .await
        .unwrap();
    assert!(matches!(oauth::insert_external_client(&mut c, app.id, idp, "Again").await, Err(Error::Conflict(_))));
    let grants = oauth::external_client_grants(&mut c).await.unwrap();
    assert_eq!(grants.len(), 3);
    assert!(grants.iter().all(|(g, org, _)| g.app_id == app.id && *org == app.org_id));
    let listed = oauth::external_clients_of_app(&mut c, app.id).await.unwrap();
    assert_eq!((listed.len(), listed[0].client_id.as_str()), (3, "robot"));
    let gone = oauth::delete_external_client(&mut c, app.id, x.id).await.unwrap();
    assert_eq!(gone.issuer, "https://idp.example");
    assert!(matches!(oauth::delete_external_client(&mut c, app.id, x.id).await, Err(Error::NotFound)));
    assert_eq!(oauth::external_client_grants(&mut c).await.unwrap().len(), 2);

    // SSO: an identity names one user; a pending sign-in is taken once, and not when too old.
    use portico_store::sso;
    assert_eq!(sso::user_of(&mut c, "https://idp.example", "s1").await.unwrap(), None);
    sso::link(&mut c, "https://idp.example", "s1", user.id).await.unwrap();
    assert!(matches!(sso::link(&mut c, "https://idp.example", "s1", user.id).await, Err(Error::Conflict(_))));
    assert_eq!(sso::user_of(&mut c, "https://idp.example", "s1").await.unwrap(), Some(user.id));
    let pending = sso::PendingLogin { provider: "idp".into(), nonce: "n".into(), pkce_verifier: "v".into() };
    sso::begin(&mut c, "h1", &pending).await.unwrap();
    sso::begin(&mut c, "h2", &pending).await.unwrap();
    assert_eq!(sso::take(&mut c, "h1", 600_000).await.unwrap(), Some(pending.clone()));
    assert_eq!(sso::take(&mut c, "h1", 600_000).await.unwrap(), None, "single use");
    assert_eq!(sso::take(&mut c, "h2", -1_000).await.unwrap(), None, "too old");

    let sub = apps::insert_subscription(&mut c, app.id, api.id, plan.id).await.unwrap();
    assert!(
        matches!(apps::insert_subscription(&mut c, app.id, api.id, plan.id).await, Err(Error::Conflict(_))),
        "one active subscription per app and API"
    );
    apps::cancel_subscription(&mut c, sub.id).await.unwrap();
    let again = apps::insert_subscription(&mut c, app.id, api.id, plan.id).await.unwrap();
    assert_eq!(apps::active_subscriptions(&mut c).await.unwrap().len(), 1);

    // Usage adds up, per day.
    let day = |d: &str, calls| (again.id, DailyUsage { day: d.into(), calls, success: calls, ..Default::default() });
    usage::add(&mut c, &[day("2026-11-24", 2), day("2026-11-25", 3)]).await.unwrap();
    usage::add(&mut c, &[day("2026-11-25", 4)]).await.unwrap();
    let days = usage::daily(&mut c, again.id, "2026-11-01", "2026-11-30").await.unwrap();
    assert_eq!(
        days.iter().map(|d| (d.day.as_str(), d.calls)).collect::<Vec<_>>(),
        [("2026-11-24", 2), ("2026-11-25", 7)]
    );
    assert_eq!(usage::calls_since(&mut c, again.id, "2026-11-25").await.unwrap(), 7);
    assert_eq!(usage::calls_since(&mut c, SubscriptionId::new(), "2026-11-25").await.unwrap(), 0);
    drop(c);

    // An alert that stays breached fires at most once per quiet period, wherever the rounds fall.
    let mut c = store.conn().await.unwrap();
    assert!(portico_store::notify::fire_unless_fired_within(&mut c, "rule:test", 1_000_000, 300_000).await.unwrap());
    for now in [1_000_001, 1_200_000, 1_299_999] {
        assert!(
            !portico_store::notify::fire_unless_fired_within(&mut c, "rule:test", now, 300_000).await.unwrap(),
            "{now}"
        );
    }
    assert!(portico_store::notify::fire_unless_fired_within(&mut c, "rule:test", 1_300_000, 300_000).await.unwrap());
    assert!(!portico_store::notify::fire_unless_fired_within(&mut c, "rule:test", 1_300_001, 300_000).await.unwrap());
    drop(c);

    // A transaction that is not committed leaves nothing behind.
    {
        let mut tx = store.begin().await.unwrap();
        orgs::insert(&mut tx, &slug("ghost"), &name("Ghost"), OrgKind::Consumer).await.unwrap();
        portico_store::bump_generation(&mut tx).await.unwrap();
    }
    let mut c = store.conn().await.unwrap();
    assert!(orgs::by_slug(&mut c, "ghost").await.unwrap().is_none());
    let g = portico_store::generation(&mut c).await.unwrap();
    portico_store::bump_generation(&mut c).await.unwrap();
    assert_eq!(portico_store::generation(&mut c).await.unwrap(), g + 1);
}

#[tokio::test]
async fn repositories_on_sqlite() {
    let (store, _dir) = sqlite().await;
    exercise(&store).await;
}

#[tokio::test]
async fn repositories_on_postgres() {
    let store = postgres().await;
    exercise(&store).await;
}

#[tokio::test]
async fn a_bad_database_url_says_what_to_use() {
    let e = Store::connect("mysql://root@localhost/x").await.unwrap_err().to_string();
    assert!(e.contains("sqlite://") && e.contains("postgres://"), "{e}");
}
