//! API key lifecycle: scopes, expiry, rotation with an overlap, and last-used times written in
//! batches by the control plane.

mod common;

use common::{Backend, spawn_app, spawn_upstream};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test]
async fn scopes_rotation_expiry_and_last_use() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("kim@provider.example", "provider").await;
    for slug in ["echo", "other"] {
        app.publish_api(&provider, slug, &upstream.url).await;
    }
    let consumer = app.signup("kit@consumer.example", "consumer").await;
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "Keyed app"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    for api in ["echo", "other"] {
        assert_eq!(
            app.post("/subscriptions", Some(&consumer), json!({"app_id": app_id, "api": api, "plan": "free"})).await.0,
            201
        );
    }
    let call = |key: String, api: &'static str| {
        let url = format!("{}/{api}/v1/things/1", app.gateway);
        let http = app.http.clone();
        async move { http.get(url).header("x-api-key", key).send().await.unwrap().status().as_u16() }
    };

    // Bad requests.
    for body in [json!({"expires_in_days": 0}), json!({"scopes": ["Not A Slug"]})] {
        let (s, v) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), body).await;
        assert_eq!(s, 400, "{v}");
    }
    // A key scoped to `echo`, expiring in 30 days.
    let (s, k) = app
        .post(
            &format!("/apps/{app_id}/keys"),
            Some(&consumer),
            json!({"name": "ci", "scopes": ["echo"], "expires_in_days": 30}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let scoped = k["key"].as_str().unwrap().to_owned();
    assert_eq!(k["scopes"], json!(["echo"]));
    assert!(k["expires_at"].as_str().is_some());
    assert_eq!(call(scoped.clone(), "echo").await, 200);
    assert_eq!(call(scoped.clone(), "other").await, 403, "outside the key's scopes");

    // Rotation with an overlap: both work; the new one keeps the name and scopes.
    let key_id = k["id"].as_str().unwrap().to_owned();
    let (s, rotated, _) = app
        .call(
            Method::POST,
            &format!("/apps/{app_id}/keys/{key_id}/rotate"),
            Some(&consumer),
            Some(json!({"overlap_hours": 24})),
        )
        .await;
    assert_eq!(s, 201, "{rotated}");
    let fresh = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!((rotated["name"].as_str(), &rotated["scopes"]), (Some("ci"), &json!(["echo"])));
    assert_eq!(call(fresh.clone(), "echo").await, 200);
    assert_eq!(call(scoped.clone(), "echo").await, 200, "the old key works during the overlap");

    // Rotation without an overlap: the old key stops within a second.
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    let (s, last, _) = app
        .call(
            Method::POST,
            &format!("/apps/{app_id}/keys/{new_id}/rotate"),
            Some(&consumer),
            Some(json!({"overlap_hours": 0})),
        )
        .await;
    assert_eq!(s, 201, "{last}");
    let started = Instant::now();
    while call(fresh.clone(), "echo").await != 401 {
        assert!(started.elapsed() < Duration::from_secs(1), "a key rotated without overlap still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(last["key"].as_str().unwrap().to_owned(), "echo").await, 200);
    let (s, v, _) = app
        .call(
            Method::POST,
            &format!("/apps/{app_id}/keys/{key_id}/rotate"),
            Some(&consumer),
            Some(json!({"overlap_hours": 9999})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let stranger = app.signup("sly@elsewhere.example", "consumer").await;
    let (s, _, _) =
        app.call(Method::POST, &format!("/apps/{app_id}/keys/{key_id}/rotate"), Some(&stranger), Some(json!({}))).await;
    assert_eq!(s, 404);

    // Last use: written by the control plane's flush, not by the call.
    let (_, keys) = app.get(&format!("/apps/{app_id}/keys"), Some(&consumer)).await;
    let before: Vec<Value> = keys.as_array().unwrap().clone();
    assert!(before.iter().all(|k| k["last_used_at"].is_null()), "nothing written on the request path yet");
    let flushed = app.app_state.snapshot.flush_last_used(&app.app_state.store, &mut Default::default()).await.unwrap();
    assert!(flushed >= 2, "{flushed}");
    let (_, keys) = app.get(&format!("/apps/{app_id}/keys"), Some(&consumer)).await;
    let used = keys.as_array().unwrap().iter().filter(|k| k["last_used_at"].is_string()).count();
    assert!(used >= 2, "{keys}");
    app.stop().await;
}

/// A pepper rotation loses no key and no OAuth client: with the new pepper first and the old
/// one kept, keys and client secrets made before still work and move to the new pepper as
/// they are used; once the old pepper is dropped, those that moved keep working and one never
/// used in between is refused.
#[tokio::test]
async fn a_pepper_rotation_keeps_what_was_used_in_the_overlap() {
    let app = spawn_app(Backend::Sqlite).await;
    let upstream = spawn_upstream().await;
    let provider = app.signup("pia@provider.example", "provider").await;
    app.publish_api(&provider, "echo", &upstream.url).await;
    let consumer = app.signup("cole@consumer.example", "consumer").await;
    let (_, a) = app.post("/apps", Some(&consumer), json!({"name": "Rotating app"})).await;
    let app_id = a["id"].as_str().unwrap().to_owned();
    let sub = json!({"app_id": app_id, "api": "echo", "plan": "free"});
    assert_eq!(app.post("/subscriptions", Some(&consumer), sub).await.0, 201);
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (s, k) = app.post(&format!("/apps/{app_id}/keys"), Some(&consumer), json!({})).await;
        assert_eq!(s, 201, "{k}");
        keys.push(k["key"].as_str().unwrap().to_owned());
    }
    let (s, client) = app.post(&format!("/apps/{app_id}/clients"), Some(&consumer), json!({"name": "ci"})).await;
    assert_eq!(s, 201, "{client}");
    let client =
        (client["client_id"].as_str().unwrap().to_owned(), client["client_secret"].as_str().unwrap().to_owned());
    let call = |app: &common::TestApp, key: &str| {
        let req = app.http.get(format!("{}/echo/v1/things/1", app.gateway)).header("x-api-key", key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let token = |app: &common::TestApp| {
        // Client ids and secrets are base62 after their prefix: nothing to escape.
        let req = app
            .http
            .post(format!("{}/oauth/token", app.api))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=client_credentials&client_id={}&client_secret={}", client.0, client.1));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!((call(&app, &keys[0]).await, call(&app, &keys[1]).await, token(&app).await), (200, 200, 200));

    // Rotate: a new pepper on the first line, the old one kept on the next.
    let file = app.dir.path().join("key-pepper");
    let old = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let new = portico_core::api_key::Pepper::generate().to_hex();
    std::fs::write(&file, format!("{new}\n{old}\n")).unwrap();
    let app = app.restart().await;
    assert_eq!(app.app_state.pepper.previous_count(), 1);
    assert_eq!(call(&app, &keys[0]).await, 200, "a key made before the rotation works during the overlap");
    assert_eq!(token(&app).await, 200, "so does a client secret (re-hashed as it is checked)");
    let state = &app.app_state;
    assert_eq!(state.snapshot.flush_rehashed(&state.store, &state.pepper).await.unwrap(), 1, "the used key moved");
    assert_eq!(call(&app, &keys[0]).await, 200, "and works under its new hash");
    let mut c = state.store.conn().await.unwrap();
    let left = portico_store::apps::hashes_under_other_peppers(&mut c, &state.pepper.id()).await.unwrap();
    assert_eq!(left, 1, "only the key never used in the overlap is left under the old pepper");
    drop(c);

    // The old pepper dropped: what moved works, the key that never did is refused.
    std::fs::write(&file, format!("{new}\n")).unwrap();
    let app = app.restart().await;
    assert_eq!(call(&app, &keys[0]).await, 200);
    assert_eq!(token(&app).await, 200);
    assert_eq!(call(&app, &keys[1]).await, 401);
    app.stop().await;
}
