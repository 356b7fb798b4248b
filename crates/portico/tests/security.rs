//! Accounts and sessions as an attacker would try them, through the real server: sign-in
//! throttling, the session cookie's attributes, CSRF on cookie-authenticated changes, session
//! fixation, idle timeout, listing and revoking sessions, password changes, security headers,
//! and the audit log's scoping.

mod common;

use common::{Backend, TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

const PW: &str = "long enough password";

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.http.post(app.url("/auth/login")).json(&json!({"email": email, "password": password})).send().await.unwrap()
}

fn cookie_of(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn sign_in_is_throttled_per_account() {
    let app = spawn_app(Backend::Sqlite).await;
    app.signup("tia@consumer.example", "consumer").await;
    app.signup("ben@consumer.example", "consumer").await;
    for _ in 0..5 {
        assert_eq!(login(&app, "tia@consumer.example", "wrong password!").await.status(), 401);
    }
    let r = login(&app, "tia@consumer.example", PW).await;
    assert_eq!(r.status(), 429, "throttled even with the right password");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 900, "{wait}");
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("too many failed sign-ins"), "{body}");
    assert_eq!(login(&app, "ben@consumer.example", PW).await.status(), 200, "another account is not affected");
    // Unknown accounts and malformed e-mails count too, and answer like a wrong password.
    assert_eq!(login(&app, "nobody@x.example", "whatever pw").await.status(), 401);
    assert_eq!(login(&app, "not an email", "whatever pw").await.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn sessions_cookies_csrf_and_password_changes() {
    let app = spawn_app(Backend::Sqlite).await;
    let first_token = app.signup("cy@consumer.example", "consumer").await;

    // The cookie: __Host-, Secure (loopback is a secure context), HttpOnly, SameSite=Strict.
    let r = login(&app, "cy@consumer.example", PW).await;
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["__Host-portico_session=pts_", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(part), "{part} in {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookie = cookie_of(&r);
    let body: Value = r.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    // With the cookie: reads work, a change without the CSRF token is refused, with it works.
    let me: Value = app.http.get(app.url("/me")).header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["csrf_token"], csrf.as_str());
    let post = |csrf: Option<&str>| {
        let mut b = app.http.post(app.url("/apps")).header("cookie", &cookie).json(&json!({"name": "Cookie app"}));
        if let Some(t) = csrf {
            b = b.header("x-csrf-token", t);
        }
        b.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("X-CSRF-Token"), "{body}");
    assert_eq!(post(Some("0123456789abcdef0123456789abcdef")).await.unwrap().status(), 403);
    assert_eq!(post(Some(&csrf)).await.unwrap().status(), 201);
    // A bearer token needs no CSRF token (a page cannot make the browser send one).
    assert_eq!(app.post("/apps", Some(&first_token), json!({"name": "Bearer app"})).await.0, 201);

    // Signing in again from that browser ends the old session (no fixation).
    let r = app
        .http
        .post(app.url("/auth/login"))
        .header("cookie", &cookie)
        .json(&json!({"email": "cy@consumer.example", "password": PW}))
        .send()
        .await
        .unwrap();
    let second: Value = r.json().await.unwrap();
    let second = second["token"].as_str().unwrap().to_owned();
    let old = cookie.split_once('=').unwrap().1.to_owned();
    assert_eq!(app.get("/me", Some(&old)).await.0, 401, "the pre-login session is gone");

    // Listing and revoking one's own sessions.
    let (s, list) = app.get("/me/sessions", Some(&second)).await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "the sign-up session and this one: {list:?}");
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["ip"], "127.0.0.1");
    let other = list.iter().find(|s| s["current"] == false).unwrap()["id"].as_str().unwrap().to_owned();
    let (s, _, _) = app.call(Method::DELETE, &format!("/me/sessions/{other}"), Some(&second), None).await;
    assert_eq!(s, 204);
    assert_eq!(app.get("/me", Some(&first_token)).await.0, 401, "the revoked session's token no longer works");
    // Someone else's session id answers 404.
    let stranger = app.signup("eve@consumer.example", "consumer").await;
    let (_, theirs) = app.get("/me/sessions", Some(&stranger)).await;
    let theirs = theirs[0]["id"].as_str().unwrap().to_owned();
    let (s, _, _) = app.call(Method::DELETE, &format!("/me/sessions/{theirs}"), Some(&second), None).await;
    assert_eq!(s, 404);
    assert_eq!(app.get("/me", Some(&stranger)).await.0, 200);

    // Password change: wrong current password refused; a common new one refused; then every
    // session ends and the answer is a new one.
    let change = |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let (s, v, _) = app
        .call(Method::POST, "/me/password", Some(&second), Some(change("not my password", "another fine passphrase")))
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v, _) = app.call(Method::POST, "/me/password", Some(&second), Some(change(PW, "password123"))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("most common"), "{v}");
    let (s, v, _) =
        app.call(Method::POST, "/me/password", Some(&second), Some(change(PW, "another fine passphrase"))).await;
    assert_eq!(s, 200, "{v}");
    let third = v["token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/me", Some(&second)).await.0, 401, "sessions end on a password change");
    assert_eq!(app.get("/me", Some(&third)).await.0, 200);
    assert_eq!(login(&app, "cy@consumer.example", PW).await.status(), 401);
    assert_eq!(login(&app, "cy@consumer.example", "another fine passphrase").await.status(), 200);

    // Idle timeout: a browser session unused for longer than an hour is over.
    {
        let mut c = app.app_state.store.conn().await.unwrap();
        let long_ago = portico_store::now_millis() - 2 * 3600 * 1000;
        sqlx::query("UPDATE sessions SET created_at = $1, last_seen_at = $1")
            .bind(long_ago)
            .execute(&mut *c)
            .await
            .unwrap();
    }
    assert_eq!(app.get("/me", Some(&third)).await.0, 401, "idle sessions end");
    app.stop().await;
}

