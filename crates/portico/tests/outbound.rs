//! SSRF protection in the control plane: a version whose `upstream_url` or `upstream.targets`
//! points at a private, link-local or metadata address is refused with a 400 problem+json that
//! names the field and the `outbound.allow_cidrs` setting — through the API and through apply;
//! and loopback, allowed in the tests, is refused by a Portico that does not allow it, while
//! the gateway refuses to call it.

mod common;

use common::{Backend, TestApp, echo_openapi, spawn_app, spawn_app_with, spawn_upstream};
use portico::settings::Outbound;
use reqwest::Method;
use serde_json::{Value, json};

fn is_problem(h: &reqwest::header::HeaderMap) -> bool {
    h.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/problem+json")
}

async fn provider_with_api(app: &TestApp) -> String {
    let provider = app.signup("pat@provider.example", "provider").await;
    let (s, v) = app.post("/apis", Some(&provider), json!({"slug": "echo", "name": "Echo"})).await;
    assert_eq!(s, 201, "{v}");
    provider
}

async fn assert_refused(app: &TestApp, method: Method, path: &str, token: &str, body: Value, field: &str) -> String {
    let (s, v, h) = app.call(method, path, Some(token), Some(body.clone())).await;
    assert_eq!(s, 400, "{body} → {v}");
    assert!(is_problem(&h), "{v}");
    assert_eq!(v["code"], "invalid_request");
    let detail = v["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains(field) && detail.contains("outbound.allow_cidrs"), "{detail}");
    detail
}

#[tokio::test]
async fn private_and_metadata_upstreams_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let provider = provider_with_api(&app).await;
    let version = |url: &str| json!({"version": "1.0.0", "upstream_url": url, "openapi": echo_openapi()});

    let d = assert_refused(
        &app,
        Method::POST,
        "/apis/echo/versions",
        &provider,
        version("http://10.1.2.3"),
        "upstream_url",
    )
    .await;
    assert!(d.contains("private"), "{d}");
    let d = assert_refused(
        &app,
        Method::POST,
        "/apis/echo/versions",
        &provider,
        version("http://169.254.169.254/latest"),
        "upstream_url",
    )
    .await;
    assert!(d.contains("cloud metadata"), "{d}");
    let mut v = version("https://203.0.113.10");
    v["upstream"] = json!({"targets": ["https://203.0.113.11", "http://[::ffff:192.168.0.1]:8080"]});
    assert_refused(&app, Method::POST, "/apis/echo/versions", &provider, v, "upstream.targets[1]").await;
    let (_, versions) = app.get("/apis/echo/versions", Some(&provider)).await;
    assert_eq!(versions.as_array().map(Vec::len), Some(0), "nothing was saved: {versions}");

    // A version on the allowed loopback is saved; moving it to a refused address is not.
    let upstream = spawn_upstream().await;
    let (s, v) = app.post("/apis/echo/versions", Some(&provider), version(&upstream.url)).await;
    assert_eq!(s, 201, "{v}");
    let path = "/apis/echo/versions/1.0.0";
    assert_refused(
        &app,
        Method::PATCH,
        path,
        &provider,
        json!({"upstream_url": "http://169.254.169.254"}),
        "upstream_url",
    )
    .await;
    let targets = json!({"upstream": {"targets": ["http://[fd00:ec2::254]"]}});
    assert_refused(&app, Method::PATCH, path, &provider, targets, "upstream.targets[0]").await;
    let (s, v, _) = app.call(Method::PATCH, path, Some(&provider), Some(json!({"state": "published"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["upstream_url"], upstream.url.as_str());

    // Apply (an admin's) is held to the same policy, the version named.
    let admin = app.admin_token().await;
    let doc = json!({"providers": [{"slug": "acme", "name": "Acme", "apis": [{"slug": "inner", "name": "Inner",
        "versions": [{"version": "1.0.0", "upstream_url": "http://10.1.2.3", "openapi": echo_openapi()}]}]}]});
    let d = assert_refused(&app, Method::POST, "/admin/apply", &admin, doc, "inner@1.0.0: upstream_url").await;
    assert!(d.contains("private"), "{d}");
    let (s, v) = app.get("/apis/inner", Some(&admin)).await;
    assert_eq!(s, 404, "apply changed nothing: {v}");
    app.stop().await;
}

#[tokio::test]
async fn without_the_allow_list_loopback_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, Outbound::default()).await;
    let provider = provider_with_api(&app).await;
    let upstream = spawn_upstream().await;
    let port = upstream.url.rsplit(':').next().unwrap();
    for url in [upstream.url.clone(), format!("http://localhost:{port}"), format!("http://[::ffff:127.0.0.1]:{port}")] {
        let body = json!({"version": "1.0.0", "upstream_url": url, "openapi": echo_openapi()});
        let d = assert_refused(&app, Method::POST, "/apis/echo/versions", &provider, body, "upstream_url").await;
        assert!(d.contains("loopback"), "{d}");
    }
    app.stop().await;
}
