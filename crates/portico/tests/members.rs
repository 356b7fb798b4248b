//! An organization's people: invitations by e-mail (single use, addressed, revocable, replaced
//! by a newer one), accepting through the API and the portal page, roles and who may change
//! them, removing members and leaving, the last owner kept, and the audit trail of it all.
//! On SQLite and PostgreSQL.

mod common;

use common::{Backend, TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The messages in the outbox (no SMTP server is configured), oldest first.
fn outbox(app: &TestApp) -> Vec<String> {
    let dir = app.dir.path().join("outbox");
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).collect()).unwrap_or_default();
    files.sort_by_key(|e| e.file_name());
    files
        .iter()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

/// The invitation token in the newest message to `to` (waits for it).
async fn invitation_token(app: &TestApp, to: &str, not: &[String]) -> String {
    let started = Instant::now();
    loop {
        for m in outbox(app).iter().rev() {
            let text = m.replace("\r\n", "\n").replace("=\n", "").replace("=3D", "=");
            if !text.contains(&format!("To: {to}")) {
                continue;
            }
            if let Some(at) = text.find("/invitations?token=") {
                let t: String =
                    text[at + 19..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !not.contains(&t) {
                    return t;
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no invitation e-mail to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(app: &TestApp, m: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let (s, v, _) = app.call(m, path, Some(token), body).await;
    (s, v)
}

fn org_id(v: &Value) -> String {
    v["organizations"][0]["id"].as_str().unwrap().to_owned()
}

async fn invitations_and_roles(backend: Backend) {
    let app = spawn_app(backend).await;
    let (s, owner) = app
        .post(
            "/auth/signup",
            None,
            json!({"email": "olga@team.example", "password": "long enough password", "name": "Olga", "organization": "Team", "account_type": "consumer"}),
        )
        .await;
    assert_eq!(s, 201, "{owner}");
    let org = org_id(&owner);
    let olga = owner["token"].as_str().unwrap().to_owned();
    let members_path = format!("/orgs/{org}/members");
    let inv_path = format!("/orgs/{org}/invitations");

    // An invitation goes to the address only; the answer has no token.
    let (s, inv) = app.post(&inv_path, Some(&olga), json!({"email": "Grace@Team.example", "role": "admin"})).await;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(inv["email"], "grace@team.example");
    assert_eq!(inv["status"], "pending");
    assert!(!inv.to_string().contains("pti_"), "the token is never in an answer: {inv}");
    let first = invitation_token(&app, "grace@team.example", &[]).await;
    assert!(first.starts_with("pti_"), "{first}");
    // A newer invitation to the same address replaces the pending one.
    let (s, inv) = app.post(&inv_path, Some(&olga), json!({"email": "grace@team.example", "role": "developer"})).await;
    assert_eq!(s, 201, "{inv}");
    let token = invitation_token(&app, "grace@team.example", std::slice::from_ref(&first)).await;
    let (_, list) = app.get(&inv_path, Some(&olga)).await;
    let statuses: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["pending", "revoked"], "{list}");

    // The link opens a page that accepts with a button (opening it changes nothing).
    let page = app.http.get(format!("{}/invitations?token={token}", app.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("Join an organization") && html.contains(&token), "{html}");

    // Someone else cannot use it, even with the link.
    let mallory = app.signup("mallory@elsewhere.example", "consumer").await;
    let (s, v) = app.post("/invitations/accept", Some(&mallory), json!({"token": token})).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("grace@team.example"), "{v}");
    let (s, _) = app.post("/invitations/accept", None, json!({"token": token})).await;
    assert_eq!(s, 401);
    // The replaced link is dead.
    let grace = app.signup("grace@team.example", "consumer").await;
    let (s, v) = app.post("/invitations/accept", Some(&grace), json!({"token": first})).await;
    assert_eq!(s, 400, "{v}");
    let (s, joined) = app.post("/invitations/accept", Some(&grace), json!({"token": token})).await;
    assert_eq!(s, 200, "{joined}");
    assert_eq!(joined["id"], org.as_str());
    assert_eq!(joined["role"], "developer");
    let (s, v) = app.post("/invitations/accept", Some(&grace), json!({"token": token})).await;
    assert_eq!(s, 400, "a link works once: {v}");
    let (_, me) = app.get("/me", Some(&grace)).await;
    assert_eq!(me["user"]["email_verified"], true, "the link proved the address");
    assert!(
        me["organizations"].as_array().unwrap().iter().any(|o| o["id"] == org.as_str() && o["role"] == "developer")
    );
    let grace_id = me["user"]["id"].as_str().unwrap().to_owned();
    let (_, me) = app.get("/me", Some(&olga)).await;
    let olga_id = me["user"]["id"].as_str().unwrap().to_owned();

    // Members see each other; outsiders do not see the organization at all.
    let (s, list) = app.get(&members_path, Some(&grace)).await;
    assert_eq!(s, 200, "{list}");
    let people: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(people, [("grace@team.example", "developer"), ("olga@team.example", "owner")]);
    let (s, _) = app.get(&members_path, Some(&mallory)).await;
    assert_eq!(s, 404);
    // Already a member.
    let (s, v) = app.post(&inv_path, Some(&olga), json!({"email": "grace@team.example", "role": "admin"})).await;
    assert_eq!(s, 409, "{v}");

    // A developer neither invites nor changes roles.
    let (s, _) = app.post(&inv_path, Some(&grace), json!({"email": "x@team.example", "role": "developer"})).await;
    assert_eq!(s, 403);
    let grace_path = format!("{members_path}/{grace_id}");
    let olga_path = format!("{members_path}/{olga_id}");
    let (s, _) = call(&app, Method::PATCH, &grace_path, &grace, Some(json!({"role": "admin"}))).await;
    assert_eq!(s, 403, "nobody promotes themselves");
    // The owner makes Grace an admin; an admin invites, but makes no owners.
    let (s, v) = call(&app, Method::PATCH, &grace_path, &olga, Some(json!({"role": "admin"}))).await;
    assert_eq!((s, v["role"].as_str()), (200, Some("admin")), "{v}");
    let (s, v) = app.post(&inv_path, Some(&grace), json!({"email": "bill@team.example", "role": "billing"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = app.post(&inv_path, Some(&grace), json!({"email": "own@team.example", "role": "owner"})).await;
    assert_eq!(s, 403, "only owners invite owners");
    let (s, _) = call(&app, Method::PATCH, &grace_path, &grace, Some(json!({"role": "owner"}))).await;
    assert_eq!(s, 403, "only owners make owners");
    let (s, _) = call(&app, Method::PATCH, &olga_path, &grace, Some(json!({"role": "developer"}))).await;
    assert_eq!(s, 403, "only owners change an owner's role");
    let (s, _) = call(&app, Method::DELETE, &olga_path, &grace, None).await;
    assert_eq!(s, 403, "only owners remove an owner");
    let (s, v) = call(&app, Method::PATCH, &grace_path, &olga, Some(json!({"role": "chief"}))).await;
    assert_eq!(s, 400, "an unknown role: {v}");

    // The billing member joins, sees members, not invitations.
    let bill_token = invitation_token(&app, "bill@team.example", &[]).await;
    let bill = app.signup("bill@team.example", "consumer").await;
    let (s, _) = app.post("/invitations/accept", Some(&bill), json!({"token": bill_token})).await;
    assert_eq!(s, 200);
    let (s, _) = app.get(&inv_path, Some(&bill)).await;
    assert_eq!(s, 403);
    let (s, _) = app.get(&members_path, Some(&bill)).await;
    assert_eq!(s, 200);

    // Revoking: the link dies; revoking twice is a conflict.
    let (s, inv) = app.post(&inv_path, Some(&olga), json!({"email": "late@team.example", "role": "developer"})).await;
    assert_eq!(s, 201);
    let late_token = invitation_token(&app, "late@team.example", &[]).await;
    let inv_id = inv["id"].as_str().unwrap();
    let (s, _) = call(&app, Method::DELETE, &format!("{inv_path}/{inv_id}"), &grace, None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&app, Method::DELETE, &format!("{inv_path}/{inv_id}"), &grace, None).await;
    assert_eq!(s, 409);
    let late = app.signup("late@team.example", "consumer").await;
    let (s, _) = app.post("/invitations/accept", Some(&late), json!({"token": late_token})).await;
    assert_eq!(s, 400, "a revoked link");

    // The only owner can neither step down nor leave.
    let (s, v) = call(&app, Method::PATCH, &olga_path, &olga, Some(json!({"role": "admin"}))).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = call(&app, Method::DELETE, &olga_path, &olga, None).await;
    assert_eq!(s, 409, "{v}");
    // With a second owner, she can.
    let (s, _) = call(&app, Method::PATCH, &grace_path, &olga, Some(json!({"role": "owner"}))).await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, Method::DELETE, &olga_path, &olga, None).await;
    assert_eq!(s, 204, "an owner leaves");
    let (s, _) = app.get(&format!("/orgs/{org}"), Some(&olga)).await;
    assert_eq!(s, 404, "a former member sees nothing of it");
    // Bill leaves on his own; Grace removes nobody twice.
    let (_, me) = app.get("/me", Some(&bill)).await;
    let bill_path = format!("{members_path}/{}", me["user"]["id"].as_str().unwrap());
    let (s, _) = call(&app, Method::DELETE, &bill_path, &bill, None).await;
    assert_eq!(s, 204, "any member may leave");
    let (s, _) = call(&app, Method::DELETE, &bill_path, &grace, None).await;
    assert_eq!(s, 404);

    // Every change is in the organization's audit log, seen by its owner.
    let (s, log) =
        app.get(&format!("/audit?org={}", owner["organizations"][0]["slug"].as_str().unwrap()), Some(&grace)).await;
    assert_eq!(s, 200, "{log}");
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "org.invitation.create",
        "org.invitation.accept",
        "org.invitation.revoke",
        "org.member.role",
        "org.member.leave",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn invitations_and_roles_sqlite() {
    invitations_and_roles(Backend::Sqlite).await;
}

#[tokio::test]
async fn invitations_and_roles_postgres() {
    invitations_and_roles(Backend::Postgres).await;
}