#[tokio::test]
async fn every_answer_carries_security_headers() {
    let app = spawn_app(Backend::Sqlite).await;
    for (path, html) in [("/api/v1/apis", false), ("/api/v1/nope", false), ("/", true), ("/healthz", false)] {
        let r = app.http.get(format!("{}{path}", app.api)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert!(h["strict-transport-security"].to_str().unwrap().starts_with("max-age="), "{path}");
        assert!(h.contains_key("referrer-policy"), "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        if html {
            assert!(csp.contains("object-src 'none'"), "{path}: {csp}");
        } else {
            assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_records_changes_and_shows_owners_only_their_own() {
    let app = spawn_app(Backend::Sqlite).await;
    let admin = app.admin_token().await;
    let alice = app.signup("alice@consumer.example", "consumer").await;
    let bob = app.signup("bob@consumer.example", "consumer").await;
    let (_, created) = app.post("/apps", Some(&alice), json!({"name": "Alice app"})).await;
    let app_id = created["id"].as_str().unwrap().to_owned();
    let (s, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&alice), json!({"name": "prod"})).await;
    assert_eq!(s, 201);
    let secret = k["key"].as_str().unwrap().to_owned();
    assert_eq!(login(&app, "alice@consumer.example", "not the password").await.status(), 401);

    let (s, log) = app.get("/audit", Some(&alice)).await;
    assert_eq!(s, 200, "{log}");
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"app.create") && actions.contains(&"key.create"), "{actions:?}");
    assert!(actions.contains(&"user.signup"), "{actions:?}");
    let key_entry = log.as_array().unwrap().iter().find(|e| e["action"] == "key.create").unwrap();
    assert_eq!(key_entry["actor"], "alice@consumer.example");
    assert_eq!(key_entry["ip"], "127.0.0.1");
    assert_eq!(key_entry["after"]["name"], "prod");
    assert!(!log.to_string().contains(&secret), "the audit log never holds a key");

    // Bob sees none of it, and Alice's organization is not his to ask about.
    let (_, theirs) = app.get("/audit", Some(&bob)).await;
    assert!(!theirs.to_string().contains("Alice app"), "{theirs}");
    let (_, me) = app.get("/me", Some(&alice)).await;
    let org = me["organizations"][0]["slug"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&format!("/audit?org={org}"), Some(&bob)).await.0, 404);
    assert_eq!(app.get(&format!("/audit?org={org}"), Some(&alice)).await.0, 200);

    // The admin sees everything, failed sign-ins included, and can filter by action.
    let (_, all) = app.get("/audit?action=session.login_failed", Some(&admin)).await;
    let failed = all.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{all}");
    assert_eq!(failed[0]["actor"], "alice@consumer.example");
    let (s, v) = app.get("/audit?limit=nope", Some(&admin)).await;
    assert_eq!(s, 400, "{v}");
    app.stop().await;
}
