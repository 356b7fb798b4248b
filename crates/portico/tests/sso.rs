//! Single sign-on for the portal against a real OpenID provider (`oidc-provider` from npm, in
//! `tests/oidc/`; `./scripts/test` installs it): the authorization-code flow with PKCE, the
//! e-mail read from userinfo, accounts made or found, sessions like a password sign-in, and the
//! attacks on the flow refused — a callback without the browser's state cookie (login CSRF), a
//! replayed callback, an unverified e-mail claiming an existing account, and an issuer the
//! outbound policy refuses.

mod common;

use common::{Backend, TestApp, spawn_app_configured};
use portico::settings::Outbound;
use portico_control::services::sso::SsoProvider;
use portico_core::model::OrgKind;
use serde_json::{Value, json};
use std::collections::HashMap;
use tokio::io::AsyncBufReadExt;

/// The OpenID provider process; killed when dropped.
struct Idp {
    issuer: String,
    _child: tokio::process::Child,
    http: reqwest::Client,
}

async fn idp() -> Idp {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
    assert!(
        std::path::Path::new(&format!("{dir}/node_modules/oidc-provider")).exists(),
        "the OpenID provider these tests sign in against is not installed: run ./scripts/test (it installs it), \
         or `npm ci` in {dir}"
    );
    let mut child = tokio::process::Command::new("node")
        .arg(format!("{dir}/provider.mjs"))
        .stdout(std::process::Stdio::piped())
        .stderr(match common::test_log_path("oidc-provider") {
            Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
            None => std::process::Stdio::inherit(),
        })
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js) runs the test OpenID provider: install it (./scripts/test does)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let issuer = loop {
        let line = lines.next_line().await.unwrap().expect("the OpenID provider exited before listening");
        if let Some(i) = line.strip_prefix("listening ") {
            break i.to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Idp { issuer, _child: child, http: reqwest::Client::new() }
}

impl Idp {
    async fn post(&self, path: &str, body: Value) {
        let r = self.http.post(format!("{}{path}", self.issuer)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    /// The next sign-in at the provider is this person's.
    async fn person(&self, sub: &str, email: &str, verified: bool) {
        self.post(
            "/test/account",
            json!({"sub": sub, "email": email, "email_verified": verified, "name": "Pat Example"}),
        )
        .await;
    }
}

async fn world(outbound: Outbound, link_by_email: bool) -> (TestApp, Idp) {
    let idp = idp().await;
    let issuer = idp.issuer.clone();
    let app = spawn_app_configured(Backend::Sqlite, move |s| {
        s.outbound = outbound;
        s.sso = vec![SsoProvider {
            id: "idp".into(),
            name: "Test IdP".into(),
            issuer,
            client_id: "portico-portal".into(),
            client_secret: "a-long-client-secret-for-portico".into(),
            scopes: Vec::new(),
            account_type: OrgKind::Consumer,
            link_by_email,
        }];
    })
    .await;
    let redirect = format!("{}/auth/sso/idp/callback", app.api);
    idp.post(
        "/test/setup",
        json!({"client_id": "portico-portal", "client_secret": "a-long-client-secret-for-portico", "redirect_uri": redirect}),
    )
    .await;
    (app, idp)
}

/// A browser as far as cookies and redirects go: cookies per host, redirects walked by hand.
#[derive(Default)]
struct Browser {
    jar: HashMap<String, HashMap<String, String>>,
}

struct Landed {
    url: reqwest::Url,
    status: u16,
    body: String,
}

impl Browser {
    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }

    fn cookie_header(&self, url: &reqwest::Url) -> Option<String> {
        let host = url.host_str()?.to_owned() + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let c = self.jar.get(&host)?;
        (!c.is_empty()).then(|| c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
    }

    fn keep(&mut self, url: &reqwest::Url, resp: &reqwest::Response) {
        let host = url.host_str().unwrap().to_owned() + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            let jar = self.jar.entry(host.clone()).or_default();
            if attrs.to_ascii_lowercase().contains("max-age=0") || val.is_empty() {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_owned(), val.to_owned());
            }
        }
    }

    /// GETs `url` and follows redirects until an answer that is not one, or until `stop_at`
    /// (a prefix) is the next location (then that location is returned unvisited, status 0).
    async fn walk(&mut self, url: &str, stop_at: Option<&str>) -> Landed {
        let http = Self::client();
        let mut url: reqwest::Url = url.parse().unwrap();
        for _ in 0..20 {
            let mut req = http.get(url.clone());
            if let Some(c) = self.cookie_header(&url) {
                req = req.header("cookie", c);
            }
            let resp = req.send().await.unwrap();
            self.keep(&url, &resp);
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let loc = resp.headers()["location"].to_str().unwrap();
                let next = url.join(loc).unwrap();
                if stop_at.is_some_and(|p| next.as_str().starts_with(p)) {
                    return Landed { url: next, status: 0, body: String::new() };
                }
                url = next;
                continue;
            }
            return Landed { url, status, body: resp.text().await.unwrap_or_default() };
        }
        panic!("more than 20 redirects");
    }

    fn session(&self, app: &TestApp) -> Option<String> {
        let url: reqwest::Url = app.api.parse().unwrap();
        let host = url.host_str()?.to_owned() + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let jar = self.jar.get(&host)?;
        jar.get("__Host-portico_session").or_else(|| jar.get("portico_session")).cloned()
    }
}

