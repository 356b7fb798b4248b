//! OAuth2 client credentials end to end: an app's client gets a Portico-signed access token
//! at `/oauth/token`, the gateway accepts it, and refuses every forgery we know of (`alg: none`,
//! HS256 signed with the public key, a string `exp`, a wrong `aud` / `iss`, an ID token, an
//! unknown key), a revoked client's tokens, and tokens outside their scope. Keys rotate without
//! breaking tokens already issued.

mod common;

use base64::Engine;
use common::{Backend, TestApp, spawn_app, spawn_upstream};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

async fn token_request(app: &TestApp, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> reqwest::Response {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    let mut req = app
        .http
        .post(format!("{}/oauth/token", app.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"));
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    req.send().await.unwrap()
}

async fn call(app: &TestApp, api: &str, token: &str) -> reqwest::Response {
    app.http.get(format!("{}/{api}/v1/things/1", app.gateway)).bearer_auth(token).send().await.unwrap()
}

/// A JWT from parts we choose, signed with `sign` over `header.payload`.
fn forge(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let h = B64URL.encode(header.to_string());
    let p = B64URL.encode(claims.to_string());
    let msg = format!("{h}.{p}");
    let sig = B64URL.encode(sign(msg.as_bytes()));
    format!("{msg}.{sig}")
}

#[tokio::test]
async fn client_credentials_tokens_at_the_gateway() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("pam@provider.example", "provider").await;
    for slug in ["echo", "other"] {
        app.publish_api(&provider, slug, &upstream.url).await;
    }
    let consumer = app.signup("cal@consumer.example", "consumer").await;
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "Robot"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    for api in ["echo", "other"] {
        let (s, v) =
            app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": api, "plan": "free"})).await;
        assert_eq!(s, 201, "{v}");
    }

    // A client scoped to `echo`; its secret is shown once.
    let (s, client) = app
        .post(&format!("/apps/{app_id}/clients"), Some(&consumer), json!({"name": "robot", "scopes": ["echo"]}))
        .await;
    assert_eq!(s, 201, "{client}");
    let (id, secret) =
        (client["client_id"].as_str().unwrap().to_owned(), client["client_secret"].as_str().unwrap().to_owned());
    assert!(id.starts_with("ptci_") && secret.starts_with("ptcs_"));
    let (_, list) = app.get(&format!("/apps/{app_id}/clients"), Some(&consumer)).await;
    assert!(!list.to_string().contains(&secret), "a listed client never shows its secret");
    let stranger = app.signup("sid@elsewhere.example", "consumer").await;
    assert_eq!(app.get(&format!("/apps/{app_id}/clients"), Some(&stranger)).await.0, 404);

    // The grant.
    let r = token_request(&app, Some((&id, &secret)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        (t["token_type"].as_str(), t["expires_in"].as_i64(), t["scope"].as_str()),
        (Some("Bearer"), Some(900), Some("echo"))
    );
    let token = t["access_token"].as_str().unwrap().to_owned();
    // Client secret in the body works too.
    let r = token_request(
        &app,
        None,
        &[("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", &secret)],
    )
    .await;
    assert_eq!(r.status(), 200);

    // The gateway takes it; the upstream never sees it.
    let r = call(&app, "echo", &token).await;
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-portico-consumer"], "cal");
    // Out of scope: refused even though the app subscribes.
    let r = call(&app, "other", &token).await;
    assert_eq!(r.status(), 403);

    // Refusals at the token endpoint, RFC 6749 style inside problem+json.
    let r = token_request(&app, Some((&id, "ptcs_wrong")), &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_client");
    let r = token_request(&app, Some((&id, &secret)), &[("grant_type", "password")]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let r =
        token_request(&app, Some((&id, &secret)), &[("grant_type", "client_credentials"), ("scope", "other")]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
    let r = app
        .http
        .post(format!("{}/oauth/token", app.api))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .post(format!("{}/oauth/token", app.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 6 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Discovery.
    let jwks: Value =
        app.http.get(format!("{}/.well-known/jwks.json", app.api)).send().await.unwrap().json().await.unwrap();
    let header: Value = serde_json::from_slice(&B64URL.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!((header["alg"].as_str(), header["typ"].as_str()), (Some("EdDSA"), Some("at+jwt")));
    let kid = header["kid"].as_str().unwrap().to_owned();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap().clone();
    assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
    let meta: Value = app
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", app.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["token_endpoint"], format!("{}/oauth/token", app.api));

    // Forgeries. The real claims, for reference.
    let claims: Value = serde_json::from_slice(&B64URL.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let private = {
        let mut c = app.app_state.store.conn().await.unwrap();
        let keys = portico_store::oauth::signing_keys(&mut c, 0).await.unwrap();
        let opened = app.app_state.secrets.open(&keys[0].private_key).unwrap();
        base64::engine::general_purpose::STANDARD.decode(opened).unwrap()
    };
    let ed = |msg: &[u8]| {
        use ed25519_dalek::Signer;
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        ed25519_dalek::SigningKey::from_pkcs8_der(&private).unwrap().sign(msg).to_bytes().to_vec()
    };
    let good_header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    // Sanity: our forging reproduces a valid token.
    assert_eq!(call(&app, "echo", &forge(good_header.clone(), &claims, ed)).await.status(), 200);
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let public = B64URL.decode(jwk["x"].as_str().unwrap()).unwrap();
    let hs256 = |msg: &[u8]| {
        use hmac::{KeyInit, Mac};
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    };
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases: Vec<(&str, String)> = vec![
        ("alg none", forge(json!({"alg": "none", "typ": "at+jwt", "kid": kid}), &claims, |_| Vec::new())),
        ("HS256 with the public key", forge(json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}), &claims, hs256)),
        ("string exp", forge(good_header.clone(), &with("exp", json!("9999999999")), ed)),
        ("no exp", forge(good_header.clone(), &no_exp, ed)),
        ("expired", forge(good_header.clone(), &with("exp", json!(1_000_000_000)), ed)),
        ("wrong aud", forge(good_header.clone(), &with("aud", json!("https://elsewhere.example")), ed)),
        ("wrong iss", forge(good_header.clone(), &with("iss", json!("https://evil.example")), ed)),
        ("ID token", forge(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}), &claims, ed)),
        ("unknown kid", forge(json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "ptk_nope"}), &claims, ed)),
        ("tampered claims", {
            let t = forge(good_header.clone(), &claims, ed);
            let parts: Vec<&str> = t.split('.').collect();
            format!("{}.{}.{}", parts[0], B64URL.encode(with("org", json!("someone-else")).to_string()), parts[2])
        }),
        ("garbage", "not.a.jwt".into()),
    ];
    for (what, t) in cases {
        let r = call(&app, "echo", &t).await;
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{what}");
    }

    // Try-it tokens: the app's owner gets one, nobody else.
    let (s, v, _) = app.call(Method::POST, &format!("/apps/{app_id}/token"), Some(&consumer), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        call(&app, "other", v["access_token"].as_str().unwrap()).await.status(),
        200,
        "unscoped: any subscribed API"
    );
    let (s, _, _) = app.call(Method::POST, &format!("/apps/{app_id}/token"), Some(&stranger), None).await;
    assert_eq!(s, 404);

    // Rotation: old tokens still verify, new ones carry the new kid.
    let admin = app.admin_token().await;
    assert_eq!(app.call(Method::POST, "/admin/signing-keys/rotate", Some(&consumer), None).await.0, 403);
    let (s, rotated, _) = app.call(Method::POST, "/admin/signing-keys/rotate", Some(&admin), None).await;
    assert_eq!(s, 200);
    let r = token_request(&app, Some((&id, &secret)), &[("grant_type", "client_credentials")]).await;
    let fresh = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let fresh_header: Value =
        serde_json::from_slice(&B64URL.decode(fresh.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(fresh_header["kid"], rotated["kid"]);
    assert_eq!(call(&app, "echo", &fresh).await.status(), 200);
    assert_eq!(call(&app, "echo", &token).await.status(), 200, "a token signed before the rotation still works");
    // But the retired key signs nothing new: a token it signed after the rotation is refused.
    let later = with("iat", json!(time::OffsetDateTime::now_utc().unix_timestamp() + 120));
    let r = call(&app, "echo", &forge(good_header.clone(), &later, ed)).await;
    assert_eq!(r.status(), 401, "a leaked retired key cannot mint tokens");

    // Revoking the client ends its tokens within a second.
    let (s, _, _) = app.call(Method::DELETE, &format!("/apps/{app_id}/clients/{id}"), Some(&consumer), None).await;
    assert_eq!(s, 204);
    let started = Instant::now();
    loop {
        if call(&app, "echo", &fresh).await.status() == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "a revoked client's token still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = token_request(&app, Some((&id, &secret)), &[("grant_type", "client_credentials")]).await;
    assert_eq!(r.status(), 401);
    app.stop().await;
}

/// A provider trusts an external issuer for its API (`policies.token_issuers`); a consumer
/// registers its client at that issuer on an app, proving it with one of the client's tokens;
/// the issuer's tokens then call as the app — only on that API, only while registered, only
/// for the app's owner to manage, and nobody can claim a client without its token.
#[tokio::test]
async fn an_external_issuers_tokens_call_as_the_app_that_registered_the_client() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let idp = common::test_idp().await;
    let audience = "urn:echo";

    let provider = app.signup("pia@provider.example", "provider").await;
    app.publish_api(&provider, "other", &upstream.url).await;
    let (s, v) = app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await;
    assert_eq!(s, 201, "{v}");
    let policies = json!({"token_issuers": [idp.trusted_by(audience)]});
    let version = json!({"version": "1.0.0", "upstream_url": upstream.url, "openapi": common::echo_openapi(),
        "state": "published", "policies": policies});
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), version).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app
        .post("/apis/echo/plans", Some(&provider), json!({"slug": "free", "name": "Free", "pricing": {"type": "free"}}))
        .await;
    assert_eq!(s, 201, "{v}");
    let mut bad = policies.clone();
    bad["token_issuers"][0]["algorithms"] = json!(["HS256"]);
    let (s, v) = app
        .post(
            "/apis/echo/versions",
            Some(&provider),
            json!({"version": "1.1.0", "upstream_url": upstream.url,
            "openapi": common::echo_openapi(), "policies": bad}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("HS* and none never are"), "{v}");

    let consumer = app.signup("cyd@consumer.example", "consumer").await;
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "Robot"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    for api in ["echo", "other"] {
        let (s, v) =
            app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": api, "plan": "free"})).await;
        assert_eq!(s, 201, "{v}");
    }
    let token = idp.token(audience, "robot-7");

    // Not registered yet.
    let r = call(&app, "echo", &token).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not registered on any Portico app"));

    let path = format!("/apps/{app_id}/external-clients");
    // The proof must be a real token of the client, for an API that trusts its issuer.
    let forged = {
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let claims = json!({"iss": idp.issuer, "aud": audience, "azp": "someone-else", "exp": 4_000_000_000u64});
        parts[1] = B64URL.encode(claims.to_string());
        parts.join(".")
    };
    for (body, says) in [
        (json!({"api": "echo", "token": forged}), "does not verify"),
        (json!({"api": "echo", "token": idp.token("urn:other", "robot-7")}), "another audience"),
        (json!({"api": "other", "token": token}), "does not accept tokens of issuer"),
        (json!({"api": "echo", "token": "not a jwt"}), "not a JWT"),
        (json!({"api": "nope", "token": token}), "was not found"),
    ] {
        let (s, v) = app.post(&path, Some(&consumer), body.clone()).await;
        assert!(s == 400 || s == 404, "{body}: {s} {v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    let (s, x) = app.post(&path, Some(&consumer), json!({"api": "echo", "token": token})).await;
    assert_eq!(s, 201, "{x}");
    assert_eq!(
        (x["issuer"].as_str(), x["client_id"].as_str(), x["jwks_url"].as_str()),
        (Some(idp.issuer), Some("robot-7"), Some(idp.jwks_url.as_str()))
    );
    assert!(!x.to_string().contains(&token), "the proof is not kept");
    let (s, list) = app.get(&path, Some(&consumer)).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
    // One app per client: the same client cannot be registered twice.
    let (_, other_app) = app.post("/apps", Some(&consumer), json!({"name": "Robot 2"})).await;
    let (s, v) = app
        .post(
            &format!("/apps/{}/external-clients", other_app["id"].as_str().unwrap()),
            Some(&consumer),
            json!({"api": "echo", "token": token}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let stranger = app.signup("sal@elsewhere.example", "consumer").await;
    assert_eq!(app.get(&path, Some(&stranger)).await.0, 404);

    let started = Instant::now();
    let r = loop {
        let r = call(&app, "echo", &token).await;
        if r.status() != 401 || started.elapsed() > Duration::from_secs(1) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r.status(), 200, "a registered client's token calls as the app");
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"]["x-portico-consumer"].as_str().is_some_and(|c| !c.is_empty()), "{seen}");
    // An API that does not trust the issuer refuses its tokens.
    assert_eq!(call(&app, "other", &token).await.status(), 401);

    // Deleting the registration ends the tokens within a second.
    let id = x["id"].as_str().unwrap();
    let (s, _, _) = app.call(Method::DELETE, &format!("{path}/{id}"), Some(&stranger), None).await;
    assert_eq!(s, 404);
    let (s, _, _) = app.call(Method::DELETE, &format!("{path}/{id}"), Some(&consumer), None).await;
    assert_eq!(s, 204);
    let started = Instant::now();
    while call(&app, "echo", &token).await.status() != 401 {
        assert!(started.elapsed() < Duration::from_secs(1), "a deleted registration's tokens still work");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
