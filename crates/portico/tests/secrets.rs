//! Secrets at rest: a provider's upstream credential and signing secret, a webhook secret and
//! the token signing key are stored sealed (AES-256-GCM): neither the database file nor its rows
//! hold them, the gateway still uses them, and re-sealing under a new master key keeps them.

mod common;

use common::{Backend, echo_openapi, spawn_app, spawn_upstream};
use portico_core::secret::Keyring;
use serde_json::{Value, json};

#[tokio::test]
async fn secrets_are_sealed_in_the_database() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("sam@provider.example", "provider").await;
    assert_eq!(app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await.0, 201);
    let policies = json!({
        "upstream_auth": {"type": "header", "name": "X-Upstream-Key", "value": "UPSTREAM-CREDENTIAL-4711"},
        "signing_secret": "SIGNING-SECRET-0815-abcdef"
    });
    let v = json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": echo_openapi(), "state": "published", "policies": policies});
    assert_eq!(app.post("/apis/echo/versions", Some(&provider), v).await.0, 201);
    assert_eq!(
        app.post(
            "/apis/echo/plans",
            Some(&provider),
            json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}})
        )
        .await
        .0,
        201
    );
    let (_, me) = app.get("/me", Some(&provider)).await;
    let org = me["organizations"][0]["id"].as_str().unwrap().to_owned();
    let (s, ep) =
        app.post(&format!("/orgs/{org}/webhooks"), Some(&provider), json!({"url": "http://127.0.0.1:9/hook"})).await;
    assert_eq!(s, 201, "{ep}");
    let webhook_secret = ep["secret"].as_str().unwrap().to_owned();

    // The gateway still injects the credential.
    let consumer = app.signup("cat@consumer.example", "consumer").await;
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "Sealed app"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": "echo", "plan": "free"})).await.0,
        201
    );
    let (_, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({})).await;
    let r = app
        .http
        .get(format!("{}/echo/v1/things/1", app.gateway))
        .header("x-api-key", k["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-upstream-key"], "UPSTREAM-CREDENTIAL-4711");

    // Neither the rows nor the database file hold a secret in clear.
    let mut c = app.app_state.store.conn().await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT policies FROM api_versions").fetch_all(&mut *c).await.unwrap();
    assert!(rows[0].0.contains("enc:v1:") && !rows[0].0.contains("4711"), "{}", rows[0].0);
    let (stored_webhook,): (String,) =
        sqlx::query_as("SELECT secret FROM webhook_endpoints").fetch_one(&mut *c).await.unwrap();
    assert!(stored_webhook.starts_with("enc:v1:") && stored_webhook != webhook_secret);
    let (stored_key,): (String,) =
        sqlx::query_as("SELECT private_key FROM signing_keys").fetch_one(&mut *c).await.unwrap();
    assert!(stored_key.starts_with("enc:v1:"));
    drop(c);
    let _ = sqlx::query("PRAGMA wal_checkpoint(FULL)").execute(&mut *app.app_state.store.conn().await.unwrap()).await;
    for entry in std::fs::read_dir(app.dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".db") || name.ends_with("-wal") {
            let bytes = std::fs::read(entry.path()).unwrap();
            for secret in ["UPSTREAM-CREDENTIAL-4711", "SIGNING-SECRET-0815", webhook_secret.as_str()] {
                assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} in clear in {name}");
            }
        }
    }
    // The API shows the credential redacted, the export (for apply) in clear.
    let (_, shown) = app.get("/apis/echo/versions/1.0.0", Some(&provider)).await;
    assert_eq!(shown["policies"]["upstream_auth"]["value"], "<secret>");
    let admin = app.admin_token().await;
    let (_, doc) = app.get("/admin/export", Some(&admin)).await;
    assert!(doc.to_string().contains("UPSTREAM-CREDENTIAL-4711"), "export opens secrets");

    // Re-sealing under a new master key (the old one kept to open): everything still opens.
    let old = app.app_state.secrets.clone();
    let key_file = std::fs::read_to_string(app.dir.path().join("master-keys")).unwrap();
    let old_key = portico_core::secret::parse_key(key_file.lines().next().unwrap()).unwrap();
    let rotated = Keyring::new(vec![Keyring::generate_key(), old_key]).unwrap();
    let n = portico_control::services::secrets::reseal_all(&app.app_state.store, &rotated).await.unwrap();
    assert_eq!(n, 3, "one version, one webhook, one signing key");
    assert_eq!(portico_control::services::secrets::reseal_all(&app.app_state.store, &rotated).await.unwrap(), 0);
    let mut c = app.app_state.store.conn().await.unwrap();
    let (stored_webhook,): (String,) =
        sqlx::query_as("SELECT secret FROM webhook_endpoints").fetch_one(&mut *c).await.unwrap();
    assert!(rotated.is_current(&stored_webhook) && !old.is_current(&stored_webhook));
    assert_eq!(rotated.open(&stored_webhook).unwrap(), webhook_secret);
    assert!(old.open(&stored_webhook).is_err(), "the old key alone no longer opens it");
    drop(c);
    app.stop().await;
}