async fn me(app: &TestApp, session: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url("/me"))
        .header("cookie", format!("__Host-portico_session={session}; portico_session={session}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn loopback() -> Outbound {
    Outbound { allow_cidrs: vec!["127.0.0.0/8".into()] }
}

#[tokio::test]
async fn people_sign_in_with_the_openid_provider() {
    let (app, idp) = world(loopback(), true).await;
    let (s, list) = app.get("/auth/sso", None).await;
    assert_eq!(s, 200);
    assert_eq!(list, json!([{"id": "idp", "name": "Test IdP", "start_url": "/auth/sso/idp"}]));

    // The portal's sign-in page has the provider's button.
    let page = app.http.get(format!("{}/sign-in", app.api)).send().await.unwrap().text().await.unwrap();
    let escaped_start = "href=\"&#x2f;auth&#x2f;sso&#x2f;idp\"";
    assert!(
        (page.contains("href=\"/auth/sso/idp\"") || page.contains(escaped_start))
            && page.contains("Sign in with Test IdP"),
        "{page}"
    );

    // A new person: an account and a consumer organization are made, signed in.
    idp.person("alice-1", "alice@idp.example", true).await;
    let mut b = Browser::default();
    let landed = b.walk(&format!("{}/auth/sso/idp", app.api), None).await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    assert!(landed.url.path().ends_with("/auth/sso/idp/callback"), "{}", landed.url);
    assert!(landed.body.contains("url=/"), "the callback hands over to the portal: {}", landed.body);
    let first = b.session(&app).expect("a session cookie");
    let (s, who) = me(&app, &first).await;
    assert_eq!(s, 200, "{who}");
    assert_eq!(who["user"]["email"], "alice@idp.example");
    assert_eq!(who["user"]["email_verified"], true, "{who}");
    let orgs = who["organizations"].as_array().unwrap();
    assert_eq!((orgs.len(), orgs[0]["kind"].as_str()), (1, Some("consumer")), "{who}");

    // The same person again: the same account, a new session (the old cookie's is ended).
    idp.person("alice-1", "alice@idp.example", true).await;
    b.walk(&format!("{}/auth/sso/idp", app.api), None).await;
    let second = b.session(&app).unwrap();
    assert_ne!(first, second);
    let (_, again) = me(&app, &second).await;
    assert_eq!(again["user"]["id"], who["user"]["id"]);
    assert_eq!(me(&app, &first).await.0, 401, "signing in again ends the session the browser had");

    // A verified account with a password: the provider's verified address links to it.
    let token = app.signup("carol@idp.example", "provider").await;
    let (_, carol) = app.get("/me", Some(&token)).await;
    let user_id = carol["user"]["id"].as_str().unwrap().to_owned();
    let tok = app.app_state.store.clone();
    let mut c = tok.conn().await.unwrap();
    portico_store::notify::mark_email_verified(&mut c, user_id.parse().unwrap()).await.unwrap();
    drop(c);
    idp.person("carol-9", "carol@idp.example", true).await;
    let mut b = Browser::default();
    assert_eq!(b.walk(&format!("{}/auth/sso/idp", app.api), None).await.status, 200);
    let (_, linked) = me(&app, &b.session(&app).unwrap()).await;
    assert_eq!(linked["user"]["id"], carol["user"]["id"]);

    // The audit log says how each came in.
    let admin = app.admin_token().await;
    let (s, log) = app.get("/audit?action=session.login", Some(&admin)).await;
    assert_eq!(s, 200, "{log}");
    assert!(log.to_string().contains("\"provider\":\"idp\""), "{log}");
    app.stop().await;
}

#[tokio::test]
async fn the_flow_refuses_what_would_take_over_an_account() {
    let (app, idp) = world(loopback(), true).await;
    let start = format!("{}/auth/sso/idp", app.api);
    let callback = format!("{}/auth/sso/idp/callback", app.api);

    // An account whose address nobody verified yet: a verified provider address may not sign
    // in to it (whoever registered it first could be an attacker).
    let dave = app.signup("dave@idp.example", "consumer").await;
    idp.person("dave-1", "dave@idp.example", true).await;
    let mut b = Browser::default();
    let landed = b.walk(&start, None).await;
    assert_eq!(landed.status, 409, "{}", landed.body);
    assert!(landed.body.contains("not verified yet"), "{}", landed.body);
    assert!(b.session(&app).is_none());
    assert_eq!(app.get("/me", Some(&dave)).await.0, 200, "the account is untouched");

    // An address the provider did not verify signs in to nothing: not to a verified account,
    // not to a new one.
    let (_, erin) = {
        let t = app.signup("vera@idp.example", "consumer").await;
        app.get("/me", Some(&t)).await
    };
    let mut c = app.app_state.store.conn().await.unwrap();
    portico_store::notify::mark_email_verified(&mut c, erin["user"]["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    drop(c);
    for (sub, email) in [("vera-x", "vera@idp.example"), ("newbie-x", "newbie@idp.example")] {
        idp.person(sub, email, false).await;
        let mut b = Browser::default();
        let landed = b.walk(&start, None).await;
        assert_eq!(landed.status, 403, "{email}: {}", landed.body);
        assert!(landed.body.contains("has not verified your e-mail address"), "{}", landed.body);
        assert!(b.session(&app).is_none());
    }

    // Login CSRF: a callback (a valid code and state) in a browser that did not start the
    // sign-in is refused.
    idp.person("erin-1", "erin@idp.example", true).await;
    let mut victim = Browser::default();
    let mut attacker = Browser::default();
    let landed = attacker.walk(&start, Some(&callback)).await;
    assert_eq!(landed.status, 0);
    let stolen = landed.url.to_string();
    let r = victim.walk(&stolen, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("not started in this browser"), "{}", r.body);
    assert!(victim.session(&app).is_none());
    // The attacker's own browser may finish it once; a replay (with the state cookie put back)
    // is refused by Portico, before the code ever reaches the provider again.
    let kept = attacker.jar.clone();
    assert_eq!(attacker.walk(&stolen, None).await.status, 200);
    attacker.jar = kept;
    let replay = attacker.walk(&stolen, None).await;
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(
        replay.body.contains("expired or was already used"),
        "refused by Portico, before the provider: {}",
        replay.body
    );

    // The provider says no.
    let mut b = Browser::default();
    b.walk(&start, Some(&callback)).await;
    let r = b.walk(&format!("{callback}?error=access_denied&error_description=nope"), None).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("did not sign you in (access_denied)"), "{}", r.body);
    assert!(!r.body.contains("nope"), "the link author's text is not shown: {}", r.body);

    // Made-up answers and unknown providers.
    let r = Browser::default().walk(&format!("{callback}?code=x&state=y"), None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = Browser::default().walk(&format!("{}/auth/sso/nope", app.api), None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    app.stop().await;
}

#[tokio::test]
async fn an_issuer_on_a_refused_network_is_not_called() {
    let (app, _idp) = world(Outbound::default(), true).await;
    let r = Browser::default().walk(&format!("{}/auth/sso/idp", app.api), None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("single sign-on is not available"), "{}", r.body);
    app.stop().await;
}

#[tokio::test]
async fn without_link_by_email_an_existing_account_is_not_linked() {
    let (app, idp) = world(loopback(), false).await;
    let t = app.signup("gus@idp.example", "consumer").await;
    let (_, gus) = app.get("/me", Some(&t)).await;
    let mut c = app.app_state.store.conn().await.unwrap();
    portico_store::notify::mark_email_verified(&mut c, gus["user"]["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    drop(c);
    idp.person("gus-1", "gus@idp.example", true).await;
    let mut b = Browser::default();
    let landed = b.walk(&format!("{}/auth/sso/idp", app.api), None).await;
    assert_eq!(landed.status, 409, "{}", landed.body);
    assert!(landed.body.contains("does not link accounts by e-mail"), "{}", landed.body);
    assert!(b.session(&app).is_none());
    app.stop().await;
}
